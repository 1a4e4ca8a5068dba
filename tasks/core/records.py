"""Commit records: Prefect result records for StepRefs, written as JSON and read defensively.

Prefect reads a record with the serializer named *inside* the record, so a planted record that
names the pickle serializer, or a JSON decoder hook, runs code on every machine that reads the
bucket (checked on Prefect 3.9.1). `StepStorage.read_path` therefore refuses any record that is
not exactly our own serializer before Prefect sees it, and `StepRefSerializer` only ever builds
a `StepRef` from plain JSON.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, ClassVar, Literal

from prefect.filesystems import WritableFileSystem
from prefect.serializers import Serializer
from pydantic import Field

from tasks.core import lease, outputs, storage
from tasks.core.identity import validate_name
from tasks.core.manifest import quick_problem as manifest_check
from tasks.core.ref import StepRef

logger = logging.getLogger("lmflows.records")

SERIALIZER_TYPE = "lmflows-stepref"
MANIFEST_KEY = "manifest"


class StepRefSerializer(Serializer):
    """Serialises a StepRef as plain JSON; refuses to build anything else on load."""

    type: Literal["lmflows-stepref"] = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, StepRef):
            return json.dumps(obj.to_json(), sort_keys=True).encode()
        if isinstance(obj, BaseException):
            # Failure records never reach storage (see StepStorage.write_path); keep them
            # encodable so Prefect's failure handling does not log a serialisation error.
            return json.dumps({"error": type(obj).__name__, "message": str(obj)}).encode()
        raise TypeError(f"a step must return through StepRef, got {type(obj).__name__}")

    def loads(self, blob: bytes) -> Any:
        data = json.loads(blob)
        if isinstance(data, dict):
            data.pop(MANIFEST_KEY, None)  # the commit's manifest: not part of the reference
        return StepRef.from_json(data)


class UnsafeRecordError(ValueError):
    """A commit record that is not a plain lmflows JSON record: never deserialised."""


def parse_commit(content: bytes, where: str) -> tuple[StepRef, Any]:
    """Validate a commit record's bytes; its StepRef and manifest, or UnsafeRecordError."""
    try:
        record = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UnsafeRecordError(f"commit record {where} is not valid JSON ({exc})") from exc
    if not isinstance(record, dict) or set(record) != {"metadata", "result"}:
        raise UnsafeRecordError(f"commit record {where} does not have the record shape")
    metadata = record["metadata"]
    serializer = metadata.get("serializer") if isinstance(metadata, dict) else None
    if serializer != {"type": SERIALIZER_TYPE}:
        raise UnsafeRecordError(
            f"commit record {where} names serializer {serializer!r}; only "
            f"{{'type': {SERIALIZER_TYPE!r}}} is ever read"
        )
    if metadata.get("storage_block_id") is not None:
        raise UnsafeRecordError(f"commit record {where} points at a storage block")
    result = record["result"]
    if not isinstance(result, str):
        raise UnsafeRecordError(f"commit record {where} has a non-string result")
    try:
        data = json.loads(result)
        manifest = data.pop(MANIFEST_KEY, None) if isinstance(data, dict) else None
        return StepRef.from_json(data), manifest
    except (ValueError, RecursionError) as exc:
        raise UnsafeRecordError(f"commit record {where}: {exc}") from exc


def check_commit(content: bytes, name_with_hash: str, prefix: str) -> StepRef:
    """The StepRef of the record `content` found in the output `name_with_hash`, if the
    record belongs there and the output is intact; else UnsafeRecordError naming the folder.

    A record copied from another output, one whose reference escapes its folder, and an output
    whose files no longer match the manifest (deleted, truncated; on gs:// also overwritten)
    are all misses: the step is recomputed, never served."""
    out = storage.output_dir(name_with_hash, prefix)
    ref, manifest = parse_commit(content, f"in {out}")
    if ref.name_with_hash != name_with_hash or ref.sub_path:
        raise UnsafeRecordError(
            f"commit record in {out} belongs to {ref.identity!r}, not to this output"
        )
    try:
        validate_name(ref.name)
    except ValueError as exc:
        raise UnsafeRecordError(f"commit record in {out}: {exc}") from None
    try:
        outputs.refuse_symlinked_output(name_with_hash, prefix)  # only local disk has links
    except outputs.OutputPathError as exc:
        raise UnsafeRecordError(str(exc)) from None
    problem = manifest_check(out, manifest)
    if problem is not None:
        raise UnsafeRecordError(f"output {out} is damaged: {problem}")
    return ref


# Records validated in the last few seconds, by path. A cached step's record is read three
# times in a row (our double-check, Prefect's exists, Prefect's read); remembering the
# validated bytes briefly saves two reads. Records are immutable once committed; `forget`
# drops an entry when lmflows itself removes a record (--force).
_VALIDATED: dict[str, tuple[bytes, float]] = {}
_VALIDATED_SECONDS = 5.0


def _remember(path: str, content: bytes) -> None:
    if len(_VALIDATED) > 4096:
        _VALIDATED.clear()
    _VALIDATED[path] = (content, time.monotonic())


def _recalled(path: str) -> bytes | None:
    hit = _VALIDATED.get(path)
    if hit is None or time.monotonic() - hit[1] > _VALIDATED_SECONDS:
        return None
    return hit[0]


def forget(path: str) -> None:
    _VALIDATED.pop(path, None)


def read_commit(
    name_with_hash: str, prefix: str | None = None, remember: bool = True
) -> StepRef | None:
    """The committed StepRef of an output, None if there is none; warns on a bad record.
    `remember=False`: a look that is not followed by Prefect's reads of the same record (a
    consumer checking its inputs), so nothing is kept for them."""
    path = storage.meta_path(name_with_hash, storage.COMMIT_FILE, prefix)
    try:
        content = storage.read_bytes(path)
    except FileNotFoundError:
        forget(path)
        return None
    except OSError as exc:  # a directory, a FIFO, an output folder replaced by a file ...
        warn_bad_record(UnsafeRecordError(f"commit record {path} cannot be read: {exc}"))
        return None
    try:
        ref = check_commit(content, name_with_hash, prefix or storage.current_prefix())
    except UnsafeRecordError as exc:
        warn_bad_record(exc)
        return None
    if remember:
        _remember(path, content)
    return ref


_WARNED: dict[str, float] = {}


def warn_bad_record(exc: Exception) -> None:
    """Say once (per process, per minute) why a record is not trusted: one cached check
    reads a record two or three times."""
    message = f"{exc}; treating the step as not committed and recomputing it"
    now = time.monotonic()
    if now - _WARNED.get(message, -1e9) < 60:
        return
    if len(_WARNED) > 1024:
        _WARNED.clear()
    _WARNED[message] = now
    try:
        from prefect.logging import get_run_logger

        get_run_logger().warning(message)
    except Exception:
        logger.warning(message)


def record_bytes(ref: StepRef, manifest: Any) -> bytes:
    """The commit record of `ref`: Prefect's own result-record format (so Prefect reads it as
    a cache hit), our serializer, a storage key relative to the prefix (a copied bucket holds
    no trace of where it came from), and the output's manifest inside the reference."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata

    record = ResultRecord(
        result=ref,
        metadata=ResultRecordMetadata(
            serializer=StepRefSerializer(),
            expiration=None,
            storage_key=storage.commit_key(ref.name_with_hash),
            storage_block_id=None,
        ),
    )
    data = json.loads(record.serialize())
    result = json.loads(data["result"])
    result[MANIFEST_KEY] = manifest
    data["result"] = json.dumps(result, sort_keys=True)
    return json.dumps(data, separators=(",", ":")).encode()


# Outputs this process committed in the step body and whose record Prefect is about to write
# again through StepStorage (a no-op then).
_COMMITTED: set[tuple[str, str]] = set()


def commit(attempt: outputs.Attempt, ref: StepRef) -> None:
    """Write the commit record and publish the attempt, fenced, inside the step body.

    Done here rather than when Prefect's transaction writes the record: Prefect logs a failed
    transaction commit and still finishes the task `Completed`, which would hand downstream
    steps an output that does not exist (disk full, a lost lease, a cross-device rename).
    Raising here fails the task instead."""
    root, name_with_hash = attempt.prefix, attempt.name_with_hash
    content = record_bytes(ref, attempt.manifest)
    path = storage.meta_path(name_with_hash, storage.COMMIT_FILE, root)
    forget(path)
    replaced = None
    with lease.fenced(storage.lease_path(name_with_hash, root)):
        if attempt.staged:
            inside = storage.join(attempt.write_path, storage.COMMIT_FILE)
            storage.refuse_links_below(inside, root)  # a link planted or made by the step
            storage.write_atomic(inside, content)
            replaced = outputs.publish(attempt)
        else:
            storage.write_atomic(path, content)
    _COMMITTED.add((root, name_with_hash))
    outputs.discard(replaced)
    outputs.clear_failure(name_with_hash, root)


class StepStorage(WritableFileSystem):
    """Prefect result storage rooted at the current prefix, resolved when used.

    Resolving at use time (not at decoration time) is what lets `--prefix`, a Ray worker's
    environment or a copied bucket decide where records live. Only commit records are ever
    written: Prefect's failure records (random UUID keys at the storage root) are dropped,
    because the step writes its own `failed.json` beside its lease; and the commit record
    itself is written by the step body (`commit`), so Prefect's write of it is a no-op.
    """

    _block_type_name: ClassVar[str] = "lmflows step storage"
    _block_type_slug: ClassVar[str] = "lmflows-step-storage"

    prefix: str | None = Field(default=None, description="Fixed prefix; None: LMFLOWS_PREFIX")

    def _root(self) -> str:
        return storage.normalize_prefix(self.prefix) if self.prefix else storage.current_prefix()

    def _resolve_path(self, key: str) -> str:
        # Prefect keys its in-process record cache by this; include the prefix so that two
        # prefixes in one process never share cached records.
        return storage.join(self._root(), key)

    def _locate(self, key: str) -> tuple[str, str]:
        """(absolute path, key relative to the root); Prefect passes either form."""
        root = self._root()
        if key.startswith(root + "/"):
            return key, key[len(root) + 1 :]
        return storage.join(root, key), key

    def _read(self, key: str) -> bytes:
        path, relative = self._locate(key)
        remembered = _recalled(path)
        if remembered is not None:
            return remembered
        name_with_hash = storage.name_with_hash_of_key(relative)
        if name_with_hash is None:
            raise FileNotFoundError(path)  # lmflows writes no other records
        try:
            content = storage.read_bytes(path)  # FileNotFoundError: Prefect treats it as a miss
        except FileNotFoundError:
            raise
        except OSError as exc:
            warn_bad_record(UnsafeRecordError(f"commit record {path} cannot be read: {exc}"))
            raise FileNotFoundError(path) from exc
        try:
            check_commit(content, name_with_hash, self._root())
        except UnsafeRecordError as exc:
            warn_bad_record(exc)
            raise
        return content

    def _write(self, key: str, content: bytes) -> str:
        path, relative = self._locate(key)
        name_with_hash = storage.name_with_hash_of_key(relative)
        if name_with_hash is None:
            return path
        key = (self._root(), name_with_hash)
        if key not in _COMMITTED:
            raise lease.LeaseLostError(f"{name_with_hash} was not committed by this process")
        _COMMITTED.discard(key)  # the step body committed it already (see `commit`)
        return path

    async def aread_path(self, path: str) -> bytes:
        return self._read(path)

    def read_path(self, path: str, **_: Any) -> bytes:  # type: ignore[override]
        return self._read(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self._write(path, content)

    def write_path(self, path: str, content: bytes, **_: Any) -> str:  # type: ignore[override]
        return self._write(path, content)
