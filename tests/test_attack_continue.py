"""Attacks on train_lm's schedules, initialize_from and extension by a reviewer who did not
write them: each test is a promise of docs/pipeline.md (train_lm section) or docs/design.md
(§ Extending a committed run) that a cheap, unit-level call broke. No training: argument
checks and `extension.find` over hand-made committed outputs (real commit records and
manifests, written with the framework's own functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.lm.train import check_train_lm

BASE = dict(
    data={"kjv": "x"},
    weights=None,
    batch_size=4,
    num_train_steps=20,
    learning_rate=1e-3,
    hidden_dim=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    intermediate_dim=256,
    seq_len=128,
)


@pytest.mark.parametrize(
    "warmup",
    [-0.1, 2.5, True, "0.1", 30],
    ids=["negative", "fractional-steps", "bool", "string", "longer-than-the-run"],
)
def test_a_warmup_levanter_refuses_or_that_does_not_fit_the_run_is_one_line(warmup):
    """docs/pipeline.md: warmup reads as levanter reads it; bad input is one line before any
    work. levanter raises on a negative or fractional-step warmup only when it builds the
    schedule (after the step started); True is silently 'the whole run'; 30 warmup steps of a
    20-step run never reach the peak rate."""
    with pytest.raises(ValueError, match="warmup"):
        check_train_lm(**BASE, warmup=warmup)


@pytest.mark.parametrize("value", [0, None, 1])
def test_initialize_optimizer_is_a_bool_even_without_a_source(value):
    """Without initialize_from, initialize_optimizer=0 (or None) was accepted and, not being
    the omitted default False (another type), gave the same training a second identity."""
    with pytest.raises(ValueError, match="initialize_optimizer"):
        check_train_lm(**BASE, initialize_optimizer=value)


def test_a_wsd_whose_decay_rounds_to_no_step_is_refused():
    """decay=0.01 of a 20-step run is int(0.2) = 0 decay steps in levanter: a 'wsd' that
    never decays (a constant run under another identity), accepted silently."""
    with pytest.raises(ValueError, match="decay"):
        check_train_lm(**BASE, lr_schedule="wsd", decay=0.01, warmup=0)


# --- extension: which committed sibling is trusted -----------------------------------------

NAME = "checkpoints/run"
ATTRS = {
    "data": {"kjv": "tokenized/kjv-0123456789"},
    "tokenizer": "tokenizer/kjv-0123456789",
    "lr_schedule": "constant",
    "learning_rate": 0.003,
    "warmup": 2,
    "seed": 0,
}
DEPS = ["tokenized/kjv-0123456789", "tokenizer/kjv-0123456789"]


def _committed_training(
    prefix: Path, hash_: str | None, attrs: dict, steps: list[int], commit: bool = True
) -> str:
    """A committed `checkpoints/run-HASH` holding levanter-complete checkpoints at `steps`
    (metadata.json and an array file) and a provenance with `attrs`, committed with the
    framework's record (`hash_` None: the hash of `attrs`, a genuine identity)."""
    from tasks.core import StepRef, manifest, records, storage
    from tasks.core.identity import compute_hash

    hash_ = hash_ or compute_hash(NAME, attrs, DEPS)
    name_with_hash = f"{NAME}-{hash_}"
    out = Path(storage.output_dir(name_with_hash, str(prefix)))
    for step in steps:
        folder = out / "checkpoints" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text("{}")
        (folder / "arrays.bin").write_bytes(b"\0" * 64)
    meta = out / ".lmflows"
    meta.mkdir(parents=True)
    provenance = {
        "name": NAME,
        "hash": hash_,
        "attrs": attrs,
        "deps": [{"identity": dep, "path": str(prefix / dep)} for dep in DEPS],
        "notes": {},
    }
    (meta / "provenance.json").write_text(json.dumps(provenance))
    if not commit:
        return name_with_hash
    record = records.record_bytes(StepRef(NAME, hash_), manifest.build(str(out)))
    (out / storage.COMMIT_FILE).write_bytes(record)
    assert records.read_commit(name_with_hash, str(prefix)) is not None
    return name_with_hash


def test_a_sibling_whose_provenance_is_not_its_identity_is_never_extended(tmp_path):
    """Extension trusts a sibling's provenance `attrs` (under `.lmflows/`, outside the
    manifest) without checking that they hash to the folder's name: a provenance copied from
    another output, hand-edited, or written wrong made a run start from the checkpoint of a
    training with other inputs. The genuine 40-step sibling (its attrs hash to its name) is
    the only source; the forged one (same attrs, another hash, a later checkpoint) is not."""
    from tasks.core.identity import compute_hash
    from tasks.lm import extension

    shorter = {**ATTRS, "num_train_steps": 40}
    genuine = _committed_training(tmp_path, compute_hash(NAME, shorter, DEPS), shorter, [20])
    forged = _committed_training(tmp_path, "ffffffffff", shorter, [39])
    assert forged != genuine
    found = extension.find(NAME, {**ATTRS, "num_train_steps": 80}, str(tmp_path))
    assert found is not None
    assert (found.source, found.step) == (genuine, 20)


def _find(prefix: Path, total: int, **changed):
    from tasks.lm import extension

    return extension.find(NAME, {**ATTRS, **changed, "num_train_steps": total}, str(prefix))


def test_a_sibling_of_the_same_name_with_other_inputs_is_never_a_source(tmp_path):
    """Same name, committed, a later checkpoint: another learning rate, seed, dataset or
    schedule option is another training, never a source; only the genuine one is."""
    short = {**ATTRS, "num_train_steps": 40}
    for changed in (
        {"learning_rate": 0.001},
        {"seed": 1},
        {"data": {"kjv": "tokenized/kjv-9999999999"}},
        {"warmup": 3},
        {"min_lr_ratio": 0.0},
    ):
        _committed_training(tmp_path, None, {**short, **changed}, [39])
    assert _find(tmp_path, 80) is None
    genuine = _committed_training(tmp_path, None, short, [20])
    found = _find(tmp_path, 80)
    assert (found.source, found.step) == (genuine, 20)


def test_an_uncommitted_or_damaged_sibling_is_never_a_source(tmp_path):
    """A sibling still training (no commit record), or one whose checkpoint lost a file after
    its commit (the manifest no longer matches), offers nothing."""
    _committed_training(tmp_path, None, {**ATTRS, "num_train_steps": 40}, [39], commit=False)
    assert _find(tmp_path, 80) is None
    damaged = _committed_training(tmp_path, None, {**ATTRS, "num_train_steps": 30}, [29])
    (tmp_path / damaged / "checkpoints" / "step-29" / "arrays.bin").unlink()
    assert _find(tmp_path, 80) is None


def test_of_two_siblings_the_later_shared_checkpoint_is_the_source(tmp_path):
    _committed_training(tmp_path, None, {**ATTRS, "num_train_steps": 30}, [29])
    longer = _committed_training(tmp_path, None, {**ATTRS, "num_train_steps": 40}, [39])
    _committed_training(tmp_path, None, {**ATTRS, "num_train_steps": 20}, [19])
    found = _find(tmp_path, 80)
    assert (found.source, found.step) == (longer, 39)


def test_a_longer_sibling_leaves_the_run_at_least_one_update_to_train(tmp_path):
    """A committed 80-step constant run is a source for a 40-step one only at step 38 or
    before: resuming at step 39 (the run's last) levanter trains nothing and fails."""
    longer = _committed_training(
        tmp_path, None, {**ATTRS, "num_train_steps": 80}, [38, 39, 79]
    )  # fmt: skip
    found = _find(tmp_path, 40)
    assert (found.source, found.step) == (longer, 38)


def test_an_omitted_default_is_omitted_only_at_its_own_type():
    """omit_at_default drops an attribute only at its default of the same type: 0.0 and
    False are not 0 in the hash, so they must not share the identity of the omitted 0."""
    from tasks.core import step

    @step(hash_attrs=["n", "extra"], omit_at_default=["extra"], name="t/omitted")
    def counted(n: int, extra: int = 0, *, output_path: str):
        pass

    assert counted.ref_for(3, 0) == counted.ref_for(3)
    assert counted.ref_for(3, 0.0) != counted.ref_for(3)
    assert counted.ref_for(3, False) != counted.ref_for(3)


def test_a_refused_sub_path_source_is_named_with_its_sub_path(tmp_path, monkeypatch):
    """initialize_from=ref.cd("hf") of a training whose exports lie in hf/step-N is refused
    (no export in hf/ itself); the line named the parent output, which does hold one."""
    from tasks.core import StepRef
    from tasks.lm.initialize import InitializeFromError, plan_check

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path))
    export = tmp_path / f"{NAME}-0123456789" / "hf" / "step-9"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    (export / "model.safetensors").write_bytes(b"x")
    source = StepRef(NAME, "0123456789").cd("hf")
    with pytest.raises(InitializeFromError, match=f"initialize_from={NAME}-0123456789/hf: no "):
        plan_check(source, False, {})
