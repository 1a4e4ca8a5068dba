"""Identity: the frozen hash format, what re-keys a step and what does not, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from tasks.core import StepDefinitionError, StepNameError, StepRef, step
from tests.conftest import run_python
from tests.helpers import steps


def test_hash_is_the_frozen_format():
    payload = {"name": "t/source", "attrs": {"n": 3}, "deps": []}
    expected = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:10]
    ref = steps.source.ref_for(3)
    assert ref.hash == expected
    assert ref.name == "t/source" and ref.name_with_hash == f"t/source-{expected}"
    assert len(ref.hash) == 10 and all(c in "0123456789abcdef" for c in ref.hash)


def test_identity_is_the_same_in_another_process_and_under_another_prefix(tmp_path):
    here = steps.derive.ref_for(steps.source.ref_for(5), k=2)
    code = (
        "from tests.helpers import steps; "
        "print(steps.derive.ref_for(steps.source.ref_for(5), k=2).hash)"
    )
    for prefix in (tmp_path / "a", "gs://bucket-b/deep/prefix"):
        result = run_python(["-c", code], env={"LMFLOWS_PREFIX": str(prefix)})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == here.hash


def test_path_follows_the_current_prefix_not_the_hash(monkeypatch, tmp_path):
    ref = steps.source.ref_for(3)
    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path / "one"))
    first = ref.path
    monkeypatch.setenv("LMFLOWS_PREFIX", "gs://other-bucket/x/")
    assert ref.path == f"gs://other-bucket/x/{ref.name_with_hash}"
    assert first == f"{tmp_path}/one/{ref.name_with_hash}"
    assert steps.source.ref_for(3) == ref


def test_attribute_change_rekeys_the_step_and_everything_downstream():
    a3, a4 = steps.source.ref_for(3), steps.source.ref_for(4)
    assert a3.hash != a4.hash
    assert steps.derive.ref_for(a3, k=2).hash != steps.derive.ref_for(a4, k=2).hash
    assert steps.derive.ref_for(a3, k=2).hash != steps.derive.ref_for(a3, k=3).hash


def test_operational_argument_does_not_rekey():
    assert steps.source.ref_for(3, workers=1) == steps.source.ref_for(3, workers=64)


def test_defaults_are_applied_before_hashing():
    a = steps.source.ref_for(3)
    assert steps.derive.ref_for(a) == steps.derive.ref_for(a, k=1)


def test_cd_keeps_the_dependency_and_enters_the_hash_with_its_sub_path():
    a = steps.source.ref_for(3)
    sub = a.cd("data.json")
    assert sub.identity == f"{a.name_with_hash}/data.json"
    assert sub.path.endswith(f"{a.name_with_hash}/data.json")
    with_cd = steps.derive.identify(steps.derive.bind((sub,), {}))
    assert with_cd.deps == [a.name_with_hash]
    assert with_cd.attrs["src"] == f"{a.name_with_hash}/data.json"
    assert with_cd.hash != steps.derive.ref_for(a).hash
    with pytest.raises(ValueError, match=r"'\.\.'"):
        a.cd("../escape")


def test_nested_refs_are_dependencies_sorted_and_deduplicated():
    a, b = steps.source.ref_for(1), steps.source.ref_for(2)
    identity = steps.gather.identify(steps.gather.bind(([b, a, a], {"x": {"y": b}}), {}))
    assert identity.deps == sorted({a.name_with_hash, b.name_with_hash})
    assert identity.attrs == {
        "parts": [b.name_with_hash, a.name_with_hash, a.name_with_hash],
        "named": {"x": {"y": b.name_with_hash}},
    }


def test_plain_json_conversions():
    ident = steps.typed.identify(
        {
            "config": {
                "shape": steps.Shape(3, steps.Color.RED),
                "path": Path("/x/y"),
                "pair": (1, 2.5),
            }
        }
    )
    assert ident.attrs["config"] == {
        "shape": {"sides": 3, "color": "red"},
        "path": "/x/y",
        "pair": [1, 2.5],
    }


@pytest.mark.parametrize(
    "value, type_name",
    [
        (object(), "builtins.object"),
        ({1, 2}, "builtins.set"),
        (b"bytes", "builtins.bytes"),
        ({1: "int key"}, "dict key 1"),
    ],
)
def test_non_json_hash_attribute_is_a_type_error_before_anything_runs(prefix, value, type_name):
    with pytest.raises(TypeError) as info:
        steps.typed.ref_for(value)
    assert "'config'" in str(info.value) and type_name in str(info.value)
    assert not os.path.exists(prefix)


def test_non_json_hash_attribute_in_a_flow_fails_before_the_function_runs(prefix):
    from prefect import flow

    @flow
    def bad():
        return steps.typed({"when": object()})

    with pytest.raises(TypeError, match="'config'.*builtins.object"):
        bad()
    assert not os.path.exists(prefix)


def test_stepref_is_json_round_trippable():
    ref = StepRef("a/b", "0123456789", "sub/x", {"k": [1, 2]})
    assert StepRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    with pytest.raises(ValueError):
        StepRef.from_json({"name": "a", "hash": "b", "__class__": "os.system"})


@pytest.mark.parametrize(
    "name", ["Upper", "a//b", "/lead", "trail/", "a/../b", "sp ace", "", "a/./b", "ünï"]
)
def test_invalid_step_names_fail_when_the_decorator_runs(name):
    with pytest.raises(StepDefinitionError, match="name"):

        @step(name=name)
        def f(*, output_path: str):
            pass


def test_template_filled_with_a_bad_value_fails_before_running(prefix):
    @step(hash_attrs=["dataset"], name="tokenized/{dataset}")
    def tok(dataset: str, *, output_path: str):
        raise AssertionError("must not run")

    assert tok.ref_for("wiki").name == "tokenized/wiki"
    with pytest.raises(StepNameError, match="Wiki Text"):
        tok.ref_for("Wiki Text")
    with pytest.raises(StepNameError):
        tok.ref_for("../../etc")


def test_decorator_errors():
    with pytest.raises(StepDefinitionError, match="output_path"):

        @step()
        def no_output(x: int):
            pass

    with pytest.raises(StepDefinitionError, match=r"hash_attrs \['nope'\]"):

        @step(hash_attrs=["nope"])
        def unknown_attr(x: int, *, output_path: str):
            pass

    with pytest.raises(StepDefinitionError, match="missing"):

        @step(name="x/{missing}")
        def unknown_field(x: int, *, output_path: str):
            pass

    with pytest.raises(StepDefinitionError, match=r"\*args"):

        @step(hash_attrs=["args"])
        def varargs(*args, output_path: str):
            pass

    with pytest.raises(TypeError, match="'x'"):

        @step(hash_attrs=["x"])
        def bad_default(x=object(), *, output_path: str):
            pass


def test_decorated_object_is_a_prefect_task_without_output_path_parameter():
    import inspect

    from prefect import Task

    assert isinstance(steps.source, Task)
    assert "output_path" not in inspect.signature(steps.source.fn).parameters
    with pytest.raises(TypeError, match="output_path"):
        steps.source.ref_for(3, output_path="/tmp/x")
    assert isinstance(steps.source.with_options(retries=2), Task)
    assert steps.source.with_options(retries=2).ref_for(3) == steps.source.ref_for(3)


def test_default_step_name_is_the_function_name():
    @step(hash_attrs=["x"])
    def my_step(x: int, *, output_path: str):
        pass

    assert my_step.ref_for(1).name == "my_step"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
