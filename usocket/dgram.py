"""A blocking UDP socket on the userland stack (the first piece of the socket facade).

:class:`DatagramSocket` speaks the stdlib vocabulary (``bind``, ``connect``, ``sendto``,
``recvfrom``, ``settimeout``, ...) and raises what the stdlib raises. The full drop-in
``socket`` class (issue 4) builds on the same mechanism: a :class:`UdpEndpoint` subclass whose
delivery hooks run on the stack thread and wake the user thread through a condition variable.
"""
from __future__ import annotations

import errno
import os
import socket as _socket
import threading
import time
import weakref
from typing import Any

from .proto.udp import UdpEndpoint, UdpLayer
from .runtime import Runtime, RuntimeStopped, get_runtime
from .wire.addr import ANY_IP, ip_aton, ip_ntoa

SUPPORTED_RECV_FLAGS = _socket.MSG_PEEK | _socket.MSG_DONTWAIT
SUPPORTED_SEND_FLAGS = _socket.MSG_DONTWAIT


class NotifyingEndpoint(UdpEndpoint):
    """A UDP endpoint that wakes waiters on ``cond`` whenever it gets a datagram or an error."""

    def __init__(self, layer: UdpLayer, cond: threading.Condition) -> None:
        super().__init__(layer)
        self.cond = cond

    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        with self.cond:
            super().on_datagram(data, src_ip, src_port)
            self.cond.notify_all()

    def on_error(self, err: Any) -> None:
        with self.cond:
            super().on_error(err)
            self.cond.notify_all()

    def on_shutdown(self) -> None:
        with self.cond:
            self.cond.notify_all()


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _bytes(data: Any) -> bytes:
    try:
        return memoryview(data).tobytes()
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") from None


class DatagramSocket:
    """``socket(AF_INET, SOCK_DGRAM)`` on the userland stack."""

    family = _socket.AF_INET
    type = _socket.SOCK_DGRAM
    proto = 0

    def __init__(self, runtime: Runtime | None = None) -> None:
        self._rt = runtime if runtime is not None else get_runtime()
        self._cond = threading.Condition()
        stack = self._rt.stack
        assert stack is not None
        self._udp = stack.udp
        ep = self._rt.call(self._udp.open, NotifyingEndpoint, self._cond)
        assert isinstance(ep, NotifyingEndpoint)
        self._ep = ep
        self._timeout: float | None = _socket.getdefaulttimeout()
        self._closed = False
        cond = self._cond

        def wake() -> None:
            with cond:
                cond.notify_all()

        self._unregister = self._rt.on_stop(wake)
        # Like the stdlib, a socket that is garbage-collected without close() is closed.
        self._finalizer = weakref.finalize(self, _finalize, self._rt, self._udp, ep, self._unregister)

    # -- addresses ---------------------------------------------------------------------------
    def _addr(self, address: Any, method: str) -> tuple[bytes, int]:
        if not isinstance(address, tuple) or len(address) != 2:
            raise TypeError("AF_INET address must be a tuple (host, port)")
        host, port = address
        if not isinstance(host, str):
            raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
        if not isinstance(port, int):
            raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
        if not 0 <= port <= 65535:
            raise OverflowError(f"{method}(): port must be 0-65535.")
        if host in ("", "0.0.0.0"):
            return ANY_IP, port
        if host == "<broadcast>":
            return b"\xff\xff\xff\xff", port
        try:
            return ip_aton(host), port
        except OSError:
            from .resolver import Resolver

            return ip_aton(Resolver(self._rt).gethostbyname(host)), port

    # -- stdlib surface ----------------------------------------------------------------------
    def settimeout(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = None if value is None else float(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    def _check(self) -> None:
        if self._closed or self._ep.closed:
            raise _oserror(errno.EBADF)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return self._rt.call(fn, *args)
        except RuntimeStopped:
            raise _oserror(errno.ENETDOWN) from None

    def bind(self, address: Any) -> None:
        self._check()
        ip, port = self._addr(address, "bind")
        self._call(self._udp.bind, self._ep, ip, port)

    def connect(self, address: Any) -> None:
        self._check()
        ip, port = self._addr(address, "connect")
        self._call(self._udp.connect, self._ep, ip, port)

    def sendto(self, data: Any, flags_or_addr: Any, address: Any = None) -> int:
        if address is None:
            flags, address = 0, flags_or_addr
        else:
            flags = flags_or_addr
        payload = _bytes(data)
        self._check()
        self._check_flags(flags, SUPPORTED_SEND_FLAGS)
        ip, port = self._addr(address, "sendto")
        self._raise_pending()
        return int(self._call(self._udp.sendto, self._ep, payload, ip, port))

    def send(self, data: Any, flags: int = 0) -> int:
        payload = _bytes(data)
        self._check()
        self._check_flags(flags, SUPPORTED_SEND_FLAGS)
        self._raise_pending()
        if not self._ep.connected:
            raise _oserror(errno.EDESTADDRREQ)
        return int(self._call(self._udp.send, self._ep, payload))

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.send(data, flags)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        return self._recv(bufsize, flags, "recvfrom")

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self._recv(bufsize, flags, "recv")[0]

    def _recv(self, bufsize: int, flags: int, method: str) -> tuple[bytes, tuple[str, int]]:
        self._check()
        if bufsize < 0:
            raise ValueError(f"negative buffersize in {method}")
        self._check_flags(flags, SUPPORTED_RECV_FLAGS)
        timeout = 0.0 if flags & _socket.MSG_DONTWAIT else self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        ep = self._ep
        with self._cond:
            while True:
                if ep.pending_error is not None:  # Linux reports a pending error before queued data
                    raise _oserror(ep.take_error())
                item = ep.queue[0] if (flags & _socket.MSG_PEEK and ep.queue) else None
                if item is None and not flags & _socket.MSG_PEEK:
                    item = ep.pop()
                if item is not None:
                    data, src, sport = item
                    return data[:bufsize], (ip_ntoa(src), sport)
                if self._closed or ep.closed:
                    raise _oserror(errno.EBADF)
                if not self._rt.running:
                    raise _oserror(errno.ENETDOWN)
                if deadline is None:
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    if timeout == 0:
                        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                    raise TimeoutError("timed out")
                self._cond.wait(left)

    @staticmethod
    def _check_flags(flags: int, supported: int) -> None:
        if not isinstance(flags, int):
            raise TypeError(f"'{type(flags).__name__}' object cannot be interpreted as an integer")
        if flags & ~supported:
            raise _oserror(errno.EOPNOTSUPP)

    def getsockname(self) -> tuple[str, int]:
        self._check()
        return ip_ntoa(self._ep.local_ip), self._ep.local_port

    def getpeername(self) -> tuple[str, int]:
        self._check()
        if self._ep.remote_ip is None:
            raise _oserror(errno.ENOTCONN)
        return ip_ntoa(self._ep.remote_ip), self._ep.remote_port

    def _raise_pending(self) -> None:
        if self._ep.pending_error is not None:
            code = self._call(self._ep.take_error)
            if code:
                raise _oserror(code)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            self._rt.call(self._udp.close, self._ep)
        except RuntimeStopped:
            pass  # the runtime closed every endpoint when it stopped
        self._unregister()
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> DatagramSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " [closed]" if self._closed else ""
        return (f"<usocket.DatagramSocket{state} family=AF_INET, type=SOCK_DGRAM, proto=0, "
                f"laddr=('{ip_ntoa(self._ep.local_ip)}', {self._ep.local_port})>")


def _finalize(rt: Runtime, udp: UdpLayer, ep: UdpEndpoint, unregister: Any) -> None:
    rt.call_soon(udp.close, ep)
    unregister()
