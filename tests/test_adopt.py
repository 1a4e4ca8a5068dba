"""`adopt`: an existing folder as a committed output, read in place, keyed by its content.

Local disk and gs:// (fake-gcs-server). What is promised: the consumer receives the adopted
folder's own path; the same files elsewhere give the same identities downstream; a changed
file is refused in one line naming it; bad folders are one line before anything runs; the
content is read once per location (later runs re-read only files whose size, inode or ctime
changed)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import fsspec
import prefect
import pytest

from benches.common import fake_gcs
from tasks.core import (
    AdoptedRef,
    AdoptError,
    StepRef,
    adopt,
    planning,
    set_force,
    storage,
    stores,
)
from tasks.core.adopt import _MEMO, fingerprint_of
from tests.conftest import calls, run_python
from tests.helpers.adopted import adopt_and_read, read_adopted
from tests.test_cli import flows_cli_many

# tests/test_pinned.py pins these for the fixture's two files
FIXTURE_FINGERPRINT = "ec46de33e29c35f79196694ac9cefa1925a4f6a01984d8fb8b93b662406ecd57"
FIXTURE_IDENTITY = "adopted/fixture-1343fbb8d2"
EXPERIMENT = "tests/data/adopt_experiment.py"


def make_folder(root: Path) -> Path:
    """The fixture's content: a.txt and sub/b.bin."""
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.bin").write_text("world\n")
    return root


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# --- local disk ---------------------------------------------------------------------------


def test_an_adopted_folder_is_read_in_place_and_keys_downstream_by_content(
    prefix, tmp_path, call_log
):
    first = make_folder(tmp_path / "marin" / "cache-a")
    result = adopt_and_read(str(first))
    source, whole, inside = result["source"], result["whole"], result["inside"]
    assert source.name_with_hash == FIXTURE_IDENTITY
    assert source.metadata["fingerprint"] == FIXTURE_FINGERPRINT
    # the consumer got the folder itself (and a folder inside it by .cd), never a copy
    assert whole.metadata == {"data": str(first), "text": "hello\n"}
    assert inside.metadata == {"data": str(first / "sub"), "text": "world\n"}
    copied = [p for p in files_under(Path(prefix)) if p.endswith(("a.txt", "b.bin"))]
    assert copied == []
    # under the prefix: an ordinary committed output holding the file list
    out = Path(prefix) / FIXTURE_IDENTITY
    recorded = json.loads((out / "adopted.json").read_text())
    assert recorded["fingerprint"] == FIXTURE_FINGERPRINT
    assert set(recorded["files"]) == {"a.txt", "sub/b.bin"}
    provenance = json.loads((out / ".lmflows" / "provenance.json").read_text())
    assert provenance["notes"]["adopted_from"] == str(first)
    assert calls(call_log) == ["read-adopted", "read-adopted"]

    # the same files at another path: the same identities, so the consumers are cached
    second = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, second)
    again = adopt_and_read(str(second))
    assert again["source"].name_with_hash == FIXTURE_IDENTITY
    assert again["source"].path == str(second)
    assert [again["whole"], again["inside"]] == [whole, inside]
    assert calls(call_log) == ["read-adopted", "read-adopted"], "served from the cache"


@prefect.flow
def plain_adopt_and_read(path: str) -> list:
    """A plain Prefect flow: calls run to their end; a committed one is served `Cached`."""
    return [read_adopted(adopt(path, name="fixture"), return_state=True) for _ in range(2)]


def test_a_plain_prefect_flow_reads_an_adopted_folder_and_then_serves_it_cached(
    prefix, tmp_path, call_log
):
    folder = make_folder(tmp_path / "cache")
    first, second = plain_adopt_and_read(str(folder))
    assert (first.name, second.name) == ("Completed", "Cached")
    assert first.result().metadata == {"data": str(folder), "text": "hello\n"}
    again = plain_adopt_and_read(str(folder))
    assert [state.name for state in again] == ["Cached", "Cached"]
    assert calls(call_log) == ["read-adopted"]


def test_other_content_or_another_name_is_another_identity(prefix, tmp_path):
    folder = make_folder(tmp_path / "a")
    other = make_folder(tmp_path / "b")
    (other / "a.txt").write_text("HELLO\n")
    with planning.planning() as plan:
        refs = [adopt(str(folder), name="fixture"), adopt(str(other), name="fixture")]
        renamed = adopt(str(folder), name="renamed")
    assert refs[0].name_with_hash == FIXTURE_IDENTITY
    assert refs[1].hash != refs[0].hash
    assert renamed.name_with_hash.startswith("adopted/renamed-")
    assert [s.task_name for s in plan.steps.values()] == ["adopt"] * 3
    assert not Path(prefix).exists(), "planning writes nothing"


@pytest.mark.parametrize(
    "change, named",
    [
        ("same size", "file a.txt has other content (same size)"),
        ("grown", "file a.txt has 12 bytes, 6 when adopted"),
        ("removed", "file a.txt is missing"),
        ("added", "file extra.txt is new"),
    ],
)
def test_a_changed_file_is_refused_naming_it(prefix, tmp_path, change, named):
    folder = make_folder(tmp_path / "cache")
    adopt(str(folder), name="fixture")
    target = folder / "a.txt"
    if change == "same size":
        target.write_text("HELLO\n")
    elif change == "grown":
        target.write_text("hello\nhello\n")
    elif change == "removed":
        target.unlink()
    else:
        (folder / "extra.txt").write_text("x")
    with pytest.raises(AdoptError) as caught:
        adopt(str(folder), name="fixture")
    message = str(caught.value)
    assert "\n" not in message
    assert f"the folder changed since it was adopted as {FIXTURE_IDENTITY}: {named}" in message
    # the way forward is in the line: pin the new content's fingerprint
    new = message.rsplit("fingerprint=", 1)[1].strip("'")
    accepted = adopt(str(folder), name="fixture", fingerprint=new)
    assert accepted.metadata["fingerprint"] == new != FIXTURE_FINGERPRINT
    assert accepted.hash != FIXTURE_IDENTITY.rsplit("-", 1)[1]
    assert adopt(str(folder), name="fixture") == accepted, "the new content is now the record"


def test_a_pinned_fingerprint_is_checked(prefix, tmp_path):
    folder = make_folder(tmp_path / "cache")
    assert (
        adopt(str(folder), name="fixture", fingerprint=FIXTURE_FINGERPRINT).hash
        == (FIXTURE_IDENTITY.rsplit("-", 1)[1])
    )
    wrong = "0" * 64
    with pytest.raises(AdoptError, match=f"has fingerprint {FIXTURE_FINGERPRINT}, not the "):
        adopt(str(folder), name="fixture", fingerprint=wrong)
    with pytest.raises(AdoptError, match="is not 64 hex digits"):
        adopt(str(folder), name="fixture", fingerprint="abc")


def test_content_is_read_once_and_then_only_where_a_file_changed(prefix, tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "cache")
    (folder / "c.txt").write_text("third\n")
    read: list[str] = []
    real_digest = stores.LocalStore.digest

    def counting(self, url):
        read.append(os.path.relpath(url, folder))
        return real_digest(self, url)

    monkeypatch.setattr(stores.LocalStore, "digest", counting)
    first = adopt(str(folder), name="fixture")
    assert sorted(read) == ["a.txt", "c.txt", "sub/b.bin"]
    read.clear()
    _MEMO.clear()  # as in a new process: only the record under the prefix is known
    assert adopt(str(folder), name="fixture") == first
    assert read == [], "an unchanged folder is listed, not read"
    os.utime(folder / "c.txt")  # a touch: its ctime changes, so it is read again (unchanged)
    _MEMO.clear()
    assert adopt(str(folder), name="fixture") == first
    assert read == ["c.txt"]
    read.clear()
    set_force(["adopted/fixture"])  # --force 'adopted/fixture': every file read again
    try:
        assert adopt(str(folder), name="fixture") == first
    finally:
        set_force([])
    assert sorted(read) == ["a.txt", "c.txt", "sub/b.bin"]


def test_bad_folders_are_one_line(prefix, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    real = make_folder(tmp_path / "real")
    linked_folder = tmp_path / "linked"
    linked_folder.symlink_to(real)
    with_link = make_folder(tmp_path / "with-link")
    (with_link / "sub" / "alias").symlink_to(with_link / "a.txt")
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    cases = {
        str(tmp_path / "missing"): "no such folder",
        str(empty): "the folder holds no files",
        str(linked_folder): "the folder is a symbolic link",
        str(with_link): "sub/alias is a symbolic link",
        str(a_file): "it is a file, not a folder",
        os.path.join(prefix, "inside"): "is under the output prefix",
        str(Path(prefix).parent): "is inside this folder",
    }
    Path(prefix, "inside").mkdir(parents=True)
    Path(prefix, "inside", "x").write_text("x")
    for path, expected in cases.items():
        with pytest.raises(AdoptError) as caught:
            adopt(path, name="fixture")
        assert expected in str(caught.value) and "\n" not in str(caught.value), path
    with pytest.raises(ValueError, match="has characters 'X'"):
        adopt(str(real), name="X")


def test_the_command_line_plans_runs_and_shows_an_adopted_folder(tmp_path):
    """Through `python -m flows`: plan (nothing written, the row's path is the folder),
    run, status, show; a missing folder and a changed file stop `run` in one line before any
    step runs. Read-only and refused commands share a process (tests/helpers/cli_many.py)."""
    out = tmp_path / "out"
    folder = make_folder(tmp_path / "cache")
    common = ["--prefix", str(out), "--param", f"path={folder}"]
    missing = ["--prefix", str(out), "--param", "path=/no/such"]
    plan, refused = flows_cli_many(["plan", EXPERIMENT, *common], ["run", EXPERIMENT, *missing])
    assert plan.returncode == 0, plan.stderr
    row = next(ln for ln in plan.stdout.splitlines() if ln.startswith("adopted/"))
    assert row.split() == [FIXTURE_IDENTITY, "missing", str(folder)]
    assert "3 steps (3 missing)" in plan.stdout
    assert refused.returncode == 2
    assert refused.stderr.strip() == "lmflows: error: adopt /no/such: no such folder"
    assert not out.exists(), "plan writes nothing; a refused run runs nothing"

    ran = run_python(["-m", "flows", "run", EXPERIMENT, *common])
    assert ran.returncode == 0, ran.stderr[-3000:]
    before = files_under(out)
    (folder / "sub" / "b.bin").write_text("WORLD\n")
    status, show, changed = flows_cli_many(
        ["status", "--prefix", str(out)],
        ["show", FIXTURE_IDENTITY, "--prefix", str(out)],
        ["run", EXPERIMENT, *common],
    )
    assert "3 committed steps" in status.stdout and FIXTURE_IDENTITY in status.stdout
    shown = json.loads(show.stdout)
    assert shown["metadata"]["fingerprint"] == FIXTURE_FINGERPRINT
    assert shown["provenance"]["notes"]["adopted_from"] == str(folder)
    assert changed.returncode == 2
    new = changed.stderr.rsplit("fingerprint=", 1)[1].strip()
    assert changed.stderr.strip().splitlines() == [
        f"lmflows: error: adopt {folder}: the folder changed since it was adopted as "
        f"{FIXTURE_IDENTITY}: file sub/b.bin has other content (same size); put it back, or "
        f"adopt the new content with fingerprint={new}"
    ]
    assert files_under(out) == before, "nothing ran"


# --- gs:// --------------------------------------------------------------------------------

BUCKET = "lmflows-adopt"


@pytest.fixture(scope="module")
def emulator():
    with fake_gcs(BUCKET, set_env=False) as url:
        yield url


@pytest.fixture
def gs(emulator, monkeypatch, request):
    """A gs:// prefix of its own and the bucket's filesystem."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setenv("LMFLOWS_PREFIX", f"gs://{BUCKET}/{request.node.name}/lm")
    fs = fsspec.filesystem("gs")
    fs.invalidate_cache()
    return fs


GS_FIXTURE_FILES = {
    "a.txt": {"bytes": 6, "crc32c": "NT3Yvg==", "md5": "sZRqySSS0jR8YjW00mERhA=="},
    "sub/b.bin": {"bytes": 6, "crc32c": "1K1zcw==", "md5": "WReFt5RgHiErJg4lklY2/Q=="},
}


def put_fixture(fs, base: str) -> str:
    fs.pipe_file(f"{base}/a.txt", b"hello\n")
    fs.pipe_file(f"{base}/sub/b.bin", b"world\n")
    fs.invalidate_cache()
    return f"gs://{base}"


def test_on_gs_the_digests_come_from_the_listing_and_two_buckets_agree(gs, request, call_log):
    root = f"{BUCKET}/{request.node.name}"
    first = put_fixture(gs, f"{root}/marin/tokenized/cache-a")
    result = adopt_and_read(first)
    source = result["source"]
    assert isinstance(source, AdoptedRef) and source.path == first
    assert source.metadata["fingerprint"] == fingerprint_of(GS_FIXTURE_FILES)
    assert result["whole"].metadata == {"data": first, "text": "hello\n"}
    assert result["inside"].metadata == {"data": f"{first}/sub", "text": "world\n"}
    # a copy elsewhere (new generations, same content): the same identities, cached consumers
    gs.copy(f"{root}/marin/tokenized/cache-a", f"{root}/mirror/cache-a", recursive=True)
    gs.invalidate_cache()
    again = adopt_and_read(f"gs://{root}/mirror/cache-a")
    assert again["source"].name_with_hash == source.name_with_hash
    assert [again["whole"], again["inside"]] == [result["whole"], result["inside"]]
    assert calls(call_log) == ["read-adopted", "read-adopted"]
    # no object was copied under the prefix: the record, provenance and file list only
    out = storage.output_dir(source.name_with_hash).removeprefix("gs://")
    assert sorted(p.rsplit("/", 1)[1] for p in gs.find(out)) == [
        "adopted.json",
        "commit.json",
        "provenance.json",
    ]


def test_on_gs_a_rewritten_object_is_refused_and_a_missing_folder_is_one_line(gs, request):
    root = f"{BUCKET}/{request.node.name}"
    location = put_fixture(gs, f"{root}/cache")
    ref = adopt(location, name="fixture")
    gs.pipe_file(f"{root}/cache/sub/b.bin", b"WORLD\n")  # same size, other bytes
    gs.invalidate_cache()
    with pytest.raises(AdoptError, match="file sub/b.bin has other content"):
        adopt(location, name="fixture")
    gs.pipe_file(f"{root}/cache/sub/b.bin", b"world\n")  # put back: a new generation, same md5
    gs.invalidate_cache()
    assert adopt(location, name="fixture") == ref
    with pytest.raises(AdoptError, match="no such folder"):
        adopt(f"gs://{root}/nothing-here", name="fixture")


def test_a_step_ref_is_not_a_path():
    ref = StepRef("tokenized/kjv", "7ec78c5661")
    with pytest.raises(TypeError, match=r"use ref\.cd\('train'\)"):
        ref / "train"  # noqa: B018  (Marin's spelling)
    assert ref.cd("train").identity == "tokenized/kjv-7ec78c5661/train"
