"""The step machinery: identities, the @step decorator, StepRef, storage and leases.

Layout under the prefix [storage]; how each kind of prefix does it [stores]:

    {name}-{hash}/                          the committed output; .lmflows/commit.json last
    .lmflows/state/{name}-{hash}/           lease.json (+ lease.guard locally), failed.json,
                                            attempts.jsonl (resumable steps)
    .lmflows/staging/{name}-{hash}/{id}/    local disk: where one attempt writes (`resume/`
                                            for a resumable step), renamed into place at commit
    .lmflows/trash/                         replaced outputs, being deleted

A step call's life, one line per stage (module in brackets):

1. bind      the call's arguments to the function's parameters, defaults applied [decorator]
2. validate  the step's own `validate=` checks; a StepRef in an operational parameter, a
             hash-attribute string under the prefix and non-JSON values are refused [definition,
             identity]. `plan` stops here and records the StepRef.
3. identify  sha256 of {name, attrs, deps} -> NAME-HASH; once in the caller, once per task run
             (shared by the run name, the cache key and the body) [identity, definition]
4. key       Prefect's cache key is `NAME-HASH/.lmflows/commit.json` under the prefix [policy]
5. lease     a committed record is served as `Cached` with no lease write; otherwise take the
             lease, then check for the record again (double-checked locking) [policy, lease]
6. begin     the lease holder prepares the attempt's place: on local disk a fresh staging
             folder (dead attempts' folders deleted; a resumable step keeps `resume/`), on
             gs:// the output folder itself, emptied [outputs, stores]
7. run       the function, with StepRefs replaced by paths and `output_path` set to that
             place; in a worker process of its own for `isolate=True`; stopped when the lease
             is lost [decorator, isolation]
8. provenance  attributes, deps, code version, host and run ids, in the attempt [provenance]
9. commit    fenced: a holder that lost its lease fails; the manifest and the JSON record are
             written last, then (local disk) the staging folder is renamed into the output's
             place, swapped with an older version under `--force` [records, outputs, stores]

`adopt(path, name=...)` [adopt] skips 6-8: an existing folder is committed as
`adopted/{name}-{hash}`, keyed by the fingerprint of its files' content, and read in place.
"""

from tasks.core.adopt import AdoptedRef, AdoptError, adopt
from tasks.core.decorator import Step, StepDefinitionError, set_force, step
from tasks.core.definition import StepDefinition
from tasks.core.identity import StepArgumentError, StepNameError, compute_hash, identify
from tasks.core.lease import LeaseLostError
from tasks.core.ref import StepRef
from tasks.core.schedule import PendingStepRef, StepFailedError, flow
from tasks.core.storage import PREFIX_ENV, current_prefix

__all__ = [
    "AdoptError",
    "AdoptedRef",
    "PREFIX_ENV",
    "LeaseLostError",
    "Step",
    "StepArgumentError",
    "StepDefinition",
    "StepDefinitionError",
    "StepNameError",
    "StepRef",
    "PendingStepRef",
    "StepFailedError",
    "adopt",
    "flow",
    "compute_hash",
    "current_prefix",
    "identify",
    "set_force",
    "step",
]
