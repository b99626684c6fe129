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
from typing import Any

from .proto.udp import UdpEndpoint, UdpLayer
from .runtime import Runtime, get_runtime
from .wire.addr import ANY_IP, ip_aton, ip_ntoa


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


def _addr(address: Any) -> tuple[bytes, int]:
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError("AF_INET address must be a tuple (host, port)")
    host, port = address
    if not isinstance(port, int):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 65535:
        raise OverflowError("bind(): port must be 0-65535.")
    if host in ("", "0.0.0.0"):
        return ANY_IP, port
    if host == "<broadcast>":
        return b"\xff\xff\xff\xff", port
    try:
        return ip_aton(host), port
    except OSError:
        from .resolver import gethostbyname

        return ip_aton(gethostbyname(host)), port


class DatagramSocket:
    """``socket(AF_INET, SOCK_DGRAM)`` on the userland stack."""

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

    # -- stdlib surface ----------------------------------------------------------------------
    family = _socket.AF_INET
    type = _socket.SOCK_DGRAM
    proto = 0

    def settimeout(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def _check(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def bind(self, address: Any) -> None:
        self._check()
        ip, port = _addr(address)
        self._rt.call(self._udp.bind, self._ep, ip, port)

    def connect(self, address: Any) -> None:
        self._check()
        ip, port = _addr(address)
        self._rt.call(self._udp.connect, self._ep, ip, port)

    def sendto(self, data: bytes, address: Any) -> int:
        self._check()
        ip, port = _addr(address)
        self._raise_pending()
        return self._rt.call(self._udp.sendto, self._ep, bytes(data), ip, port)

    def send(self, data: bytes) -> int:
        self._check()
        self._raise_pending()
        if not self._ep.connected:
            raise OSError(errno.EDESTADDRREQ, os.strerror(errno.EDESTADDRREQ))
        return self._rt.call(self._udp.send, self._ep, bytes(data))

    def recvfrom(self, bufsize: int) -> tuple[bytes, tuple[str, int]]:
        self._check()
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        with self._cond:
            while True:
                item = self._ep.pop()
                if item is not None:
                    data, src, sport = item
                    return data[:bufsize], (ip_ntoa(src), sport)
                if self._ep.pending_error is not None:
                    code = self._ep.take_error()
                    raise OSError(code, os.strerror(code))
                if self._closed:
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                if deadline is None:
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    if self._timeout == 0:
                        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                    raise TimeoutError("timed out")
                self._cond.wait(left)

    def recv(self, bufsize: int) -> bytes:
        return self.recvfrom(bufsize)[0]

    def getsockname(self) -> tuple[str, int]:
        self._check()
        return ip_ntoa(self._ep.local_ip), self._ep.local_port

    def getpeername(self) -> tuple[str, int]:
        self._check()
        if self._ep.remote_ip is None:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        return ip_ntoa(self._ep.remote_ip), self._ep.remote_port

    def _raise_pending(self) -> None:
        if self._ep.pending_error is not None:
            code = self._rt.call(self._ep.take_error)
            if code:
                raise OSError(code, os.strerror(code))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._rt.call(self._udp.close, self._ep)
        except RuntimeError:
            pass  # runtime already stopped
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> DatagramSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " [closed]" if self._closed else ""
        return f"<usocket.DatagramSocket{state} laddr={ip_ntoa(self._ep.local_ip)}:{self._ep.local_port}>"
