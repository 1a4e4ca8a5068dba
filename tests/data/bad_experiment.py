"""The pipeline with a training argument that cannot work (32 is not a multiple of 3): the
upstream steps are fine, yet nothing may run."""

from prefect import flow

from flows.pretrain import prepare_data, train_and_evaluate


@flow
def bad_experiment():
    data = prepare_data("bad", ["data/kjv/kjv-00.jsonl.gz"], vocab_size=512)
    return train_and_evaluate(
        "bad",
        {"bad": data["tokenized"]},
        data["tokenizer"],
        hidden_dim=32,
        num_heads=3,
        num_kv_heads=3,
    )
