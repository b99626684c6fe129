"""``import usocket as socket`` against CPython's own expectations of ``socket``.

The behaviours of CPython's ``Lib/test/test_socket.py`` that apply to AF_INET (GeneralModuleTests,
BasicTCPTest, BasicUDPTest, TCPCloserTest, NonBlockingTCPTests, the FileObjectClassTestCase
family, NetworkConnection*, TCP/UDPTimeoutTest, ContextManagersTest, InheritanceTest,
NonblockConstantTest, BufferIOTest, the Sendfile tests, dup/detach), plus the Linux semantics
real programs lean on (errnos, RST versus FIN, readiness exactness, socket options), written
afresh for the facade.

Most tests take the ``net`` fixture and run twice: once on the kernel (the stdlib ``socket``
module on 127.0.0.1) and once on the userland stack (``usocket`` on 10.0.0.1, the stack's own
address in the ``loop_runtime`` fixture, so every byte goes through the userland TCP/UDP
engine; ``Net.sock`` asserts each socket is really the stack's). The kernel run proves the
expectation is Linux's, the userland run that the facade matches it. Where the facade differs,
the userland run is a strict xfail (``userland_bug``) whose reason names the bug; the proposed
fixes are in the report of the session that wrote this file.

Tests that only make sense on the stack (a peer that drops SYNs, the registry, 1000 sockets)
take ``u``, the userland ``Net`` alone.
"""
from __future__ import annotations

import array
import errno
import fcntl
import gc
import hashlib
import io
import os
import pickle
import random
import resource
import select
import selectors
import socket as stdsocket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import usocket as _usocket

usocket: Any = _usocket  # its socket names are copied in at import time: mypy cannot see them

USERLAND_HOST = "10.0.0.1"  # the loop_runtime stack's own address
KERNEL_HOST = "127.0.0.1"
FOREIGN = "192.0.2.1"  # on no local interface: binding it is EADDRNOTAVAIL
MSG = "Michael Gilfix was here\u1234\r\n".encode("utf-8")  # CPython's test message
T = 5.0  # timeout for operations that must succeed (a hang fails instead of blocking the suite)
SHORT = 0.15  # timeout for operations that must time out
POLL_ALL = select.POLLIN | select.POLLOUT | select.POLLPRI | select.POLLRDHUP
LINGER = struct.Struct("ii")


# ------------------------------------------------------------------------------------- harness
class Net:
    """One side of the comparison: a socket module and the address its servers bind.

    Every socket made through it is closed at teardown, so a failing test leaks nothing."""

    def __init__(self, name: str, mod: Any, host: str, rt: Any = None) -> None:
        self.name = name
        self.mod = mod
        self.host = host
        self.rt = rt
        self.socks: list[Any] = []

    @property
    def userland(self) -> bool:
        return self.name == "userland"

    def track(self, sock: Any) -> Any:
        if self.userland:
            assert sock.userland, f"{sock!r} is not carried by the userland stack"
        self.socks.append(sock)
        return sock

    def sock(self, *args: Any, **kw: Any) -> Any:
        return self.track(self.mod.socket(*args, **kw))

    def udp(self, bind: bool = False) -> Any:
        s = self.sock(self.mod.AF_INET, self.mod.SOCK_DGRAM)
        s.settimeout(T)
        if bind:
            s.bind((self.host, 0))
        return s

    def listener(self, backlog: int = 128) -> Any:
        s = self.sock()
        s.bind((self.host, 0))
        s.listen(backlog)
        return s

    def accept(self, listener: Any) -> tuple[Any, Any]:
        conn, addr = listener.accept()
        return self.track(conn), addr

    def pair(self) -> tuple[Any, Any]:
        """A connected ``(client, server)`` pair, both with timeout ``T``."""
        lst = self.listener()
        lst.settimeout(T)
        c = self.sock()
        c.settimeout(T)
        c.connect(lst.getsockname())
        a, _ = self.accept(lst)
        a.settimeout(T)
        lst.close()
        return c, a

    def closed_port(self, kind: int = stdsocket.SOCK_STREAM) -> int:
        """A port on ``host`` that nobody is bound to (TCP: RST; UDP: ICMP port unreachable)."""
        s = self.mod.socket(self.mod.AF_INET, kind)
        try:
            s.bind((self.host, 0))
            return int(s.getsockname()[1])
        finally:
            s.close()

    def close_all(self) -> None:
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture(params=["kernel", "userland"])
def net(request: pytest.FixtureRequest) -> Iterator[Net]:
    """The scenario's socket module: the kernel's (stdlib, 127.0.0.1) or the stack's."""
    if request.param == "userland":
        n = Net("userland", usocket, USERLAND_HOST, request.getfixturevalue("loop_runtime"))
    else:
        n = Net("kernel", stdsocket, KERNEL_HOST)
    try:
        yield n
    finally:
        n.close_all()


@pytest.fixture
def u(loop_runtime: Any) -> Iterator[Net]:
    """The userland side alone."""
    n = Net("userland", usocket, USERLAND_HOST, loop_runtime)
    try:
        yield n
    finally:
        n.close_all()


@pytest.fixture(autouse=True)
def _default_timeout() -> Iterator[None]:
    """setdefaulttimeout is process-wide (and the same function in both modules): restore it."""
    before = stdsocket.getdefaulttimeout()
    try:
        yield
    finally:
        stdsocket.setdefaulttimeout(before)


def userland_bug(reason: str) -> pytest.MarkDecorator:
    """Run on both stacks; the userland run is a strict xfail for the facade bug ``reason``."""
    return pytest.mark.parametrize(
        "net", ["kernel", pytest.param("userland", marks=pytest.mark.xfail(strict=True, reason=reason))],
        indirect=True)


def poll_mask(sock: Any, timeout: float = 0.0) -> int:
    """The poll(2) events of ``sock`` now (or within ``timeout`` seconds)."""
    p = select.poll()
    p.register(sock, POLL_ALL)
    got = p.poll(timeout * 1000)
    return got[0][1] if got else 0


def readable(sock: Any, timeout: float = 0.0) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def writable(sock: Any, timeout: float = 0.0) -> bool:
    return bool(select.select([], [sock], [], timeout)[1])


def eventually(check: Callable[[], Any], timeout: float = T, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something true (for states no descriptor event shows)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.005)


def recv_all(sock: Any, bufsize: int = 65536) -> bytes:
    out = bytearray()
    while True:
        chunk = sock.recv(bufsize)
        if not chunk:
            return bytes(out)
        out += chunk


class Reader(threading.Thread):
    """Reads ``sock`` to EOF in a thread (so a sender never blocks on full buffers)."""

    def __init__(self, sock: Any) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.data = b""
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.data = recv_all(self.sock)
        except BaseException as e:  # reported by result()
            self.error = e

    def result(self) -> bytes:
        self.join(T * 4)
        assert not self.is_alive(), "reader still running"
        if self.error is not None:
            raise self.error
        return self.data


def reset_by(sock: Any, mod: Any) -> None:
    """Close ``sock`` abortively (SO_LINGER 1, 0): the peer gets an RST."""
    sock.setsockopt(mod.SOL_SOCKET, mod.SO_LINGER, LINGER.pack(1, 0))
    sock.close()


def op_outcome(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``'s result, or the exception class name and errno it raised."""
    try:
        return fn(*args)
    except OSError as e:
        return (type(e).__name__, e.errno)


# ====================================================================== module surface (usocket)
SHARED_NAMES = ["error", "herror", "gaierror", "timeout", "_GLOBAL_DEFAULT_TIMEOUT", "AddressFamily",
                "SocketKind", "MsgFlag", "AddressInfo", "inet_aton", "inet_ntoa", "inet_pton", "inet_ntop",
                "htons", "ntohs", "htonl", "ntohl", "getdefaulttimeout", "setdefaulttimeout", "AF_INET",
                "SOCK_STREAM", "SOCK_DGRAM", "SOL_SOCKET", "SO_REUSEADDR", "MSG_PEEK", "SHUT_RDWR",
                "IPPROTO_TCP", "TCP_NODELAY", "has_ipv6", "CMSG_LEN", "if_nameindex", "gethostname"]


class TestModuleSurface:
    def test_every_public_name_of_socket_exists(self) -> None:
        """A drop-in must not miss a name a program could use."""
        missing = [n for n in dir(stdsocket) if not n.startswith("__") and not hasattr(usocket, n)]
        assert missing == []
        assert set(usocket.__all__) == set(stdsocket.__all__)

    @pytest.mark.parametrize("name", SHARED_NAMES)
    def test_shared_objects_are_the_stdlibs(self, name: str) -> None:
        """Exceptions, enums, constants and pure helpers are the stdlib's own objects, so
        ``except socket.timeout`` and ``family == AF_INET`` mean the same in mixed code."""
        assert getattr(usocket, name) is getattr(stdsocket, name)

    def test_pure_helpers_compute(self) -> None:
        assert usocket.inet_aton("10.0.0.1") == b"\n\0\0\1"
        assert usocket.inet_ntoa(b"\xc0\xa8\x01\x02") == "192.168.1.2"
        assert usocket.htons(1) == stdsocket.htons(1) and usocket.ntohl(usocket.htonl(7)) == 7
        with pytest.raises(OSError):
            usocket.inet_aton("300.1.1.1")

    def test_exceptions_are_oserrors(self) -> None:
        """testSocketError: the module's exceptions are OSError (and timeout is TimeoutError)."""
        for exc in (usocket.error, usocket.herror, usocket.gaierror, usocket.timeout):
            assert issubclass(exc, OSError)
        assert usocket.timeout is TimeoutError and usocket.error is OSError

    def test_socket_type_is_the_class(self, loop_runtime: Any) -> None:
        assert usocket.SocketType is usocket.socket
        assert issubclass(usocket.socket, stdsocket.socket)
        with usocket.socket() as s:
            assert s.userland
            assert isinstance(s, stdsocket.socket) and isinstance(s, usocket.SocketType)
            assert type(s).__module__ == "usocket" and type(s).__qualname__ == "socket"

    def test_module_helpers_build_userland_sockets(self, loop_runtime: Any) -> None:
        """create_server/create_connection are the stdlib's functions, but they must build
        usocket sockets (a copied function would build kernel ones)."""
        with usocket.create_server((USERLAND_HOST, 0)) as srv:
            assert srv.userland and srv.getsockopt(usocket.SOL_SOCKET, usocket.SO_ACCEPTCONN) == 1
            with usocket.create_connection(srv.getsockname(), timeout=T) as c:
                a, addr = srv.accept()
                with a:
                    assert c.userland and a.userland and addr == c.getsockname()
                    c.sendall(b"ping")
                    assert a.recv(10) == b"ping"

    def test_loopback_goes_to_the_kernel(self, loop_runtime: Any) -> None:
        """By design the facade hands loopback to the kernel: a usocket client of a kernel
        server on 127.0.0.1 and a usocket server on 127.0.0.1 for a kernel client."""
        with stdsocket.create_server((KERNEL_HOST, 0)) as ksrv, usocket.socket() as c:
            c.settimeout(T)
            assert c.userland
            c.connect(ksrv.getsockname())
            assert not c.userland and c.connection is None
            a, addr = ksrv.accept()
            with a:
                assert addr == c.getsockname() and c.getpeername() == ksrv.getsockname()
                c.sendall(b"to kernel")
                assert a.recv(100) == b"to kernel"
        with usocket.socket() as srv:
            srv.bind((KERNEL_HOST, 0))
            assert not srv.userland
            srv.listen()
            with stdsocket.create_connection(srv.getsockname(), timeout=T) as kc:
                a, _ = srv.accept()
                with a:
                    kc.sendall(b"from kernel")
                    assert a.recv(100) == b"from kernel"
        with usocket.socket(usocket.AF_INET, usocket.SOCK_DGRAM) as us, \
                stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as ks:
            ks.bind((KERNEL_HOST, 0))
            ks.settimeout(T)
            us.sendto(b"dgram", ks.getsockname())
            assert not us.userland
            data, addr = ks.recvfrom(100)
            assert data == b"dgram" and addr[1] == us.getsockname()[1]

    def test_userland_traffic_goes_through_the_stack(self, u: Net) -> None:
        """The userland tests prove the stack: segments are counted by its TCP layer."""
        tcp = u.rt.stack.counters["tcp"]
        before = tcp["tx"]
        c, a = u.pair()
        c.sendall(b"x" * 10000)
        assert a.recv(20000)
        assert tcp["tx"] > before and tcp["active_open"] >= 1 and tcp["passive_open"] >= 1


# ====================================================================== creation, modes, repr
class TestCreation:
    def test_defaults(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        assert s.family is m.AddressFamily.AF_INET and s.type is m.SocketKind.SOCK_STREAM and s.proto == 0
        assert s.gettimeout() is None and s.getblocking()
        assert not fcntl.fcntl(s, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not s.get_inheritable() and fcntl.fcntl(s, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert s.getsockname() == ("0.0.0.0", 0)

    def test_dgram_defaults(self, net: Net) -> None:
        m = net.mod
        s = net.sock(m.AF_INET, m.SOCK_DGRAM)
        assert s.family == m.AF_INET and s.type == m.SOCK_DGRAM and s.proto == 0
        assert s.getsockopt(m.SOL_SOCKET, m.SO_TYPE) == m.SOCK_DGRAM

    def test_explicit_protocols(self, net: Net) -> None:
        m = net.mod
        assert net.sock(m.AF_INET, m.SOCK_STREAM, m.IPPROTO_TCP).proto == m.IPPROTO_TCP
        assert net.sock(m.AF_INET, m.SOCK_DGRAM, m.IPPROTO_UDP).proto == m.IPPROTO_UDP
        assert net.sock(m.AF_INET, m.SOCK_STREAM).getsockopt(m.SOL_SOCKET, m.SO_PROTOCOL) == m.IPPROTO_TCP

    def test_sock_nonblock_and_cloexec_flags(self, net: Net) -> None:
        """NonblockConstantTest/InheritanceTest: the type flags act and are not part of .type."""
        m = net.mod
        s = net.sock(m.AF_INET, m.SOCK_STREAM | m.SOCK_NONBLOCK | m.SOCK_CLOEXEC)
        assert s.type == m.SOCK_STREAM and s.gettimeout() == 0.0 and not s.getblocking()
        assert fcntl.fcntl(s, fcntl.F_GETFL) & os.O_NONBLOCK and not s.get_inheritable()
        for change in (lambda: s.settimeout(1), lambda: s.settimeout(0), lambda: s.setblocking(True)):
            change()
            assert s.type == m.SOCK_STREAM
        d = net.sock(m.AF_INET, m.SOCK_DGRAM | m.SOCK_NONBLOCK)
        assert d.type == m.SOCK_DGRAM and d.gettimeout() == 0.0
        with pytest.raises(BlockingIOError):
            d.recv(1)

    @pytest.mark.parametrize("change, timeout", [
        (lambda s: s.setblocking(True), None), (lambda s: s.setblocking(False), 0.0),
        (lambda s: s.settimeout(None), None), (lambda s: s.settimeout(0), 0.0),
        (lambda s: s.settimeout(10), 10.0), (lambda s: s.settimeout(2.5), 2.5)])
    def test_blocking_modes(self, net: Net, change: Callable[[Any], None], timeout: float | None) -> None:
        """NonBlockingTCPTests.testSetBlocking: the timeout, getblocking() and O_NONBLOCK agree
        (a timeout > 0 is O_NONBLOCK underneath)."""
        s = net.sock()
        s.settimeout(3)
        change(s)
        assert s.gettimeout() == timeout and s.getblocking() == (timeout != 0.0)
        assert bool(fcntl.fcntl(s, fcntl.F_GETFL) & os.O_NONBLOCK) == (timeout is not None)

    def test_settimeout_rejects_bad_values(self, net: Net) -> None:
        s = net.sock()
        with pytest.raises(ValueError):
            s.settimeout(-1)
        with pytest.raises(TypeError):
            s.settimeout("1")  # type: ignore[arg-type]

    def test_default_timeout_applies_to_new_sockets(self, net: Net) -> None:
        m = net.mod
        for default, blocking in ((0.0, False), (2.0, True), (None, True)):
            m.setdefaulttimeout(default)
            for kind in (m.SOCK_STREAM, m.SOCK_DGRAM):
                s = net.sock(m.AF_INET, kind)
                assert s.gettimeout() == default and s.getblocking() == blocking
                assert bool(fcntl.fcntl(s, fcntl.F_GETFL) & os.O_NONBLOCK) == (default is not None)

    def test_repr(self, net: Net) -> None:
        """The stdlib's repr: fd, family, type, proto, laddr, raddr once connected, [closed]."""
        prefix = f"<{net.mod.__name__}.socket"
        c, a = net.pair()
        fresh = net.sock()
        assert repr(fresh) == f"{prefix} fd={fresh.fileno()}, family=2, type=1, proto=0, laddr=('0.0.0.0', 0)>"
        fresh.bind((net.host, 0))
        assert f"laddr={fresh.getsockname()}>" in repr(fresh) and "raddr" not in repr(fresh)
        assert repr(c) == (f"{prefix} fd={c.fileno()}, family=2, type=1, proto=0, laddr={c.getsockname()}, "
                           f"raddr={c.getpeername()}>")
        c.close()
        assert repr(c) == f"{prefix} [closed] fd=-1, family=2, type=1, proto=0>"
        assert "laddr" not in repr(c)

    def test_enum_str_and_repr(self, net: Net) -> None:
        s = net.sock()
        assert repr(s.family) == "<AddressFamily.AF_INET: 2>" and repr(s.type) == "<SocketKind.SOCK_STREAM: 1>"
        assert str(s.family) == "2" and str(s.type) == "1"

    def test_context_manager(self, net: Net) -> None:
        """ContextManagersTest: leaving the block closes; an error inside still closes."""
        m = net.mod
        with net.sock() as s:
            assert not s._closed
        assert s._closed and s.fileno() == -1
        with net.sock() as s:
            s.close()
        assert s._closed
        with pytest.raises(OSError):
            with net.sock() as s:
                s.sendall(b"foo")  # not connected
        assert s._closed
        lst = net.listener()
        with m.create_connection(lst.getsockname(), timeout=T) as c:
            a, _ = net.accept(lst)
            c.sendall(b"foo")
            assert a.recv(10) == b"foo"
        assert c._closed
        with pytest.raises(OSError):
            c.sendall(b"foo")

    def test_weakref(self, net: Net) -> None:
        s = net.mod.socket()
        p = weakref.proxy(s)
        assert p.fileno() == s.fileno()
        s.close()
        del s
        gc.collect()
        with pytest.raises(ReferenceError):
            p.fileno()

    def test_pickle_refused(self, net: Net) -> None:
        s = net.sock()
        with pytest.raises(TypeError):
            pickle.dumps(s)
        assert pickle.loads(pickle.dumps(net.mod.AF_INET)) == net.mod.AF_INET

    def test_inheritance(self, net: Net) -> None:
        """InheritanceTest: not inheritable by default, dup neither, set_inheritable flips
        FD_CLOEXEC."""
        s = net.sock()
        assert not s.get_inheritable()
        d = net.track(s.dup())
        assert not d.get_inheritable()
        s.set_inheritable(True)
        assert s.get_inheritable() and not fcntl.fcntl(s, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        s.set_inheritable(False)
        assert not s.get_inheritable()
        fcntl.fcntl(s, fcntl.F_SETFD, 0)
        assert s.get_inheritable()

    def test_garbage_collected_socket_warns_and_closes(self, net: Net) -> None:
        """test_dealloc_warn: an unclosed socket is closed by its finalizer with a
        ResourceWarning; the peer then reads EOF."""
        lst = net.listener()
        c = net.mod.socket()
        c.settimeout(T)
        c.connect(lst.getsockname())
        a, _ = net.accept(lst)
        text = repr(c)
        with pytest.warns(ResourceWarning) as rec:
            del c
            gc.collect()
        assert any(text in str(w.message) for w in rec)
        a.settimeout(T)
        assert a.recv(10) == b""


# ====================================================================================== bind
class TestBind:
    def test_port_zero_gets_an_ephemeral_port(self, net: Net) -> None:
        s = net.sock()
        s.bind((net.host, 0))
        host, port = s.getsockname()
        assert host == net.host and 1024 <= port <= 65535
        t = net.sock()
        t.bind((net.host, 0))
        assert t.getsockname()[1] != port

    def test_empty_host_is_any(self, net: Net) -> None:
        s = net.sock()
        s.bind(("", 0))
        assert s.getsockname()[0] == "0.0.0.0" and s.getsockname()[1] != 0
        s.listen()
        c = net.sock()
        c.settimeout(T)
        c.connect((net.host, s.getsockname()[1]))  # a wildcard listener takes the stack's address
        a, _ = net.accept(s)
        assert a.getsockname() == (net.host, s.getsockname()[1])

    def test_bind_twice_is_einval(self, net: Net) -> None:
        s = net.sock()
        s.bind((net.host, 0))
        with pytest.raises(OSError) as e:
            s.bind((net.host, 0))
        assert e.value.errno == errno.EINVAL

    def test_port_in_use(self, net: Net) -> None:
        s = net.sock()
        s.bind((net.host, 0))
        with pytest.raises(OSError) as e:
            net.sock().bind(s.getsockname())
        assert e.value.errno == errno.EADDRINUSE

    def test_wildcard_conflicts_with_specific(self, net: Net) -> None:
        s = net.sock()
        s.bind(("", 0))
        with pytest.raises(OSError) as e:
            net.sock().bind((net.host, s.getsockname()[1]))
        assert e.value.errno == errno.EADDRINUSE

    def test_reuseaddr_allows_rebinding_unless_listening(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        s.setsockopt(m.SOL_SOCKET, m.SO_REUSEADDR, 1)
        s.bind((net.host, 0))
        t = net.sock()
        t.setsockopt(m.SOL_SOCKET, m.SO_REUSEADDR, 1)
        t.bind(s.getsockname())  # neither listens: Linux allows it
        s.listen()
        v = net.sock()
        v.setsockopt(m.SOL_SOCKET, m.SO_REUSEADDR, 1)
        with pytest.raises(OSError) as e:
            v.bind(s.getsockname())
        assert e.value.errno == errno.EADDRINUSE

    def test_reuseport_shares_a_listening_port(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        s.setsockopt(m.SOL_SOCKET, m.SO_REUSEPORT, 1)
        s.bind((net.host, 0))
        s.listen()
        t = net.sock()
        t.setsockopt(m.SOL_SOCKET, m.SO_REUSEPORT, 1)
        t.bind(s.getsockname())
        t.listen()
        assert t.getsockname() == s.getsockname()

    def test_foreign_address_is_eaddrnotavail(self, net: Net) -> None:
        for kind in (net.mod.SOCK_STREAM, net.mod.SOCK_DGRAM):
            with pytest.raises(OSError) as e:
                net.sock(net.mod.AF_INET, kind).bind((FOREIGN, 0))
            assert e.value.errno == errno.EADDRNOTAVAIL

    def test_bad_arguments(self, net: Net) -> None:
        """test_getsockaddrarg: ports out of range are OverflowError, wrong shapes TypeError."""
        s = net.sock()
        for port in (65536, -1, 70000):
            with pytest.raises(OverflowError):
                s.bind((net.host, port))
        for addr in ("x", (net.host,), (1234, 0), [net.host, 0]):
            with pytest.raises(TypeError):
                s.bind(addr)
        s.bind((net.host, 0))  # still unbound after the failures

    def test_port_is_free_again_after_close(self, net: Net) -> None:
        lst = net.listener()
        addr = lst.getsockname()
        lst.close()
        again = net.sock()
        again.bind(addr)  # a listener leaves no TIME_WAIT behind
        again.listen()

    def test_tcp_and_udp_ports_are_independent(self, net: Net) -> None:
        lst = net.listener()
        net.udp().bind(lst.getsockname())


# ============================================================================== listen, accept
class TestListenAccept:
    def test_backlogs(self, net: Net) -> None:
        """test_listen_backlog: 0, negative and the default are all accepted."""
        for backlog in (0, -1):
            s = net.sock()
            s.bind((net.host, 0))
            s.listen(backlog)
        s = net.sock()
        s.bind((net.host, 0))
        s.listen()
        assert s.getsockopt(net.mod.SOL_SOCKET, net.mod.SO_ACCEPTCONN) == 1
        assert net.sock().getsockopt(net.mod.SOL_SOCKET, net.mod.SO_ACCEPTCONN) == 0

    def test_listen_without_bind_picks_a_port(self, net: Net) -> None:
        s = net.sock()
        s.listen()
        assert s.getsockname()[1] != 0

    def test_queued_connections_in_order_and_reset_when_the_listener_closes(self, net: Net) -> None:
        """Connections established before accept() come out oldest first (the facade makes
        their pairs ahead of accept()); one nobody accepted is reset when the listener closes,
        while accepted ones live on."""
        lst = net.listener(8)
        lst.settimeout(T)
        clients = [net.sock() for _ in range(3)]
        for c in clients:
            c.settimeout(T)
            c.connect(lst.getsockname())
        assert readable(lst, T)
        a, addr = net.accept(lst)
        a2, addr2 = net.accept(lst)
        assert (addr, addr2) == (clients[0].getsockname(), clients[1].getsockname())
        assert a.getpeername() == addr and a2.getpeername() == addr2
        lst.close()
        with pytest.raises(ConnectionResetError):
            clients[2].recv(1)
        a2.sendall(b"x")
        assert clients[1].recv(1) == b"x"
        clients[0].sendall(b"y")
        assert a.recv(1) == b"y"
        if net.userland:  # the never-accepted connection's descriptor was closed, not leaked
            assert not lst._b.ready and not lst._b.taken

    def test_accept_returns_the_peer(self, net: Net) -> None:
        lst = net.listener()
        lst.settimeout(T)
        c = net.sock()
        c.connect(lst.getsockname())
        a, addr = net.accept(lst)
        assert addr == c.getsockname() == a.getpeername()
        assert a.getsockname() == lst.getsockname() == c.getpeername()
        assert a.family == net.mod.AF_INET and a.type == net.mod.SOCK_STREAM and a.proto == 0
        assert isinstance(a, net.mod.socket) and a.gettimeout() is None

    def test_accept_timeout(self, net: Net) -> None:
        """TCPTimeoutTest: accept with a timeout raises TimeoutError('timed out') on time."""
        lst = net.listener()
        lst.settimeout(SHORT)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="timed out"):
            lst.accept()
        assert SHORT * 0.9 <= time.monotonic() - t0 < SHORT + 1

    def test_nonblocking_accept(self, net: Net) -> None:
        """NonBlockingTCPTests.testAccept: BlockingIOError at once, then select says readable
        and the accepted socket is blocking."""
        lst = net.listener()
        lst.setblocking(False)
        t0 = time.monotonic()
        with pytest.raises(BlockingIOError) as e:
            lst.accept()
        assert e.value.errno == errno.EAGAIN and time.monotonic() - t0 < 1
        c = net.sock()
        c.connect(lst.getsockname())
        assert readable(lst, T)
        a, _ = net.accept(lst)
        assert a.gettimeout() is None and a.getblocking()
        with pytest.raises(BlockingIOError):
            lst.accept()

    def test_accepted_socket_takes_the_default_timeout(self, net: Net) -> None:
        """testInheritFlags*: with no default timeout the accepted socket is blocking even when
        the listener has a timeout; with a default it gets the default."""
        m = net.mod
        lst = net.listener()
        lst.settimeout(T)
        net.sock().connect(lst.getsockname())
        a, _ = net.accept(lst)
        assert a.gettimeout() is None and not fcntl.fcntl(a, fcntl.F_GETFL) & os.O_NONBLOCK
        m.setdefaulttimeout(20.0)
        c2 = net.sock()
        c2.connect(lst.getsockname())
        a2, _ = net.accept(lst)
        assert a2.gettimeout() == 20.0

    def test_accept_on_a_socket_not_listening(self, net: Net) -> None:
        s = net.sock()
        s.bind((net.host, 0))
        with pytest.raises(OSError) as e:
            s.accept()
        assert e.value.errno == errno.EINVAL

    def test_listen_on_a_connected_socket(self, net: Net) -> None:
        c, _ = net.pair()
        with pytest.raises(OSError) as e:
            c.listen()
        assert e.value.errno == errno.EINVAL

    def test_accept_queue(self, net: Net) -> None:
        """Connections complete before accept() and wait in the queue, each accepted once."""
        lst = net.listener(8)
        lst.settimeout(T)
        clients = []
        for _ in range(5):
            c = net.sock()
            c.connect(lst.getsockname())
            clients.append(c)
        peers = {net.accept(lst)[1] for _ in clients}
        assert peers == {c.getsockname() for c in clients}
        lst.settimeout(0)
        with pytest.raises(BlockingIOError):
            lst.accept()

    def test_concurrent_accepts(self, net: Net) -> None:
        """Threads blocked in accept() on one listener each get exactly one connection."""
        lst = net.listener()
        lst.settimeout(T)
        got: list[Any] = []
        lock = threading.Lock()

        def take() -> None:
            conn, addr = lst.accept()
            with lock:
                got.append((net.track(conn), addr))

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        clients = [net.sock() for _ in range(4)]
        for c in clients:
            c.connect(lst.getsockname())
        for t in threads:
            t.join(T * 2)
        assert sorted(addr for _, addr in got) == sorted(c.getsockname() for c in clients)

    def test_listener_shutdown_stops_accepting(self, net: Net) -> None:
        """Linux: shutdown(SHUT_RD/RDWR) of a listener closes it; accept is EINVAL."""
        lst = net.listener()
        lst.shutdown(net.mod.SHUT_RDWR)
        with pytest.raises(OSError) as e:
            lst.accept()
        assert e.value.errno == errno.EINVAL

    def test_listener_shutdown_wakes_a_blocked_accept(self, net: Net) -> None:
        """Servers stop their accept loop by shutting the listener down from another thread."""
        lst = net.listener()
        lst.settimeout(1.0)
        result: list[Any] = []
        started = threading.Event()

        def acc() -> None:
            started.set()
            result.append(op_outcome(lambda: lst.accept()))

        t = threading.Thread(target=acc)
        t.start()
        started.wait(T)
        time.sleep(0.05)  # let accept() block (no event tells that a thread is inside poll)
        lst.shutdown(net.mod.SHUT_RDWR)
        t.join(T)
        assert result == [("OSError", errno.EINVAL)]

    def test_listener_close_resets_queued_connections(self, net: Net) -> None:
        lst = net.listener()
        c = net.sock()
        c.settimeout(T)
        c.connect(lst.getsockname())
        lst.close()
        with pytest.raises(ConnectionResetError):
            c.recv(10)


# ============================================================================= connect
class TestConnect:
    def test_refused(self, net: Net) -> None:
        """NetworkConnectionNoServer.test_connect."""
        c = net.sock()
        with pytest.raises(ConnectionRefusedError) as e:
            c.connect((net.host, net.closed_port()))
        assert e.value.errno == errno.ECONNREFUSED

    def test_connect_ex(self, net: Net) -> None:
        assert net.sock().connect_ex((net.host, net.closed_port())) == errno.ECONNREFUSED
        lst = net.listener()
        c = net.sock()
        assert c.connect_ex(lst.getsockname()) == 0
        assert c.connect_ex(lst.getsockname()) == errno.EISCONN

    def test_connect_twice_is_eisconn(self, net: Net) -> None:
        """(A blocking connect: after one with a timeout, Linux returns 0 once more, see
        test_nonblocking_connect_reports_success_once.)"""
        lst = net.listener()
        c = net.sock()
        c.connect(lst.getsockname())
        with pytest.raises(OSError) as e:
            c.connect(lst.getsockname())
        assert e.value.errno == errno.EISCONN

    def test_nonblocking_connect(self, net: Net) -> None:
        """EINPROGRESS, then writable with SO_ERROR 0, then the names, then EISCONN."""
        m = net.mod
        lst = net.listener()
        c = net.sock()
        c.setblocking(False)
        with pytest.raises(BlockingIOError) as e:
            c.connect(lst.getsockname())
        assert e.value.errno == errno.EINPROGRESS
        assert writable(c, T)
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0
        assert c.getpeername() == lst.getsockname()
        eventually(lambda: c.connect_ex(lst.getsockname()) == errno.EISCONN, what="EISCONN")

    def test_nonblocking_connect_reports_success_once(self, net: Net) -> None:
        lst = net.listener()
        c = net.sock()
        c.setblocking(False)
        assert c.connect_ex(lst.getsockname()) == errno.EINPROGRESS
        assert writable(c, T)
        assert c.connect_ex(lst.getsockname()) == 0
        assert c.connect_ex(lst.getsockname()) == errno.EISCONN

    def test_nonblocking_connect_refused(self, net: Net) -> None:
        m = net.mod
        c = net.sock()
        c.setblocking(False)
        assert c.connect_ex((net.host, net.closed_port())) == errno.EINPROGRESS
        assert writable(c, T)
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ECONNREFUSED
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0  # reported once
        with pytest.raises(OSError) as e:
            c.getpeername()
        assert e.value.errno == errno.ENOTCONN

    @userland_bug("a failed connect only makes the socket writable; Linux also reports it readable "
                  "(POLLIN|POLLERR|POLLHUP), which select-based code waiting for either sees")
    def test_failed_connect_is_readable_and_writable(self, net: Net) -> None:
        c = net.sock()
        c.setblocking(False)
        c.connect_ex((net.host, net.closed_port()))
        assert writable(c, T)
        assert readable(c)
        assert poll_mask(c) & (select.POLLERR | select.POLLHUP) == select.POLLERR | select.POLLHUP

    def test_connect_again_after_refused(self, net: Net) -> None:
        """A refused (blocking) connect leaves a socket that may connect again."""
        m = net.mod
        port = net.closed_port()
        c = net.sock()
        assert c.connect_ex((net.host, port)) == errno.ECONNREFUSED
        lst = net.sock()
        lst.setsockopt(m.SOL_SOCKET, m.SO_REUSEADDR, 1)
        lst.bind((net.host, port))
        lst.listen()
        assert c.connect_ex((net.host, port)) == 0
        a, _ = net.accept(lst)
        a.sendall(b"x")
        c.settimeout(T)
        assert c.recv(1) == b"x" and writable(c)

    def test_bad_arguments(self, net: Net) -> None:
        c = net.sock()
        with pytest.raises(OverflowError):
            c.connect((net.host, 65536))
        with pytest.raises(TypeError):
            c.connect(net.host)
        with pytest.raises(TypeError):
            c.connect((net.host,))

    def test_names_of_a_connection(self, net: Net) -> None:
        c, a = net.pair()
        assert c.getsockname()[0] == net.host and c.getsockname()[1] not in (0, a.getsockname()[1])
        assert c.getpeername() == a.getsockname() and a.getpeername() == c.getsockname()

    def test_getpeername_enotconn(self, net: Net) -> None:
        lst = net.listener()
        for s in (net.sock(), lst):
            with pytest.raises(OSError) as e:
                s.getpeername()
            assert e.value.errno == errno.ENOTCONN
        c, a = net.pair()
        a.close()  # FIN: still connected (CLOSE_WAIT) for getpeername
        assert c.recv(1) == b""
        assert c.getpeername()[0] == net.host
        c.close()
        with pytest.raises(OSError) as e:
            c.getpeername()
        assert e.value.errno == errno.EBADF

    def test_create_connection_attributes(self, net: Net) -> None:
        """NetworkConnectionAttributesTest: family, source_address, the timeout rules."""
        m = net.mod
        lst = net.listener()
        addr = lst.getsockname()
        c = net.track(m.create_connection(addr, timeout=T))
        assert c.family == 2 and c.gettimeout() == T
        port = net.closed_port()
        c = net.track(m.create_connection(addr, timeout=T, source_address=("", port)))
        assert c.getsockname()[1] == port
        assert net.track(m.create_connection(addr, 30)).gettimeout() == 30
        m.setdefaulttimeout(42)
        assert net.track(m.create_connection(addr)).gettimeout() == 42
        assert net.track(m.create_connection(addr, timeout=None)).gettimeout() is None

    def test_create_connection_refused(self, net: Net) -> None:
        m = net.mod
        port = net.closed_port()
        with pytest.raises(ConnectionRefusedError):
            m.create_connection((net.host, port))
        with pytest.raises(ExceptionGroup) as eg:
            m.create_connection((net.host, port), all_errors=True)
        assert all(isinstance(e, ConnectionRefusedError) for e in eg.value.exceptions)


class TestConnectUserland:
    """A peer that never answers: an address on the stack's subnet nobody answers ARP for (the
    kernel gives EHOSTUNREACH after its ARP probes, ~3 s; the stack's probes are made 0.2 s
    apart here to keep the tests short)."""

    @pytest.fixture(autouse=True)
    def _fast_arp(self, u: Net) -> None:
        u.rt.call(setattr, u.rt.stack.arp, "retrans_time", 0.2)

    def test_connecting_socket(self, u: Net) -> None:
        m = u.mod
        c = u.sock()
        c.setblocking(False)
        assert c.connect_ex(("10.0.0.2", 80)) == errno.EINPROGRESS
        assert poll_mask(c, 0.1) == 0  # SYN_SENT: neither readable nor writable
        with pytest.raises(OSError) as e:
            c.connect(("10.0.0.2", 80))
        assert e.value.errno == errno.EALREADY
        with pytest.raises(OSError) as e:
            c.getpeername()
        assert e.value.errno == errno.ENOTCONN
        assert c.getsockname()[0] == USERLAND_HOST and c.getsockname()[1] != 0
        with pytest.raises(BlockingIOError):
            c.recv(1)
        assert writable(c, T)  # ARP gave up
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.EHOSTUNREACH

    def test_connect_timeout(self, u: Net) -> None:
        c = u.sock()
        c.settimeout(SHORT)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="timed out"):
            c.connect(("10.0.0.3", 80))
        assert SHORT * 0.9 <= time.monotonic() - t0 < 0.5

    def test_connect_again_after_timeout_is_ealready(self, u: Net) -> None:
        """Linux (checked against a silent host): the attempt goes on after the stdlib's timeout,
        and connect() again raises EALREADY at once (the stdlib waits only after EINPROGRESS)."""
        c = u.sock()
        c.settimeout(SHORT)
        with pytest.raises(TimeoutError):
            c.connect(("10.0.0.4", 80))
        t0 = time.monotonic()
        with pytest.raises(BlockingIOError) as e:
            c.connect(("10.0.0.4", 80))
        assert e.value.errno == errno.EALREADY and time.monotonic() - t0 < 0.1

    def test_blocking_connect_waits_for_the_attempt_in_progress(self, u: Net) -> None:
        """(Checked on Linux: EINPROGRESS, setblocking(True), connect() -> EHOSTUNREACH ~3 s later.)"""
        c = u.sock()
        c.setblocking(False)
        assert c.connect_ex(("10.0.0.7", 80)) == errno.EINPROGRESS
        c.setblocking(True)
        with pytest.raises(OSError) as e:
            c.connect(("10.0.0.7", 80))
        assert e.value.errno == errno.EHOSTUNREACH

    def test_blocking_connect_to_a_silent_host(self, u: Net) -> None:
        """Like Linux: 'No route to host' once ARP gives up (not a hang, not ETIMEDOUT)."""
        c = u.sock()
        t0 = time.monotonic()
        with pytest.raises(OSError) as e:
            c.connect(("10.0.0.5", 80))
        assert e.value.errno == errno.EHOSTUNREACH and time.monotonic() - t0 < 3

    def test_unreachable_network(self, u: Net) -> None:
        with pytest.raises(OSError) as e:
            u.sock().connect(("10.9.9.9", 80))  # off-link, and the loop stack has no gateway
        assert e.value.errno == errno.ENETUNREACH

    def test_send_while_connecting(self, u: Net) -> None:
        """Linux sk_stream_wait_connect: send() waits for the connection: BlockingIOError when
        non-blocking, TimeoutError after the timeout (not written ahead into a buffer)."""
        c = u.sock()
        c.setblocking(False)
        c.connect_ex(("10.0.0.6", 80))
        with pytest.raises(BlockingIOError):
            c.send(b"x")
        c.settimeout(SHORT)
        with pytest.raises(TimeoutError):
            c.send(b"x")


# ========================================================================= TCP data
class TestData:
    def test_send_and_recv(self, net: Net) -> None:
        """BasicTCPTest.testRecv/testOverFlowRecv."""
        c, a = net.pair()
        assert a.send(MSG) == len(MSG)
        assert c.recv(1024) == MSG
        a.send(MSG)
        first = c.recv(len(MSG) - 3)
        assert first + recv_exactly(c, 3) == MSG

    def test_recvfrom_on_tcp_has_no_address(self, net: Net) -> None:
        c, a = net.pair()
        a.sendall(MSG)
        assert c.recvfrom(1024) == (MSG, None)

    def test_sendall_then_close(self, net: Net) -> None:
        """testSendAll: everything arrives, then EOF."""
        c, a = net.pair()
        a.sendall(b"f" * 2048)
        a.close()
        assert recv_all(c, 1024) == b"f" * 2048

    def test_recv_into(self, net: Net) -> None:
        """BufferIOTest."""
        c, a = net.pair()
        for make in (lambda: array.array("B", [0] * len(MSG)), lambda: bytearray(1024),
                     lambda: memoryview(bytearray(1024))):
            a.sendall(MSG)
            buf = make()
            n = c.recv_into(buf)
            assert n == len(MSG) and bytes(buf)[:n] == MSG
        a.sendall(MSG)
        buf = bytearray(1024)
        assert c.recv_into(buf, 5) == 5 and buf[:5] == MSG[:5]
        assert recv_exactly(c, len(MSG) - 5) == MSG[5:]
        with pytest.raises(TypeError):
            c.recv_into(b"readonly")

    def test_recvfrom_into(self, net: Net) -> None:
        """(An empty buffer with no data queued blocks on Linux: CPython's test sends first.)"""
        c, a = net.pair()
        a.sendall(MSG)
        assert readable(c, T)
        with pytest.raises(ValueError):
            c.recvfrom_into(bytearray(8), 1024)  # issue #20246
        assert c.recvfrom_into(bytearray()) == (0, None)
        assert c.recvfrom_into(bytearray(), 0) == (0, None)
        buf = bytearray(1024)
        assert c.recvfrom_into(buf) == (len(MSG), None) and buf[:len(MSG)] == MSG

    def test_recv_zero_and_negative(self, net: Net) -> None:
        c, _ = net.pair()
        assert c.recv(0) == b""  # returns at once, no data needed
        with pytest.raises(ValueError):
            c.recv(-1)

    def test_msg_peek(self, net: Net) -> None:
        m = net.mod
        c, a = net.pair()
        a.sendall(b"hello")
        assert readable(c, T)
        assert c.recv(3, m.MSG_PEEK) == b"hel"
        assert c.recv(10, m.MSG_PEEK) == b"hello"
        assert c.recv(10) == b"hello"
        assert not readable(c)

    def test_msg_dontwait(self, net: Net) -> None:
        m = net.mod
        c, a = net.pair()
        c.settimeout(None)
        with pytest.raises(BlockingIOError) as e:
            c.recv(3, m.MSG_DONTWAIT)
        assert e.value.errno == errno.EAGAIN and c.gettimeout() is None
        a.sendall(b"abc")
        assert readable(c, T)
        assert c.recv(3, m.MSG_DONTWAIT) == b"abc"

    def test_msg_waitall(self, net: Net) -> None:
        c, a = net.pair()
        go = threading.Event()

        def trickle() -> None:
            go.wait(T)
            for _ in range(4):
                a.sendall(b"ab")
                time.sleep(0.02)  # separate segments on purpose

        t = threading.Thread(target=trickle)
        t.start()
        go.set()
        c.settimeout(None)  # MSG_WAITALL waits on blocking descriptors only
        assert c.recv(8, net.mod.MSG_WAITALL) == b"abababab"
        t.join(T)

    def test_recvmsg(self, net: Net) -> None:
        m = net.mod
        c, a = net.pair()
        a.sendall(MSG)
        assert readable(c, T)
        assert c.recvmsg(4, 0, m.MSG_PEEK) == (MSG[:4], [], 0, None)
        assert c.recvmsg(1024) == (MSG, [], 0, None)

    def test_recvmsg_into_scatters(self, net: Net) -> None:
        c, a = net.pair()
        a.sendall(b"0123456789")
        assert readable(c, T)
        b1, b2 = bytearray(4), bytearray(10)
        assert c.recvmsg_into([b1, memoryview(b2)]) == (10, [], 0, None)
        assert b1 == b"0123" and b2 == b"456789\0\0\0\0"

    def test_sendmsg_gathers(self, net: Net) -> None:
        c, a = net.pair()
        assert c.sendmsg([b"ab", memoryview(b"cd"), bytearray(b"ef"), array.array("B", b"gh")]) == 8
        assert recv_exactly(a, 8) == b"abcdefgh"

    def test_sendto_on_tcp_ignores_the_address(self, net: Net) -> None:
        c, a = net.pair()
        assert c.sendto(b"ab", ("192.0.2.9", 5)) == 2
        assert c.sendto(b"cd", 0, ("192.0.2.9", 5)) == 2
        assert recv_exactly(a, 4) == b"abcd"

    def test_data_calls_on_unconnected_sockets(self, net: Net) -> None:
        """Linux: send before connect is EPIPE, recv is ENOTCONN (also on a listener)."""
        s = net.sock()
        with pytest.raises(BrokenPipeError):
            s.send(b"x")
        with pytest.raises(BrokenPipeError):
            s.sendall(b"x")
        lst = net.listener()
        for sock in (s, lst):
            with pytest.raises(OSError) as e:
                sock.recv(1)
            assert e.value.errno == errno.ENOTCONN

    def test_recv_timeout_then_data(self, net: Net) -> None:
        """NetworkConnectionBehaviourTest: TimeoutError('timed out'); the socket stays usable."""
        c, a = net.pair()
        c.settimeout(SHORT)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="^timed out$"):
            c.recv(5)
        assert time.monotonic() - t0 >= SHORT * 0.9
        a.sendall(b"done!")
        c.settimeout(T)
        assert c.recv(5) == b"done!"

    def test_nonblocking_recv(self, net: Net) -> None:
        """NonBlockingTCPTests.testRecv."""
        c, a = net.pair()
        c.setblocking(False)
        with pytest.raises(BlockingIOError):
            c.recv(len(MSG))
        a.sendall(MSG)
        assert readable(c, T)
        assert c.recv(len(MSG)) == MSG

    def test_nonblocking_send_fills_then_drains(self, net: Net) -> None:
        """A reader that stops reading stops the writer (bounded buffering), and the data is
        intact once it reads again."""
        c, a = net.pair()
        c.setblocking(False)
        rng = random.Random(1)
        sent = bytearray()
        while True:
            chunk = rng.randbytes(65536)
            try:
                n = c.send(chunk)
            except BlockingIOError:
                if not writable(c, 0.2):
                    break
                continue
            sent += chunk[:n]
            assert len(sent) < 64 << 20, "the send side never fills"
        assert len(sent) > 65536 and not writable(c)
        reader = Reader(a)
        assert writable(c, T)  # space again once the peer reads
        c.close()
        assert hashlib.sha256(reader.result()).digest() == hashlib.sha256(sent).digest()

    def test_sendall_timeout(self, net: Net) -> None:
        c, _ = net.pair()
        c.settimeout(SHORT)
        with pytest.raises(TimeoutError):
            c.sendall(b"x" * (64 << 20))

    def test_large_transfer_both_ways(self, net: Net) -> None:
        """4 MiB each way at once, one thread per direction and socket, checked by sha256."""
        c, a = net.pair()
        up, down = random.Random(2).randbytes(4 << 20), random.Random(3).randbytes(4 << 20)
        readers = (Reader(a), Reader(c))

        def send(sock: Any, data: bytes) -> None:
            sock.sendall(data)
            sock.shutdown(net.mod.SHUT_WR)

        senders = [threading.Thread(target=send, args=args) for args in ((c, up), (a, down))]
        for t in senders:
            t.start()
        for t in senders:
            t.join(T * 4)
        assert hashlib.sha256(readers[0].result()).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(readers[1].result()).digest() == hashlib.sha256(down).digest()


def sender(net: Net, sock: Any) -> tuple[str, int]:
    """The source address a datagram from ``sock`` (bound to the wildcard) arrives with."""
    return (net.host, sock.getsockname()[1])


def recv_exactly(sock: Any, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "EOF before the expected bytes"
        out += chunk
    return out


# ============================================================================== shutdown
class TestShutdown:
    def test_shut_wr(self, net: Net) -> None:
        """The peer reads the data then EOF; we still read; our sends are EPIPE."""
        c, a = net.pair()
        c.sendall(b"abc")
        c.shutdown(net.mod.SHUT_WR)
        assert recv_exactly(a, 3) == b"abc" and a.recv(10) == b""
        a.sendall(b"back")
        assert recv_exactly(c, 4) == b"back"
        with pytest.raises(BrokenPipeError):
            c.send(b"x")

    def test_shut_rd(self, net: Net) -> None:
        """Our reads return EOF at once (and wake no one needlessly); we still send."""
        c, a = net.pair()
        c.shutdown(net.mod.SHUT_RD)
        assert c.recv(10) == b""
        c.sendall(b"still")
        assert recv_exactly(a, 5) == b"still"

    @userland_bug("data arriving after SHUT_RD is discarded; Linux queues it and recv returns it")
    def test_data_after_shut_rd_is_still_readable(self, net: Net) -> None:
        c, a = net.pair()
        c.shutdown(net.mod.SHUT_RD)
        a.sendall(b"late")
        assert eventually(lambda: c.recv(10, net.mod.MSG_DONTWAIT) if readable(c) else None,
                          timeout=1.0) == b"late"

    def test_shut_rdwr(self, net: Net) -> None:
        m = net.mod
        c, a = net.pair()
        c.shutdown(m.SHUT_RDWR)
        assert c.recv(10) == b"" and a.recv(10) == b""
        with pytest.raises(BrokenPipeError):
            c.send(b"x")
        c.shutdown(m.SHUT_RDWR)  # again: fine
        assert c.getsockname()[0] == net.host  # still a socket

    def test_shutdown_errors(self, net: Net) -> None:
        m = net.mod
        with pytest.raises(OSError) as e:
            net.sock().shutdown(m.SHUT_RDWR)
        assert e.value.errno == errno.ENOTCONN
        c, _ = net.pair()
        with pytest.raises(OSError) as e:
            c.shutdown(3)
        assert e.value.errno == errno.EINVAL

    def test_shutdown_overflow(self, net: Net) -> None:
        c, _ = net.pair()
        with pytest.raises(OverflowError):
            c.shutdown(2 ** 40)
        c.shutdown(net.mod.SHUT_RDWR)

    def test_shutdown_after_peer_closed(self, net: Net) -> None:
        """BasicTCPTest.testShutdown: shutting down a half-closed connection is fine."""
        c, a = net.pair()
        a.sendall(MSG)
        a.shutdown(net.mod.SHUT_RDWR)
        assert recv_exactly(c, len(MSG)) == MSG and c.recv(1) == b""
        c.shutdown(net.mod.SHUT_RDWR)

    @pytest.mark.parametrize("how", ["SHUT_RD", "SHUT_RDWR"])
    def test_shutdown_wakes_a_blocked_recv(self, net: Net, how: str) -> None:
        """A thread blocked in recv() returns b'' when another thread shuts the socket down."""
        c, _ = net.pair()
        got: list[Any] = []
        started = threading.Event()

        def reader() -> None:
            started.set()
            got.append(op_outcome(lambda: c.recv(10)))

        t = threading.Thread(target=reader)
        t.start()
        started.wait(T)
        time.sleep(0.05)  # let recv() block (no event tells that a thread is inside poll)
        c.shutdown(getattr(net.mod, how))
        t.join(T)
        assert got == [b""]


# ============================================================================== close
class TestClose:
    def test_closed_socket(self, net: Net) -> None:
        """Every call on a closed socket is EBADF; close twice is fine; fileno() is -1."""
        m = net.mod
        s = net.sock()
        s.close()
        s.close()
        assert s.fileno() == -1
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("send", (b"x",)), ("sendall", (b"x",)), ("sendto", (b"x", (net.host, 1))), ("recv", (1,)),
            ("recv_into", (bytearray(1),)), ("recvfrom", (1,)), ("getsockname", ()), ("getpeername", ()),
            ("bind", ((net.host, 0),)), ("connect", ((net.host, 1),)), ("connect_ex", ((net.host, 1),)),
            ("listen", ()), ("accept", ()), ("shutdown", (2,)), ("settimeout", (1,)),
            ("setsockopt", (m.SOL_SOCKET, m.SO_REUSEADDR, 1)), ("getsockopt", (m.SOL_SOCKET, m.SO_REUSEADDR))]
        outcomes = {}
        for name, args in calls:
            outcomes[name] = op_outcome(getattr(s, name), *args)
        assert outcomes == {name: ("OSError", errno.EBADF) for name, _ in calls} | {"connect_ex": errno.EBADF}

    def test_closed_udp_socket(self, net: Net) -> None:
        s = net.udp()
        s.close()
        for call in (lambda: s.send(b"x"), lambda: s.sendto(b"x", (net.host, 9)), lambda: s.recvfrom(1)):
            assert op_outcome(call) == ("OSError", errno.EBADF)

    def test_close_sends_eof(self, net: Net) -> None:
        """TCPCloserTest: the peer becomes readable and reads b''; closing again is safe."""
        c, a = net.pair()
        a.close()
        assert readable(c, 1.0)
        assert c.recv(1) == b""
        a.close()
        a.close()

    def test_closing_the_peer_then_sending(self, net: Net) -> None:
        """After the peer closed, the first send succeeds, its RST makes the next ones EPIPE."""
        c, a = net.pair()
        a.close()
        assert c.recv(1) == b""
        assert c.send(b"x") == 1
        assert eventually(lambda: op_outcome(lambda: c.send(b"y")) == ("BrokenPipeError", errno.EPIPE),
                          what="EPIPE")
        assert c.recv(1) == b""

    def test_close_with_unread_data_resets(self, net: Net) -> None:
        """Linux tcp_close: closing with received data unread sends RST, not FIN."""
        c, a = net.pair()
        c.sendall(b"unread")
        assert readable(a, T)
        a.close()
        assert readable(c, T)
        assert op_outcome(lambda: c.recv(10)) == ("ConnectionResetError", errno.ECONNRESET)
        assert c.recv(10) == b""
        assert op_outcome(lambda: c.send(b"x")) == ("BrokenPipeError", errno.EPIPE)

    def test_linger_zero_resets(self, net: Net) -> None:
        """SO_LINGER (1, 0): close() sends only an RST; the peer's first call gets ECONNRESET,
        then reads EOF, writes EPIPE and has no peer name."""
        m = net.mod
        c, a = net.pair()
        reset_by(a, m)
        assert readable(c, T)
        assert op_outcome(lambda: c.recv(10)) == ("ConnectionResetError", errno.ECONNRESET)
        assert c.recv(10) == b""
        assert op_outcome(lambda: c.send(b"x")) == ("BrokenPipeError", errno.EPIPE)
        assert op_outcome(c.getpeername) == ("OSError", errno.ENOTCONN)

    def test_reset_reported_by_send_first(self, net: Net) -> None:
        """The pending ECONNRESET goes to whichever call comes first, here send()."""
        m = net.mod
        c, a = net.pair()
        reset_by(a, m)
        assert readable(c, T)
        assert op_outcome(lambda: c.send(b"x")) == ("ConnectionResetError", errno.ECONNRESET)
        assert op_outcome(lambda: c.send(b"x")) == ("BrokenPipeError", errno.EPIPE)
        assert c.recv(10) == b""

    def test_linger_with_timeout_delivers(self, net: Net) -> None:
        m = net.mod
        c, a = net.pair()
        c.setsockopt(m.SOL_SOCKET, m.SO_LINGER, LINGER.pack(1, 5))
        assert LINGER.unpack(c.getsockopt(m.SOL_SOCKET, m.SO_LINGER, LINGER.size)) == (1, 5)
        c.sendall(b"abc")
        t0 = time.monotonic()
        c.close()
        assert time.monotonic() - t0 < 1
        assert recv_exactly(a, 3) == b"abc" and a.recv(10) == b""

    def test_closing_another_object_on_the_same_fd(self, net: Net) -> None:
        """testCloseException/test_socket_close: the descriptor is gone for the first object."""
        m = net.mod
        s = net.sock()
        s.bind((net.host, 0))
        m.socket(fileno=s.fileno()).close()
        assert op_outcome(s.close) == ("OSError", errno.EBADF)
        with pytest.raises(OSError):
            m.close(-1)

    def test_calls_after_the_descriptor_was_closed_elsewhere(self, net: Net) -> None:
        """test_socket_close."""
        m = net.mod
        s = net.sock()
        s.bind((net.host, 0))
        m.close(s.fileno())
        assert op_outcome(lambda: s.listen(1)) == ("OSError", errno.EBADF)
        assert op_outcome(s.getsockname) == ("OSError", errno.EBADF)
        assert op_outcome(s.close) == ("OSError", errno.EBADF)


# ============================================================================== readiness
class TestReadiness:
    @userland_bug("a fresh (or bound) TCP socket polls as POLLOUT|POLLHUP on Linux (tcp_poll of "
                  "TCP_CLOSE), so select() calls it readable and writable; the facade's filler makes "
                  "it neither (a socketpair cannot show HUP and take it back at connect)")
    def test_fresh_socket(self, net: Net) -> None:
        s = net.sock()
        assert poll_mask(s) == select.POLLOUT | select.POLLHUP
        s.bind((net.host, 0))
        assert poll_mask(s) == select.POLLOUT | select.POLLHUP

    def test_listener_readable_only_with_a_pending_connection(self, net: Net) -> None:
        lst = net.listener()
        lst.settimeout(T)
        ep = select.epoll()
        ep.register(lst.fileno(), select.EPOLLIN | select.EPOLLOUT)
        sel = selectors.DefaultSelector()
        sel.register(lst, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            assert poll_mask(lst) == 0 and not readable(lst) and not writable(lst)
            assert ep.poll(0) == [] and sel.select(0) == []
            c = net.sock()
            c.connect(lst.getsockname())
            assert poll_mask(lst, T) == select.POLLIN
            assert ep.poll(0) == [(lst.fileno(), select.EPOLLIN)]
            assert [(k.fileobj, ev) for k, ev in sel.select(0)] == [(lst, selectors.EVENT_READ)]
            net.accept(lst)
            assert poll_mask(lst) == 0 and ep.poll(0) == [] and sel.select(0) == []
        finally:
            ep.close()
            sel.close()

    def test_connected_socket(self, net: Net) -> None:
        """Writable and not readable while idle; readable with data and not after reading it
        (urllib3 calls a pooled connection dead when poll says readable); readable at EOF."""
        c, a = net.pair()
        ep = select.epoll()
        ep.register(c.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP)
        sel = selectors.DefaultSelector()
        sel.register(c, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            for _ in range(2):
                assert poll_mask(c) == select.POLLOUT
                assert ep.poll(0) == [(c.fileno(), select.EPOLLOUT)]
                assert [ev for _, ev in sel.select(0)] == [selectors.EVENT_WRITE]
                assert not readable(c) and writable(c)
                a.sendall(b"data")
                assert readable(c, T)
                assert poll_mask(c) == select.POLLIN | select.POLLOUT
                assert ep.poll(0) == [(c.fileno(), select.EPOLLIN | select.EPOLLOUT)]
                assert c.recv(100) == b"data"
                c.sendall(b"reply")
                assert recv_exactly(a, 5) == b"reply"
            a.close()
            assert readable(c, T)
            assert poll_mask(c) == select.POLLIN | select.POLLOUT | select.POLLRDHUP
            assert [ev for _, ev in sel.select(0)] == [selectors.EVENT_READ | selectors.EVENT_WRITE]
        finally:
            ep.close()
            sel.close()

    def test_idle_pooled_connection_is_not_dropped(self, net: Net) -> None:
        """urllib3's is_connection_dropped: wait_for_read(sock, timeout=0) after a full
        request/response is False; after the server closes it is True."""
        c, a = net.pair()
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert recv_exactly(a, 18)
        a.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert recv_exactly(c, 38)
        for _ in range(3):
            assert select.select([c], [], [], 0) == ([], [], [])
        a.close()
        assert select.select([c], [], [], T)[0] == [c]

    def test_half_closed_masks(self, net: Net) -> None:
        c, a = net.pair()
        c.shutdown(net.mod.SHUT_WR)
        assert readable(a, T)
        assert poll_mask(a) == select.POLLIN | select.POLLOUT | select.POLLRDHUP
        assert poll_mask(c) == select.POLLOUT

    def test_reset_connection_is_readable_and_writable(self, net: Net) -> None:
        c, a = net.pair()
        reset_by(a, net.mod)
        assert readable(c, T) and writable(c)

    @userland_bug("after an RST Linux polls POLLIN|POLLOUT|POLLERR|POLLHUP|POLLRDHUP; the pair shows "
                  "no POLLERR/POLLHUP (only a half-closed stack end)")
    def test_reset_connection_poll_mask(self, net: Net) -> None:
        c, a = net.pair()
        reset_by(a, net.mod)
        assert readable(c, T)
        assert poll_mask(c) == (select.POLLIN | select.POLLOUT | select.POLLERR | select.POLLHUP
                                | select.POLLRDHUP)

    def test_udp_socket(self, net: Net) -> None:
        r, s = net.udp(bind=True), net.udp()
        assert poll_mask(r) == select.POLLOUT and poll_mask(s) == select.POLLOUT
        s.sendto(b"x", r.getsockname())
        assert readable(r, T)
        assert poll_mask(r) == select.POLLIN | select.POLLOUT
        assert r.recv(10) == b"x"
        assert poll_mask(r) == select.POLLOUT


# ============================================================================== options
class TestOptions:
    def test_defaults(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        got = {name: s.getsockopt(level, getattr(m, name)) for level, name in [
            (m.IPPROTO_TCP, "TCP_NODELAY"), (m.IPPROTO_TCP, "TCP_KEEPIDLE"), (m.IPPROTO_TCP, "TCP_KEEPINTVL"),
            (m.IPPROTO_TCP, "TCP_KEEPCNT"), (m.IPPROTO_TCP, "TCP_MAXSEG"), (m.IPPROTO_IP, "IP_TTL"),
            (m.IPPROTO_IP, "IP_TOS"), (m.SOL_SOCKET, "SO_KEEPALIVE"), (m.SOL_SOCKET, "SO_REUSEADDR"),
            (m.SOL_SOCKET, "SO_REUSEPORT"), (m.SOL_SOCKET, "SO_ERROR"), (m.SOL_SOCKET, "SO_TYPE"),
            (m.SOL_SOCKET, "SO_DOMAIN"), (m.SOL_SOCKET, "SO_PROTOCOL"), (m.SOL_SOCKET, "SO_ACCEPTCONN")]}
        assert got == {"TCP_NODELAY": 0, "TCP_KEEPIDLE": 7200, "TCP_KEEPINTVL": 75, "TCP_KEEPCNT": 9,
                       "TCP_MAXSEG": 536, "IP_TTL": 64, "IP_TOS": 0, "SO_KEEPALIVE": 0, "SO_REUSEADDR": 0,
                       "SO_REUSEPORT": 0, "SO_ERROR": 0, "SO_TYPE": m.SOCK_STREAM, "SO_DOMAIN": m.AF_INET,
                       "SO_PROTOCOL": m.IPPROTO_TCP, "SO_ACCEPTCONN": 0}

    @pytest.mark.parametrize("level, name", [
        ("SOL_SOCKET", "SO_REUSEADDR"), ("SOL_SOCKET", "SO_REUSEPORT"), ("SOL_SOCKET", "SO_KEEPALIVE"),
        ("IPPROTO_TCP", "TCP_NODELAY")])
    def test_boolean_options(self, net: Net, level: str, name: str) -> None:
        m = net.mod
        s = net.sock()
        lvl, opt = getattr(m, level), getattr(m, name)
        s.setsockopt(lvl, opt, 5)
        assert s.getsockopt(lvl, opt) == 1
        s.setsockopt(lvl, opt, 0)
        assert s.getsockopt(lvl, opt) == 0
        s.setsockopt(lvl, opt, b"\1\0\0\0")
        assert s.getsockopt(lvl, opt) == 1
        assert s.getsockopt(lvl, opt, 4) == struct.pack("i", 1)

    def test_buffer_sizes_are_doubled(self, net: Net) -> None:
        """Linux stores twice the requested SO_RCVBUF/SO_SNDBUF (bookkeeping overhead)."""
        m = net.mod
        s = net.sock()
        for size in (4096, 65536):
            for opt in (m.SO_RCVBUF, m.SO_SNDBUF):
                s.setsockopt(m.SOL_SOCKET, opt, size)
                assert s.getsockopt(m.SOL_SOCKET, opt) == 2 * size
        s.setsockopt(m.SOL_SOCKET, m.SO_RCVBUF, 1)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_RCVBUF) == 2304  # SOCK_MIN_RCVBUF

    def test_sndbuf_minimum(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        s.setsockopt(m.SOL_SOCKET, m.SO_SNDBUF, 1)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_SNDBUF) == 4608

    def test_udp_rcvbuf(self, net: Net) -> None:
        m = net.mod
        s = net.udp()
        assert s.getsockopt(m.SOL_SOCKET, m.SO_RCVBUF) > 0
        s.setsockopt(m.SOL_SOCKET, m.SO_RCVBUF, 65536)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_RCVBUF) == 131072

    def test_udp_sndbuf(self, net: Net) -> None:
        m = net.mod
        s = net.udp()
        s.setsockopt(m.SOL_SOCKET, m.SO_SNDBUF, 65536)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_SNDBUF) == 131072

    def test_keepalive_tuning(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        for name, value, bad in (("TCP_KEEPIDLE", 30, (0, 32768)), ("TCP_KEEPINTVL", 5, (0, 32768)),
                                 ("TCP_KEEPCNT", 3, (0, 128))):
            opt = getattr(m, name)
            s.setsockopt(m.IPPROTO_TCP, opt, value)
            assert s.getsockopt(m.IPPROTO_TCP, opt) == value
            for v in bad:
                with pytest.raises(OSError) as e:
                    s.setsockopt(m.IPPROTO_TCP, opt, v)
                assert e.value.errno == errno.EINVAL
        s.setsockopt(m.SOL_SOCKET, m.SO_KEEPALIVE, 1)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_KEEPALIVE) == 1

    def test_maxseg(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        with pytest.raises(OSError) as e:
            s.setsockopt(m.IPPROTO_TCP, m.TCP_MAXSEG, 10)
        assert e.value.errno == errno.EINVAL
        s.setsockopt(m.IPPROTO_TCP, m.TCP_MAXSEG, 1000)
        lst = net.listener()
        s.settimeout(T)
        s.connect(lst.getsockname())
        assert 0 < s.getsockopt(m.IPPROTO_TCP, m.TCP_MAXSEG) <= 1000
        c, _ = net.pair()
        assert 536 <= c.getsockopt(m.IPPROTO_TCP, m.TCP_MAXSEG) <= 65495

    def test_ip_ttl(self, net: Net) -> None:
        m = net.mod
        for s in (net.sock(), net.udp()):
            s.setsockopt(m.IPPROTO_IP, m.IP_TTL, 10)
            assert s.getsockopt(m.IPPROTO_IP, m.IP_TTL) == 10
            for bad in (0, 256):
                with pytest.raises(OSError) as e:
                    s.setsockopt(m.IPPROTO_IP, m.IP_TTL, bad)
                assert e.value.errno == errno.EINVAL
            s.setsockopt(m.IPPROTO_IP, m.IP_TTL, -1)
            assert s.getsockopt(m.IPPROTO_IP, m.IP_TTL) == 64

    def test_ip_tos_udp(self, net: Net) -> None:
        m = net.mod
        s = net.udp()
        s.setsockopt(m.IPPROTO_IP, m.IP_TOS, 0x13)
        assert s.getsockopt(m.IPPROTO_IP, m.IP_TOS) == 0x13

    def test_ip_tos_tcp_keeps_ecn_bits(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        s.setsockopt(m.IPPROTO_IP, m.IP_TOS, 0x13)
        assert s.getsockopt(m.IPPROTO_IP, m.IP_TOS) == 0x10

    def test_so_linger(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        assert s.getsockopt(m.SOL_SOCKET, m.SO_LINGER, 8) == LINGER.pack(0, 0)
        s.setsockopt(m.SOL_SOCKET, m.SO_LINGER, LINGER.pack(1, 7))
        assert LINGER.unpack(s.getsockopt(m.SOL_SOCKET, m.SO_LINGER, 8)) == (1, 7)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_LINGER, 4) == struct.pack("i", 1)
        with pytest.raises(OSError) as e:
            s.setsockopt(m.SOL_SOCKET, m.SO_LINGER, 1)
        assert e.value.errno == errno.EINVAL

    def test_so_linger_as_int(self, net: Net) -> None:
        m = net.mod
        s = net.sock()
        assert s.getsockopt(m.SOL_SOCKET, m.SO_LINGER) == 0
        s.setsockopt(m.SOL_SOCKET, m.SO_LINGER, LINGER.pack(1, 7))
        assert s.getsockopt(m.SOL_SOCKET, m.SO_LINGER) == 1

    def test_unknown_options(self, net: Net) -> None:
        m = net.mod
        for s, levels in ((net.sock(), (m.SOL_SOCKET, m.IPPROTO_IP, m.IPPROTO_TCP)),
                          (net.udp(), (m.SOL_SOCKET, m.IPPROTO_IP))):
            for level in levels:
                assert op_outcome(s.getsockopt, level, 9999) == ("OSError", errno.ENOPROTOOPT)
                assert op_outcome(s.setsockopt, level, 9999, 1) == ("OSError", errno.ENOPROTOOPT)
        assert op_outcome(lambda: net.udp().setsockopt(m.IPPROTO_TCP, m.TCP_NODELAY, 1)) == (
            "OSError", errno.ENOPROTOOPT)

    def test_getsockopt_at_a_foreign_level(self, net: Net) -> None:
        m = net.mod
        s = net.udp()
        assert op_outcome(lambda: s.getsockopt(m.IPPROTO_TCP, m.TCP_NODELAY)) == ("OSError", errno.EOPNOTSUPP)

    def test_so_type_protocol_domain(self, net: Net) -> None:
        m = net.mod
        for s, kind, proto in ((net.sock(), m.SOCK_STREAM, m.IPPROTO_TCP), (net.udp(), m.SOCK_DGRAM, m.IPPROTO_UDP)):
            assert s.getsockopt(m.SOL_SOCKET, m.SO_TYPE) == kind
            assert s.getsockopt(m.SOL_SOCKET, m.SO_PROTOCOL) == proto
            assert s.getsockopt(m.SOL_SOCKET, m.SO_DOMAIN) == m.AF_INET
            assert s.getsockopt(m.SOL_SOCKET, m.SO_TYPE, 4) == struct.pack("i", kind)

    def test_so_broadcast(self, net: Net) -> None:
        m = net.mod
        s = net.udp()
        assert s.getsockopt(m.SOL_SOCKET, m.SO_BROADCAST) == 0
        s.setsockopt(m.SOL_SOCKET, m.SO_BROADCAST, 1)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_BROADCAST) == 1

    def test_options_survive_connect_and_accept(self, net: Net) -> None:
        """Options set before connect stay; the accepted socket has TCP_NODELAY off."""
        m = net.mod
        lst = net.listener()
        lst.settimeout(T)
        c = net.sock()
        c.setsockopt(m.IPPROTO_TCP, m.TCP_NODELAY, 1)
        c.setsockopt(m.SOL_SOCKET, m.SO_KEEPALIVE, 1)
        c.connect(lst.getsockname())
        a, _ = net.accept(lst)
        assert c.getsockopt(m.IPPROTO_TCP, m.TCP_NODELAY) == 1 and c.getsockopt(m.SOL_SOCKET, m.SO_KEEPALIVE) == 1
        assert a.getsockopt(m.IPPROTO_TCP, m.TCP_NODELAY) == 0


# ============================================================================== makefile
FILE_VARIANTS = {  # FileObjectClassTestCase and its subclasses: read mode, write mode, buffering, newline
    "buffered": ("rb", "wb", -1, None),
    "unbuffered": ("rb", "wb", 0, None),
    "line_buffered": ("rb", "wb", 1, None),
    "small_buffer": ("rb", "wb", 2, None),
    "text_read": ("r", "wb", -1, ""),
    "text_write": ("rb", "w", -1, ""),
    "text_read_write": ("r", "w", -1, ""),
}


class FilePair:
    """``read_file`` on the client, ``write_file`` on the server, as CPython's test sets up."""

    def __init__(self, net: Net, variant: str) -> None:
        read_mode, write_mode, bufsize, newline = FILE_VARIANTS[variant]
        self.cli, self.srv = net.pair()
        opts: dict[str, Any] = {"encoding": "utf-8", "errors": "strict", "newline": newline}
        self.read_file = self.cli.makefile(read_mode, bufsize, **(opts if "b" not in read_mode else {}))
        self.write_file = self.srv.makefile(write_mode, bufsize, **(opts if "b" not in write_mode else {}))
        self.read_msg: Any = MSG if "b" in read_mode else MSG.decode()
        self.write_msg: Any = MSG if "b" in write_mode else MSG.decode()

    def write(self, data: Any = None, close: bool = False) -> None:
        self.write_file.write(self.write_msg if data is None else data)
        self.write_file.flush()
        if close:
            self.write_file.close()
            self.srv.close()

    def close(self) -> None:
        for f in (self.read_file, self.write_file):
            f.close()
            assert f.closed


@pytest.fixture(params=sorted(FILE_VARIANTS))
def files(request: pytest.FixtureRequest, net: Net) -> Iterator[FilePair]:
    fp = FilePair(net, request.param)
    try:
        yield fp
    finally:
        fp.close()


class TestMakefile:
    def test_small_read(self, files: FilePair) -> None:
        files.write()
        n = len(files.read_msg)
        assert files.read_file.read(n - 3) + files.read_file.read(3) == files.read_msg

    def test_full_read(self, files: FilePair) -> None:
        files.write(close=True)
        assert files.read_file.read() == files.read_msg

    def test_read_one_at_a_time(self, files: FilePair) -> None:
        files.write(close=True)
        got = type(files.read_msg)()
        while True:
            ch = files.read_file.read(1)
            if not ch:
                break
            got += ch
        assert got == files.read_msg

    def test_readline(self, files: FilePair) -> None:
        files.write()
        assert files.read_file.readline() == files.read_msg

    def test_attributes(self, files: FilePair) -> None:
        assert not files.read_file.closed and not files.write_file.closed
        assert files.read_file.mode in ("rb", "r") and files.write_file.mode in ("wb", "w")
        assert files.read_file.name == files.cli.fileno() and files.write_file.name == files.srv.fileno()

    def test_close_after_makefile(self, files: FilePair) -> None:
        """testCloseAfterMakefile: the file keeps the socket open."""
        files.write(close=True)
        files.cli.close()
        assert files.read_file.read() == files.read_msg

    def test_socket_usable_after_file_close(self, files: FilePair) -> None:
        """testMakefileAfterMakefileClose."""
        files.write()
        files.read_file.close()
        assert recv_exactly(files.cli, len(MSG)) == MSG

    def test_real_close(self, files: FilePair) -> None:
        files.read_file.close()
        with pytest.raises(ValueError):
            files.read_file.fileno()
        files.cli.close()
        with pytest.raises(OSError):
            files.cli.getsockname()

    def test_read_after_timeout(self, files: FilePair) -> None:
        """testReadAfterTimeout (issue #7322): no more reads after a timeout."""
        files.cli.settimeout(SHORT)
        files.write(files.write_msg[:3])
        files.read_file.read(3)
        with pytest.raises(TimeoutError):
            files.read_file.read(1)
        with pytest.raises(OSError, match="cannot read from timed out object"):
            files.read_file.read(1)


class TestMakefileSocketLevel:
    def test_deferred_close(self, net: Net) -> None:
        """socket.close() with a makefile open keeps the descriptor (and the connection) until
        the file closes: `_io_refs` counts the files."""
        c, a = net.pair()
        f = c.makefile("rb")
        g = c.makefile("wb")
        assert c._io_refs == 2
        g.close()
        assert c._io_refs == 1
        c.close()
        assert c._closed and c.fileno() != -1
        a.sendall(b"line\n")
        assert f.readline() == b"line\n"
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(1)  # no EOF: the descriptor is still open
        f.close()
        assert c.fileno() == -1 and c._io_refs == 0
        a.settimeout(T)
        assert a.recv(1) == b""

    def test_unbuffered_file_keeps_the_socket(self, net: Net) -> None:
        """UnbufferedFileObjectClassTestCase.testMakefileClose."""
        c, a = net.pair()
        f = c.makefile("rb", 0)
        a.sendall(MSG)
        c.close()
        assert recv_exactly(c, len(MSG)) == MSG
        f.close()
        with pytest.raises(OSError):
            c.recv(1024)

    def test_unbuffered_readline_with_new_file_objects(self, net: Net) -> None:
        """http.client reads several requests through successive unbuffered files."""
        c, a = net.pair()
        a.sendall(b"A. " + MSG + b"B. " + MSG)
        with c.makefile("rb", 0) as f:
            assert f.readline() == b"A. " + MSG
        with c.makefile("rb", 0) as f:
            assert f.readline() == b"B. " + MSG

    def test_nonblocking_read(self, net: Net) -> None:
        """testSmallReadNonBlocking: None when nothing is there, then the data, then None."""
        c, a = net.pair()
        f = c.makefile("rb", 0)
        c.setblocking(False)
        assert f.readinto(bytearray(10)) is None and f.read(5) is None
        a.sendall(MSG)
        assert readable(c, T)
        first = f.read(len(MSG) - 3)
        buf = bytearray(10)
        n = f.readinto(buf)
        assert n == 3 and first + buf[:n] == MSG
        assert f.readinto(bytearray(16)) is None and f.read(1) is None
        f.close()

    def test_nonblocking_write(self, net: Net) -> None:
        """testWriteNonBlocking: a full socket makes write() return None."""
        c, _ = net.pair()
        f = c.makefile("wb", 0)
        c.setblocking(False)
        big = b"x" * (1 << 20)
        results = [f.write(big) for _ in range(64)]
        assert results[0] and results[0] > 0 and None in results
        f.close()

    def test_modes(self, net: Net) -> None:
        """test_makefile_mode / test_makefile_invalid_mode / test_unusable_closed_socketio."""
        for mode in ("r", "rb", "rw", "w", "wb"):
            with net.sock() as s, s.makefile(mode, encoding=None if "b" in mode else "utf-8") as fp:
                assert fp.mode == mode
        for mode in ("rt", "x", "+", "a"):
            with net.sock() as s, pytest.raises(ValueError, match="invalid mode"):
                s.makefile(mode)
        with net.sock() as s:
            fp = s.makefile("rb", buffering=0)
            assert fp.readable() and not fp.writable() and not fp.seekable()
            fp.close()
            with pytest.raises(ValueError):
                fp.readable()
            fp = s.makefile("rb")
            fp.close()
            assert repr(fp) == "<_io.BufferedReader name=-1>"

    def test_read_write_file(self, net: Net) -> None:
        c, a = net.pair()
        with c.makefile("rwb") as f, a.makefile("rwb") as g:
            f.write(b"question\n")
            f.flush()
            assert g.readline() == b"question\n"
            g.write(b"answer\n")
            g.flush()
            assert f.readline() == b"answer\n"

    def test_text_encoding_and_newline(self, net: Net) -> None:
        c, a = net.pair()
        with c.makefile("w", encoding="latin-1", newline="\r\n") as w:
            w.write("caf\xe9\n")
        assert recv_exactly(a, 6) == b"caf\xe9\r\n"
        a.sendall("x\r\ny\n".encode("utf-16-le"))
        with c.makefile("r", encoding="utf-16-le", newline=None) as r:
            assert r.readline() == "x\n" and r.readline() == "y\n"


# ============================================================================= dup, detach, fileno
class TestDescriptors:
    def test_dup_shares_the_connection(self, net: Net) -> None:
        """testDup: the copy is the same connection; the connection ends with the last copy."""
        c, a = net.pair()
        d = net.track(c.dup())
        assert type(d) is type(c) and d.getpeername() == c.getpeername() == a.getsockname()
        assert (d.family, d.type, d.proto) == (c.family, c.type, c.proto) and d.fileno() != c.fileno()
        c.close()
        a.sendall(MSG)
        assert d.recv(1024) == MSG
        d.sendall(b"yo")
        assert recv_exactly(a, 2) == b"yo"
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(1)  # one copy closed: no EOF
        d.close()
        a.settimeout(T)
        assert a.recv(1) == b""

    def test_dup_of_a_listener_accepts(self, net: Net) -> None:
        lst = net.listener()
        d = net.track(lst.dup())
        lst.close()
        c = net.sock()
        c.connect(d.getsockname())
        d.settimeout(T)
        _, addr = net.accept(d)
        assert addr == c.getsockname()

    def test_detach_and_adopt(self, net: Net) -> None:
        """testDetach / test_socket_fileno: the descriptor outlives the object and a new socket
        built on it is the same connection, with family and type found from the descriptor."""
        m = net.mod
        c, a = net.pair()
        fd = c.fileno()
        assert c.detach() == fd
        assert c._closed and c.fileno() == -1
        with pytest.raises(OSError):
            c.recv(1024)
        c.close()
        s = net.track(m.socket(m.AF_INET, m.SOCK_STREAM, fileno=fd))
        a.sendall(MSG)
        s.settimeout(T)
        assert s.recv(1024) == MSG
        fd2 = s.detach()
        s2 = net.track(m.socket(fileno=fd2))
        assert (s2.family, s2.type) == (m.AF_INET, m.SOCK_STREAM) and s2.fileno() == fd2
        assert s2.getpeername() == a.getsockname() and s2.getsockname() == a.getpeername()

    def test_adopt_a_udp_descriptor(self, net: Net) -> None:
        m = net.mod
        s = net.udp(bind=True)
        name = s.getsockname()
        t = net.track(m.socket(fileno=s.detach()))
        assert (t.family, t.type, t.getsockname()) == (m.AF_INET, m.SOCK_DGRAM, name)

    def test_fromfd(self, net: Net) -> None:
        """BasicTCPTest.testFromFd."""
        m = net.mod
        c, a = net.pair()
        s = net.track(m.fromfd(c.fileno(), m.AF_INET, m.SOCK_STREAM))
        assert isinstance(s, m.socket)
        a.sendall(MSG)
        s.settimeout(T)
        assert s.recv(1024) == MSG
        assert s.getpeername() == a.getsockname()

    def test_bad_filenos(self, net: Net, tmp_path: Path) -> None:
        m = net.mod
        with pytest.raises(TypeError):
            m.socket(m.AF_INET, m.SOCK_STREAM, fileno=42.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            m.socket(m.AF_INET, m.SOCK_STREAM, fileno="foo")  # type: ignore[arg-type]
        for fd in (-1, -42):
            with pytest.raises(ValueError, match="negative file descriptor"):
                m.socket(m.AF_INET, m.SOCK_STREAM, fileno=fd)
        with pytest.raises(OSError) as e:
            m.socket(fileno=10 ** 6)  # no such descriptor
        assert e.value.errno == errno.EBADF
        with open(tmp_path / "f", "wb") as f:
            with pytest.raises(OSError) as e:
                m.socket(m.AF_INET, m.SOCK_STREAM, fileno=f.fileno())
            assert e.value.errno == errno.ENOTSOCK

    def test_adopted_descriptors_keep_their_owner(self, u: Net) -> None:
        """socket(fileno=...) of a usocket descriptor is userland; of a kernel one, the kernel's."""
        c, a = u.pair()
        d = u.track(usocket.socket(fileno=os.dup(c.fileno())))
        assert d.userland and d.connection is c.connection
        with stdsocket.socket() as k:
            adopted = usocket.socket(fileno=os.dup(k.fileno()))
            assert not adopted.userland and adopted.connection is None
            adopted.close()


# ================================================================================= sendfile
FILE_SIZE = (1 << 20) + 7


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = random.Random(4).randbytes(FILE_SIZE)
    path = tmp_path_factory.mktemp("sendfile") / "data"
    path.write_bytes(data)
    return path, data


SENDFILE_CASES = {  # name: (offset, count) as SendfileUsingSendTest's cases
    "whole": (0, None), "offset": (5000, None), "count": (0, 500007), "count_small": (0, 1),
    "count_with_offset": (2007, 100007)}


class TestSendfile:
    @pytest.mark.parametrize("meth", ["_sendfile_use_sendfile", "_sendfile_use_send", "sendfile"])
    @pytest.mark.parametrize("case", sorted(SENDFILE_CASES))
    def test_regular_file(self, net: Net, data_file: tuple[Path, bytes], meth: str, case: str) -> None:
        """Both implementations (os.sendfile into the descriptor, and the send() fallback)."""
        path, data = data_file
        offset, count = SENDFILE_CASES[case]
        c, a = net.pair()
        reader = Reader(a)
        with open(path, "rb") as f:
            sent = getattr(c, meth)(f, offset, count)
            want = data[offset:offset + count] if count else data[offset:]
            assert sent == len(want) and f.tell() == offset + len(want)
        c.close()
        assert reader.result() == want

    @pytest.mark.parametrize("meth", ["_sendfile_use_sendfile", "_sendfile_use_send"])
    def test_empty_file(self, net: Net, tmp_path: Path, meth: str) -> None:
        (tmp_path / "empty").write_bytes(b"")
        c, a = net.pair()
        with open(tmp_path / "empty", "rb") as f:
            assert getattr(c, meth)(f) == 0 and f.tell() == 0
        c.close()
        assert a.recv(10) == b""

    def test_non_regular_file(self, net: Net, data_file: tuple[Path, bytes]) -> None:
        _, data = data_file
        c, a = net.pair()
        reader = Reader(a)
        f = io.BytesIO(data)
        assert c.sendfile(f) == len(data) and f.tell() == len(data)
        with pytest.raises(net.mod._GiveupOnSendfile):
            c._sendfile_use_sendfile(f)
        c.close()
        assert reader.result() == data

    @pytest.mark.parametrize("meth", ["_sendfile_use_sendfile", "_sendfile_use_send", "sendfile"])
    def test_nonblocking_is_refused(self, net: Net, data_file: tuple[Path, bytes], meth: str) -> None:
        c, a = net.pair()
        c.setblocking(False)
        with open(data_file[0], "rb") as f, pytest.raises(ValueError):
            getattr(c, meth)(f)
        c.close()
        assert a.recv(10) == b""  # nothing was sent

    @pytest.mark.parametrize("meth", ["_sendfile_use_sendfile", "_sendfile_use_send"])
    def test_timeout(self, net: Net, tmp_path: Path, meth: str) -> None:
        """testWithTimeoutTriggeredSend: a peer that does not read times the sender out."""
        path = tmp_path / "big"
        path.write_bytes(b"\0" * (16 << 20))
        c, _ = net.pair()
        c.settimeout(0.05)
        with open(path, "rb") as f, pytest.raises(TimeoutError):
            getattr(c, meth)(f)

    def test_errors(self, net: Net, data_file: tuple[Path, bytes]) -> None:
        m = net.mod
        path = data_file[0]
        with open(path, "rb") as f:
            for meth in ("_sendfile_use_sendfile", "_sendfile_use_send"):
                with pytest.raises(ValueError, match="SOCK_STREAM"):
                    getattr(net.udp(), meth)(f)
                s = net.sock()
                with pytest.raises(TypeError, match="positive integer"):
                    getattr(s, meth)(f, count="2")
                with pytest.raises(TypeError, match="positive integer"):
                    getattr(s, meth)(f, count=0.1)
                for bad in (0, -1):
                    with pytest.raises(ValueError, match="positive integer"):
                        getattr(s, meth)(f, count=bad)
        with open(path, encoding="latin-1") as tf, pytest.raises(ValueError, match="binary mode"):
            m.socket.sendfile(net.sock(), tf)


# =================================================================================== threads
class TestThreads:
    def test_one_socket_two_threads(self, net: Net) -> None:
        """One thread blocked in recv() while another sends on the same socket."""
        c, a = net.pair()
        up, down = random.Random(5).randbytes(1 << 20), random.Random(6).randbytes(1 << 20)
        got: dict[str, bytes] = {}

        def recv_on_c() -> None:
            got["c"] = recv_exactly(c, len(down))

        def echo_side() -> None:
            got["a"] = recv_exactly(a, len(up))

        threads = [threading.Thread(target=recv_on_c), threading.Thread(target=echo_side)]
        for t in threads:
            t.start()
        senders = [threading.Thread(target=c.sendall, args=(up,)), threading.Thread(target=a.sendall, args=(down,))]
        for t in senders:
            t.start()
        for t in threads + senders:
            t.join(T * 2)
        assert hashlib.sha256(got["a"]).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got["c"]).digest() == hashlib.sha256(down).digest()

    def test_many_threads_many_sockets(self, net: Net) -> None:
        """16 echo connections, a client and a server thread each, all at once."""
        lst = net.listener(32)
        lst.settimeout(T)
        n, size = 16, 128 << 10
        errors: list[BaseException] = []
        ok: list[int] = []

        def server() -> None:
            for _ in range(n):
                conn, _ = lst.accept()
                net.track(conn)
                conn.settimeout(T)
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

        def echo(conn: Any) -> None:
            try:
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)
                conn.close()
            except BaseException as e:
                errors.append(e)

        def client(i: int) -> None:
            try:
                data = random.Random(100 + i).randbytes(size)
                s = net.mod.create_connection(lst.getsockname(), timeout=T)
                net.track(s)
                reader = Reader(s)
                s.sendall(data)
                s.shutdown(net.mod.SHUT_WR)
                assert reader.result() == data
                ok.append(i)
            except BaseException as e:
                errors.append(e)

        srv = threading.Thread(target=server)
        srv.start()
        clients = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in clients:
            t.start()
        for t in clients + [srv]:
            t.join(T * 4)
        assert errors == [] and sorted(ok) == list(range(n))


# ===================================================================================== scale
class TestScale:
    def test_a_thousand_connections(self, u: Net, record_property: Callable[[str, Any], None]) -> None:
        """1000 simultaneous connections (2000 sockets, each a socketpair) in one process."""
        from usocket.facade.bridge import registry

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 8192:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
        try:
            baseline = len(registry)
            t0 = time.monotonic()
            lst = u.listener(1024)
            lst.settimeout(T)
            pairs = []
            for _ in range(1000):
                c = usocket.socket()
                c.settimeout(T)
                c.connect(lst.getsockname())
                a, _ = lst.accept()
                pairs.append((c, a))
            t_open = time.monotonic() - t0
            for i, (c, _) in enumerate(pairs):
                c.send(bytes([i % 256]))
            for i, (_, a) in enumerate(pairs):
                assert a.recv(1) == bytes([i % 256])
            for c, a in pairs:
                c.close()
                assert a.recv(1) == b""
                a.close()
            elapsed = time.monotonic() - t0
            record_property("open_1000_s", round(t_open, 3))
            record_property("total_1000_s", round(elapsed, 3))
            print(f"1000 connections: opened in {t_open:.2f} s, exchanged and closed in {elapsed:.2f} s")
            assert elapsed < 20
            lst.close()
            eventually(lambda: len(registry) <= baseline, what="all bridges released")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ======================================================================================= UDP
class TestUDP:
    def test_sendto_and_recvfrom(self, net: Net) -> None:
        """BasicUDPTest."""
        r, s = net.udp(bind=True), net.udp()
        assert s.sendto(MSG, r.getsockname()) == len(MSG)
        data, addr = r.recvfrom(len(MSG))
        assert data == MSG and addr == sender(net, s)
        s.sendto(MSG, 0, r.getsockname())
        assert r.recv(len(MSG)) == MSG

    def test_implicit_bind(self, net: Net) -> None:
        r, s = net.udp(bind=True), net.udp()
        assert s.getsockname() == ("0.0.0.0", 0)
        s.sendto(b"x", r.getsockname())
        assert s.getsockname()[0] == "0.0.0.0" and s.getsockname()[1] != 0
        r.sendto(b"back", (net.host, s.getsockname()[1]))
        assert s.recvfrom(10) == (b"back", r.getsockname())

    def test_connected(self, net: Net) -> None:
        """A connected socket sends without an address and only hears its peer."""
        r, peer, other = net.udp(bind=True), net.udp(bind=True), net.udp(bind=True)
        r.connect(peer.getsockname())
        assert r.getpeername() == peer.getsockname() and r.getsockname()[0] == net.host
        r.send(b"hi")
        assert peer.recvfrom(10) == (b"hi", r.getsockname())
        other.sendto(b"from other", r.getsockname())
        peer.sendto(b"from peer", r.getsockname())
        assert r.recv(20) == b"from peer"
        r.sendto(b"elsewhere", other.getsockname())  # an explicit address still works
        assert other.recvfrom(20) == (b"elsewhere", r.getsockname())

    def test_truncation(self, net: Net) -> None:
        """A short read takes the head of one datagram and discards the rest (MSG_TRUNC)."""
        m = net.mod
        r, s = net.udp(bind=True), net.udp()
        for payload in (b"a" * 2000, b"b" * 10, b"c" * 20):
            s.sendto(payload, r.getsockname())
        data, anc, flags, addr = r.recvmsg(100)
        assert data == b"a" * 100 and flags & m.MSG_TRUNC and addr == sender(net, s)
        assert r.recv(100) == b"b" * 10
        assert r.recvfrom(5, m.MSG_PEEK)[0] == b"ccccc"
        assert r.recv(100) == b"c" * 20

    def test_peek(self, net: Net) -> None:
        m = net.mod
        r, s = net.udp(bind=True), net.udp()
        s.sendto(b"peekaboo", r.getsockname())
        assert r.recvfrom(100, m.MSG_PEEK) == (b"peekaboo", sender(net, s))
        assert r.recv(100, m.MSG_PEEK) == b"peekaboo"
        assert r.recv(100) == b"peekaboo"
        r.settimeout(None)  # with a timeout, recv() waits for data before trying
        with pytest.raises(BlockingIOError):
            r.recv(100, m.MSG_DONTWAIT)

    def test_empty_datagram(self, net: Net) -> None:
        r, s = net.udp(bind=True), net.udp()
        assert s.sendto(b"", r.getsockname()) == 0
        assert r.recvfrom(10) == (b"", sender(net, s))
        assert not readable(r)

    def test_largest_datagram(self, net: Net) -> None:
        r, s = net.udp(bind=True), net.udp()
        big = random.Random(7).randbytes(65507)
        assert s.sendto(big, r.getsockname()) == 65507
        assert r.recv(70000) == big
        with pytest.raises(OSError) as e:
            s.sendto(big + b"x", r.getsockname())
        assert e.value.errno == errno.EMSGSIZE

    def test_boundaries_and_order(self, net: Net) -> None:
        r, s = net.udp(bind=True), net.udp()
        sizes = [1, 1000, 0, 1472, 1473, 9000, 3, 30000]
        for i, n in enumerate(sizes):
            s.sendto(bytes([i]) * n, r.getsockname())
        assert [r.recv(65536) for _ in sizes] == [bytes([i]) * n for i, n in enumerate(sizes)]

    def test_timeouts(self, net: Net) -> None:
        """UDPTimeoutTest: TimeoutError after the timeout, BlockingIOError with timeout 0."""
        m = net.mod
        r = net.udp(bind=True)
        r.settimeout(SHORT)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="timed out"):
            r.recv(1024)
        assert time.monotonic() - t0 >= SHORT * 0.9
        r.settimeout(0.0)
        with pytest.raises(BlockingIOError):
            r.recv(1024)
        r.settimeout(None)
        with pytest.raises(BlockingIOError):
            r.recvfrom(1024, m.MSG_DONTWAIT)

    def test_into_variants(self, net: Net) -> None:
        r, s = net.udp(bind=True), net.udp()
        for _ in range(3):
            s.sendto(MSG, r.getsockname())
        buf = bytearray(100)
        assert r.recv_into(buf) == len(MSG) and buf[:len(MSG)] == MSG
        assert r.recvfrom_into(buf, 10) == (10, sender(net, s)) and buf[:10] == MSG[:10]
        b1, b2 = bytearray(5), bytearray(100)
        n, anc, flags, addr = r.recvmsg_into([b1, b2])
        assert n == len(MSG) and b1 + b2[:n - 5] == MSG and addr == sender(net, s) and anc == []
        with pytest.raises(ValueError):
            r.recvfrom(-1)
        with pytest.raises(ValueError):
            r.recvfrom_into(bytearray(8), 1024)

    def test_unconnected_errors(self, net: Net) -> None:
        m = net.mod
        s = net.udp()
        assert op_outcome(lambda: s.send(b"x")) == ("OSError", errno.EDESTADDRREQ)
        assert op_outcome(s.getpeername) == ("OSError", errno.ENOTCONN)
        assert op_outcome(lambda: s.shutdown(m.SHUT_RDWR)) == ("OSError", errno.ENOTCONN)
        assert op_outcome(s.listen) == ("OSError", errno.EOPNOTSUPP)
        assert op_outcome(s.accept) == ("OSError", errno.EOPNOTSUPP)

    def test_broadcast_needs_so_broadcast(self, net: Net) -> None:
        with pytest.raises(PermissionError) as e:
            net.udp().sendto(b"x", ("<broadcast>", 9))
        assert e.value.errno == errno.EACCES

    def test_port_in_use(self, net: Net) -> None:
        m = net.mod
        r = net.udp(bind=True)
        assert op_outcome(lambda: net.udp().bind(r.getsockname())) == ("OSError", errno.EADDRINUSE)
        a, b = net.udp(), net.udp()
        for s in (a, b):
            s.setsockopt(m.SOL_SOCKET, m.SO_REUSEADDR, 1)
        a.bind((net.host, 0))
        b.bind(a.getsockname())

    def test_port_unreachable_on_a_connected_socket(self, net: Net) -> None:
        """ICMP port unreachable is ConnectionRefusedError on the next call, reported once."""
        s = net.udp()
        s.connect((net.host, net.closed_port(net.mod.SOCK_DGRAM)))
        s.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            s.recv(10)
        s.settimeout(SHORT)
        with pytest.raises(TimeoutError):
            s.recv(10)
        s.settimeout(T)
        s.send(b"again")
        assert readable(s, T)  # the error is pending
        with pytest.raises(ConnectionRefusedError):
            s.send(b"third")  # reported by the next call, whichever it is (and not sent)
        s.settimeout(SHORT)
        with pytest.raises(TimeoutError):
            s.recv(10)

    def test_reported_error_leaves_the_socket_unreadable(self, net: Net) -> None:
        s = net.udp()
        s.connect((net.host, net.closed_port(net.mod.SOCK_DGRAM)))
        s.send(b"anyone?")
        assert readable(s, T)
        with pytest.raises(ConnectionRefusedError):
            s.send(b"x")  # reports the error; the datagram is not sent
        assert not readable(s)

    def test_unconnected_socket_ignores_icmp(self, net: Net) -> None:
        """Linux reports ICMP errors only to connected UDP sockets (without IP_RECVERR)."""
        s = net.udp()
        s.sendto(b"anyone?", (net.host, net.closed_port(net.mod.SOCK_DGRAM)))
        s.settimeout(SHORT)
        with pytest.raises(TimeoutError):
            s.recv(10)
