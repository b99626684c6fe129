"""Runtime lifecycle without root: two stacks joined by a socketpair link, real threads."""
from __future__ import annotations

import gc
import threading
import time

import pytest

from usocket.config import OWN, StackConfig
from usocket.dgram import DatagramSocket
from usocket.link.memory import link_pair
from usocket.runtime import Runtime, RuntimeStopped
from usocket.wire.addr import ip_aton, mac_aton


def pair() -> tuple[Runtime, Runtime]:
    la, lb = link_pair()
    mk = lambda ip, mac, link: Runtime(  # noqa: E731
        StackConfig(iface=link.name, mac=mac_aton(mac), address=ip_aton(ip), mode=OWN), link=link)
    return mk("10.7.0.1", "02:00:00:00:07:01", la), mk("10.7.0.2", "02:00:00:00:07:02", lb)


def test_two_runtimes_exchange_datagrams_and_stop_cleanly() -> None:
    a, b = pair()
    with a, b, DatagramSocket(a) as sa, DatagramSocket(b) as sb:
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


def test_a_blocked_receiver_is_woken_when_the_runtime_stops() -> None:
    a, b = pair()
    a.start()
    b.start()
    s = DatagramSocket(a)
    errors: list[BaseException] = []
    started = threading.Event()

    def blocked() -> None:
        started.set()
        try:
            s.recv(10)  # no timeout
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    started.wait()
    time.sleep(0.05)  # let it block (nothing to wait for: the recv has no event to report)
    a.stop()
    t.join(5)
    assert not t.is_alive() and errors and isinstance(errors[0], OSError)
    b.stop()


def test_errors_in_calls_do_not_stall_the_loop() -> None:
    a, b = pair()
    with a, b:
        a.call_soon(lambda: 1 / 0)
        assert a.call(lambda: 42, timeout=5) == 42
        assert a.stack.counters.get("runtime", "errors") == 1
        with pytest.raises(ZeroDivisionError):
            a.call(lambda: 1 / 0)


def test_an_unclosed_socket_is_closed_by_the_garbage_collector() -> None:
    a, b = pair()
    with a, b:
        s = DatagramSocket(a)
        s.bind(("", 9100))
        assert a.call(lambda: len(a.stack.udp.endpoints())) == 1
        del s
        gc.collect()
        assert a.call(lambda: len(a.stack.udp.endpoints())) == 0


def test_stop_releases_every_endpoint() -> None:
    a, b = pair()
    a.start()
    b.start()
    s = DatagramSocket(a)
    s.bind(("", 9200))
    ep = s._ep
    a.stop()
    assert ep.closed
    with pytest.raises(OSError):
        s.sendto(b"x", ("10.7.0.2", 1))
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
    import socket

    a, b = pair()
    with a, b, DatagramSocket(a) as s:
        with pytest.raises(TypeError):
            s.sendto(5, ("10.7.0.2", 1))
        with pytest.raises(OverflowError, match="connect"):
            s.connect(("10.7.0.2", 70000))
        with pytest.raises(ValueError, match="in recv$"):
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
        assert ei.value.errno == 89  # EDESTADDRREQ
    with pytest.raises(OSError) as ei:
        s.recv(1)
    assert ei.value.errno == 9  # EBADF after close
