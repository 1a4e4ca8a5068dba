"""Pinned identities: hashes recorded as literals. Any change to the identity format (float
handling, key order, separators, dependency rules, `.cd()`) breaks these, which is the point:
a change here re-keys every output in every bucket. The values were computed by the code at
the first release of the format and checked against it again after the identity rules
changed."""

from __future__ import annotations

import pytest

from tasks.core import StepRef, identify

UPSTREAM = StepRef("data/raw", "0123456789")

VECTORS = [
    ("t/plain", {"n": 3}, "0a3c25c3ea"),
    ("t/float", {"lr": 2.0}, "825ff4d5b8"),
    ("t/float-small", {"lr": 3e-4}, "1b93d35b73"),
    ("t/int-vs-float", {"lr": 2}, "6e07c2404f"),  # 2 and 2.0 are different identities
    ("t/nested", {"cfg": {"b": [1, 2.5, {"c": None}], "a": True}}, "7a2f8175d7"),
    ("t/list", {"xs": [3, 1, 2]}, "ee93c5c0c7"),
    ("t/unicode", {"s": "naïve ☃"}, "4209c19d10"),
    ("t/dep", {"src": UPSTREAM}, "9c585b1f8e"),
    ("t/cd", {"src": UPSTREAM.cd("data/part-0.jsonl")}, "1438e82457"),
    (
        "t/mixed",
        {"data": {"kjv": UPSTREAM, "web": UPSTREAM.cd("x")}, "weights": {"kjv": 0.7, "web": 0.3}},
        "9b907b2b8f",
    ),
]


@pytest.mark.parametrize("name, attrs, expected", VECTORS, ids=[v[0] for v in VECTORS])
def test_recorded_identity(name, attrs, expected):
    identity = identify(name, tuple(attrs), attrs, prefix="/nonexistent-prefix")
    assert identity.hash == expected
    deps = ["data/raw-0123456789"] if "dep" in name or "cd" in name or "mixed" in name else []
    assert identity.deps == deps


# The experiments' own steps: a re-keyed pipeline step would silently orphan committed work.
EXPERIMENT_IDENTITIES = {
    "toy": [
        "toy/numbers-a5ab788e68",
        "toy/scale-503585bc9a",
        "toy/words-3b1020537d",
        "toy/summary-a450e2fef1",
        "toy/scale-61d5a4912a",
    ],
    "demo": [
        "raw/kjv-7e9e1f4e18",
        "dedup/kjv-4049d04849",
        "tokenizer/kjv-4ab8872db2",
        "tokenized/kjv-7ec78c5661",
        "checkpoints/demo-kjv-30080c6844",
        "eval/demo-kjv-546a3bc800",
        # its identity includes the sha256 of data/harness/'s YAML and JSONL
        "harness/demo-kjv-de4c2f3d37",
    ],
    "mixture": [
        "raw/kjv-pydoc-9a44d79b3d",
        "dedup/kjv-pydoc-dd011962ce",
        "tokenizer/kjv-pydoc-391b5d1c78",
        "raw/kjv-7e9e1f4e18",
        "dedup/kjv-4049d04849",
        "tokenized/kjv-d3144ac874",
        "raw/pydoc-92a63e9a71",
        "dedup/pydoc-a9b71525b2",
        "tokenized/pydoc-c1fb0a2bdc",
        "checkpoints/mixture-kjv-pydoc-05a4080be0",
        "eval/mixture-kjv-pydoc-90e69fefc2",
    ],
    "cooldown": [
        "raw/kjv-7e9e1f4e18",
        "dedup/kjv-4049d04849",
        "tokenizer/kjv-4ab8872db2",
        "tokenized/kjv-7ec78c5661",
        "checkpoints/demo-kjv-30080c6844",
        "eval/demo-kjv-546a3bc800",
        "raw/pydoc-92a63e9a71",
        "dedup/pydoc-a9b71525b2",
        "tokenized/pydoc-2423d67b55",  # pydoc in the demo's tokenizer
        "checkpoints/cooldown-kjv-pydoc-9ecabe1eb6",  # initialize_from the demo's model
        "eval/cooldown-kjv-pydoc-51d54d1241",
    ],
}


@pytest.mark.parametrize("experiment", sorted(EXPERIMENT_IDENTITIES))
def test_experiment_identities_are_pinned(experiment, tmp_path, monkeypatch):
    from flows.loader import load_flow
    from flows.params import bind
    from tasks.core import planning

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path))
    flow = load_flow(experiment)
    with planning.planning() as plan:
        flow.fn(**bind(flow, {}))
    assert list(plan.steps) == EXPERIMENT_IDENTITIES[experiment]


# Adopted folders (`tasks.core.adopt`): the identity is made of the content fingerprint, the
# sha256 of the canonical file list; these pin both for fixed content (a.txt = "hello\n",
# sub/b.bin = "world\n"), as local disk (sha256) and gs:// (GCS's crc32c and md5) record it.
ADOPTED_LOCAL_FILES = {
    "a.txt": {
        "bytes": 6,
        "sha256": "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
    },
    "sub/b.bin": {
        "bytes": 6,
        "sha256": "e258d248fda94c63753607f7c4494ee0fcbe92f1a76bfdac795c9d84101eb317",
    },
}
ADOPTED_GCS_FILES = {
    "a.txt": {"bytes": 6, "crc32c": "NT3Yvg==", "md5": "sZRqySSS0jR8YjW00mERhA=="},
    "sub/b.bin": {"bytes": 6, "crc32c": "1K1zcw==", "md5": "WReFt5RgHiErJg4lklY2/Q=="},
}


@pytest.mark.parametrize(
    "files, fingerprint, expected",
    [
        (
            ADOPTED_LOCAL_FILES,
            "ec46de33e29c35f79196694ac9cefa1925a4f6a01984d8fb8b93b662406ecd57",
            "adopted/fixture-1343fbb8d2",
        ),
        (
            ADOPTED_GCS_FILES,
            "086494fadf8238a385988a50359c027c141ce48bf85f0be3d45c63f6cd2acf92",
            "adopted/fixture-f5099a65ee",
        ),
    ],
    ids=["local", "gcs"],
)
def test_adopted_identity(files, fingerprint, expected):
    from tasks.core.adopt import NAME_TEMPLATE, fingerprint_of

    assert fingerprint_of(files) == fingerprint
    identity = identify(
        NAME_TEMPLATE,
        ("fingerprint",),
        {"name": "fixture", "fingerprint": fingerprint},
        prefix="/nonexistent-prefix",
    )
    assert identity.name_with_hash == expected
    assert identity.deps == []


def test_an_adopted_folder_has_its_pinned_identity(tmp_path, monkeypatch):
    """The whole path: files on disk -> the identity pinned above."""
    from tasks.core import adopt, planning

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path / "out"))
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a.txt").write_text("hello\n")
    (tmp_path / "src" / "sub" / "b.bin").write_text("world\n")
    with planning.planning():
        ref = adopt(str(tmp_path / "src"), name="fixture")
    assert ref.name_with_hash == "adopted/fixture-1343fbb8d2"
def _checkpoint_eval(step: int) -> str:
    """The identity of evaluating checkpoint `step` of the demo's training on its data."""
    from tasks.lm.evaluate_checkpoint import evaluate_checkpoint

    definition = evaluate_checkpoint.definition
    params = {
        "training": "checkpoints/demo-kjv-30080c6844",
        "checkpoint_step": step,
        "name": "demo-kjv",
        "data": {"kjv": StepRef("tokenized/kjv", "7ec78c5661")},
        "tokenizer": StepRef("tokenizer/kjv", "4ab8872db2"),
        "max_eval_batches": None,
        "batch_size": 32,
        "accelerator": "cpu",
    }
    identity = identify(definition.name_template, definition.hash_attrs, params, prefix="/x")
    return identity.name_with_hash


def test_checkpoint_evaluations_are_pinned_and_name_the_step():
    """evaluate_checkpoint (evaluate-checkpoint deployment): one identity per checkpoint of a
    training, so each checkpoint is evaluated once and another checkpoint is never Cached."""
    assert _checkpoint_eval(2) == "eval/demo-kjv/step-2-245ff3843f"
    assert _checkpoint_eval(4) == "eval/demo-kjv/step-4-3ccd5d26f9"
# train_lm's attributes added later (issue 17): at their defaults the demo's identity above is
# unchanged; set, they are identity.
TRAIN_LM_IDENTITIES = [
    ({"name": "wsd", "lr_schedule": "wsd", "decay": 0.2, "warmup": 5, "num_train_steps": 80},
     "checkpoints/wsd-d8e4a934b3"),
    ({"name": "cool", "initialize_from": StepRef("checkpoints/demo-kjv", "30080c6844"),
      "num_train_steps": 30}, "checkpoints/cool-1868418772"),
    ({"name": "cool", "initialize_from": StepRef("checkpoints/demo-kjv", "30080c6844"),
      "initialize_optimizer": True, "num_train_steps": 30}, "checkpoints/cool-8de7425917"),
]  # fmt: skip


@pytest.mark.parametrize("arguments, expected", TRAIN_LM_IDENTITIES, ids=lambda v: str(v)[:40])
def test_train_lm_identities_with_the_new_attributes(arguments, expected, monkeypatch):
    from tasks.lm.train import train_lm

    monkeypatch.setenv("LMFLOWS_PREFIX", "/nonexistent-prefix")
    data = {"kjv": StepRef("tokenized/kjv", "7ec78c5661")}
    tokenizer = StepRef("tokenizer/kjv", "4ab8872db2")
    ref = train_lm.ref_for(data=data, tokenizer=tokenizer, **arguments)
    assert ref.name_with_hash == expected
