"""What a training or evaluation call asks Ray for, from one operational argument.

`accelerator` names the hardware, not Ray's vocabulary: ``"cpu"``, ``"gpu:N"`` (N GPUs on one
host) or a single-host Cloud TPU type such as ``"tpu-v4-8"``, ``"tpu-v5litepod-8"``,
``"tpu-v6e-4"``. On Ray's TPU support every TPU VM host offers ``TPU: <chips on the host>`` and
the first host of a slice offers ``TPU-<type>-head: 1``, so asking for both places one task on
one whole single-host slice. Multi-host slices need one task per host (not supported yet: the
error says so). The accelerator never enters an identity: the same model trained on a TPU and
on a GPU is the same output.
"""

from __future__ import annotations

import re
from typing import Any

# Chips on one host of each TPU generation; the number in the type counts TensorCores for
# v2-v4 and v5p (2 per chip) and chips for v5e (v5litepod) and v6e.
_TPU_CORES_PER_CHIP = {"v2": 2, "v3": 2, "v4": 2, "v5p": 2, "v5litepod": 1, "v6e": 1}
_TPU_CHIPS_PER_HOST = {"v2": 4, "v3": 4, "v4": 4, "v5p": 4, "v5litepod": 8, "v6e": 8}
_TPU = re.compile(r"tpu-(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)")
_GPU = re.compile(r"gpu(?::(\d+))?")


class AcceleratorError(ValueError):
    """An accelerator name lmflows cannot place."""


def tpu_chips(accelerator: str) -> tuple[str, int]:
    """(TPU type as Ray names it, e.g. ``v4-8``, chips on its one host)."""
    match = _TPU.fullmatch(accelerator)
    if not match:
        raise AcceleratorError(_explain(accelerator))
    generation, size = match.group(1), int(match.group(2))
    chips, remainder = divmod(size, _TPU_CORES_PER_CHIP[generation])
    if size <= 0 or remainder:
        raise AcceleratorError(f"accelerator {accelerator!r}: no such TPU slice")
    if chips > _TPU_CHIPS_PER_HOST[generation]:
        raise AcceleratorError(
            f"accelerator {accelerator!r} is a multi-host slice ({chips} chips; one host has "
            f"{_TPU_CHIPS_PER_HOST[generation]}): lmflows places one task on one host, so use "
            f"a single-host type such as tpu-{generation}-"
            f"{_TPU_CHIPS_PER_HOST[generation] * _TPU_CORES_PER_CHIP[generation]}"
        )
    return f"{generation}-{size}", chips


def ray_resources(accelerator: str, num_cpus: int | None = None) -> dict[str, Any]:
    """Ray remote options for one task on `accelerator` (``.remote(**options)`` keywords)."""
    if not isinstance(accelerator, str):
        raise AcceleratorError(_explain(accelerator))
    if accelerator == "cpu":
        return {"num_cpus": num_cpus or 1}
    gpu = _GPU.fullmatch(accelerator)
    if gpu:
        count = int(gpu.group(1) or 1)
        if count < 1:
            raise AcceleratorError(f"accelerator {accelerator!r}: need at least one GPU")
        return {"num_gpus": count, "num_cpus": num_cpus or 1}
    tpu_type, chips = tpu_chips(accelerator)
    return {
        "num_cpus": num_cpus or 1,
        "resources": {"TPU": chips, f"TPU-{tpu_type}-head": 1},
    }


def ray_options(accelerator: str = "cpu", **_: Any) -> dict[str, Any]:
    """A step's `resources=`: Ray remote options from the call's `accelerator` argument (the
    step passes every argument; the others do not change where it runs)."""
    return ray_resources(accelerator)


def check(accelerator: Any) -> None:
    """Raise AcceleratorError unless `accelerator` can be placed (used by step validation)."""
    ray_resources(accelerator)


def _explain(accelerator: Any) -> str:
    return (
        f"accelerator {accelerator!r} is not one of 'cpu', 'gpu', 'gpu:N' or a single-host "
        "TPU type like 'tpu-v4-8', 'tpu-v5litepod-8', 'tpu-v6e-4'"
    )
