"""``usocket.socket``: the stdlib's ``socket.socket``, with AF_INET stream and datagram sockets
carried by the userland stack.

The class subclasses the stdlib's ``socket.socket`` (so ``isinstance`` checks, ``makefile``,
``sendfile``, ``dup``, the context manager and ``ssl`` work as they do there) and is built on a
real descriptor: the application end of an ``AF_UNIX`` socketpair whose other end a
:class:`~usocket.facade.bridge.Bridge` on the stack thread connects to a TCP connection or a UDP
endpoint. ``recv``/``send`` and friends on a TCP socket are the C methods on that descriptor, so
blocking, timeouts, ``select``/``poll``/``epoll`` and OpenSSL behave exactly as with a kernel
socket; the methods that carry addresses or TCP/IP state (``connect``, ``bind``, ``listen``,
``accept``, ``getsockname``, ``getpeername``, ``setsockopt``, ``getsockopt``, ``shutdown`` and the
UDP data calls) are answered from the stack.

Everything that is not ``AF_INET`` + ``SOCK_STREAM``/``SOCK_DGRAM`` (AF_UNIX, AF_INET6, raw
sockets, ``socket(fileno=...)`` of a descriptor that is not ours) is the kernel's, and so is a
socket that binds or connects to a loopback address (127/8 or 0.0.0.0 as a destination): its pair
is replaced by a kernel socket under the same descriptor number, before anyone could have
registered it with a selector.
"""
from __future__ import annotations

import errno
import os
import select
import socket as _std
import struct
import time
from typing import Any

from ..runtime import Runtime, RuntimeStopped, get_runtime
from ..wire.addr import ANY_IP, ip_aton, ip_ntoa
from . import bridge as _bridge
from .bridge import REC_DATA, RECORD, DatagramBridge, StreamBridge, registry

_AF_INET = _std.AF_INET
_STREAM = _std.SOCK_STREAM
_DGRAM = _std.SOCK_DGRAM
_TYPE_FLAGS = getattr(_std, "SOCK_NONBLOCK", 0) | getattr(_std, "SOCK_CLOEXEC", 0)
_LINGER = struct.Struct("ii")
_BUF_MIN = 2304  # Linux SOCK_MIN_RCVBUF
_SNDBUF_MIN = 4608  # Linux SOCK_MIN_SNDBUF
_HDR = RECORD.size
_SUPER = _std.socket
_SO_REUSEPORT = getattr(_std, "SO_REUSEPORT", -1)


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _int(value: Any) -> int:
    if not isinstance(value, int):
        raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")
    return value


def _is_loopback(ip: bytes) -> bool:
    return ip[0] == 127


class socket(_std.socket):
    """A drop-in ``socket.socket``. See the module documentation."""

    __slots__ = ["_b", "_opts"]

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> None:
        self._b: Any = None
        self._opts: list[tuple[int, int, Any]] = []
        if fileno is not None:
            b = registry.lookup(_int(fileno)) if isinstance(fileno, int) else None
            if b is not None:
                kind = b.kind
                _SUPER.__init__(self, _AF_INET, kind, 0 if proto == -1 else proto, fileno)
                self._b = b
                return
            _SUPER.__init__(self, family, type, proto, fileno)
            return
        if family == -1:
            family = _AF_INET
        if type == -1:
            type = _STREAM
        if proto == -1:
            proto = 0
        base = type & ~_TYPE_FLAGS if isinstance(type, int) else type
        if family != _AF_INET or base not in (_STREAM, _DGRAM) or not isinstance(proto, int) or proto not in (
                0, _std.IPPROTO_TCP if base == _STREAM else _std.IPPROTO_UDP):
            _SUPER.__init__(self, family, type, proto)  # the kernel's (and its errors)
            return
        self._init_userland(get_runtime(), base, type, proto)

    def _init_userland(self, rt: Runtime, base: int, type: int, proto: int) -> None:
        b: _bridge.Bridge
        if base == _STREAM:
            app, b = _bridge.new_stream(rt)
        else:
            app, b = _bridge.new_datagram(rt)
        try:
            _SUPER.__init__(self, _AF_INET, base, proto, app.fileno())
        except BaseException:
            app.close()
            raise
        app.detach()
        self._b = b
        if type & getattr(_std, "SOCK_NONBLOCK", 0):
            self.setblocking(False)

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return self._b.rt.call(fn, *args)
        except RuntimeStopped:
            raise _oserror(errno.ENETDOWN) from None

    def _checkfd(self) -> None:
        fd = _SUPER.fileno(self)
        if fd < 0:
            raise _oserror(errno.EBADF)
        try:  # still our pair? (socket.close(fd) closes it behind our back; the number may be reused)
            ours = os.fstat(fd).st_ino == self._b.ino
        except OSError:
            ours = False
        if not ours:
            raise _oserror(errno.EBADF)

    def _address(self, address: Any, method: str) -> bytes:
        """``(host, port)`` -> the IPv4 address as bytes (resolving names through the stack)."""
        if not isinstance(address, tuple):
            raise TypeError(f"AF_INET address must be tuple, not {type(address).__name__}")
        if len(address) != 2:
            raise TypeError("AF_INET address must be a pair (host, port)")
        host, port = address
        if isinstance(host, (bytes, bytearray)):
            host = bytes(host).decode("idna")
        if not isinstance(host, str):
            raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
        port = _int(port)
        if not 0 <= port <= 65535:
            raise OverflowError(f"{method}(): port must be 0-65535.")
        if host == "":
            return ANY_IP
        if host == "<broadcast>":
            return b"\xff\xff\xff\xff"
        try:
            return ip_aton(host)
        except OSError:
            pass
        from .names import gethostbyname

        return ip_aton(gethostbyname(host))

    def _to_kernel(self) -> None:
        """Replace the pair under our descriptor by a kernel socket (loopback traffic)."""
        b = self._b
        k = _SUPER(_AF_INET, self.type, self.proto)
        try:
            for level, name, value in self._opts:
                try:
                    k.setsockopt(level, name, value)
                except OSError:
                    pass
            os.dup2(k.fileno(), _SUPER.fileno(self), inheritable=False)
        finally:
            k.close()
        self._b = None
        _SUPER.settimeout(self, _SUPER.gettimeout(self))  # O_NONBLOCK for the new file
        b.rt.call_soon(_noop)  # the bridge sees EPOLLHUP and closes itself

    # -- connection set-up ----------------------------------------------------------------------
    def bind(self, address: Any) -> None:
        b = self._b
        if b is None:
            return _SUPER.bind(self, address)
        self._checkfd()
        ip = self._address(address, "bind")
        if _is_loopback(ip):
            self._to_kernel()
            return _SUPER.bind(self, address)
        if isinstance(b, StreamBridge):
            self._call(b.stack.tcp.bind, b.conn, ip, address[1])
        else:
            self._call(b.stack.udp.bind, b.ep, ip, address[1])

    def listen(self, backlog: int = min(_std.SOMAXCONN, 128)) -> None:
        b = self._b
        if b is None:
            return _SUPER.listen(self, backlog)
        self._checkfd()
        if not isinstance(b, StreamBridge):
            raise _oserror(errno.EOPNOTSUPP)
        self._call(b.listen, max(0, _int(backlog)))

    def connect(self, address: Any) -> None:
        b = self._b
        if b is None:
            return _SUPER.connect(self, address)
        self._checkfd()
        ip = self._address(address, "connect")
        if _is_loopback(ip) or (ip == ANY_IP and isinstance(b, StreamBridge)):
            self._to_kernel()
            return _SUPER.connect(self, address)
        if isinstance(b, DatagramBridge):
            self._call(b.stack.udp.connect, b.ep, ip, address[1])
            return
        timeout = _SUPER.gettimeout(self)
        if b.connected and b.connect_unreported:
            # Linux: a connection completed while no connect() call waited for it leaves the
            # socket SS_CONNECTING: the next connect() returns 0 (and only then EISCONN)
            b.connect_unreported = False
            return
        if not b.connected and b.conn.state.name == "SYN_SENT":
            if timeout is not None:  # the stdlib waits only after EINPROGRESS
                raise _oserror(errno.EALREADY)
            b.connect_unreported = False  # a blocking connect() waits for the attempt (below)
        elif timeout != 0 and b.filler and not b.failed and b.conn.remote_ip is None \
                and b.conn.state.name == "CLOSED":
            # A fresh socket whose connect() waits for the outcome: post the SYN without a round
            # trip; an error the stack raises (ENETUNREACH...) fails the attempt and makes the
            # socket writable, and the loop below raises it, as connect() would have.
            b.connect_unreported = timeout is not None
            if not b.rt.running:
                raise _oserror(errno.ENETDOWN)
            b.rt.call_soon(b.start_connect_soon, ip, address[1])
        else:
            refill = 0
            if b.failed and not b.filler:  # connect again after a failed attempt: unwritable again
                app = _SUPER(fileno=os.dup(_SUPER.fileno(self)))
                try:
                    refill = _bridge.write_filler(app)
                finally:
                    app.close()
            self._call(b.start_connect, ip, address[1], refill)
            b.connect_unreported = timeout is not None  # the stdlib polls; no connect() sees the end
        if timeout == 0:
            raise BlockingIOError(errno.EINPROGRESS, os.strerror(errno.EINPROGRESS))
        self._wait(select.POLLOUT, timeout)
        while True:
            if b.connected:  # set before the pair became writable: no need to ask the stack
                return
            done = self._call(b.connect_status)
            if done:
                return
            self._wait(select.POLLOUT, timeout)

    def _wait(self, events: int, timeout: float | None, deadline: list[float] | None = None) -> None:
        """Wait until our descriptor shows ``events`` (TimeoutError after ``timeout``)."""
        fd = _SUPER.fileno(self)
        if fd < 0:
            raise _oserror(errno.EBADF)
        p = select.poll()
        p.register(fd, events)
        if timeout is None:
            p.poll()
            return
        if deadline is None:
            deadline = [time.monotonic() + timeout]
        left = deadline[0] - time.monotonic()
        if left <= 0 or not p.poll(left * 1000):
            raise TimeoutError("timed out")

    def connect_ex(self, address: Any) -> int:
        try:
            self.connect(address)
        except (OverflowError, TypeError, _std.gaierror):
            raise
        except TimeoutError as e:
            return e.errno or errno.EAGAIN
        except OSError as e:
            if e.errno is None:
                raise
            return e.errno
        return 0

    def accept(self) -> tuple[socket, tuple[str, int]]:
        b = self._b
        if b is None:
            fd, addr = self._accept()  # type: ignore[attr-defined]
            sock = socket(self.family, self.type, self.proto, fileno=fd)
            if _std.getdefaulttimeout() is None and self.gettimeout():
                sock.setblocking(True)
            return sock, addr
        self._checkfd()
        if not isinstance(b, StreamBridge):
            raise _oserror(errno.EOPNOTSUPP)
        if b.conn.state.name != "LISTEN":
            raise _oserror(errno.EINVAL)
        timeout = _SUPER.gettimeout(self)
        deadline = None if timeout is None else [time.monotonic() + timeout]
        while True:
            # a token byte per connection the stack thread made ready (see StreamBridge.sync_tokens)
            # (with a timeout the descriptor is O_NONBLOCK, and recv() would wait for it first)
            try:
                token = _SUPER.recv(self, 1, _std.MSG_DONTWAIT) if timeout is None else os.read(
                    _SUPER.fileno(self), 1)
            except BlockingIOError:
                token = None
            if token:
                try:
                    fd, child = b.ready.popleft()
                except IndexError:  # the listener was shut down meanwhile
                    continue
                b.taken.append(child)
                b.rt.call_soon(b.finish_accept)
                break
            if token == b"" or b.conn.state.name != "LISTEN":  # shut down: EOF
                raise _oserror(errno.EINVAL)
            if timeout == 0:
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            self._wait(select.POLLIN, timeout, deadline)
        sock = socket(_AF_INET, _STREAM, self.proto, fileno=fd)  # like the stdlib: the base class
        if _std.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        remote = child.remote_ip
        assert remote is not None  # an established connection's
        return sock, (ip_ntoa(remote), child.remote_port)

    # -- TCP data: the descriptor's own calls, with the stack's errors -------------------------
    def _send_check(self) -> None:
        """Before data goes into the pair: what Linux would raise instead (or wait for)."""
        b = self._b
        conn = b.conn
        if b.connected and not (b.error or conn.error) and conn.state.name != "CLOSED":
            return
        self._checkfd()
        if not b.connected and conn.state.name == "SYN_SENT":  # Linux waits for the connection
            timeout = _SUPER.gettimeout(self)
            if timeout == 0:
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            deadline = None if timeout is None else [time.monotonic() + timeout]
            while not b.connected and conn.state.name == "SYN_SENT":
                self._wait(select.POLLOUT, timeout, deadline)
        err = b.error or b.conn.error
        if err:
            code = self._call(_take_stream_error, b)
            if code:
                raise _oserror(code)
        st = b.conn.state.name
        if not b.connected and st in ("CLOSED", "LISTEN"):
            raise _oserror(errno.EPIPE)
        if b.connected and st == "CLOSED" and b.conn.reset:
            raise _oserror(errno.EPIPE)

    def _map_pipe(self) -> OSError:
        b = self._b
        code = self._call(_take_stream_error, b) if (b.error or b.conn.error) else 0
        return _oserror(code or errno.EPIPE)

    def send(self, data: Any, flags: int = 0) -> int:
        b = self._b
        if b is None:
            return _SUPER.send(self, data, flags)
        if isinstance(b, DatagramBridge):
            return self._udp_send(data, flags, None)
        self._send_check()
        try:
            return _SUPER.send(self, data, flags)
        except BrokenPipeError:
            raise self._map_pipe() from None

    def sendall(self, data: Any, flags: int = 0) -> None:
        b = self._b
        if b is None:
            return _SUPER.sendall(self, data, flags)
        if isinstance(b, DatagramBridge):
            self._udp_send(data, flags, None)
            return None
        self._send_check()
        try:
            return _SUPER.sendall(self, data, flags)
        except BrokenPipeError:
            raise self._map_pipe() from None

    def sendto(self, data: Any, flags_or_addr: Any, addr: Any = None) -> int:
        b = self._b
        if b is None:
            if addr is None:
                return _SUPER.sendto(self, data, flags_or_addr)
            return _SUPER.sendto(self, data, flags_or_addr, addr)
        flags, address = (0, flags_or_addr) if addr is None else (flags_or_addr, addr)
        if isinstance(b, DatagramBridge):
            return self._udp_send(data, _int(flags), address)
        self._address(address, "sendto")  # checked, then ignored like Linux TCP
        return self.send(data, flags)

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        b = self._b
        if b is None:
            if address is None:
                return _SUPER.sendmsg(self, buffers, ancdata, flags)
            return _SUPER.sendmsg(self, buffers, ancdata, flags, address)
        data = b"".join(bytes(memoryview(x)) for x in buffers)
        if isinstance(b, DatagramBridge):
            return self._udp_send(data, flags, address)
        self._send_check()
        try:
            return _SUPER.sendmsg(self, [data], [], flags)
        except BrokenPipeError:
            raise self._map_pipe() from None

    def _recv_check(self) -> None:
        b = self._b
        if not b.connected:
            st = b.conn.state.name
            if st == "LISTEN" or (st == "CLOSED" and not b.failed):
                self._checkfd()
                raise _oserror(errno.ENOTCONN)
            if b.failed:
                code = self._call(_take_stream_error, b)
                raise _oserror(code or errno.ENOTCONN)

    def _eof(self) -> None:
        """Empty read: EOF, or the connection's error (reported once)."""
        b = self._b
        if b.error:  # the receive side ended with an error (an EOF that came first is an EOF)
            code = self._call(b.take_error)
            if code:
                raise _oserror(code)
        if not b.rt.running:
            raise _oserror(errno.ENETDOWN)  # the stack stopped under us

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        b = self._b
        if b is None:
            return _SUPER.recv(self, bufsize, flags)
        if isinstance(b, DatagramBridge):
            return self._udp_recv(bufsize, flags, "recv")[0]
        if not b.connected:
            self._recv_check()
        data = _SUPER.recv(self, bufsize, flags)
        if not data and bufsize:
            self._eof()
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        b = self._b
        if b is None:
            return _SUPER.recv_into(self, buffer, nbytes, flags)
        if isinstance(b, DatagramBridge):
            return self._udp_recv_into(buffer, nbytes, flags, "recv_into")[0]
        if not b.connected:
            self._recv_check()
        n = _SUPER.recv_into(self, buffer, nbytes, flags)
        if not n and (nbytes or len(memoryview(buffer))):
            self._eof()
        return n

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        b = self._b
        if b is None:
            return _SUPER.recvfrom(self, bufsize, flags)
        if isinstance(b, DatagramBridge):
            return self._udp_recv(bufsize, flags, "recvfrom")
        return self.recv(bufsize, flags), None

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        b = self._b
        if b is None:
            return _SUPER.recvfrom_into(self, buffer, nbytes, flags)
        if isinstance(b, DatagramBridge):
            return self._udp_recv_into(buffer, nbytes, flags, "recvfrom_into")
        return self.recv_into(buffer, nbytes, flags), None

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> tuple[bytes, list[Any], int, Any]:
        b = self._b
        if b is None:
            return _SUPER.recvmsg(self, bufsize, ancbufsize, flags)
        if _int(bufsize) < 0:
            raise ValueError("negative buffer size in recvmsg()")
        if isinstance(b, DatagramBridge):
            data, addr, mflags = self._udp_record(bufsize, flags)
            return data, [], mflags, addr
        if not b.connected:
            self._recv_check()
        data, _, mflags, _ = _SUPER.recvmsg(self, bufsize, 0, flags)
        if not data and bufsize:
            self._eof()
        return data, [], mflags, None

    def recvmsg_into(self, buffers: Any, ancbufsize: int = 0, flags: int = 0) -> tuple[int, list[Any], int, Any]:
        b = self._b
        if b is None:
            return _SUPER.recvmsg_into(self, buffers, ancbufsize, flags)
        views = [memoryview(x).cast("B") for x in buffers]
        total = sum(len(v) for v in views)
        data, anc, mflags, addr = self.recvmsg(total, 0, flags)
        pos = 0
        for v in views:
            n = min(len(v), len(data) - pos)
            v[:n] = data[pos:pos + n]
            pos += n
        return len(data), anc, mflags, addr

    # -- UDP data ----------------------------------------------------------------------------
    def _udp_send(self, data: Any, flags: int, address: Any) -> int:
        b = self._b
        try:
            payload = memoryview(data).tobytes()
        except TypeError:
            raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") from None
        self._checkfd()
        if _int(flags) & ~(_std.MSG_DONTWAIT | getattr(_std, "MSG_NOSIGNAL", 0) | getattr(_std, "MSG_CONFIRM", 0)):
            raise _oserror(errno.EOPNOTSUPP)
        try:
            if address is None:
                return self._call(_udp_send_connected, b, payload)
            ip = self._address(address, "sendto")
            if _is_loopback(ip):
                self._to_kernel()
                return _SUPER.sendto(self, payload, flags, address)
            return self._call(_udp_sendto, b, payload, ip, address[1])
        except _PendingError as e:
            # its record is in the pair too: take it out when it is next, or the socket stays
            # readable with nothing to read
            try:
                head = _SUPER.recv(self, _HDR, _std.MSG_PEEK | _std.MSG_DONTWAIT)
                if len(head) == _HDR and head[0] != REC_DATA:
                    _SUPER.recv(self, _HDR, _std.MSG_DONTWAIT)
            except OSError:
                pass
            raise _oserror(e.errno or errno.EIO) from None

    def _udp_record(self, bufsize: int, flags: int, method: str = "recvfrom") -> tuple[
            bytes, tuple[str, int] | None, int]:
        if _int(bufsize) < 0:
            raise ValueError(f"negative buffersize in {method}")
        while True:
            data, _, mflags, _ = _SUPER.recvmsg(self, bufsize + _HDR, 0, flags)
            if len(data) < _HDR:
                if not data:  # the stack went away
                    raise _oserror(errno.ENETDOWN)
                continue
            kind, ip, port = RECORD.unpack_from(data)
            if kind == REC_DATA:
                return data[_HDR:], (ip_ntoa(ip), port), mflags
            if flags & _std.MSG_PEEK:  # consume the error record itself
                _SUPER.recv(self, _HDR, _std.MSG_DONTWAIT)
            code = self._call(self._b.take_error)
            if code:
                raise _oserror(code)

    def _udp_recv(self, bufsize: int, flags: int, method: str) -> tuple[bytes, tuple[str, int] | None]:
        data, addr, _ = self._udp_record(bufsize, flags, method)
        return data, addr

    def _udp_recv_into(self, buffer: Any, nbytes: int, flags: int, method: str) -> tuple[int, Any]:
        mv = memoryview(buffer).cast("B")
        if mv.readonly:
            raise TypeError("recv_into() argument 'buffer' must be read-write bytes-like object")
        if _int(nbytes) < 0:
            raise ValueError(f"negative buffersize in {method}")
        if nbytes > len(mv):
            raise ValueError("buffer too small for requested bytes")
        n = nbytes or len(mv)
        data, addr, _ = self._udp_record(n, flags)
        mv[:len(data)] = data
        return len(data), addr

    # -- addresses, shutdown ---------------------------------------------------------------------
    def getsockname(self) -> tuple[str, int]:
        b = self._b
        if b is None:
            return _SUPER.getsockname(self)
        self._checkfd()
        ep = b.conn if isinstance(b, StreamBridge) else b.ep
        return ip_ntoa(ep.local_ip), ep.local_port

    def getpeername(self) -> tuple[str, int]:
        b = self._b
        if b is None:
            return _SUPER.getpeername(self)
        self._checkfd()
        if isinstance(b, DatagramBridge):
            if b.ep.remote_ip is None:
                raise _oserror(errno.ENOTCONN)
            return ip_ntoa(b.ep.remote_ip), b.ep.remote_port
        conn = b.conn
        # Linux inet_getname: ENOTCONN in CLOSE and SYN_SENT (TIME_WAIT is CLOSE to the socket)
        if conn.remote_ip is None or not b.connected or conn.state.name in ("CLOSED", "LISTEN", "TIME_WAIT"):
            raise _oserror(errno.ENOTCONN)
        return ip_ntoa(conn.remote_ip), conn.remote_port

    def shutdown(self, how: int) -> None:
        b = self._b
        if b is None:
            return _SUPER.shutdown(self, how)
        self._checkfd()
        if not -0x80000000 <= _int(how) <= 0x7FFFFFFF:
            raise OverflowError("Python int too large to convert to C int")
        if how not in (0, 1, 2):
            raise _oserror(errno.EINVAL)
        if isinstance(b, DatagramBridge):
            if b.ep.remote_ip is None:
                raise _oserror(errno.ENOTCONN)
            _SUPER.shutdown(self, how)
            return None
        if not (how == 1 and b.connected and b.conn.state.name != "LISTEN"):
            self._call(_stream_shutdown, b, how)  # (SHUT_WR of a connection: the pair's EOF says it)
        if b.connected:
            _SUPER.shutdown(self, how)
        return None

    # -- options ---------------------------------------------------------------------------------
    def setsockopt(self, level: int, optname: int, value: Any, optlen: Any = None) -> None:
        b = self._b
        if b is None:
            if optlen is None:
                return _SUPER.setsockopt(self, level, optname, value)
            return _SUPER.setsockopt(self, level, optname, value, optlen)
        self._checkfd()
        v: int | None
        if value is None:  # setsockopt(level, opt, None, optlen): a NULL value
            v = 0
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            v = int.from_bytes(raw[:4].ljust(4, b"\0"), "little", signed=True) if len(raw) >= 4 else None
        else:
            v = _int(value)
        handled = self._call(_setopt, b, level, optname, value, v)
        if not handled:
            if level == _std.SOL_SOCKET:  # generic socket options act on the descriptor itself
                if optlen is None:
                    _SUPER.setsockopt(self, level, optname, value)
                else:
                    _SUPER.setsockopt(self, level, optname, value, optlen)
            else:
                raise _oserror(errno.ENOPROTOOPT)
        self._opts.append((level, optname, value))

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:  # type: ignore[override]
        b = self._b
        if b is None:
            if buflen is None:
                return _SUPER.getsockopt(self, level, optname)
            return _SUPER.getsockopt(self, level, optname, buflen)
        self._checkfd()
        value = self._call(_getopt, b, level, optname)
        if value is None:
            if level == _std.SOL_SOCKET:
                if buflen is None:
                    return _SUPER.getsockopt(self, level, optname)
                return _SUPER.getsockopt(self, level, optname, buflen)
            own = _std.IPPROTO_TCP if isinstance(b, StreamBridge) else _std.IPPROTO_UDP
            if level not in (_std.IPPROTO_IP, own):
                raise _oserror(errno.EOPNOTSUPP)  # Linux ip_getsockopt: not SOL_IP
            raise _oserror(errno.ENOPROTOOPT)
        if isinstance(value, bytes):
            if buflen is None:  # the stdlib reads an int: the kernel copies the first 4 bytes
                return struct.unpack("i", value[:4].ljust(4, b"\0"))[0]
            return value[:buflen]
        if buflen is None:
            return value
        return struct.pack("i", value)[:buflen]

    # -- the rest -----------------------------------------------------------------------------
    @property
    def connection(self) -> Any:
        """The stack object behind this socket (a TcpConnection or UdpEndpoint), or None for a
        kernel socket. Read it freely; change it only on the stack thread."""
        b = self._b
        if b is None:
            return None
        return b.conn if isinstance(b, StreamBridge) else b.ep

    @property
    def userland(self) -> bool:
        """True when the userland stack carries this socket (False: the kernel's)."""
        return self._b is not None


socket.__module__ = "usocket"
SocketType = socket


def socket_on(rt: Runtime, family: int = _AF_INET, type: int = _STREAM, proto: int = 0) -> socket:
    """A userland ``socket(family, type, proto)`` on the runtime ``rt`` instead of the
    process-wide one (several stacks in one process: tests, tools, experiments)."""
    base = type & ~_TYPE_FLAGS
    if family != _AF_INET or base not in (_STREAM, _DGRAM):
        raise OSError(errno.EAFNOSUPPORT, "socket_on() makes AF_INET stream or datagram sockets")
    sock = socket.__new__(socket)
    sock._b = None
    sock._opts = []
    sock._init_userland(rt, base, type, proto)
    return sock


def _noop() -> None:
    pass


# -- run on the stack thread ---------------------------------------------------------------------
def _take_stream_error(b: StreamBridge) -> int:
    return b.take_error() or b.conn.take_error()


class _PendingError(OSError):
    """A pending (ICMP) error taken by a send: see socket._udp_send."""


def _udp_send_connected(b: DatagramBridge, payload: bytes) -> int:
    code = b.ep.take_error() if b.ep.pending_error is not None else 0
    if code:
        raise _PendingError(code, os.strerror(code))
    return b.stack.udp.send(b.ep, payload)


def _udp_sendto(b: DatagramBridge, payload: bytes, ip: bytes, port: int) -> int:
    code = b.ep.take_error() if b.ep.pending_error is not None else 0
    if code:
        raise _PendingError(code, os.strerror(code))
    return b.stack.udp.sendto(b.ep, payload, ip, port)


def _stream_shutdown(b: StreamBridge, how: int) -> None:
    conn = b.conn
    if conn.state.name == "LISTEN":
        if how in (0, 2):
            b.stop_listening()
        return
    if not b.connected:
        if conn.state.name == "SYN_SENT":
            conn.shutdown(how)
            return
        raise _oserror(errno.ENOTCONN)
    if how in (0, 2):
        b.app_rd_shut = True
        conn.rd_shut = True
    # SHUT_WR reaches the connection as EOF on the pair, after the bytes written before it


def _setopt(b: Any, level: int, name: int, raw: Any, v: int | None) -> bool:
    """Apply a socket option on the stack thread; False: not an option of the stack."""
    stream = isinstance(b, StreamBridge)
    obj = b.conn if stream else b.ep
    if level == _std.SOL_SOCKET:
        if name == _std.SO_LINGER:
            if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) < _LINGER.size:
                raise _oserror(errno.EINVAL)
            onoff, secs = _LINGER.unpack(bytes(raw)[:_LINGER.size])
            if stream:
                obj.linger = float(max(0, secs)) if onoff else None
            return True
        if v is None:
            raise _oserror(errno.EINVAL)
        if name == _std.SO_REUSEADDR:
            obj.reuse_addr = bool(v)
        elif name == _SO_REUSEPORT:
            obj.reuse_port = bool(v)
        elif name == _std.SO_KEEPALIVE:
            if stream:
                obj.set_keepalive(bool(v))
        elif name == _std.SO_BROADCAST:
            if not stream:
                obj.broadcast = bool(v)
        elif name == _std.SO_RCVBUF:
            size = max(_BUF_MIN, 2 * min(max(v, 0), 1 << 30))
            if stream:
                obj.rcvbuf.capacity = size
                obj.rcvbuf_locked = True
                obj.ooo.max_bytes = size
            else:
                b.set_rcvbuf(size)
        elif name == _std.SO_SNDBUF:
            size = max(_SNDBUF_MIN, 2 * min(max(v, 0), 1 << 30))
            if stream:
                obj.sndbuf.capacity = size
            else:
                b.sndbuf = size
        else:
            return False
        return True
    if v is None:
        raise _oserror(errno.EINVAL)
    if level == _std.IPPROTO_IP:
        if name == _std.IP_TTL:
            if not (v == -1 or 1 <= v <= 255):
                raise _oserror(errno.EINVAL)
            obj.ttl = None if v == -1 else v
        elif name == _std.IP_TOS:  # Linux: TCP keeps the ECN bits its own
            obj.tos = (v & 0xFC) | (obj.tos & 0x03) if stream else v & 0xFF
        else:
            return False
        return True
    if level == _std.IPPROTO_TCP and stream:
        if name == _std.TCP_NODELAY:
            obj.set_nodelay(bool(v))
        elif name == _std.TCP_KEEPIDLE:
            _positive(v, 32767)
            obj.keepidle = float(v)
            obj.set_keepalive(obj.keepalive)
        elif name == _std.TCP_KEEPINTVL:
            _positive(v, 32767)
            obj.keepintvl = float(v)
        elif name == _std.TCP_KEEPCNT:
            _positive(v, 127)
            obj.keepcnt = v
        elif name == _std.TCP_MAXSEG:
            if v and not 88 <= v <= 32767:
                raise _oserror(errno.EINVAL)
            obj.user_mss = v
        elif name == getattr(_std, "TCP_USER_TIMEOUT", -1):
            if v < 0:
                raise _oserror(errno.EINVAL)
            obj.user_timeout = v / 1000.0 if v else None
        elif name == getattr(_std, "TCP_SYNCNT", -1):
            _positive(v, 127)
            obj.syn_retries = v
        elif name == getattr(_std, "TCP_CONGESTION", -1):
            if not isinstance(raw, (bytes, bytearray, memoryview)):
                raise _oserror(errno.EINVAL)
            obj.set_congestion(bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace"))
        else:
            return False
        return True
    return False


def _positive(v: int, top: int) -> None:
    if not 1 <= v <= top:
        raise _oserror(errno.EINVAL)


def _getopt(b: Any, level: int, name: int) -> int | bytes | None:
    stream = isinstance(b, StreamBridge)
    obj = b.conn if stream else b.ep
    if level == _std.SOL_SOCKET:
        if name == _std.SO_ERROR:
            return _take_stream_error(b) if stream else b.take_error()
        if name == _std.SO_TYPE:
            return _STREAM if stream else _DGRAM
        if name == getattr(_std, "SO_DOMAIN", -1):
            return _AF_INET
        if name == getattr(_std, "SO_PROTOCOL", -1):
            return _std.IPPROTO_TCP if stream else _std.IPPROTO_UDP
        if name == _std.SO_ACCEPTCONN:
            return int(stream and obj.state.name == "LISTEN")
        if name == _std.SO_LINGER:
            linger = obj.linger if stream else None
            return _LINGER.pack(int(linger is not None), int(linger or 0))
        if name == _std.SO_REUSEADDR:
            return int(obj.reuse_addr)
        if name == _SO_REUSEPORT:
            return int(obj.reuse_port)
        if name == _std.SO_KEEPALIVE:
            return int(obj.keepalive) if stream else 0
        if name == _std.SO_BROADCAST:
            return 0 if stream else int(obj.broadcast)
        if name == _std.SO_RCVBUF:
            return obj.rcvbuf.capacity if stream else obj.rcvbuf
        if name == _std.SO_SNDBUF:
            return obj.sndbuf.capacity if stream else b.sndbuf
        return None
    if level == _std.IPPROTO_IP:
        if name == _std.IP_TTL:
            return obj.ttl if obj.ttl is not None else b.stack.config.default_ttl
        if name == _std.IP_TOS:
            return obj.tos
        return None
    if level == _std.IPPROTO_TCP and stream:
        if name == _std.TCP_NODELAY:
            return int(obj.nodelay)
        if name == _std.TCP_KEEPIDLE:
            return int(obj.keepidle)
        if name == _std.TCP_KEEPINTVL:
            return int(obj.keepintvl)
        if name == _std.TCP_KEEPCNT:
            return obj.keepcnt
        if name == _std.TCP_MAXSEG:
            return obj.mss if obj.state.name not in ("CLOSED", "LISTEN") else (obj.user_mss or 536)
        if name == getattr(_std, "TCP_USER_TIMEOUT", -1):
            return int((obj.user_timeout or 0) * 1000)
        if name == getattr(_std, "TCP_SYNCNT", -1):
            return obj.syn_retries if obj.syn_retries is not None else b.stack.tcp.config.syn_retries
        if name == getattr(_std, "TCP_CONGESTION", -1):
            return obj.congestion.encode().ljust(16, b"\0")
        return None
    return None


__all__ = ["socket", "SocketType", "socket_on"]
