"""What staging + manifests cost at commit, against the step's own writing time.

Two outputs: 1,000 small files (4 KiB each) and one 1 GiB file. Local: the step writes into a
staging directory; the commit computes the manifest (size + sha256 of every file) and renames
the directory into place; a cached read then checks every file's size. gs:// (with
`--gcs URL`, e.g. a fake-gcs-server): the step writes objects; the manifest is one listing.

    python -m benches.commit_cost [--big-mib 1024] [--gcs http://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from benches.common import ratio_line


def _write_small(root: str, n: int = 1000, size: int = 4096) -> None:
    payload = os.urandom(size)
    for i in range(n):
        folder = os.path.join(root, f"shard-{i // 100:02d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"part-{i:04d}.bin"), "wb") as handle:
            handle.write(payload)


def _write_big(root: str, mib: int) -> None:
    block = os.urandom(1 << 20)
    with open(os.path.join(root, "big.bin"), "wb") as handle:
        for _ in range(mib):
            handle.write(block)


def local_case(label: str, write, prefix: str) -> None:
    from tasks.core import manifest, outputs

    name = f"bench/{label}-0123456789"
    attempt = outputs.begin(name, prefix)
    started = time.perf_counter()
    write(attempt.write_path)
    wrote = time.perf_counter() - started
    started = time.perf_counter()
    files = manifest.build(attempt.write_path)
    built = time.perf_counter() - started
    started = time.perf_counter()
    outputs.discard(outputs.publish(attempt))
    published = time.perf_counter() - started
    out = os.path.join(prefix, name)
    started = time.perf_counter()
    assert manifest.quick_problem(out, files) is None
    checked = time.perf_counter() - started
    print(
        f"local {label}: write {wrote:.3f} s; manifest {built:.3f} s; "
        f"publish {published * 1e3:.2f} ms; cached check {checked * 1e3:.2f} ms"
    )
    print(
        ratio_line(f"  local {label} commit vs write", built + published, wrote, "lower is better")
    )


def gcs_case(label: str, write, base: str) -> None:
    import fsspec

    from tasks.core import manifest

    local = tempfile.mkdtemp(prefix="lmflows-bench-gcs-")
    write(local)
    fs = fsspec.filesystem("gs", token="anon")
    out = f"{base}/bench/{label}-0123456789"
    started = time.perf_counter()
    fs.put(local, out.removeprefix("gs://"), recursive=True)
    wrote = time.perf_counter() - started
    shutil.rmtree(local)
    started = time.perf_counter()
    files = manifest.build(out)
    built = time.perf_counter() - started
    started = time.perf_counter()
    assert manifest.quick_problem(out, files) is None
    checked = time.perf_counter() - started
    print(
        f"gs {label}: upload {wrote:.3f} s; manifest (listing) {built:.3f} s;"
        f" cached check {checked * 1e3:.1f} ms"
    )
    print(ratio_line(f"  gs {label} manifest vs upload", built, wrote, "lower is better"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--gcs", default=None, help="emulator URL; bucket lmflows-bench")
    args = parser.parse_args()
    prefix = tempfile.mkdtemp(prefix="lmflows-bench-commit-")
    try:
        local_case("small-files", _write_small, prefix)
        local_case("one-big-file", lambda root: _write_big(root, args.big_mib), prefix)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
    if args.gcs:
        os.environ["STORAGE_EMULATOR_HOST"] = args.gcs
        import urllib.request

        request = urllib.request.Request(
            f"{args.gcs}/storage/v1/b?project=x",
            data=b'{"name": "lmflows-bench"}',
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request).close()
        except OSError:
            pass  # exists already
        gcs_case("small-files", _write_small, "gs://lmflows-bench/p")
        gcs_case(
            "one-big-file", lambda root: _write_big(root, args.big_mib), "gs://lmflows-bench/p"
        )


if __name__ == "__main__":
    main()
