"""`python -m flows verify`: check committed outputs against the manifests in their commits.

A cached run only checks that each file is present with its size (and, on gs://, its
generation); `verify` reads everything: the record's binding to its folder, every file's
checksum (local sha256; on gs://, crc32c/md5 and generation from the object metadata), and
files that are not in the manifest.
"""

from __future__ import annotations

import dataclasses

from tasks.core import manifest, records, storage
from tasks.core.inventory import committed_steps


@dataclasses.dataclass
class Verdict:
    name_with_hash: str
    problems: list[str]


def verify_output(name_with_hash: str, prefix: str) -> Verdict:
    out = storage.output_dir(name_with_hash, prefix)
    path = storage.meta_path(name_with_hash, storage.COMMIT_FILE, prefix)
    try:
        content = storage.read_bytes(path)
    except FileNotFoundError:
        return Verdict(name_with_hash, ["no commit record"])
    except OSError as exc:  # a folder, a FIFO, a huge planted file
        return Verdict(name_with_hash, [f"the commit record cannot be read: {exc}"])
    try:
        ref, files = records.parse_commit(content, f"in {out}")
    except records.UnsafeRecordError as exc:
        return Verdict(name_with_hash, [str(exc)])
    problems = []
    if ref.name_with_hash != name_with_hash or ref.sub_path:
        problems.append(f"the commit record belongs to {ref.identity!r}")
    problems += manifest.problems(out, files)
    return Verdict(name_with_hash, problems)


def verify(prefix: str, names: list[str] | None = None) -> list[Verdict]:
    """Every output with a commit record under `prefix` (or just `names`, where committed)."""
    if names is None:
        names = [s.name_with_hash for s in committed_steps(prefix, check=False)]
    else:
        present = []
        for name in names:
            fs, path = storage.filesystem(storage.meta_path(name, storage.COMMIT_FILE, prefix))
            if fs.exists(path):
                present.append(name)
        names = present
    return [verify_output(name, prefix) for name in names]
