"""The in-memory network (virtual time, switching, seeded faults) and link_pair.

Nodes here are small fakes, not usocket stacks: they record what they receive and send frames
at times of their choosing through the same four methods a Stack has.
"""
from __future__ import annotations

import heapq
import select
import struct
import time

import pytest

from usocket.link.memory import Faults, MemoryNetwork, VirtualClock, link_pair

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


def frame(dst: bytes, src: bytes, payload: bytes) -> bytes:
    return dst + src + b"\x88\xb5" + payload


class FakeNode:
    """Sends scheduled frames from its timers; records ``(now, frame, csum_ok)`` it receives;
    if ``echo``, answers every unicast frame to its sender."""

    def __init__(self, n: int, echo: bool = False) -> None:
        self.mac = mac(n)
        self.echo = echo
        self.got: list[tuple[float, bytes, bool]] = []
        self.out: list[bytes] = []
        self.timers: list[tuple[float, int, bytes]] = []
        self.polls: list[float] = []

    def send(self, dst: bytes, payload: bytes) -> None:
        self.out.append(frame(dst, self.mac, payload))

    def send_at(self, when: float, dst: bytes, payload: bytes) -> None:
        heapq.heappush(self.timers, (when, len(self.timers), frame(dst, self.mac, payload)))

    def payloads(self) -> list[bytes]:
        return [f[14:] for _, f, _ in self.got]

    # -- the node interface -------------------------------------------------------------------
    def receive_frame(self, fr: bytes, now: float, csum_ok: bool = False) -> None:
        self.got.append((now, fr, csum_ok))
        if self.echo and fr[:6] == self.mac:
            self.send(fr[6:12], b"re:" + fr[14:])

    def take_output(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

    def poll(self, now: float) -> int:
        self.polls.append(now)
        n = 0
        while self.timers and self.timers[0][0] <= now:
            self.out.append(heapq.heappop(self.timers)[2])
            n += 1
        return n

    def poll_at(self) -> float | None:
        return self.timers[0][0] if self.timers else None


def three() -> tuple[MemoryNetwork, FakeNode, FakeNode, FakeNode]:
    net = MemoryNetwork(latency=0.001)
    a, b, c = FakeNode(1), FakeNode(2, echo=True), FakeNode(3)
    for n in (a, b, c):
        net.attach(n, name=f"n{n.mac[-1]}")
    return net, a, b, c


# -- switching and time ------------------------------------------------------------------------------
def test_unicast_flood_then_learned_delivery() -> None:
    net, a, b, c = three()
    a.send(b.mac, b"hello")
    assert net.run_until(lambda: bool(a.got), timeout=1.0)
    # B was unknown: flooded to B and C; B's echo goes to A only (A's MAC was learnt).
    assert b.payloads() == [b"hello"] and c.payloads() == [b"hello"]
    assert a.payloads() == [b"re:hello"]
    assert b.got[0][0] == pytest.approx(0.001) and a.got[0][0] == pytest.approx(0.002)
    assert net.now == pytest.approx(0.002)
    assert net.counters["flooded"] == 1 and net.counters["delivered"] == 3
    # Now both are learnt: C sees nothing more.
    a.send(b.mac, b"again")
    net.run_for(0.01)
    assert c.payloads() == [b"hello"] and a.payloads() == [b"re:hello", b"re:again"]
    assert all(ok is False for _, _, ok in b.got)


def test_broadcast_reaches_all_others_and_hairpin_is_dropped() -> None:
    net, a, b, c = three()
    a.send(BCAST, b"all")
    net.run_for(0.01)
    assert a.payloads() == [] and b.payloads() == [b"all"] and c.payloads() == [b"all"]
    a.send(a.mac, b"self")  # the switch never sends a frame back out of its port
    net.run_for(0.01)
    assert a.payloads() == [] and net.counters["drop.hairpin"] == 1
    net.transmit(net.ports[2], b"short")  # runt injected from C's port
    assert net.counters["drop.runt"] == 1


def test_virtual_time_jumps_to_next_event_without_sleeping() -> None:
    net = MemoryNetwork()
    a, b = FakeNode(1), FakeNode(2)
    net.attach(a)
    net.attach(b)
    a.send_at(5.0, b.mac, b"at5")
    a.send_at(3600.0, b.mac, b"at3600")
    t0 = time.monotonic()
    assert net.run_for(10.0) == 2  # one timer, one delivery
    assert net.now == 10.0 and b.got[0][0] == pytest.approx(5.001)
    assert net.run_until(lambda: len(b.got) == 2, timeout=7200.0)
    assert net.now == pytest.approx(3600.001)
    assert a.polls == [5.0, 3600.0], "the clock went straight to each timer"
    assert time.monotonic() - t0 < 1.0


def test_run_until_timeout_and_predicate() -> None:
    clock = VirtualClock(100.0)
    net = MemoryNetwork(clock=clock)
    a, b = FakeNode(1), FakeNode(2)
    net.attach(a)
    net.attach(b)
    assert net.run_until(lambda: True, timeout=5.0) is True and clock() == 100.0
    assert net.run_until(lambda: bool(b.got), timeout=5.0) is False
    assert clock() == 105.0
    a.send_at(107.0, b.mac, b"x")
    a.send_at(200.0, b.mac, b"y")
    assert net.run_until(lambda: bool(b.got), timeout=50.0) is True
    assert clock() == pytest.approx(107.001), "stops as soon as the predicate holds"
    clock.advance(-10)  # never backwards
    assert clock() == pytest.approx(107.001)


def test_timer_in_the_past_fires_now_and_livelock_is_detected() -> None:
    net = MemoryNetwork(clock=VirtualClock(50.0))
    a = FakeNode(1)
    net.attach(a)
    a.send_at(1.0, BCAST, b"late")
    net.run_for(0.0)
    assert a.polls == [50.0]

    class Stuck(FakeNode):
        def poll_at(self) -> float | None:
            return 0.0  # a broken node that is always due

    net.attach(Stuck(9))
    net.max_steps_per_instant = 1000
    with pytest.raises(RuntimeError, match="livelock"):
        net.run_for(1.0)


def test_bandwidth_serialises_and_queue_is_bounded() -> None:
    net = MemoryNetwork(latency=0.0, bandwidth=1_000_000, queue_bytes=5000)
    a, b = FakeNode(1), FakeNode(2)
    net.attach(a)
    net.attach(b, mac=b.mac)
    for i in range(10):
        a.send(b.mac, bytes([i]) * 1236)  # 1250-byte frames: 10 ms each at 1 Mbit/s
    net.run_for(1.0)
    times = [t for t, _, _ in b.got]
    # The 5000-byte queue (the frame being serialised included) holds four; the rest are
    # tail-dropped.
    assert times == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert net.counters["drop.queue"] == 6
    a.send(b.mac, b"\x00" * 100)  # the queue drained: accepted again
    net.run_for(1.0)
    assert len(b.got) == 5 and b.got[-1][0] == pytest.approx(1.0 + 114 * 8 / 1e6)


def test_detach_drops_frames_in_flight_and_tables_are_bounded() -> None:
    net = MemoryNetwork(max_macs=4, max_in_flight=3)
    a, b = FakeNode(1), FakeNode(2)
    net.attach(a)
    pb = net.attach(b)
    a.send(BCAST, b"1")
    net.collect()
    pb.detach()
    net.run_for(1.0)
    assert b.got == [] and net.counters["drop.detached"] == 1
    for i in range(10):  # ten source MACs: the switch table keeps at most four
        net.transmit(net.ports[0], frame(BCAST, mac(100 + i), b""))
    assert len(net._macs) <= 4
    c = FakeNode(3)
    net.attach(c)
    for _ in range(5):
        a.send(BCAST, b"burst")
    net.collect()
    assert net.in_flight == 3 and net.counters["drop.overflow"] == 2


# -- faults --------------------------------------------------------------------------------------------
def scenario(seed: int, n: int = 200, **faults: float) -> tuple[list[tuple[float, bytes]], dict[str, int]]:
    """A sends n numbered frames to B, one per ms; returns what B got and the counters."""
    net = MemoryNetwork(seed=seed, **faults)  # type: ignore[arg-type]
    a, b = FakeNode(1), FakeNode(2)
    net.attach(a)
    net.attach(b, mac=b.mac)
    for i in range(n):
        a.send_at(i * 0.001, b.mac, struct.pack("!II", i, i) + b"\x00" * 56)  # one flip can't forge one
    net.run_for(2.0)
    return [(t, fr) for t, fr, _ in b.got], dict(net.counters)


def seqs(got: list[tuple[float, bytes]]) -> list[int]:
    return [struct.unpack_from("!I", fr, 14)[0] for _, fr in got]


@pytest.mark.parametrize("kind", ["loss", "duplicate", "reorder", "corrupt"])
def test_each_fault_is_deterministic_per_seed(kind: str) -> None:
    first = scenario(7, **{kind: 0.2})
    assert first == scenario(7, **{kind: 0.2}), "same seed, same run"
    assert first[0] != scenario(8, **{kind: 0.2})[0], "another seed, another run"
    got, c = first
    s = seqs(got)
    if kind == "loss":
        assert 0 < c["drop.loss"] < 100 and len(got) == 200 - c["drop.loss"]
        assert s == sorted(s) and len(set(s)) == len(s)
    elif kind == "duplicate":
        assert 0 < c["duplicated"] < 100 and len(got) == 200 + c["duplicated"]
        assert sorted(set(s)) == list(range(200))
    elif kind == "reorder":
        assert 0 < c["reordered"] < 100 and sorted(s) == list(range(200))
        assert s != sorted(s)
        late = sum(1 for x, y in zip(s, s[1:], strict=False) if y < x)
        assert 0 < late <= c["reordered"]
    else:
        sent = [struct.pack("!II", i, i) + b"\x00" * 56 for i in range(200)]
        damaged = [fr for fr in got if fr[1][14:] not in sent]
        assert len(damaged) == c["corrupted"] > 0 and len(got) == 200
        for _, fr in damaged:
            assert fr[:14] == mac(2) + mac(1) + b"\x88\xb5", "the header stays intact"
            assert min(hamming(fr[14:], orig) for orig in sent) == 1, "exactly one bit flipped"


def hamming(x: bytes, y: bytes) -> int:
    return sum(bin(p ^ q).count("1") for p, q in zip(x, y, strict=True))


def test_fault_overrides_per_direction_and_path() -> None:
    net = MemoryNetwork(seed=1)
    a, b, c = FakeNode(1), FakeNode(2), FakeNode(3)
    pa = net.attach(a, mac=a.mac, tx_faults=Faults(loss=1.0))
    pb = net.attach(b, mac=b.mac)
    pc = net.attach(c, mac=c.mac)
    a.send(b.mac, b"lost")
    b.send(a.mac, b"kept")
    net.run_for(0.1)
    assert b.got == [] and a.payloads() == [b"kept"]
    # rx_faults of the receiver beat tx_faults of the sender; a path beats both.
    pb.rx_faults = Faults()
    a.send(b.mac, b"through")
    a.send(c.mac, b"still-lost")
    net.run_for(0.1)
    assert b.payloads() == [b"through"] and c.got == []
    net.set_path(pa, pc, Faults(latency=0.5))
    a.send(c.mac, b"slow")
    net.run_for(1.0)
    assert c.payloads() == [b"slow"] and c.got[0][0] == pytest.approx(0.7)
    assert net.faults_for(pb, pa) is net.faults
    net.set_path(pa, pc, None)
    assert net.faults_for(pa, pc) is pa.tx_faults


def test_observer_sees_every_delivery() -> None:
    seen: list[tuple[bytes, str, str, float]] = []
    net = MemoryNetwork(observer=lambda fr, s, d, now: seen.append((fr, s.name, d.name, now)),
                        csum_ok=True)
    a, b, c = FakeNode(1), FakeNode(2), FakeNode(3)
    for name, n in (("A", a), ("B", b), ("C", c)):
        net.attach(n, name=name)
    a.send(BCAST, b"hi")
    net.run_for(0.01)
    assert sorted((s, d) for _, s, d, _ in seen) == [("A", "B"), ("A", "C")]
    assert all(now == pytest.approx(0.001) for *_, now in seen)
    assert b.got[0][2] is True, "csum_ok as configured"
    assert net.ports[0].counters["tx"] == 1 and net.ports[1].counters["rx"] == 1


# -- link_pair -------------------------------------------------------------------------------------------
def wait_recv(link, n: int = 1, timeout: float = 2.0) -> list[tuple[bytes, bool]]:  # type: ignore[no-untyped-def]
    got: list[tuple[bytes, bool]] = []
    end = time.monotonic() + timeout
    while len(got) < n and (left := end - time.monotonic()) > 0:
        if select.select([link], [], [], left)[0]:
            got.extend(link.recv_batch())
    return got


def test_link_pair_both_ways() -> None:
    a, b = link_pair(csum_ok=True)
    with a, b:
        assert a.mac != b.mac and a.mtu == 1500
        assert a.recv_batch() == []
        assert a.send(frame(b.mac, a.mac, b"ping"))
        assert wait_recv(b) == [(frame(b.mac, a.mac, b"ping"), True)]
        big = frame(a.mac, b.mac, b"\x01" * 65000)  # a GSO-sized frame passes whole
        assert b.send_batch([big, frame(a.mac, b.mac, b"pong")]) == 2
        assert [f for f, _ in wait_recv(a, 2)] == [big, frame(a.mac, b.mac, b"pong")]
        assert a.counters["tx"] == 1 and a.counters["rx"] == 2 and b.counters["rx"] == 1
        b.close()
        assert a.send(b"x" * 20) is False
        assert a.counters["drop.tx_epipe"] + a.counters["drop.tx_econnreset"] == 1
    assert a.closed and b.closed


def test_link_pair_faults() -> None:
    a, b = link_pair(loss=1.0)
    with a, b:
        assert a.send(frame(b.mac, a.mac, b"gone"))
        assert b.send(frame(a.mac, b.mac, b"gone too"))
        a.faults = Faults()
        a.send(frame(b.mac, a.mac, b"marker"))  # order is kept: if "gone" had passed, it'd be first
        assert [f[14:] for f, _ in wait_recv(b)] == [b"marker"] and a.counters["fault.loss"] == 1
        a.faults = Faults(duplicate=1.0)  # one direction only
        a.send(frame(b.mac, a.mac, b"twice"))
        assert [f[14:] for f, _ in wait_recv(b, 2)] == [b"twice", b"twice"]
        a.faults = Faults(reorder=1.0)
        for i in range(4):
            a.send(frame(b.mac, a.mac, bytes([i])))
        assert [f[14:] for f, _ in wait_recv(b, 4)] == [b"\x01", b"\x00", b"\x03", b"\x02"]
        a.faults = Faults(corrupt=1.0)
        sent = frame(b.mac, a.mac, b"\x00" * 40)
        a.send(sent)
        (got, _), = wait_recv(b)
        assert got[:14] == sent[:14] and hamming(got, sent) == 1

    def run(seed: int) -> list[bytes]:
        a, b = link_pair(seed=seed, loss=0.2, duplicate=0.2, reorder=0.2)
        with a, b:
            for i in range(100):
                a.send(frame(b.mac, a.mac, bytes([i])))
            a.flush()
            a.faults = Faults()
            a.send(frame(b.mac, a.mac, b"end"))  # the socketpair keeps order: last to arrive
            got: list[bytes] = []
            while not got or got[-1] != b"end":
                got += [f[14:] for f, _ in wait_recv(b)]
            return got[:-1]
    assert run(3) == run(3) and run(3) != run(4)
