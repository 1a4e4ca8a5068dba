"""download_hf against a real HTTP server on 127.0.0.1 that speaks the hub's file API."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest

from tests.conftest import run_python

SHA = "0123456789abcdef0123456789abcdef01234567"
FILES = {"train.jsonl": b'{"text": "hello hub"}\n', "notes.md": b"# not wanted\n"}


class FakeHub(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []
    authorizations: list[str | None] = []  # each request's Authorization header

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict, head: bool = False) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _handle(self, head: bool) -> None:
        FakeHub.requests.append(self.path)
        FakeHub.authorizations.append(self.headers.get("Authorization"))
        path = self.path.split("?", 1)[0]
        if path.startswith("/api/datasets/tiny/corpus/revision/"):
            info = {
                "id": "tiny/corpus",
                "sha": SHA,
                "private": False,
                "siblings": [{"rfilename": name} for name in FILES],
            }
            return self._send(
                200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head
            )
        prefix = "/datasets/tiny/corpus/resolve/"
        if path.startswith(prefix):
            revision, name = path[len(prefix) :].split("/", 1)
            if name in FILES and revision in (SHA, "main"):
                body = FILES[name]
                etag = hashlib.sha256(body).hexdigest()
                return self._send(
                    200,
                    body,
                    {
                        "X-Repo-Commit": SHA,
                        "ETag": f'"{etag}"',
                        "Content-Type": "application/octet-stream",
                    },
                    head,
                )
        self._send(404, b"{}", {"Content-Type": "application/json"}, head)

    def do_GET(self):
        self._handle(head=False)

    def do_HEAD(self):
        self._handle(head=True)


@pytest.fixture(scope="module")
def fake_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_hf_resolves_the_commit_warns_and_records_provenance(fake_hub, tmp_path):
    prefix = tmp_path / "out"
    result = run_python(
        ["-m", "flows", "run", "tests/data/hf_experiment.py", "--prefix", str(prefix)],
        env={
            "HF_ENDPOINT": fake_hub,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "PREFECT_LOGGING_LEVEL": "INFO",
        },
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "moving revision" in result.stdout + result.stderr
    out = next(prefix.glob("raw/hf/tiny-*"))
    assert (out / "train.jsonl").read_bytes() == FILES["train.jsonl"]
    assert not (out / "notes.md").exists(), "allow_patterns must filter files"
    record = json.loads((out / ".lmflows/commit.json").read_text())
    metadata = json.loads(record["result"])["metadata"]
    assert metadata["resolved_commit"] == SHA and metadata["revision"] == "main"
    assert [f["name"] for f in metadata["files"]] == ["train.jsonl"]
    provenance = json.loads((out / ".lmflows/provenance.json").read_text())
    assert provenance["notes"]["resolved_commit"] == SHA
    assert provenance["attrs"] == {
        "dataset_id": "tiny/corpus",
        "revision": "main",
        "allow_patterns": ["*.jsonl"],
    }
