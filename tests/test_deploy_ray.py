"""deploy/ray/*.yaml: Ray cluster launcher configs, checked offline.

Each config goes through the same steps `ray up` takes before it calls the cloud
(`prepare_config`, the provider's `fillout_available_node_types_resources`, `validate_config`
against Ray's JSON schema), and what `tasks.lm.accelerators.ray_resources` asks for each
accelerator the config is meant for must be placeable on one of its worker node types, both
by a plain resource comparison and by Ray's own autoscaler scheduler (`get_nodes_for`). No
network, no GCP credentials: `bootstrap_config` (service accounts, firewall, ssh keys) is the
part not exercised here.
"""

from __future__ import annotations

import copy
import functools
import re

import pytest
import yaml

from tasks.lm.accelerators import AcceleratorError, ray_resources, tpu_chips
from tests.conftest import REPO

RAY_DIR = REPO / "deploy" / "ray"

# The accelerators each config is meant for: renaming a node type's resource, or dropping the
# node type, must fail here.
MEANT_FOR = {
    "cluster-tpu.yaml": ["cpu", "tpu-v4-8"],
}


def load(name: str) -> dict:
    with open(RAY_DIR / name) as f:
        return yaml.safe_load(f)


def worker_types(config: dict) -> dict[str, dict]:
    return {
        name: node
        for name, node in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def demand(options: dict) -> dict[str, float]:
    """Ray remote options (``.remote(**options)`` keywords) as a resource bundle."""
    bundle = {"CPU": options.get("num_cpus", 1), **options.get("resources", {})}
    if options.get("num_gpus"):
        bundle["GPU"] = options["num_gpus"]
    return bundle


def fits(bundle: dict[str, float], node_resources: dict[str, float]) -> bool:
    return all(node_resources.get(key, 0) >= amount for key, amount in bundle.items())


def is_tpu(node: dict) -> bool:
    config = node["node_config"]
    return "machineType" not in config and (
        "acceleratorType" in config or "acceleratorConfig" in config
    )


def test_every_config_in_deploy_ray_is_covered():
    assert sorted(p.name for p in RAY_DIR.glob("*.yaml")) == sorted(MEANT_FOR)


@pytest.mark.parametrize("name", sorted(MEANT_FOR))
def test_structure_ray_up_needs(name):
    config = load(name)
    assert isinstance(config["cluster_name"], str) and config["cluster_name"]
    assert config["provider"]["type"] == "gcp"
    for key in ("region", "availability_zone"):
        assert config["provider"].get(key), f"provider.{key} missing"
    assert "project_id" in config["provider"]  # null until the user fills it in
    assert config["max_workers"] >= 0
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert not is_tpu(types[config["head_node_type"]]), "a TPU VM cannot be the Ray head"
    for node_name, node in types.items():
        assert isinstance(node.get("node_config"), dict) and node["node_config"], node_name
        resources = node.get("resources")
        assert isinstance(resources, dict), node_name
        # The GCP launcher does not infer CPUs: a type without CPU can place no step.
        assert resources.get("CPU", 0) >= 1, f"{node_name} declares no CPU"
        assert all(isinstance(v, int) and v >= 0 for v in resources.values()), node_name
        assert 0 <= node.get("min_workers", 0) <= node.get("max_workers", config["max_workers"])
    assert sum(node.get("min_workers", 0) for node in types.values()) <= config["max_workers"]


@pytest.mark.parametrize("name", sorted(MEANT_FOR))
def test_tpu_node_types_declare_what_ray_and_lmflows_name(name):
    """TPU: chips on the host, TPU-<acceleratorType>-head: 1; single-host only."""
    tpu_types = {n: node for n, node in worker_types(load(name)).items() if is_tpu(node)}
    for node_name, node in tpu_types.items():
        config = node["node_config"]
        accelerator_type = config["acceleratorType"]
        assert config.get("runtimeVersion"), f"{node_name}: no runtimeVersion"
        tpu_type, chips = tpu_chips(f"tpu-{accelerator_type}")  # raises for multi-host
        assert node["resources"]["TPU"] == chips, node_name
        assert node["resources"][f"TPU-{tpu_type}-head"] == 1, node_name
        # JAX's TPU build on the TPU hosts, after the project itself.
        commands = " ".join(node.get("worker_setup_commands", []))
        assert "jax[tpu]" in commands and "-e ~/lmflows" in commands, node_name


@pytest.mark.parametrize(
    ("name", "accelerator"), [(n, a) for n, accs in sorted(MEANT_FOR.items()) for a in accs]
)
def test_what_an_accelerator_asks_for_exists_on_a_worker_type(name, accelerator):
    options = ray_resources(accelerator)
    bundle = demand(options)
    candidates = [
        node_name
        for node_name, node in worker_types(load(name)).items()
        if fits(bundle, node["resources"])
    ]
    assert candidates, f"no worker type of {name} offers {bundle} for {accelerator!r}"
    for node_name in candidates:
        node_cpus = load(name)["available_node_types"][node_name]["resources"]["CPU"]
        assert options["num_cpus"] <= node_cpus


@pytest.mark.parametrize("accelerator", ["tpu-v4-16", "tpu-v4-32", "tpu-v5litepod-16"])
def test_multi_host_tpu_types_are_refused(accelerator):
    with pytest.raises(AcceleratorError, match="multi-host"):
        ray_resources(accelerator)


@pytest.mark.parametrize("name", sorted(MEANT_FOR))
def test_workers_run_as_a_service_account_that_may_write_to_gcs(name):
    """A GCE VM without serviceAccounts gets read-only storage scope: gs:// writes would fail."""
    for node_name, node in worker_types(load(name)).items():
        (account,) = node["node_config"]["serviceAccounts"]
        assert account["email"].endswith(".iam.gserviceaccount.com"), node_name
        assert "https://www.googleapis.com/auth/cloud-platform" in account["scopes"], node_name


@pytest.mark.parametrize("name", sorted(MEANT_FOR))
def test_no_secret_in_the_config(name):
    text = (RAY_DIR / name).read_text()
    for key in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "WANDB_API_KEY", "HF_TOKEN"):
        assert not re.search(rf"{key}\s*=\s*\S", text), f"{key} set in {name}"
    assert "private_key" not in text.replace("ssh_private_key", "")


# Ray's own launcher code, offline.


def ray_prepared(config: dict) -> dict:
    """What `ray up` does to a config before it reaches GCP (commands._bootstrap_config)."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.providers import _NODE_PROVIDERS
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    provider_cls = _NODE_PROVIDERS[prepared["provider"]["type"]](prepared["provider"])
    prepared = provider_cls.fillout_available_node_types_resources(prepared)
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", sorted(MEANT_FOR))
def test_ray_launcher_accepts_the_config(name):
    from ray.autoscaler._private.gcp.config import _is_single_host_tpu, get_node_type
    from ray.autoscaler._private.gcp.node import GCPNodeType

    raw = load(name)
    prepared = ray_prepared(raw)
    head = prepared["head_node_type"]
    assert get_node_type(prepared["available_node_types"][head]["node_config"]) is (
        GCPNodeType.COMPUTE
    )
    for node_name, node in prepared["available_node_types"].items():
        if get_node_type(node["node_config"]) is GCPNodeType.TPU:
            assert _is_single_host_tpu(node["node_config"]), node_name
        # Ray fills in TPU-<type>-head itself; the config must already say the same, so what
        # the config declares and what Ray advertises cannot drift apart.
        assert node["resources"] == raw["available_node_types"][node_name]["resources"]


@pytest.mark.parametrize(
    ("name", "accelerator"), [(n, a) for n, accs in sorted(MEANT_FOR.items()) for a in accs]
)
def test_ray_autoscaler_would_start_a_node_for_the_accelerator(name, accelerator):
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
    )

    prepared = ray_prepared(load(name))
    workers = worker_types(prepared)
    scorer = functools.partial(
        _default_utilization_scorer,
        node_availability_summary=NodeAvailabilitySummary(node_availabilities={}),
    )
    bundle = demand(ray_resources(accelerator))
    to_add, unfulfilled = get_nodes_for(
        workers, {}, prepared["head_node_type"], prepared["max_workers"], [bundle], scorer
    )
    assert not unfulfilled, f"Ray's autoscaler cannot place {bundle} on {name}"
    (node_type,) = to_add
    if accelerator.startswith("tpu-"):
        assert is_tpu(workers[node_type])
    else:  # a CPU-only step never starts a TPU VM
        assert not is_tpu(workers[node_type])


def test_a_renamed_resource_fails_the_placement_check():
    """The check above is not vacuous: a config whose TPU type lost its head resource fails."""
    config = load("cluster-tpu.yaml")
    broken = copy.deepcopy(config)
    for node in worker_types(broken).values():
        node["resources"] = {
            ("TPU-v4-8" if key == "TPU-v4-8-head" else key): v
            for key, v in node["resources"].items()
        }
    bundle = demand(ray_resources("tpu-v4-8"))
    assert any(fits(bundle, n["resources"]) for n in worker_types(config).values())
    assert not any(fits(bundle, n["resources"]) for n in worker_types(broken).values())


def test_the_gcp_work_pool_example_fits_prefect_gcps_job_template():
    """deploy/gcp/cloud-run-job-variables.json (documented in deploy/README.md) is valid for
    the Cloud Run worker's own variables schema, and carries no secret values."""
    import json

    import jsonschema
    from prefect_gcp.workers.cloud_run import CloudRunWorker

    schema = CloudRunWorker.get_default_base_job_template()["variables"]
    example = json.loads((REPO / "deploy/gcp/cloud-run-job-variables.json").read_text())
    assert set(example) <= set(schema["properties"]), set(example) - set(schema["properties"])
    jsonschema.validate(example, schema)
    assert example["env"]["LMFLOWS_PREFIX"].startswith("gs://")
    assert "PREFECT_API_AUTH_STRING" not in example["env"]  # a Secret Manager reference instead
    assert set(example["prefect_api_auth_string_secret"]) <= {"secret", "version"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "timeout": 86400}, schema)  # the schema is enforced
