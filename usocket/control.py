"""The control endpoint: a running process answers questions about its stack.

A :class:`ControlServer` listens on a Unix stream socket **file**, ``<dir>/<pid>.sock``, where
``<dir>`` is ``$USOCKET_CONTROL_DIR`` or ``/run/usocket`` (root) or ``/tmp/usocket-<uid>``
(anyone else). A file rather than an abstract-namespace name: abstract Unix names live in a
network namespace, and a hijacked program usually runs in another one than the person asking
(``ip netns exec NS program``); a socket file is reached through the file system, from any
network namespace that sees the same ``/run`` (``ip netns exec`` keeps it). So
``python -m usocket ss PID`` works from the root namespace and from inside ``NS`` alike. A
process in another PID namespace is found through the ``NSpid`` line of ``/proc/PID/status``.
A program in another *mount* namespace (a container with its own ``/run``) needs
``USOCKET_CONTROL_DIR`` pointing at a directory both sides see.

Protocol: the client sends one JSON object on one line (at most :data:`MAX_REQUEST` bytes),
``{"query": "all" | "sockets" | "counters" | "ping"}``, and reads one JSON object until the
server closes: ``{"pid", "mode", "iface", "address", "sockets": [SocketRow dicts],
"counters": {layer: {key: n}}}`` (the parts asked for), or ``{"error": "..."}``.

Safety: the directory is created ``0700`` and must belong to the process's user (else no
endpoint is opened), the socket is ``0600``, and the peer's credentials (``SO_PEERCRED``) must be
root's or the process's own user's. One client is served at a time with a 2 s timeout. Every
error stays inside the control thread (logged at debug level): the program never sees one.
Cost: one thread blocked in ``poll`` and three descriptors (the socket, a wake-up pipe); tables
are computed only when asked (on the stack thread, via :meth:`usocket.runtime.Runtime.call`).
The file is removed when the runtime stops; files left by killed processes (nobody accepts on
them) are removed by the next endpoint that starts in the directory, and ``python -m usocket ss``
skips them meanwhile.
"""
from __future__ import annotations

import json
import logging
import os
import select
import stat
import struct
import threading
import weakref
from typing import TYPE_CHECKING, Any

from . import _stdsocket as socket  # the kernel's module even after the hijacker swaps sys.modules["socket"]

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("usocket.control")

MAX_REQUEST = 4096  # bytes of one request line
CLIENT_TIMEOUT = 2.0  # seconds a client may take to send its request and read the answer
QUERIES = ("all", "sockets", "counters", "ping")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def control_dir() -> str:
    """Where control sockets live (see the module docstring)."""
    d = os.environ.get("USOCKET_CONTROL_DIR")
    if d:
        return d
    return "/run/usocket" if os.geteuid() == 0 else f"/tmp/usocket-{os.geteuid()}"


def socket_path(pid: int, directory: str | None = None) -> str:
    return os.path.join(directory or control_dir(), f"{pid}.sock")


def enabled(env: Any = None) -> bool | None:
    """``USOCKET_CONTROL``: ``"0"`` False (opt out), ``"1"`` True, unset None (the caller decides)."""
    v = (os.environ if env is None else env).get("USOCKET_CONTROL", "")
    if v == "":
        return None
    return v not in ("0", "no", "false", "off")


def _safe_dir(path: str) -> None:
    """Create ``path`` 0700 if needed; refuse one that is not a directory of ours, or is open to others."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(f"{path} is not a directory owned by uid {os.geteuid()}")
    if st.st_mode & 0o077:
        raise PermissionError(f"{path} is accessible to other users (mode {st.st_mode & 0o777:o})")


_servers: weakref.WeakSet[ControlServer] = weakref.WeakSet()


class ControlServer:
    """Serves :func:`answer` for ``rt`` on ``path`` (default :func:`socket_path` of this pid)."""

    def __init__(self, rt: Runtime, path: str | None = None) -> None:
        self.rt = rt
        self.pid = os.getpid()
        self.path = path or socket_path(self.pid)
        self.sock: socket.socket | None = None
        self._ino = 0
        self._stop_r = self._stop_w = -1
        self._thread: threading.Thread | None = None
        self.served = 0
        self.refused = 0

    def start(self) -> ControlServer:
        """Bind and start the thread. Raises ``OSError`` when the endpoint cannot be opened."""
        _safe_dir(os.path.dirname(self.path) or ".")
        try:  # a file of a dead process with our pid, or of an earlier runtime of ours
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                sock.bind(self.path)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            self._ino = os.stat(self.path).st_ino
            sock.listen(4)
            sock.setblocking(False)
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        self.sock = sock
        _servers.add(self)
        self._thread = threading.Thread(target=self._run, name="usocket-control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread, close the socket, remove the file (only if it is still ours). Idempotent."""
        if self._stop_w >= 0:
            try:
                os.write(self._stop_w, b"x")
            except OSError:
                pass
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(CLIENT_TIMEOUT + 1.0)
        self._release()
        if os.getpid() == self.pid:
            self._unlink()

    def _release(self) -> None:
        """Close the descriptors (not the file): at close, and in a forked child."""
        self._thread = None
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._stop_r = self._stop_w = -1
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def _unlink(self) -> None:
        try:
            if not self._ino or os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass

    def _run(self) -> None:
        sock = self.sock
        assert sock is not None
        try:
            remove_stale(os.path.dirname(self.path) or ".", keep=self.path)
        except Exception as exc:  # noqa: BLE001 - never reaches the program
            log.debug("usocket control: stale clean-up: %s", exc)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        stop_r = self._stop_r
        try:
            while True:
                ready = [fd for fd, _ in poller.poll()]
                if stop_r in ready:
                    return
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                try:
                    self._serve(conn)
                except Exception as exc:  # noqa: BLE001 - never reaches the program
                    log.debug("usocket control: %s", exc)
                finally:
                    conn.close()
        except Exception as exc:  # noqa: BLE001 - never reaches the program
            log.debug("usocket control: the thread ends: %s", exc)

    def _serve(self, conn: socket.socket) -> None:
        pid, uid, _ = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
        if uid not in (0, os.geteuid()):
            self.refused += 1
            log.debug("usocket control: refused pid %d uid %d", pid, uid)
            return
        conn.settimeout(CLIENT_TIMEOUT)
        buf = b""
        while b"\n" not in buf:
            chunk = conn.recv(MAX_REQUEST + 1 - len(buf))
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_REQUEST:
                self._reply(conn, {"error": f"request longer than {MAX_REQUEST} bytes"})
                return
        try:
            req = json.loads(buf.split(b"\n", 1)[0] or b"{}")
            if not isinstance(req, dict):
                raise ValueError("a JSON object is expected")
            reply = answer(self.rt, str(req.get("query", "all")))
        except Exception as exc:  # noqa: BLE001 - a bad request, or a stopped runtime: say so
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        self.served += 1
        self._reply(conn, reply)

    @staticmethod
    def _reply(conn: socket.socket, reply: dict[str, Any]) -> None:
        conn.sendall(json.dumps(reply, separators=(",", ":")).encode() + b"\n")


def answer(rt: Runtime, query: str = "all") -> dict[str, Any]:
    """What the endpoint says to ``query`` (any thread but the stack thread's own callers)."""
    if query not in QUERIES:
        raise ValueError(f"unknown query {query!r} (one of {', '.join(QUERIES)})")
    from .wire.addr import ip_ntoa

    cfg = rt.config
    out: dict[str, Any] = {"pid": os.getpid(), "mode": cfg.mode, "iface": cfg.iface,
                           "address": f"{ip_ntoa(cfg.address)}/{cfg.prefix_len}", "running": rt.running}
    if query in ("all", "sockets"):
        out["sockets"] = [r.to_dict() for r in rt.sockets(timeout=CLIENT_TIMEOUT)]
    if query in ("all", "counters"):
        out["counters"] = rt.counters(timeout=CLIENT_TIMEOUT)
    return out


# ------------------------------------------------------------------------------------ client side
class ControlError(OSError):
    """The process has no control endpoint, or it answered with an error."""


def candidate_pids(pid: int) -> list[int]:
    """``pid`` and, when it lives in a nested PID namespace, its pids there (``NSpid``)."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    pids += [int(x) for x in line.split()[1:] if int(x) not in pids]
    except (OSError, ValueError):
        pass
    return pids


def query(pid: int, what: str = "all", *, directory: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the process ``pid`` (as this namespace numbers it). Raises :class:`ControlError`."""
    d = directory or control_dir()
    path = next((p for p in (socket_path(x, d) for x in candidate_pids(pid)) if os.path.exists(p)), None)
    if path is None:
        alive = os.path.exists(f"/proc/{pid}")
        raise ControlError(f"no control endpoint for pid {pid} in {d}: " + (
            "is it a usocket program whose stack has started? (USOCKET_CONTROL=0 turns it off)" if alive
            else "no such process"))
    return query_path(path, what, timeout=timeout)


def query_path(path: str, what: str = "all", *, timeout: float = 5.0) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(json.dumps({"query": what}).encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            raise ControlError(f"{path}: {exc}") from exc
    finally:
        s.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise ControlError(f"{path}: no answer (refused, or not a usocket endpoint)") from exc
    if "error" in reply:
        raise ControlError(f"{path}: {reply['error']}")
    return dict(reply)


def endpoints(directory: str | None = None) -> list[int]:
    """Pids with a control socket in ``directory`` whose process is alive (as seen from here)."""
    d = directory or control_dir()
    try:
        names = os.listdir(d)
    except OSError:
        return []
    pids = []
    for n in names:
        if n.endswith(".sock") and n[:-5].isdigit():
            pids.append(int(n[:-5]))
    return sorted(pids)


def remove_stale(directory: str, keep: str = "") -> int:
    """Remove socket files in ``directory`` that nobody listens on any more (their process was
    killed): a connect to them is refused. Returns how many were removed."""
    n = 0
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not name.endswith(".sock") or path == keep:
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(0.5)
            s.connect(path)
        except ConnectionRefusedError:
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
                    n += 1
            except OSError:
                pass
        except OSError:
            pass
        finally:
            s.close()
    return n


def _close_in_child() -> None:
    # a forked child has no control thread: drop the inherited listening socket (the file is the parent's)
    for srv in list(_servers):
        srv._release()


os.register_at_fork(after_in_child=_close_in_child)
