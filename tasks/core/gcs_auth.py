"""Check, within seconds, that a gs:// prefix can be used, before any work starts.

Without credentials, gcsfs and google-auth look for them in several places and tensorstore
(levanter's checkpoints and caches) then waits on the GCE metadata server: a run without
credentials hung for minutes in its first tensorstore write instead of failing. So the
command line calls `ensure_gcs_access(prefix)` first; it raises `GcsAccessError` with one
line naming the bucket and what is wrong.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
import uuid
from typing import Any

CREDENTIALS_SECONDS = 6.0  # google.auth.default(), including its GCE metadata probe
REQUEST_SECONDS = 5.0  # each probe request of the bucket
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
GCS_API = "https://storage.googleapis.com"
HOW_TO_LOG_IN = (
    "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a "
    "service-account key file"
)


class GcsAccessError(ValueError):
    """A gs:// prefix that cannot be used: no credentials, no permission, no bucket."""


def bucket_of(prefix: str) -> str:
    bucket = prefix.removeprefix("gs://").split("/", 1)[0]
    if not bucket:
        raise GcsAccessError(f"prefix {prefix!r} names no bucket")
    return bucket


def tensorstore_follows_emulator() -> str | None:
    """When STORAGE_EMULATOR_HOST names a GCS emulator, point tensorstore at it too and
    return its URL; else None (and nothing changes).

    gcsfs and google-cloud-storage follow STORAGE_EMULATOR_HOST; tensorstore (levanter's
    checkpoints and tokenized caches) does not: it needs TENSORSTORE_GCS_HTTP_URL and a token,
    and without the token it looks for real credentials and then waits, silently and for
    minutes, on the GCE metadata server. Both are set unless already set. Cheap (no network):
    steps that use tensorstore call it too, so a worker process is covered."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not emulator:
        return None
    base = emulator.rstrip("/") if "://" in emulator else f"http://{emulator.rstrip('/')}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", base)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "anon")
    return base


def ensure_gcs_access(prefix: str, write: bool = True) -> None:
    """Raise GcsAccessError unless `prefix` (gs://BUCKET/...) can be listed (and, with
    `write`, written and deleted in); no-op for any other prefix. Bounded: about 15 s at
    worst. Read-only commands (`plan`, `status`, `show`, `explain`, `verify`) pass
    `write=False`: they promise to write nothing, and read-only users may run them."""
    if not prefix.startswith("gs://"):
        return
    bucket = bucket_of(prefix)
    base = tensorstore_follows_emulator()
    if base:
        import requests

        _probe(prefix, bucket, requests.Session(), base, write)
        return
    session = _authorized_session(bucket)
    _probe(prefix, bucket, session, GCS_API, write)


def _authorized_session(bucket: str) -> Any:
    """A requests session with Application Default Credentials, found within
    CREDENTIALS_SECONDS (google.auth.default() probes the GCE metadata server with retries; it
    runs in a daemon thread so a probe that does not answer cannot hold us)."""
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import AuthorizedSession

    found: dict[str, Any] = {}

    def look() -> None:
        try:
            found["credentials"] = google.auth.default(scopes=[SCOPE])[0]
        except Exception as exc:  # reported below
            found["error"] = exc

    thread = threading.Thread(target=look, name="lmflows-gcs-credentials", daemon=True)
    thread.start()
    thread.join(CREDENTIALS_SECONDS)
    if "credentials" in found:
        return AuthorizedSession(found["credentials"])
    if "error" in found:
        error = found["error"]
        if isinstance(error, google.auth.exceptions.DefaultCredentialsError):
            problem = _one_line(error)
            variable = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            if variable:
                problem = (
                    f"GOOGLE_APPLICATION_CREDENTIALS={variable} is not a usable credentials "
                    f"file ({problem})"
                )
        else:
            problem = f"looking for credentials failed ({_one_line(error)})"
    else:
        problem = (
            "none found (no GOOGLE_APPLICATION_CREDENTIALS, no gcloud application-default "
            f"login, and no GCE metadata server answered within {CREDENTIALS_SECONDS:g} s)"
        )
    raise GcsAccessError(f"gs://{bucket}: no Google Cloud credentials: {problem}; {HOW_TO_LOG_IN}")


def _probe(prefix: str, bucket: str, session: Any, base: str, write: bool = True) -> None:
    """List the bucket, then (`write`) write and delete a small object under
    `{prefix}/.lmflows/`."""
    import requests

    quoted = urllib.parse.quote(bucket, safe="")
    folder = prefix.removeprefix("gs://").split("/", 1)[1].strip("/") if "/" in prefix[5:] else ""
    name = "/".join(filter(None, [folder, ".lmflows", f"access-check-{uuid.uuid4().hex}"]))
    where = f"gs://{bucket}"
    try:
        _check(
            session.get(
                f"{base}/storage/v1/b/{quoted}/o",
                params={"maxResults": 1, "prefix": folder},
                timeout=REQUEST_SECONDS,
            ),
            where,
            "list",
        )
        if not write:
            return
        _check(
            session.post(
                f"{base}/upload/storage/v1/b/{quoted}/o",
                params={"uploadType": "media", "name": name},
                data=b"lmflows access check\n",
                headers={"Content-Type": "text/plain"},
                timeout=REQUEST_SECONDS,
            ),
            where,
            f"write {name} in",
        )
        _check(
            session.delete(
                f"{base}/storage/v1/b/{quoted}/o/{urllib.parse.quote(name, safe='')}",
                timeout=REQUEST_SECONDS,
            ),
            where,
            f"delete {name} in",
        )
    except requests.RequestException as exc:
        raise GcsAccessError(
            f"{where}: cannot reach Cloud Storage at {base}: {_one_line(exc)}"
        ) from None
    except Exception as exc:
        if isinstance(exc, GcsAccessError):
            raise
        # google.auth's RefreshError: the credentials exist but no token could be had
        raise GcsAccessError(
            f"{where}: the credentials did not work ({_one_line(exc)}); {HOW_TO_LOG_IN}"
        ) from None


def _check(response: Any, where: str, action: str) -> None:
    status = response.status_code
    if status < 300:
        return
    detail = _message(response)
    if status == 404:
        raise GcsAccessError(f"{where}: the bucket does not exist (or is not visible): {detail}")
    if status == 401:
        raise GcsAccessError(f"{where}: the credentials were refused ({detail}); {HOW_TO_LOG_IN}")
    if status == 403:
        raise GcsAccessError(
            f"{where}: permission denied: cannot {action} the bucket ({detail}); lmflows needs "
            "to list, read, write and delete objects (e.g. roles/storage.objectAdmin)"
        )
    raise GcsAccessError(f"{where}: cannot {action} the bucket: HTTP {status} {detail}")


def _message(response: Any) -> str:
    try:
        return _one_line(response.json()["error"]["message"])
    except Exception:
        return _one_line(response.text[:200]) or response.reason or ""


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())
