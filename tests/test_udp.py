"""The UDP layer: bind rules, demultiplexing, ICMP errors, port unreachable, rcvbuf, diversion.

The IPv4/ICMP/link layers are small fakes defined here, so these tests depend on nothing but
the UDP layer: datagrams go in through ``stack.udp.receive`` and come out in ``ipv4.sent``.
"""
from __future__ import annotations

import errno
import random
import struct
import time
from typing import Any

import pytest

from usocket.config import OWN, SHARED, StackConfig
from usocket.proto.icmp import IcmpError
from usocket.proto.ports import PortAllocator
from usocket.proto.udp import DATAGRAM_OVERHEAD, UdpEndpoint
from usocket.stack import FlowObserver, Stack
from usocket.wire.ipv4 import IPv4Header
from usocket.wire.udp import build_udp, parse_udp

OURS = bytes([10, 0, 0, 1])
PEER = bytes([10, 0, 0, 2])
OTHER = bytes([10, 0, 0, 3])
ANY = bytes(4)
BCAST = b"\xff" * 4
SUBNET_BCAST = bytes([10, 0, 0, 255])


# -- fakes -------------------------------------------------------------------------------------
class FakeLink:
    def __init__(self, stack: Any) -> None:
        self.stack = stack

    def register(self, *a: Any) -> None:
        pass

    def receive(self, *a: Any) -> None:
        pass


class FakeIPv4:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.protocols: dict[int, Any] = {}
        self.sent: list[tuple[bytes, int, bytes, dict[str, Any]]] = []
        self.fail: OSError | None = None

    def register(self, proto: int, handler: Any) -> None:
        self.protocols[proto] = handler

    def send(self, dst: bytes, proto: int, payload: bytes, **opts: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((dst, proto, bytes(payload), opts))


class FakeIcmp:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.error_handlers: dict[int, Any] = {}
        self.errors_sent: list[tuple[int, int, bytes]] = []

    def register_error_handler(self, proto: int, fn: Any) -> None:
        self.error_handlers[proto] = fn

    def send_error(self, type_: int, code: int, ip_packet: bytes) -> None:
        self.errors_sent.append((type_, code, bytes(ip_packet)))


class FakeStack(Stack):
    ethernet_class = FakeLink  # type: ignore[assignment]
    arp_class = FakeLink  # type: ignore[assignment]
    ipv4_class = FakeIPv4  # type: ignore[assignment]
    icmp_class = FakeIcmp  # type: ignore[assignment]
    ipv4: FakeIPv4  # type: ignore[assignment]
    icmp: FakeIcmp  # type: ignore[assignment]


class RecordingFlows(FlowObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, Any]] = []
        self.refuse: OSError | None = None

    def flow_opened(self, proto: int, local_port: int, remote: Any) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append(("open", proto, local_port, remote))

    def flow_closed(self, proto: int, local_port: int, remote: Any) -> None:
        self.calls.append(("close", proto, local_port, remote))


class RecordingPorts(PortAllocator):
    """Ports 7000-7009 are "held by the host kernel"."""

    def __init__(self) -> None:
        super().__init__((50000, 50099), random.Random(7))
        self.claimed: list[int] = []
        self.released: list[int] = []

    def claim(self, proto: int, port: int, explicit: bool, reuse_addr: bool = False) -> bool:
        if 7000 <= port < 7010:
            if explicit:
                raise OSError(errno.EADDRINUSE, "Address already in use")
            return False
        self.claimed.append(port)
        return True

    def release(self, proto: int, port: int) -> None:
        self.released.append(port)


def make_stack(mode: str = OWN) -> FakeStack:
    cfg = StackConfig(address=OURS, prefix_len=24, mode=mode)
    return FakeStack(cfg, rng=random.Random(1), ports=RecordingPorts(), flows=RecordingFlows())


def ip_header(src: bytes, dst: bytes, total: int = 0) -> IPv4Header:
    raw = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + total, 1, 0, 64, 17, 0, src, dst)
    return IPv4Header(0, 20 + total, 1, False, False, 0, 64, 17, 0, src, dst, 20, raw)


def inject(stack: FakeStack, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes,
           csum: bool = True, csum_ok: bool = False) -> bytes:
    dgram = build_udp(sport, dport, payload, src, dst, checksum=csum)
    stack.udp.receive(ip_header(src, dst, len(dgram)), dgram, csum_ok)
    return dgram


@pytest.fixture
def stack() -> FakeStack:
    return make_stack()


def ports_of(stack: FakeStack) -> RecordingPorts:
    assert isinstance(stack.ports, RecordingPorts)
    return stack.ports


def flows_of(stack: FakeStack) -> RecordingFlows:
    assert isinstance(stack.flows, RecordingFlows)
    return stack.flows


# -- bind ---------------------------------------------------------------------------------------
def test_registration(stack: FakeStack) -> None:
    assert stack.ipv4.protocols[17] == stack.udp.receive
    assert stack.icmp.error_handlers[17] == stack.udp.icmp_error


def test_bind_rules(stack: FakeStack) -> None:
    udp = stack.udp
    ep = udp.open()
    assert isinstance(ep, UdpEndpoint) and not ep.bound
    udp.bind(ep, ANY, 5000)
    assert (ep.local_ip, ep.local_port) == (ANY, 5000)
    with pytest.raises(OSError) as ei:
        udp.bind(ep, ANY, 5001)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        udp.bind(udp.open(), OTHER, 5002)
    assert ei.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OverflowError):
        udp.bind(udp.open(), ANY, 70000)
    eph = udp.open()
    udp.bind(eph, OURS, 0)
    assert 50000 <= eph.local_port <= 50099 and eph.local_ip == OURS
    assert flows_of(stack).calls == [("open", 17, 5000, None), ("open", 17, eph.local_port, None)]
    assert ports_of(stack).claimed[0] == 5000
    udp.close(ep)
    udp.close(ep)  # idempotent
    assert flows_of(stack).calls[-1] == ("close", 17, 5000, None)
    assert ports_of(stack).released == [5000]
    with pytest.raises(OSError) as ei:
        udp.sendto(ep, b"x", PEER, 9)
    assert ei.value.errno == errno.EBADF
    # the port is free again
    udp.bind(udp.open(), ANY, 5000)
    # broadcast addresses may be bound (Linux accepts RTN_BROADCAST)
    udp.bind(udp.open(), BCAST, 67)


@pytest.mark.parametrize("first, second, flags1, flags2, ok", [
    (ANY, ANY, {}, {}, False),
    (ANY, OURS, {}, {}, False),
    (OURS, ANY, {}, {}, False),
    (OURS, BCAST, {}, {}, True),  # different specific addresses never conflict
    (ANY, ANY, {"reuse_addr": True}, {"reuse_addr": True}, True),
    (OURS, OURS, {"reuse_addr": True}, {"reuse_addr": True}, True),  # UDP: even the same address
    (ANY, ANY, {"reuse_addr": True}, {}, False),
    (ANY, ANY, {"reuse_port": True}, {"reuse_port": True}, True),
    (ANY, ANY, {"reuse_port": True}, {"reuse_addr": True}, False),
])
def test_bind_conflicts(stack: FakeStack, first: bytes, second: bytes, flags1: dict[str, bool],
                        flags2: dict[str, bool], ok: bool) -> None:
    udp = stack.udp
    a, b = udp.open(), udp.open()
    for ep, flags in ((a, flags1), (b, flags2)):
        for k, v in flags.items():
            setattr(ep, k, v)
    udp.bind(a, first, 6000)
    if ok:
        udp.bind(b, second, 6000)
        assert b.local_port == 6000
        # one port, one claim and one flow, however many endpoints share it
        assert ports_of(stack).claimed == [6000]
        assert flows_of(stack).calls == [("open", 17, 6000, None)]
        udp.close(a)
        assert flows_of(stack).calls == [("open", 17, 6000, None)]
        udp.close(b)
        assert flows_of(stack).calls[-1] == ("close", 17, 6000, None)
    else:
        with pytest.raises(OSError) as ei:
            udp.bind(b, second, 6000)
        assert ei.value.errno == errno.EADDRINUSE
        assert not b.bound


def test_port_held_outside(stack: FakeStack) -> None:
    udp = stack.udp
    ep = udp.open()
    with pytest.raises(OSError) as ei:
        udp.bind(ep, ANY, 7003)
    assert ei.value.errno == errno.EADDRINUSE
    assert not ep.bound and 7003 not in udp.ports and flows_of(stack).calls == []


def test_flow_opened_refusal_undoes_bind(stack: FakeStack) -> None:
    udp = stack.udp
    flows = flows_of(stack)
    flows.refuse = OSError(errno.EPERM, "diversion failed")
    ep = udp.open()
    with pytest.raises(OSError) as ei:
        udp.bind(ep, ANY, 5353)
    assert ei.value.errno == errno.EPERM
    assert not ep.bound and udp.ports == {} and ports_of(stack).released == [5353]
    with pytest.raises(OSError):
        udp.sendto(ep, b"x", PEER, 53)  # the auto-bind is refused the same way
    assert stack.ipv4.sent == [] and udp.ports == {}
    flows.refuse = None
    udp.bind(ep, ANY, 5353)
    assert ep.local_port == 5353 and flows.calls == [("open", 17, 5353, None)]


# -- connect ------------------------------------------------------------------------------------
def test_connect_and_disconnect(stack: FakeStack) -> None:
    udp = stack.udp
    ep = udp.open()
    udp.connect(ep, PEER, 53)
    assert ep.bound and ep.local_ip == OURS and (ep.remote_ip, ep.remote_port) == (PEER, 53)
    port = ep.local_port
    udp.disconnect(ep)  # auto-bound: the port goes back, like Linux __udp_disconnect
    assert not ep.bound and ep.local_ip == ANY and ep.remote_ip is None
    assert flows_of(stack).calls == [("open", 17, port, None), ("close", 17, port, None)]
    udp.bind(ep, ANY, 4000)
    udp.connect(ep, PEER, 53)
    assert ep.local_ip == OURS
    udp.disconnect(ep)  # explicit port stays, the implicit address goes
    assert (ep.local_ip, ep.local_port) == (ANY, 4000)
    with pytest.raises(OSError) as ei:
        udp.connect(ep, BCAST, 67)
    assert ei.value.errno == errno.EACCES
    with pytest.raises(OSError) as ei:
        udp.send(ep, b"x")
    assert ei.value.errno == errno.EDESTADDRREQ


# -- sending ------------------------------------------------------------------------------------
def test_sendto_builds_datagram(stack: FakeStack) -> None:
    udp = stack.udp
    ep = udp.open()
    ep.ttl, ep.tos, ep.df = 7, 0x10, True
    assert udp.sendto(ep, b"ping", PEER, 9999) == 4
    dst, proto, dgram, opts = stack.ipv4.sent[-1]
    assert (dst, proto) == (PEER, 17)
    assert opts == {"src": OURS, "ttl": 7, "tos": 0x10, "df": True}
    h = parse_udp(dgram, OURS, PEER)  # checksum verified with the pseudo header
    assert (h.src_port, h.dst_port, dgram[8:]) == (ep.local_port, 9999, b"ping")
    assert ep.bound and ep.local_ip == ANY  # auto-bound to the wildcard
    plain = udp.open()
    udp.sendto(plain, bytearray(b"x" * 65507), PEER, 1)
    assert stack.ipv4.sent[-1][3] == {"src": OURS, "ttl": 64, "tos": 0, "df": None}
    with pytest.raises(OSError) as ei:
        udp.sendto(plain, b"x" * 65508, PEER, 1)
    assert ei.value.errno == errno.EMSGSIZE
    with pytest.raises(OSError) as ei:
        udp.sendto(plain, b"x", PEER, 0)
    assert ei.value.errno == errno.EINVAL
    for bcast in (BCAST, SUBNET_BCAST):
        with pytest.raises(OSError) as ei:
            udp.sendto(plain, b"x", bcast, 67)
        assert ei.value.errno == errno.EACCES
    plain.broadcast = True
    udp.sendto(plain, b"x", BCAST, 67)
    assert stack.ipv4.sent[-1][0] == BCAST
    stack.ipv4.fail = OSError(errno.ENETUNREACH, "Network is unreachable")
    with pytest.raises(OSError) as ei:
        udp.sendto(plain, b"x", PEER, 1)
    assert ei.value.errno == errno.ENETUNREACH
    assert stack.counters.get("udp", "tx") == 3


def test_send_connected(stack: FakeStack) -> None:
    udp = stack.udp
    ep = udp.open()
    udp.bind(ep, OURS, 1234)
    udp.connect(ep, PEER, 4321)
    udp.send(ep, b"hello")
    dst, _, dgram, opts = stack.ipv4.sent[-1]
    assert dst == PEER and opts["src"] == OURS and dgram[:4] == struct.pack("!HH", 1234, 4321)


# -- receiving ----------------------------------------------------------------------------------
def test_demux_precedence(stack: FakeStack) -> None:
    udp = stack.udp
    eps = {}
    for name in ("wild", "addr", "conn_wild", "conn_addr"):
        ep = udp.open()
        ep.reuse_addr = True
        eps[name] = ep
    udp.bind(eps["wild"], ANY, 5000)
    udp.bind(eps["conn_wild"], ANY, 5000)
    udp.connect(eps["conn_wild"], OTHER, 53)
    eps["conn_wild"].local_ip = ANY  # as if connected while bound to the wildcard address
    udp.bind(eps["addr"], OURS, 5000)
    udp.bind(eps["conn_addr"], OURS, 5000)
    udp.connect(eps["conn_addr"], PEER, 53)

    def who(src: bytes, sport: int) -> str:
        inject(stack, src, sport, OURS, 5000, b"d")
        got = [n for n, ep in eps.items() if ep.pop() is not None]
        assert len(got) == 1, got
        return got[0]

    assert who(PEER, 53) == "conn_addr"  # exact 4-tuple
    assert who(OTHER, 53) == "conn_wild"  # connected to the sender, wildcard local address
    assert who(PEER, 54) == "addr"  # bound address beats wildcard
    udp.close(eps["addr"])
    assert who(PEER, 54) == "wild"
    udp.close(eps["conn_addr"])
    assert who(PEER, 53) == "wild"


def test_connected_endpoint_only_hears_its_peer(stack: FakeStack) -> None:
    udp = stack.udp
    ep = udp.open()
    udp.connect(ep, PEER, 53)
    inject(stack, OTHER, 53, OURS, ep.local_port, b"spoof")
    inject(stack, PEER, 54, OURS, ep.local_port, b"wrong port")
    inject(stack, PEER, 53, OURS, ep.local_port, b"good")
    assert ep.pop() == (b"good", PEER, 53) and ep.pop() is None
    assert stack.counters.get("udp", "drop.no_port") == 2
    assert udp.owns(ep.local_port, PEER, 53) and not udp.owns(ep.local_port, OTHER, 53)


def test_owns(stack: FakeStack) -> None:
    udp = stack.udp
    assert not udp.owns(5000, PEER, 1)
    ep = udp.open()
    udp.bind(ep, ANY, 5000)
    assert udp.owns(5000, PEER, 1) and udp.owns(5000, OTHER, 2) and not udp.owns(5001, PEER, 1)
    udp.close(ep)
    assert not udp.owns(5000, PEER, 1)


def test_reuse_port_group_spreads_by_flow(stack: FakeStack) -> None:
    udp = stack.udp
    group = [udp.open() for _ in range(4)]
    for ep in group:
        ep.reuse_port = True
        udp.bind(ep, ANY, 8000)
    hits: dict[int, set[int]] = {}
    for sport in range(1000, 1064):
        for _ in range(2):
            inject(stack, PEER, sport, OURS, 8000, b"x")
            owner = [i for i, ep in enumerate(group) if ep.pop() is not None]
            assert len(owner) == 1
            hits.setdefault(sport, set()).add(owner[0])
    assert all(len(v) == 1 for v in hits.values())  # a flow sticks to one endpoint
    assert len(set().union(*hits.values())) > 1  # flows are spread


def test_broadcast_goes_to_every_match_and_never_icmp(stack: FakeStack) -> None:
    udp = stack.udp
    wild1, wild2, unicast, connected = (udp.open() for _ in range(4))
    for ep in (wild1, wild2, unicast, connected):
        ep.reuse_addr = True
    udp.bind(wild1, ANY, 68)
    udp.bind(wild2, ANY, 68)
    udp.bind(unicast, OURS, 68)
    udp.bind(connected, ANY, 68)
    udp.connect(connected, OTHER, 67)
    for dst in (BCAST, SUBNET_BCAST):
        inject(stack, PEER, 67, dst, 68, b"offer")
        assert wild1.pop() == (b"offer", PEER, 67) and wild2.pop() == (b"offer", PEER, 67)
        assert unicast.pop() is None and connected.pop() is None
    inject(stack, PEER, 67, BCAST, 69, b"nobody")
    inject(stack, PEER, 67, SUBNET_BCAST, 69, b"nobody")
    inject(stack, PEER, 67, bytes([224, 0, 0, 251]), 5353, b"mdns")
    assert stack.icmp.errors_sent == []
    assert stack.counters.get("udp", "drop.no_port") == 3


@pytest.mark.parametrize("mode, expect_icmp", [(OWN, True), (SHARED, False)])
def test_port_unreachable_only_in_own_mode(mode: str, expect_icmp: bool) -> None:
    stack = make_stack(mode)
    dgram = inject(stack, PEER, 4444, OURS, 9, b"anyone?")
    assert stack.counters.get("udp", "drop.no_port") == 1
    if expect_icmp:
        hdr = ip_header(PEER, OURS, len(dgram))
        assert stack.icmp.errors_sent == [(3, 3, hdr.raw + dgram)]
    else:
        assert stack.icmp.errors_sent == []


def test_checksum_and_malformed_drops(stack: FakeStack) -> None:
    udp = stack.udp
    ep = udp.open()
    udp.bind(ep, ANY, 5000)
    dgram = bytearray(build_udp(1, 5000, b"payload", PEER, OURS))
    dgram[-1] ^= 0xFF
    udp.receive(ip_header(PEER, OURS, len(dgram)), bytes(dgram), False)
    assert ep.pop() is None and stack.counters.get("udp", "drop.bad_checksum") == 1
    udp.receive(ip_header(PEER, OURS, len(dgram)), memoryview(bytes(dgram)), True)  # offload: trusted
    assert ep.pop() == (b"payloa" + bytes([ord("d") ^ 0xFF]), PEER, 1)
    inject(stack, PEER, 1, OURS, 5000, b"no checksum", csum=False)
    assert ep.pop() == (b"no checksum", PEER, 1)
    good = build_udp(1, 5000, b"abc", PEER, OURS)
    udp.receive(ip_header(PEER, OURS, 5), good[:5], False)
    udp.receive(ip_header(PEER, OURS, 10), good[:10], False)  # length field says 11
    udp.receive(ip_header(PEER, OURS, 8), good[:4] + struct.pack("!H", 4) + good[6:8], False)
    udp.receive(ip_header(PEER, OURS, 14), good + b"\0\0\0", False)  # trailing padding is fine
    assert ep.pop() == (b"abc", PEER, 1) and ep.pop() is None
    c = stack.counters["udp"]
    assert (c["drop.too_short"], c["drop.bad_length"], c["rx"]) == (1, 2, 7)
    assert stack.icmp.errors_sent == []  # malformed input is never answered


def test_rcvbuf_bounds_the_queue(stack: FakeStack) -> None:
    udp = stack.udp
    ep = udp.open()
    ep.rcvbuf = 10_000
    udp.bind(ep, ANY, 5000)
    for _ in range(100):
        inject(stack, PEER, 1, OURS, 5000, b"x" * 1000)
    assert len(ep.queue) == 10_000 // (1000 + DATAGRAM_OVERHEAD)
    assert ep.queued_bytes <= ep.rcvbuf
    assert stack.counters.get("udp", "drop.rcvbuf") == 100 - len(ep.queue)
    for _ in range(1000):  # empty datagrams still cost their overhead
        inject(stack, PEER, 1, OURS, 5000, b"")
    assert ep.queued_bytes <= ep.rcvbuf
    while ep.pop() is not None:
        pass
    assert ep.queued_bytes == 0
    big = b"y" * 60_000  # one datagram larger than rcvbuf still fits an empty queue (Linux)
    inject(stack, PEER, 1, OURS, 5000, big)
    inject(stack, PEER, 1, OURS, 5000, big)
    assert ep.pop() == (big, PEER, 1) and ep.pop() is None


def test_subclass_on_datagram(stack: FakeStack) -> None:
    got: list[tuple[bytes, bytes, int]] = []

    class Sink(UdpEndpoint):
        def __init__(self, layer: Any, tag: str) -> None:
            super().__init__(layer)
            self.tag = tag

        def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
            got.append((data, src_ip, src_port))

    ep = stack.udp.open(Sink, "t")
    assert isinstance(ep, Sink) and ep.tag == "t"
    stack.udp.bind(ep, ANY, 5000)
    inject(stack, PEER, 99, OURS, 5000, b"hi")
    assert got == [(b"hi", PEER, 99)] and type(got[0][0]) is bytes


# -- ICMP errors --------------------------------------------------------------------------------
def _icmp(stack: FakeStack, local_port: int, remote: bytes, remote_port: int, hard: bool = True,
          code: int = 3, errno_: int = errno.ECONNREFUSED) -> None:
    quoted = build_udp(local_port, remote_port, b"q", OURS, remote)
    err = IcmpError(type=3, code=code, errno=errno_, hard=hard, origin=remote)
    stack.udp.icmp_error(err, ip_header(OURS, remote, len(quoted)), quoted[:8])


def test_icmp_errors_reach_connected_endpoints_only(stack: FakeStack) -> None:
    udp = stack.udp
    connected, unconnected = udp.open(), udp.open()
    udp.connect(connected, PEER, 53)
    udp.bind(unconnected, ANY, 6000)
    udp.sendto(unconnected, b"x", PEER, 53)
    _icmp(stack, 6000, PEER, 53)
    assert unconnected.pending_error is None and unconnected.take_error() == 0
    _icmp(stack, connected.local_port, OTHER, 53)  # not its peer
    _icmp(stack, connected.local_port, PEER, 54)
    assert connected.pending_error is None
    _icmp(stack, connected.local_port, PEER, 53, hard=False, code=1, errno_=errno.EHOSTUNREACH)
    assert connected.pending_error is None  # soft errors are ignored without IP_RECVERR
    _icmp(stack, connected.local_port, PEER, 53)
    assert connected.take_error() == errno.ECONNREFUSED and connected.take_error() == 0
    c = stack.counters["udp"]
    assert (c["icmp_error.delivered"], c["icmp_error.ignored"], c["icmp_error.no_endpoint"]) == (1, 1, 3)
    udp.icmp_error(IcmpError(3, 3, errno.ECONNREFUSED, True, PEER), ip_header(OURS, PEER), b"\0")
    assert c["drop.icmp_short"] == 1


def test_frag_needed_reaches_connected_endpoint_as_emsgsize_unless_pmtudisc_dont(stack: FakeStack) -> None:
    """Linux __udp4_lib_err: ICMP_FRAG_NEEDED is a hard EMSGSIZE when pmtudisc != DONT."""
    udp = stack.udp
    want, dont, probe = udp.open(), udp.open(), udp.open()
    dont.df = False  # IP_PMTUDISC_DONT
    probe.df = True  # IP_PMTUDISC_DO
    for port, ep in ((53, want), (54, dont), (55, probe)):
        udp.connect(ep, PEER, port)
        _icmp(stack, ep.local_port, PEER, port, hard=False, code=4, errno_=errno.EMSGSIZE)
    assert want.take_error() == errno.EMSGSIZE and probe.take_error() == errno.EMSGSIZE
    assert dont.pending_error is None
    c = stack.counters["udp"]
    assert (c["icmp_error.delivered"], c["icmp_error.ignored"]) == (2, 1)


def test_receive_path_is_fast(stack: FakeStack) -> None:
    udp = stack.udp
    ep = udp.open()
    ep.rcvbuf = 1 << 30
    udp.bind(ep, ANY, 5000)
    small = build_udp(1, 5000, b"x" * 64, PEER, OURS)
    big = build_udp(1, 5000, b"y" * 60_000, PEER, OURS)
    hs, hb = ip_header(PEER, OURS, len(small)), ip_header(PEER, OURS, len(big))
    t0 = time.perf_counter()
    for _ in range(20_000):
        udp.receive(hs, small, False)
    for _ in range(500):
        udp.receive(hb, big, False)
    elapsed = time.perf_counter() - t0
    assert len(ep.queue) == 20_500
    assert elapsed < 3.0, f"{elapsed:.2f}s"  # ~0.1 s on the reference machine; catches O(n) blowups
