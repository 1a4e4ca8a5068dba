"""Every parameter is classified; inputs can never drop out of an identity; the one walker."""

from __future__ import annotations

import collections
import dataclasses
import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import pytest
from prefect import flow

import tasks
from tasks.core import Step, StepArgumentError, StepDefinitionError, StepRef, step
from tests.helpers import steps

# --- the decorator classifies every parameter -----------------------------------------------


def test_an_unclassified_parameter_is_an_error_naming_it():
    with pytest.raises(StepDefinitionError, match=r"\['tokenizer'\] are not classified"):

        @step(hash_attrs=["dataset"], name="tok/{name}")
        def tok(dataset: str, tokenizer: str, name: str, *, output_path: str):
            pass


def test_a_parameter_in_both_lists_is_an_error_naming_it():
    with pytest.raises(StepDefinitionError, match=r"\['workers'\] are in both"):

        @step(hash_attrs=["n", "workers"], operational=["workers"])
        def f(n: int, workers: int, *, output_path: str):
            pass


def test_a_template_field_needs_no_class_and_cannot_be_operational():
    @step(hash_attrs=["n"], name="t/{label}")
    def ok(label: str, n: int, *, output_path: str):
        pass

    assert ok.ref_for("a", 1).name == "t/a" and ok.ref_for("a", 1) != ok.ref_for("b", 1)
    with pytest.raises(StepDefinitionError, match=r"\['label'\] fill the name template"):

        @step(hash_attrs=["n"], operational=["label"], name="t/{label}")
        def bad(label: str, n: int, *, output_path: str):
            pass


def test_unknown_names_in_either_list_are_errors():
    with pytest.raises(StepDefinitionError, match=r"operational \['nope'\] are not parameters"):

        @step(hash_attrs=["n"], operational=["nope"])
        def f(n: int, *, output_path: str):
            pass

    with pytest.raises(StepDefinitionError, match="must be a list"):

        @step(hash_attrs=["n"], operational="workers")
        def g(n: int, workers: int, *, output_path: str):
            pass


def test_a_stepref_in_an_operational_parameter_is_refused_at_call_time_and_in_plan(prefix):
    @step(hash_attrs=["n"], operational=["hint"], name="t/sneaky")
    def sneaky(n: int, hint: object = None, *, output_path: str):
        raise AssertionError("must not run")

    upstream = steps.source.ref_for(3)
    with pytest.raises(StepArgumentError, match="parameter 'hint' receives a step output"):
        sneaky.ref_for(1, hint={"deep": [upstream]})

    @flow
    def uses_it():
        sneaky(1, hint=upstream)

    from tasks.core import planning

    with pytest.raises(StepArgumentError, match="'hint'"), planning.planning():
        uses_it.fn()
    with pytest.raises(StepArgumentError, match="'hint'"):
        uses_it()
    assert not Path(prefix).exists(), "nothing may run or be written"


def test_ref_path_passed_instead_of_the_ref_is_refused(prefix, monkeypatch):
    upstream = steps.source.ref_for(3)
    for value in (upstream.path, upstream.cd("data.json").path, f"file://{upstream.path}"):
        with pytest.raises(StepArgumentError, match=r"pass the step's StepRef.*\.cd"):
            steps.derive.ref_for(value)
    with pytest.raises(StepArgumentError, match=r"hash attribute 'parts'\[0\]"):
        steps.gather.ref_for([upstream.path], {})
    # remote prefixes too; strings elsewhere are ordinary inputs
    monkeypatch.setenv("LMFLOWS_PREFIX", "gs://bucket/lm")
    with pytest.raises(StepArgumentError):
        steps.derive.ref_for(f"gs://bucket/lm/{upstream.name_with_hash}")
    assert steps.derive.ref_for("gs://bucket/other/x.json").hash
    assert steps.derive.ref_for("/data/x.json").hash


def test_input_paths_and_tokenizers_given_as_strings_are_identity():
    from tasks.tokenization import tokenize

    a = tokenize.ref_for("/data/a", "gpt2", name="x")
    assert a != tokenize.ref_for("/data/b", "gpt2", name="x")
    assert a != tokenize.ref_for("/data/a", "EleutherAI/gpt-neox-20b", name="x")
    assert a == tokenize.ref_for("/data/a", "gpt2", name="x", batch_size=7)


# --- every pipeline step: hash attributes re-key, operational ones do not -------------------


def _pipeline_steps() -> list[tuple[str, Step]]:
    found = {}
    # the flat layout's modules: those still in tasks/ and the moved ones (tasks.MOVED)
    names = [info.name for info in pkgutil.iter_modules(tasks.__path__) if not info.ispkg]
    names += [old.removeprefix("tasks.") for old in tasks.MOVED]
    for name in names:
        module = importlib.import_module(f"tasks.{name}")
        for value in vars(module).values():
            if isinstance(value, Step) and value.definition.fn.__module__ == module.__name__:
                found[f"{name}.{value.definition.fn.__name__}"] = value
    return sorted(found.items())


PIPELINE = _pipeline_steps()


def _sample(name: str, param: inspect.Parameter) -> object:
    if param.default is not inspect.Parameter.empty:
        return param.default
    annotation = str(param.annotation)
    if annotation.startswith("dict"):
        return {"main": f"/data/{name}"}
    if annotation.startswith("list"):
        return [f"/data/{name}"]
    if annotation.startswith("int"):
        return 1
    return f"/data/{name}" if name != "name" else "x"


def _changed(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, "/data/extra"]
    if isinstance(value, dict):
        return {**value, "extra": "/data/extra"}
    if value is None:
        return 3
    raise AssertionError(f"no change rule for {value!r}")


def test_the_pipeline_steps_are_discovered():
    names = {name for name, _ in PIPELINE}
    assert {
        "tokenization.tokenize",
        "dedup.dedup",
        "train_tokenizer.train_tokenizer",
        "formats.text_to_jsonl",
        "evaluate.evaluate",
        "train.train_lm",
        "download.download_url",
        "download.download_hf",
    } <= names


@pytest.mark.parametrize("label, task", PIPELINE, ids=[n for n, _ in PIPELINE])
def test_each_hash_attribute_rekeys_and_each_operational_one_does_not(label, task):
    definition = task.definition
    base = {n: _sample(n, p) for n, p in definition.signature.parameters.items()}
    reference = definition.identify(dict(base))
    for param in definition.signature.parameters:
        varied = {**base, param: _changed(base[param])}
        identity = definition.identify(varied)
        if param in definition.operational:
            assert identity.hash == reference.hash, f"{label}: operational {param} re-keyed"
        else:
            assert identity.hash != reference.hash, f"{label}: {param} does not re-key"


def test_a_stepref_input_of_every_pipeline_step_is_a_dependency():
    upstream = steps.source.ref_for(3)
    for label, task in PIPELINE:
        definition = task.definition
        for param in definition.hash_attrs:
            base = {n: _sample(n, p) for n, p in definition.signature.parameters.items()}
            identity = definition.identify({**base, param: upstream})
            assert identity.deps == [upstream.name_with_hash], (label, param)


# --- the walker: the same containers everywhere ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inputs:
    main: object
    extra: tuple = ()


Pair = collections.namedtuple("Pair", "left right")


@step(hash_attrs=["inputs", "pair"], name="t/walked")
def walked(inputs: Inputs, pair: Pair, *, output_path: str) -> dict:
    Path(output_path, "seen.json").write_text(
        json.dumps(
            {
                "type": type(inputs).__name__,
                "main": inputs.main,
                "extra": list(inputs.extra),
                "pair": type(pair).__name__,
                "left": pair.left,
            }
        )
    )
    return {}


def test_refs_inside_dataclasses_and_named_tuples_reach_the_function_as_paths(prefix):
    @flow
    def walk_flow():
        a = steps.source(2)
        b = steps.source(3)
        return walked(Inputs(a, (b.cd("data.json"),)), Pair(a, 1))

    ref = walk_flow()
    a, b = steps.source.ref_for(2), steps.source.ref_for(3)
    identity = walked.identify({"inputs": Inputs(a, (b.cd("data.json"),)), "pair": Pair(a, 1)})
    assert identity.deps == sorted([a.name_with_hash, b.name_with_hash])
    assert identity.attrs["inputs"] == {
        "main": a.name_with_hash,
        "extra": [f"{b.name_with_hash}/data.json"],
    }
    seen = json.loads(Path(ref.path, "seen.json").read_text())
    assert seen == {
        "type": "Inputs",
        "main": a.path,
        "extra": [b.cd("data.json").path],
        "pair": "Pair",
        "left": a.path,
    }


def test_sets_are_refused_the_same_way_everywhere(prefix):
    upstream = steps.source.ref_for(3)
    with pytest.raises(TypeError, match="a set cannot hold step references"):
        steps.gather.ref_for([{upstream}], {})
    with pytest.raises(TypeError, match="a set cannot hold step references"):
        steps.source.ref_for(3, workers=frozenset([upstream]))
    with pytest.raises(TypeError, match="builtins.set"):
        steps.gather.ref_for([{1, 2}], {})
    # a plain set in an operational parameter is nobody's business
    assert steps.source.ref_for(3, workers={1, 2}) == steps.source.ref_for(3)


def test_a_stepref_is_never_walked_as_a_dataclass():
    ref = steps.source.ref_for(3)
    assert dataclasses.is_dataclass(ref)
    identity = steps.gather.identify({"parts": [ref], "named": {}})
    assert identity.attrs["parts"] == [ref.name_with_hash]


def test_stepref_is_json():
    ref = steps.source.ref_for(3).cd("data.json")
    assert StepRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref


# --- found by attacking the first version -----------------------------------------------------


@dataclasses.dataclass
class Scaled:
    source: object
    scale: int = 1

    def __post_init__(self):
        self.scale *= 10  # a rebuilt copy would be scaled twice


@step(hash_attrs=["cfg"], operational=["cache"], name="t/post-init")
def post_init(cfg: Scaled, cache: object = None, *, output_path: str) -> dict:
    return {"scale_seen": cfg.scale, "source_is_path": isinstance(cfg.source, str)}


def test_the_function_sees_exactly_the_values_that_were_hashed(prefix):
    @flow
    def uses_post_init():
        return post_init(Scaled(steps.source(2), 1))

    ref = uses_post_init()
    assert ref.metadata == {"scale_seen": 10, "source_is_path": True}


def test_mappings_keep_their_type_and_init_false_fields_are_fine():
    from tasks.core.decorator import refs_to_paths

    @dataclasses.dataclass
    class WithCache:
        data: object
        cache: dict = dataclasses.field(init=False, default_factory=collections.OrderedDict)

    value = WithCache(1)
    assert refs_to_paths(value) is value
    ordered = collections.OrderedDict(a=steps.source.ref_for(1))
    walked = refs_to_paths(ordered)
    assert type(walked) is collections.OrderedDict and walked["a"].endswith(
        "t/source-" + (steps.source.ref_for(1).hash)
    )
    default = collections.defaultdict(list, b=[1])
    assert refs_to_paths(default) is default
    assert post_init.ref_for(Scaled(2), cache=WithCache(3)).hash


def test_refs_hidden_in_keys_or_pydantic_models_are_found():
    import pydantic

    class Options(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        hint: object = None

    upstream = steps.source.ref_for(3)
    with pytest.raises(TypeError, match="a dict key cannot be a step reference"):
        steps.gather.ref_for([], {upstream: 1})
    with pytest.raises(StepArgumentError, match="'cache' receives a step output"):
        post_init.ref_for(Scaled(1), cache=Options(hint=upstream))
    from tasks.core.decorator import refs_to_paths

    walked = refs_to_paths(Options(hint=upstream))
    assert isinstance(walked, Options) and walked.hint == upstream.path


def test_name_fields_cannot_collide():
    with pytest.raises(StepDefinitionError, match=r"several fields.*\['a', 'b'\]"):

        @step(name="x/{a}-{b}")
        def two(a: str, b: str, *, output_path: str):
            pass

    @step(hash_attrs=["a", "b"], name="x/{a}-{b}")
    def declared(a: str, b: str, *, output_path: str):
        pass

    assert declared.ref_for("p", "q-r") != declared.ref_for("p-q", "r")

    @step(name="y/{n}")
    def one(n: str, *, output_path: str):
        pass

    with pytest.raises(StepArgumentError, match="name field 'n' is 1 \\(int\\)"):
        one.ref_for(1)
    assert one.ref_for("1").name == "y/1"


def test_paths_under_the_prefix_are_found_however_they_are_spelled(tmp_path, monkeypatch):
    from tasks.core.identity import identify

    real = tmp_path / "real"
    (real / "out").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    prefix = str(real / "out")
    up = "t/up-0123456789"
    refused = [
        f"{link}/out/{up}",
        f"/{prefix}/{up}",
        f"file:{prefix}/{up}",
        f"file://{prefix}/{up}",
    ]
    for text in refused:
        with pytest.raises(StepArgumentError):
            identify("t/x", ("src",), {"src": text}, prefix=prefix)
    for text in ["gcs://b/lm/" + up, "gs://b//lm/" + up]:
        with pytest.raises(StepArgumentError):
            identify("t/x", ("src",), {"src": text}, prefix="gs://b/lm")
    monkeypatch.chdir(real / "out")
    for fine in ["./config.yaml", "config.yaml", "gs://b/lmx/y", f"{tmp_path}/real/outside"]:
        identify("t/x", ("src",), {"src": fine}, prefix=prefix)
    from tasks.core.storage import PrefixError, normalize_prefix

    with pytest.raises(PrefixError, match="filesystem root"):
        normalize_prefix("/")


# What each pipeline step may treat as operational, pinned: moving a parameter here is a
# decision that re-uses outputs across its values, and must be made in this test too.
OPERATIONAL = {
    "dedup.dedup": {"processes", "chunk_size"},
    "download.download_url": {"expected_sha256"},
    "tokenization.tokenize": {"batch_size"},
    "train.train_lm": {"steps_per_eval", "max_eval_batches", "checkpoint_every", "accelerator"},
    "evaluate.evaluate": {"accelerator"},
    "download.download_hf": {"token"},  # a secret: never in an identity
}


@pytest.mark.parametrize("label, task", PIPELINE, ids=[n for n, _ in PIPELINE])
def test_operational_parameters_are_pinned(label, task):
    assert set(task.definition.operational) == OPERATIONAL.get(label, set())


def test_every_step_using_a_library_with_process_wide_state_runs_isolated():
    """levanter, transformers, lm-eval, the hub and matplotlib keep process-wide state: their
    steps run in a worker process of their own (docs/design.md, "Isolation"); pure-Python
    steps stay in the task's thread."""
    import importlib
    import pkgutil

    import tasks.data
    import tasks.lm
    from tasks.core import Step

    isolated, in_thread = set(), set()
    for package in (tasks.data, tasks.lm):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for value in vars(module).values():
                if isinstance(value, Step) and value.fn.__module__ == module.__name__:
                    name = value.definition.fn.__name__
                    (isolated if value.definition.isolate else in_thread).add(name)
    assert isolated == {
        "analyze_scaling", "chat_eval", "download_hf", "evaluate", "evaluate_checkpoint",
        "harness_eval", "sft", "tokenize", "train_lm", "train_optimal", "train_tokenizer",
    }  # fmt: skip
    assert in_thread == {"dedup", "download_url", "text_to_jsonl"}, in_thread
