"""A preloaded parent for isolated step bodies: fork a child instead of starting Python.

Why: an isolated body (tasks/core/isolation.py) started a fresh interpreter that imported
prefect, the step's module and levanter again: about 1 s per executed step, 3 to 4 s for a
levanter step. The server imports them once (it starts no thread and no jax backend), then
forks one child per body. The child is still a process of its own, with its own
`os.environ`, working directory, jax backend and logging, so isolation is unchanged.

Why not multiprocessing's 'forkserver': it cannot give the child the caller's stdin, stdout,
stderr, environment and working directory per call, nor tell a caller that is not the
child's parent how the child ended. This server is small: one request per body, the child's
descriptors passed with SCM_RIGHTS, and its exit status sent back on a socket of its own.

One server per parent process and environment (variables read when a body runs, such as
LMFLOWS_*, are set per call instead). Where no server can start (not Linux, or it failed),
`start_child` starts a fresh Python as before. The server ends when its parent does.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any

import psutil

SERVER_MODULE = "tasks.core.fork_server"
CHILD_MODULE = "tasks.core.isolated_child"
READY_TIMEOUT_SECONDS = 120.0
FORK_TIMEOUT_SECONDS = 15.0  # the server forks in milliseconds; longer means it is paused
SERVER_GRACE_SECONDS = 2.0  # a child gone this long with no word from the server: orphaned
# Imported once by the server: what isolated bodies import (the step modules, levanter).
PRELOAD = (
    "tasks.core.isolated_child",
    "prefect.client.orchestration",
    "prefect.logging.configuration",
    "prefect.results",
    "tasks.data.download",
    "tasks.data.tokenize",
    "tasks.data.train_tokenizer",
    "tasks.lm.train",
    "tasks.lm.evaluate",
    "tasks.lm.sft",
    "tasks.lm.sft_eval",
    "tasks.lm.harness",
    "tasks.lm.scaling",
    "levanter.main.train_lm",
    "levanter.main.eval_lm",
)
# Variables a body reads when it runs (set in the child per call), not at import: a change
# in them does not need a new server. PREFECT_API_URL: the child rebuilds Prefect's settings.
PER_CALL_PREFIXES = ("LMFLOWS_",)
PER_CALL_NAMES = frozenset({"PREFECT_API_URL", "PYTEST_CURRENT_TEST"})
MAX_SERVERS = 2  # idle ones; a server with running children is never evicted


# --- the caller's side -----------------------------------------------------------------------


class ForkedChild:
    """A body's process started by the server; what `subprocess.Popen` offers the caller."""

    def __init__(self, pid: int, stdin: IO[bytes], replies: socket.socket) -> None:
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.returncode: int | None = None
        self._replies = replies
        self._buffer = b""
        self._orphaned = False
        self.status_known = True  # False: the server went away without saying how it ended
        self.server: _Server | None = None

    def _watch_orphan(self, timeout: float | None) -> None:
        """Without the server there is no exit status: only whether the process still runs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while _running(self.pid):
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.05)
        self.returncode = 1
        self.status_known = False

    def poll(self) -> int | None:
        self._read(timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._read(timeout=timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"isolated step process {self.pid}", timeout or 0)
        return self.returncode

    def _read(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        if self._orphaned:
            self._watch_orphan(timeout)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        gone_since = None
        while b"\n" not in self._buffer:
            # Short selects: a paused server never answers, so the process is looked at too.
            left = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
            readable, _, _ = select.select([self._replies], [], [], left)
            if readable:
                chunk = self._replies.recv(4096)
                if not chunk:  # the server died first: watch the process itself from now on
                    self._orphan()
                    self._watch_orphan(None if deadline is None else deadline - time.monotonic())
                    return
                self._buffer += chunk
                continue
            if not _running(self.pid):
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > SERVER_GRACE_SECONDS:
                    self._orphan()  # ended, and the server (paused?) does not say how
                    self._watch_orphan(0)
                    return
            if deadline is not None and time.monotonic() >= deadline:
                return
        line, self._buffer = self._buffer.split(b"\n", 1)
        self.returncode = int(line.split()[1])
        self._replies.close()
        _ended(self)

    def _orphan(self) -> None:
        self._orphaned = True
        self._replies.close()
        _ended(self)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a child the paused or dead server has not reaped)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def start_child(message_fd: int, env: dict[str, str]) -> ForkedChild | subprocess.Popen:
    """The isolated child (`tasks.core.isolated_child`, writing to `message_fd`), forked from
    a preloaded server when one runs, else a fresh Python. Its stdin is a pipe to us."""
    server = _server_for(env)
    if server is not None:
        with contextlib.suppress(OSError):
            return server.fork(message_fd, env)
        _forget(server)  # it died: the next call starts another
    return subprocess.Popen(
        [sys.executable, "-m", CHILD_MODULE, str(message_fd)],
        stdin=subprocess.PIPE,
        pass_fds=(message_fd,),
        env=env,
        start_new_session=True,  # its own process group: killed as a whole
    )


def prewarm(env: dict[str, str]) -> None:
    """Start the server for `env` now (it takes seconds to import), if none runs."""
    _server_for(env)


class _Server:
    def __init__(self, env: dict[str, str], key: tuple[Any, ...]) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.running = 0  # children not known to have ended: the server is not evicted then
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.errors = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", SERVER_MODULE, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # what imports print is nobody's output
                stderr=self.errors,
                pass_fds=(theirs.fileno(),),
                env=env,
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.control = ours
        ours.settimeout(READY_TIMEOUT_SECONDS)
        try:
            ready = ours.recv(16)
        except OSError:
            ready = b""
        ours.settimeout(None)
        if ready != b"ready\n":
            self.close()
            self.errors.seek(0)
            tail = self.errors.read().decode(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(" ".join(tail) or "no answer")

    def fork(self, message_fd: int, env: dict[str, str]) -> ForkedChild:
        request = json.dumps({"env": env, "cwd": os.getcwd(), **_process_state()}).encode()
        replies, replies_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stdin_read, stdin_write = os.pipe()
        try:
            fds = [replies_theirs.fileno(), stdin_read, 1, 2, message_fd]
            with self.lock:
                socket.send_fds(self.control, [struct.pack(">Q", len(request))], fds)
                self.control.sendall(request)
        except OSError:
            os.close(stdin_write)
            replies.close()
            raise
        finally:
            os.close(stdin_read)
            replies_theirs.close()
        replies.settimeout(FORK_TIMEOUT_SECONDS)  # a paused server: a fresh Python instead
        try:
            answer = b""
            while b"\n" not in answer:
                chunk = replies.recv(4096)
                if not chunk:
                    raise OSError("the fork server did not start the child")
                answer += chunk
        except OSError:
            os.close(stdin_write)
            replies.close()
            raise
        replies.settimeout(None)
        first, rest = answer.split(b"\n", 1)
        child = ForkedChild(int(first.split()[1]), os.fdopen(stdin_write, "wb"), replies)
        child._buffer = rest  # the exit line, when the child ended at once
        child.server = self
        with self.lock:
            self.running += 1
        return child

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.control.close()  # the server exits when its control socket closes
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.errors.close()


_servers: dict[tuple[Any, ...], _Server] = {}
_failed: set[tuple[Any, ...]] = set()
_servers_lock = threading.Lock()


def _ended(child: ForkedChild) -> None:
    if child.server is not None:
        with child.server.lock:
            child.server.running -= 1
        child.server = None


def _forget_servers_after_fork() -> None:
    """A forked copy of the caller starts with no servers and a free lock (the lock may have
    been held by another thread, starting a server, at the moment of the fork)."""
    global _servers_lock
    _servers_lock = threading.Lock()
    _servers.clear()
    _failed.clear()


os.register_at_fork(after_in_child=_forget_servers_after_fork)


def _key(env: dict[str, str]) -> tuple[Any, ...]:
    kept = sorted(
        (k, v)
        for k, v in env.items()
        if k not in PER_CALL_NAMES and not k.startswith(PER_CALL_PREFIXES)
    )
    return (sys.executable, os.getcwd(), tuple(kept))


def _server_for(env: dict[str, str]) -> _Server | None:
    if not hasattr(socket, "send_fds") or not sys.platform.startswith("linux"):
        return None
    key = _key(env)
    with _servers_lock:
        if key in _failed:
            return None
        server = _servers.get(key)
        if server is not None and server.process.poll() is None:
            return server
        if server is not None:
            _servers.pop(key)
        for idle in [k for k, v in _servers.items() if v.running == 0][
            : max(0, len(_servers) - MAX_SERVERS + 1)
        ]:
            _servers.pop(idle).close()
        try:
            server = _Server(env, key)
        except (OSError, RuntimeError) as exc:
            _failed.add(key)
            print(
                f"lmflows: the fork server for isolated steps did not start ({exc}); "
                "each isolated step starts a fresh Python",
                file=sys.stderr,
            )
            return None
        _servers[key] = server
        return server


def _forget(server: _Server) -> None:
    with _servers_lock:
        if _servers.get(server.key) is server:
            _servers.pop(server.key)
    server.close()


# --- the server's side -----------------------------------------------------------------------


def serve(control_fd: int) -> None:
    """Preload, say ready, then fork a child per request until the control socket closes."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    control = socket.socket(fileno=control_fd)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, _ignore)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    replies: dict[int, socket.socket] = {}
    control.sendall(b"ready\n")
    while True:
        readable, _, _ = select.select([control, wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 4096)
        _reap(replies)
        if control in readable:
            header, fds, _, _ = socket.recv_fds(control, 8, 8)
            if len(header) < 8:
                return  # the caller is gone; running children watch their own stdin
            (size,) = struct.unpack(">Q", header)
            request = json.loads(_read_exactly(control, size))
            _fork(request, fds, control, (wake_read, wake_write), replies)


def _ignore(signum: int, frame: Any) -> None:
    """A SIGCHLD handler so that the wakeup descriptor hears of children ending."""


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise SystemExit(0)
        data += chunk
    return data


def _reap(replies: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = replies.pop(pid, None)
        if reply is not None:
            with contextlib.suppress(OSError):
                reply.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            reply.close()


def _fork(
    request: dict[str, Any],
    fds: list[int],
    control: socket.socket,
    wake: tuple[int, int],
    replies: dict[int, socket.socket],
) -> None:
    reply_fd, stdin_fd, stdout_fd, stderr_fd, message_fd = fds
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()  # its own process group: the caller kills it as a whole
            control.close()
            for fd in (*wake, reply_fd, *(s.fileno() for s in replies.values())):
                os.close(fd)
            for target, fd in ((0, stdin_fd), (1, stdout_fd), (2, stderr_fd)):
                os.dup2(fd, target)
            for fd in {stdin_fd, stdout_fd, stderr_fd} - {0, 1, 2}:
                os.close(fd)
            code = _run_child(request, message_fd)
        except BaseException:  # noqa: BLE001 - whatever happens, this process must end here
            import traceback

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    for fd in (stdin_fd, stdout_fd, stderr_fd, message_fd):
        os.close(fd)
    reply = socket.socket(fileno=reply_fd)
    replies[pid] = reply
    with contextlib.suppress(OSError):
        reply.sendall(f"pid {pid}\n".encode())


# What a fresh Python would inherit from the caller beyond its environment and cwd.
_LIMITS = tuple(getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_"))
_IGNORABLE = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1)


def _process_state() -> dict[str, Any]:
    """The caller's umask, resource limits, ignored signals, CPU affinity and niceness."""
    state: dict[str, Any] = {
        "limits": {str(limit): resource.getrlimit(limit) for limit in _LIMITS},
        "ignored": [int(sig) for sig in _IGNORABLE if signal.getsignal(sig) == signal.SIG_IGN],
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:  # read without changing it (os.umask sets)
            for line in status:
                if line.startswith("Umask:"):
                    state["umask"] = int(line.split()[1], 8)
    with contextlib.suppress(AttributeError, OSError):
        state["affinity"] = sorted(os.sched_getaffinity(0))
    return state


def _apply_process_state(request: dict[str, Any]) -> None:
    if "umask" in request:
        os.umask(request["umask"])
    for limit, (soft, hard) in request.get("limits", {}).items():
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(int(limit), (soft, hard))
    for sig in request.get("ignored", []):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, request.get("nice", 0))
    if request.get("affinity"):
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, request["affinity"])
    if "numpy" in sys.modules:  # fork copies the server's random state: reseed as a fresh
        sys.modules["numpy"].random.seed()  # Python would (the `random` module does itself)


def _run_child(request: dict[str, Any], message_fd: int) -> int:
    from prefect.context import refresh_global_settings_context

    from tasks.core import isolated_child

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _apply_process_state(request)
    refresh_global_settings_context()  # the call's PREFECT_API_URL
    sys.argv = [isolated_child.__file__, str(message_fd)]
    return isolated_child.main(message_fd)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
    os._exit(0)
