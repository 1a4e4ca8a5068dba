"""StepRef: the small JSON value a step call returns and the way steps depend on each other."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from tasks.core import storage
from tasks.core.walk import register_special

_HASH = re.compile(r"[0-9a-f]{10}")


def _safe_relative(path: str) -> bool:
    """A non-empty relative path with no '.', '..' or empty segment: it stays below its base."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


@register_special
@dataclasses.dataclass(frozen=True, eq=False)
class StepRef:
    """A reference to a step's committed output.

    It stores the identity and a sub-path, never an absolute path: `.path` is resolved against
    the current prefix when read, so a copied bucket or another region serves the same refs.
    """

    name: str
    hash: str
    sub_path: str = ""
    metadata: Any = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def __eq__(self, other: object) -> bool:
        """Equal when they name the same output and sub-path, whatever their kind (a pending
        or adopted reference equals the plain one); metadata is not compared."""
        if not isinstance(other, StepRef):
            return NotImplemented
        return (self.name, self.hash, self.sub_path) == (other.name, other.hash, other.sub_path)

    def __hash__(self) -> int:
        return hash((self.name, self.hash, self.sub_path))

    @property
    def name_with_hash(self) -> str:
        return f"{self.name}-{self.hash}"

    @property
    def identity(self) -> str:
        """How this reference enters a consumer's hash: ``NAME-HASH`` or ``NAME-HASH/sub``."""
        if self.sub_path:
            return f"{self.name_with_hash}/{self.sub_path}"
        return self.name_with_hash

    @property
    def path(self) -> str:
        """The absolute location under the current prefix (``LMFLOWS_PREFIX``)."""
        return storage.join(storage.current_prefix(), self.identity)

    def cd(self, sub_path: str) -> StepRef:
        """A reference to a path inside this output that keeps the dependency."""
        parts = [p for p in sub_path.strip("/").split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"cd({sub_path!r}): need a relative path without '.' or '..'")
        joined = "/".join(parts)
        if self.sub_path:
            joined = f"{self.sub_path}/{joined}"
        return dataclasses.replace(self, sub_path=joined, metadata={})

    def __truediv__(self, other: object) -> StepRef:
        """Marin's `step / "sub"` spelled here: refused with the spelling that works."""
        raise TypeError(
            f"{self!r} / {other!r}: a StepRef is not a path; use ref.cd({str(other)!r}) for a "
            "path inside this output that keeps the dependency"
        )

    def wait(self) -> StepRef:
        """This reference once its step committed: a StepRef from a finished call already
        is (a `PendingStepRef` from a concurrent flow waits here)."""
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hash": self.hash,
            "sub_path": self.sub_path,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, data: Any) -> StepRef:
        """Build a StepRef from its JSON form, refusing anything else (records are untrusted)."""
        if not isinstance(data, dict) or set(data) - {"name", "hash", "sub_path", "metadata"}:
            raise ValueError(f"not a StepRef record: {str(data)[:200]!r}")
        name, hash_, sub = data.get("name"), data.get("hash"), data.get("sub_path", "")
        if not all(isinstance(v, str) for v in (name, hash_, sub)):
            raise ValueError("StepRef fields name/hash/sub_path must be strings")
        if not _HASH.fullmatch(hash_):
            raise ValueError(f"StepRef hash {hash_[:40]!r} is not 10 hex digits")
        for label, value in (("name", name), ("sub_path", sub)):
            if (value or label == "name") and not _safe_relative(value):
                raise ValueError(
                    f"StepRef {label} {value[:200]!r} is not a safe relative path (it would "
                    "point outside its output)"
                )
        return cls(name=name, hash=hash_, sub_path=sub, metadata=data.get("metadata") or {})

    def __repr__(self) -> str:
        return f"StepRef({self.identity!r})"
