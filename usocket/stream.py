"""A blocking TCP socket on the userland stack: ``socket(AF_INET, SOCK_STREAM)``.

:class:`StreamSocket` speaks the stdlib vocabulary (``connect``, ``bind``, ``listen``,
``accept``, ``send``/``sendall``/``recv``/``recv_into``, ``shutdown``, ``close``, timeouts,
``getsockname``/``getpeername``, a few socket options) and raises what the stdlib raises:
``ConnectionRefusedError``, ``ConnectionResetError``, ``BrokenPipeError``, ``TimeoutError("timed
out")``, ``BlockingIOError`` in non-blocking mode, ``OSError(EBADF)`` after close. Issue 4 turns
this into the drop-in ``socket`` class (``fileno()``, ``makefile()``, ``select`` support, ...);
this module is its seed and stays small.

Threads: the stack thread owns the stack, so every touch of a connection goes through
``runtime.call(fn, ...)``, which runs ``fn`` there and returns its result. A
:class:`StreamConnection` (the :class:`~usocket.proto.tcp.connection.TcpConnection` subclass used
here) turns every event hook into :meth:`StreamConnection.wake`: on the stack thread it bumps
``events`` and notifies the connection's condition. A blocking operation is a loop::

    result, seen = runtime.call(try_op)        # the op also returns `events` as it saw it
    if result is None:                         # it would block
        with cond:
            while conn.events == seen: cond.wait(remaining)

Because ``events`` is read on the stack thread in the same call that found nothing to do, any
event after that call changes it, so no wake-up is lost, and the user thread never holds the
condition while it waits for the stack thread (which would deadlock against ``wake``).

Each accepted connection gets a condition of its own (:meth:`StreamConnection.make_child`); the
listener's hook ``on_accept_ready`` wakes ``accept``.

Throughput: ``sendall`` hands the stack slices of :data:`SEND_SLICE` bytes per call, and ``recv``
returns everything available up to ``bufsize`` in one call.
"""
from __future__ import annotations

import errno
import os
import socket as _socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from .proto.tcp.connection import CLOSED, LISTEN, SYN_SENT, SYNCHRONIZED, TIME_WAIT, TcpConnection
from .proto.tcp.layer import TcpLayer
from .runtime import Runtime, RuntimeStopped, get_runtime
from .wire.addr import ANY_IP, ip_aton, ip_ntoa

T = TypeVar("T")
SEND_SLICE = 256 * 1024  # bytes handed to the stack per runtime.call in sendall()
SUPPORTED_RECV_FLAGS = _socket.MSG_PEEK | _socket.MSG_DONTWAIT
SUPPORTED_SEND_FLAGS = _socket.MSG_DONTWAIT | getattr(_socket, "MSG_NOSIGNAL", 0)
_LINGER = struct.Struct("ii")
_BUF_MIN = 2304  # Linux SOCK_MIN_RCVBUF/SNDBUF (after doubling)


class StreamConnection(TcpConnection):
    """A TCP connection that wakes the user thread: every hook calls :meth:`wake`, which runs on
    the stack thread, increments :attr:`events` and notifies :attr:`cond`."""

    def __init__(self, layer: TcpLayer, cond: threading.Condition | None = None) -> None:
        super().__init__(layer)
        self.cond = cond if cond is not None else threading.Condition()
        self.events = 0
        self.was_established = False  # ever reached ESTABLISHED (connect() succeeded)

    def wake(self) -> None:
        cond = self.cond
        with cond:
            self.events += 1
            cond.notify_all()

    def on_established(self) -> None:
        self.was_established = True
        self.wake()

    def on_shutdown(self) -> None:
        """Called by :meth:`usocket.stack.Stack.shutdown` when the runtime stops."""
        self.wake()

    def make_child(self) -> StreamConnection:
        """A passive child of this listener: same class, a condition of its own."""
        return type(self)(self.layer)


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))  # the constructor picks the subclass (ConnectionResetError, ...)


def _view(data: Any) -> memoryview:
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") from None
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def _int(value: Any) -> int:
    if not isinstance(value, int):
        raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")
    return value


# -- operations run on the stack thread (each returns (result or None, events seen)) -------------
def _connect_poll(conn: StreamConnection) -> tuple[bool | None, int]:
    if conn.was_established:
        return True, conn.events
    if conn.error:
        raise _oserror(conn.take_error())
    if conn.state == CLOSED:
        raise _oserror(errno.ECONNABORTED)
    return None, conn.events


def _start_connect(layer: TcpLayer, conn: StreamConnection, ip: bytes, port: int) -> None:
    layer.connect(conn, ip, port)  # raises what connect() raises at once (EISCONN, ENETUNREACH...)
    conn.was_established = False  # a socket whose earlier connect failed may connect again


def _recv_op(conn: StreamConnection, n: int, peek: bool) -> tuple[bytes | None, int]:
    return conn.recv(n, peek), conn.events


def _recv_into_op(conn: StreamConnection, buf: memoryview, peek: bool) -> tuple[int | None, int]:
    return conn.recv_into(buf, peek), conn.events


def _send_op(conn: StreamConnection, data: memoryview) -> tuple[int | None, int]:
    n = conn.send(data)
    return (n if n else None), conn.events


def _sendall_op(conn: StreamConnection, data: memoryview) -> tuple[int | None, int]:
    """As much of ``data`` as fits, in slices of SEND_SLICE (fills the buffer in one call)."""
    total = 0
    size = len(data)
    while total < size:
        n = conn.send(data[total:total + SEND_SLICE])
        if not n:
            break
        total += n
    return (total if total else None), conn.events


def _accept_op(layer: TcpLayer, listener: StreamConnection) -> tuple[TcpConnection | None, int]:
    return layer.accept(listener), listener.events


def _close_conn(conn: TcpConnection) -> None:
    conn.close()  # a listener or an unconnected socket goes through layer.close()


def _set_keepalive(conn: StreamConnection, on: bool) -> None:
    conn.keepalive = on
    conn._arm_keepalive()
    conn.layer.reschedule(conn)


class StreamSocket:
    """``socket(AF_INET, SOCK_STREAM)`` on the userland stack (blocking, with timeouts).

    ``StreamSocket(runtime=None)``: a new socket on ``runtime`` (default: the process-wide one).
    """

    family = _socket.AF_INET
    type = _socket.SOCK_STREAM
    proto = 0

    def __init__(self, runtime: Runtime | None = None, *, _conn: StreamConnection | None = None) -> None:
        self._rt = runtime if runtime is not None else get_runtime()
        stack = self._rt.stack
        assert stack is not None
        self._tcp = stack.tcp
        if _conn is None:
            conn = self._call(self._tcp.open, StreamConnection)
            assert isinstance(conn, StreamConnection)
            _conn = conn
        self._conn = _conn
        self._cond = _conn.cond
        self._timeout: float | None = _socket.getdefaulttimeout()
        self._closed = False
        self._unregister = self._rt.on_stop(_conn.wake)
        # Like the stdlib, a socket that is garbage-collected without close() is closed.
        self._finalizer = weakref.finalize(self, _finalize, self._rt, _conn, self._unregister)

    # -- plumbing ------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return self._rt.call(fn, *args)
        except RuntimeStopped:
            raise _oserror(errno.ENETDOWN) from None

    def _check(self) -> None:
        if self._closed:
            raise _oserror(errno.EBADF)

    def _wait(self, op: Callable[..., tuple[T | None, int]], *args: Any, timeout: float | None = None,
              nonblocking_errno: int = errno.EAGAIN, deadline: float | None = None) -> T:
        """Run ``op`` on the stack thread until it returns a result, waiting for events between
        tries; TimeoutError after ``timeout`` (BlockingIOError when it is 0)."""
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        conn = self._conn
        cond = self._cond
        while True:
            result, seen = self._call(op, *args)
            if result is not None:
                return result
            if timeout == 0:
                raise BlockingIOError(nonblocking_errno, os.strerror(nonblocking_errno))
            with cond:
                while True:
                    if self._closed:
                        raise _oserror(errno.EBADF)
                    if not self._rt.running:
                        raise _oserror(errno.ENETDOWN)
                    if deadline is None:
                        if conn.events != seen:
                            break
                        cond.wait()
                        continue
                    # The deadline first: events that make no progress must not keep us here.
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("timed out")
                    if conn.events != seen:
                        break
                    cond.wait(left)

    def _addr(self, address: Any, method: str) -> tuple[bytes, int]:
        if not isinstance(address, tuple) or len(address) != 2:
            raise TypeError("AF_INET address must be a tuple (host, port)")
        host, port = address
        if isinstance(host, (bytes, bytearray)):
            host = bytes(host).decode("idna")
        if not isinstance(host, str):
            raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
        port = _int(port)
        if not 0 <= port <= 65535:
            raise OverflowError(f"{method}(): port must be 0-65535.")
        if host in ("", "0.0.0.0"):
            return ANY_IP, port
        try:
            return ip_aton(host), port
        except OSError:
            from .resolver import Resolver

            return ip_aton(Resolver(self._rt).gethostbyname(host)), port

    # -- timeouts ------------------------------------------------------------------------------
    def settimeout(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # -- connection set-up ---------------------------------------------------------------------
    def bind(self, address: Any) -> None:
        self._check()
        ip, port = self._addr(address, "bind")
        self._call(self._tcp.bind, self._conn, ip, port)

    def listen(self, backlog: int = min(_socket.SOMAXCONN, 128)) -> None:
        self._check()
        self._call(self._tcp.listen, self._conn, max(0, _int(backlog)))

    def connect(self, address: Any) -> None:
        """Blocking connect (honours the timeout): ConnectionRefusedError, TimeoutError, OSError."""
        self._check()
        ip, port = self._addr(address, "connect")
        conn = self._conn
        if conn.state == SYN_SENT:  # a connect that timed out or was interrupted goes on
            if self._timeout == 0:
                raise _oserror(errno.EALREADY)
        else:
            self._call(_start_connect, self._tcp, conn, ip, port)
        self._wait(_connect_poll, conn, timeout=self._timeout, nonblocking_errno=errno.EINPROGRESS)

    def connect_ex(self, address: Any) -> int:
        """``connect`` returning an errno instead of raising (0 on success)."""
        try:
            self.connect(address)
        except TimeoutError as e:
            return e.errno or errno.EAGAIN
        except OSError as e:
            if e.errno is None:
                raise
            return e.errno
        return 0

    def accept(self) -> tuple[StreamSocket, tuple[str, int]]:
        """The next connection of a listening socket, as ``(StreamSocket, (ip, port))``."""
        self._check()
        if self._conn.state != LISTEN:
            raise _oserror(errno.EINVAL)
        child = self._wait(_accept_op, self._tcp, self._conn, timeout=self._timeout)
        assert isinstance(child, StreamConnection) and child.remote_ip is not None
        sock = StreamSocket(self._rt, _conn=child)
        return sock, (ip_ntoa(child.remote_ip), child.remote_port)

    # -- data ----------------------------------------------------------------------------------
    def _flags(self, flags: int, supported: int) -> float | None:
        if _int(flags) & ~supported:
            raise _oserror(errno.EOPNOTSUPP)
        return 0.0 if flags & _socket.MSG_DONTWAIT else self._timeout

    def send(self, data: Any, flags: int = 0) -> int:
        """Queue some of ``data``, blocking until there is room; returns the count taken."""
        mv = _view(data)
        self._check()
        timeout = self._flags(flags, SUPPORTED_SEND_FLAGS)
        if not len(mv):
            self._call(self._conn.send, mv)  # errors (EPIPE, ENOTCONN) still apply
            return 0
        return self._wait(_send_op, self._conn, mv[:SEND_SLICE * 4], timeout=timeout)

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data``; the timeout bounds the whole call, like the stdlib's."""
        mv = _view(data)
        self._check()
        timeout = self._flags(flags, SUPPORTED_SEND_FLAGS)
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self._conn
        pos, size = 0, len(mv)
        if not size:
            self._call(conn.send, mv)
            return
        while pos < size:
            pos += self._wait(_sendall_op, conn, mv[pos:], timeout=timeout, deadline=deadline)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes (everything available, in one call); ``b""`` at end of stream."""
        self._check()
        if _int(bufsize) < 0:
            raise ValueError("negative buffersize in recv")
        timeout = self._flags(flags, SUPPORTED_RECV_FLAGS)
        if bufsize == 0:
            return b""
        return self._wait(_recv_op, self._conn, bufsize, bool(flags & _socket.MSG_PEEK), timeout=timeout)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into ``buffer`` (at most ``nbytes`` if given); returns the count, 0 at EOF."""
        self._check()
        mv = _view(buffer)
        if mv.readonly:
            raise TypeError("recv_into() argument 'buffer' must be read-write bytes-like object")
        if _int(nbytes) < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes > len(mv):
            raise ValueError("buffer too small for requested bytes")
        if nbytes:
            mv = mv[:nbytes]
        timeout = self._flags(flags, SUPPORTED_RECV_FLAGS)
        if not len(mv):
            return 0
        return self._wait(_recv_into_op, self._conn, mv, bool(flags & _socket.MSG_PEEK), timeout=timeout)

    # -- ending --------------------------------------------------------------------------------
    def shutdown(self, how: int) -> None:
        """``SHUT_RD`` (0), ``SHUT_WR`` (1: our FIN after the queued data) or ``SHUT_RDWR`` (2)."""
        self._check()
        if _int(how) not in (0, 1, 2):
            raise _oserror(errno.EINVAL)
        self._call(self._conn.shutdown, how)

    def close(self) -> None:
        """Close: FIN after the queued data (the stack finishes the exchange alone), or RST when
        unread data remains or SO_LINGER is 0. Blocked users of this socket get EBADF."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            self._rt.call(_close_conn, self._conn)
        except RuntimeStopped:
            pass  # the runtime closed every connection when it stopped
        self._unregister()
        self._conn.wake()

    def detach(self) -> None:
        raise OSError(errno.EOPNOTSUPP, "a usocket stream socket has no file descriptor to detach")

    def __enter__(self) -> StreamSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addresses and options -----------------------------------------------------------------
    def getsockname(self) -> tuple[str, int]:
        self._check()
        return ip_ntoa(self._conn.local_ip), self._conn.local_port

    def getpeername(self) -> tuple[str, int]:
        self._check()
        conn = self._conn
        # Linux inet_getname: ENOTCONN in CLOSE and SYN_SENT (TIME_WAIT is CLOSE to the socket).
        if conn.remote_ip is None or conn.state in (CLOSED, LISTEN, SYN_SENT, TIME_WAIT):
            raise _oserror(errno.ENOTCONN)
        return ip_ntoa(conn.remote_ip), conn.remote_port

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        """SO_REUSEADDR, SO_REUSEPORT, SO_KEEPALIVE, SO_LINGER, SO_RCVBUF, SO_SNDBUF,
        TCP_NODELAY, TCP_KEEPIDLE/KEEPINTVL/KEEPCNT; others raise ENOPROTOOPT."""
        self._check()
        conn = self._conn
        if level == _socket.SOL_SOCKET and optname == _socket.SO_LINGER:
            onoff, secs = _LINGER.unpack(bytes(value))
            conn.linger = float(secs) if onoff else None
            return
        v = int.from_bytes(bytes(value)[:4], "little", signed=True) if isinstance(value, (bytes, bytearray)) \
            else _int(value)
        if level == _socket.SOL_SOCKET:
            if optname == _socket.SO_REUSEADDR:
                conn.reuse_addr = bool(v)
            elif optname == getattr(_socket, "SO_REUSEPORT", -1):
                conn.reuse_port = bool(v)
            elif optname == _socket.SO_KEEPALIVE:
                self._call(_set_keepalive, conn, bool(v))
            elif optname == _socket.SO_RCVBUF:  # Linux doubles the value and stops autotuning
                conn.rcvbuf.capacity = max(_BUF_MIN, 2 * v)
                conn.rcvbuf_locked = True
            elif optname == _socket.SO_SNDBUF:
                conn.sndbuf.capacity = max(_BUF_MIN, 2 * v)
            else:
                raise _oserror(errno.ENOPROTOOPT)
        elif level == _socket.IPPROTO_TCP:
            if optname == _socket.TCP_NODELAY:
                conn.nodelay = bool(v)
            elif optname == _socket.TCP_KEEPIDLE:
                conn.keepidle = float(v)
            elif optname == _socket.TCP_KEEPINTVL:
                conn.keepintvl = float(v)
            elif optname == _socket.TCP_KEEPCNT:
                conn.keepcnt = v
            else:
                raise _oserror(errno.ENOPROTOOPT)
        else:
            raise _oserror(errno.ENOPROTOOPT)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:
        """The options :meth:`setsockopt` knows, plus SO_ERROR (cleared when read) and SO_TYPE."""
        self._check()
        conn = self._conn
        value: int
        if level == _socket.SOL_SOCKET:
            if optname == _socket.SO_ERROR:
                value = self._call(conn.take_error)
            elif optname == _socket.SO_TYPE:
                value = _socket.SOCK_STREAM
            elif optname == _socket.SO_LINGER:
                out = _LINGER.pack(conn.linger is not None, int(conn.linger or 0))
                return out if buflen is None else out[:buflen]
            elif optname == _socket.SO_REUSEADDR:
                value = int(conn.reuse_addr)
            elif optname == getattr(_socket, "SO_REUSEPORT", -1):
                value = int(conn.reuse_port)
            elif optname == _socket.SO_KEEPALIVE:
                value = int(conn.keepalive)
            elif optname == _socket.SO_RCVBUF:
                value = conn.rcvbuf.capacity
            elif optname == _socket.SO_SNDBUF:
                value = conn.sndbuf.capacity
            elif optname == _socket.SO_ACCEPTCONN:
                value = int(conn.state == LISTEN)
            else:
                raise _oserror(errno.ENOPROTOOPT)
        elif level == _socket.IPPROTO_TCP:
            if optname == _socket.TCP_NODELAY:
                value = int(conn.nodelay)
            elif optname == _socket.TCP_KEEPIDLE:
                value = int(conn.keepidle)
            elif optname == _socket.TCP_KEEPINTVL:
                value = int(conn.keepintvl)
            elif optname == _socket.TCP_KEEPCNT:
                value = conn.keepcnt
            elif optname == _socket.TCP_MAXSEG:
                value = conn.mss
            else:
                raise _oserror(errno.ENOPROTOOPT)
        else:
            raise _oserror(errno.ENOPROTOOPT)
        return value if buflen is None else struct.pack("i", value)[:buflen]

    @property
    def connection(self) -> StreamConnection:
        """The underlying connection (read its attributes only; touch it through the runtime)."""
        return self._conn

    def __repr__(self) -> str:
        conn = self._conn
        state = " [closed]" if self._closed else ""
        raddr = ""
        if conn.remote_ip is not None and conn.state in SYNCHRONIZED:
            raddr = f", raddr=('{ip_ntoa(conn.remote_ip)}', {conn.remote_port})"
        return (f"<usocket.StreamSocket{state} family=AF_INET, type=SOCK_STREAM, proto=0, "
                f"laddr=('{ip_ntoa(conn.local_ip)}', {conn.local_port}){raddr}>")


def _finalize(rt: Runtime, conn: TcpConnection, unregister: Callable[[], None]) -> None:
    rt.call_soon(_close_conn, conn)
    unregister()


__all__ = ["StreamSocket", "StreamConnection", "SEND_SLICE"]
