"""Runtime lifecycle without root: two stacks joined by a socketpair link, real threads."""
from __future__ import annotations

import errno
import gc
import socket
import threading
import time
from collections.abc import Callable

import pytest

from usocket.config import OWN, StackConfig
from usocket.facade.sockets import socket as usocket_socket
from usocket.facade.sockets import socket_on
from usocket.link.memory import link_pair
from usocket.runtime import Runtime, RuntimeStopped
from usocket.wire.addr import ip_aton, mac_aton


def pair() -> tuple[Runtime, Runtime]:
    la, lb = link_pair()
    mk = lambda ip, mac, link: Runtime(  # noqa: E731
        StackConfig(iface=link.name, mac=mac_aton(mac), address=ip_aton(ip), mode=OWN), link=link)
    return mk("10.7.0.1", "02:00:00:00:07:01", la), mk("10.7.0.2", "02:00:00:00:07:02", lb)


def udp(rt: Runtime) -> usocket_socket:
    """``socket(AF_INET, SOCK_DGRAM)`` on ``rt`` (the facade's, as an application gets it)."""
    return socket_on(rt, socket.AF_INET, socket.SOCK_DGRAM)


def until(rt: Runtime, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Run ``predicate`` on the stack thread, one loop pass after another, until it holds.

    A descriptor closed by the application reaches the stack as an epoll event of the next pass,
    so a check made right after the close can run before it; each ``rt.call`` is a full pass
    (no sleeping), and the deadline only bounds a broken stack."""
    deadline = time.monotonic() + timeout
    while not rt.call(predicate):
        if time.monotonic() > deadline:
            return False
    return True


def test_two_runtimes_exchange_datagrams_and_stop_cleanly() -> None:
    a, b = pair()
    with a, b, udp(a) as sa, udp(b) as sb:
        sb.bind(("", 9000))
        sa.settimeout(5)
        sb.settimeout(5)
        sa.sendto(b"ping", ("10.7.0.2", 9000))
        data, addr = sb.recvfrom(100)
        assert data == b"ping" and addr[0] == "10.7.0.1"
        sb.sendto(b"pong", addr)
        assert sa.recv(100) == b"pong"
    assert not a.running and not b.running
    with pytest.raises(RuntimeStopped):
        a.call(lambda: 1)
    with pytest.raises(RuntimeStopped):
        a.start()  # no restart


@pytest.mark.parametrize("bound", [True, False])  # a never-bound socket is no endpoint of the stack
def test_a_blocked_receiver_is_woken_when_the_runtime_stops(bound: bool) -> None:
    a, b = pair()
    a.start()
    b.start()
    s = udp(a)
    if bound:
        s.bind(("", 9050))
    errors: list[BaseException] = []
    started = threading.Event()

    def blocked() -> None:
        started.set()
        try:
            s.recv(10)  # no timeout
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=blocked, daemon=True)
    t.start()
    started.wait()
    time.sleep(0.05)  # let it block (nothing to wait for: the recv has no event to report)
    a.stop()  # synchronous: the receiver is woken by the time it returns (2 s is for a slow machine)
    t.join(2)
    try:
        assert not t.is_alive() and errors and isinstance(errors[0], OSError)
        assert errors[0].errno == errno.ENETDOWN  # type: ignore[attr-defined]
    finally:
        if t.is_alive():  # the bug: free the thread (shutting the descriptor itself wakes its recv)
            socket.socket.shutdown(s, socket.SHUT_RDWR)
            t.join(5)
        s.close()
        b.stop()


def test_errors_in_calls_do_not_stall_the_loop() -> None:
    a, b = pair()
    with a, b:
        a.call_soon(lambda: 1 / 0)
        assert a.call(lambda: 42, timeout=5) == 42
        assert a.stack.counters.get("runtime", "errors") == 1
        with pytest.raises(ZeroDivisionError):
            a.call(lambda: 1 / 0)


def test_calls_queued_behind_a_running_call_all_run_in_order() -> None:
    """Only a call queued into an empty queue wakes the loop: the ones queued behind it (while
    the stack thread is busy) still run, in order, in the same pass or the next."""
    a, b = pair()
    with a, b:
        gate, busy = threading.Event(), threading.Event()
        seen: list[int] = []
        a.call_soon(lambda: (busy.set(), gate.wait(5)))
        assert busy.wait(5)
        for i in range(50):
            a.call_soon(seen.append, i)
        gate.set()
        assert a.call(lambda: list(seen), timeout=5) == list(range(50))
        for _ in range(5):  # posted into an empty queue while the loop sleeps: each one wakes it
            done = threading.Event()
            a.call_soon(done.set)
            assert done.wait(5)


def test_an_unclosed_socket_is_closed_by_the_garbage_collector() -> None:
    a, b = pair()
    with a, b:
        s = udp(a)
        s.bind(("", 9100))
        assert a.call(lambda: len(a.stack.udp.endpoints())) == 1
        with pytest.warns(ResourceWarning, match="unclosed"):  # like the stdlib's socket
            del s
            gc.collect()
        assert until(a, lambda: len(a.stack.udp.endpoints()) == 0)


def test_stop_releases_every_endpoint() -> None:
    a, b = pair()
    a.start()
    b.start()
    s = udp(a)
    s.bind(("", 9200))
    ep = s.connection
    a.stop()
    assert ep.closed
    with pytest.raises(OSError) as ei:
        s.sendto(b"x", ("10.7.0.2", 1))
    assert ei.value.errno == errno.ENETDOWN
    s.close()
    b.stop()


def test_peer_link_closing_does_not_spin() -> None:
    a, b = pair()
    with a:
        b.start()
        b.stop()  # closes b's end of the socketpair: a's link reads EOF
        time.sleep(0.2)
        assert a.running
        before = time.process_time()
        time.sleep(0.3)
        assert time.process_time() - before < 0.2  # the stack thread is not busy-looping


def test_datagram_socket_raises_what_the_stdlib_raises() -> None:
    a, b = pair()
    with a, b, udp(a) as s:
        with pytest.raises(TypeError):
            s.sendto(5, ("10.7.0.2", 1))
        with pytest.raises(OverflowError, match="connect"):
            s.connect(("10.7.0.2", 70000))
        with pytest.raises(ValueError, match="negative buffersize"):
            s.recv(-1)
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(10)
        s.setblocking(True)
        s.settimeout(0.01)
        with pytest.raises(socket.timeout):
            s.recvfrom(10)
        with pytest.raises(OSError) as ei:
            s.send(b"x")
        assert ei.value.errno == errno.EDESTADDRREQ
    with pytest.raises(OSError) as ei:
        s.recv(1)
    assert ei.value.errno == errno.EBADF  # after close


def test_udp_negative_buffersize_names_the_method_like_the_stdlib() -> None:
    a, b = pair()
    with a, b, udp(a) as s:
        for method, args in (("recv", (-1,)), ("recvfrom", (-1,)), ("recv_into", (bytearray(4), -1)),
                             ("recvfrom_into", (bytearray(4), -1))):
            with pytest.raises(ValueError, match=f"^negative buffersize in {method}$"):
                getattr(s, method)(*args)
