"""The step machinery: identities, the @step decorator, StepRef, storage and leases."""

from tasks.core.decorator import Step, StepDefinitionError, set_force, step
from tasks.core.identity import StepNameError, compute_hash, identify
from tasks.core.lease import LeaseLostError
from tasks.core.ref import StepRef
from tasks.core.storage import PREFIX_ENV, current_prefix

__all__ = [
    "PREFIX_ENV",
    "LeaseLostError",
    "Step",
    "StepDefinitionError",
    "StepNameError",
    "StepRef",
    "compute_hash",
    "current_prefix",
    "identify",
    "set_force",
    "step",
]
