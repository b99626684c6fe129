"""The ICMP layer driven through a real Stack with a virtual clock and a recording fake ARP."""
from __future__ import annotations

import errno
import random
from typing import Any

import pytest
from fakes import RecordingStack
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror, defragment

from usocket.config import SHARED, StackConfig
from usocket.proto.icmp import IcmpError
from usocket.stack import Stack
from usocket.wire.icmp import (
    IcmpMessage,
    build_echo,
    build_error,
    build_icmp,
    frag_needed_rest,
    parse_icmp,
)
from usocket.wire.ipv4 import IPv4Header, build_ipv4, parse_ipv4

ME = bytes([10, 0, 0, 1])
PEER = bytes([10, 0, 0, 2])
ROUTER = bytes([10, 0, 0, 254])
FAR = bytes([192, 0, 2, 7])
BCAST = bytes([10, 0, 0, 255])
PROTO = 253


class LabStack(RecordingStack):
    pass


def make(**cfg: Any) -> LabStack:
    base: dict[str, Any] = dict(address=ME, prefix_len=24, gateway=ROUTER, mtu=1500)
    base.update(cfg)
    return LabStack(StackConfig(**base), rng=random.Random(3))


def out_icmp(stack: Stack) -> list[tuple[IPv4Header, IcmpMessage]]:
    """ICMP messages the stack sent (and forget them)."""
    res = []
    for _, _, p in stack.arp.sent:  # type: ignore[attr-defined]
        h, payload = parse_ipv4(p)
        assert h.proto == 1
        res.append((h, parse_icmp(payload)))
    stack.arp.sent = []  # type: ignore[attr-defined]
    return res


def icmp_in(stack: Stack, icmp: bytes, src: bytes = PEER, dst: bytes = ME, now: float = 0.0) -> None:
    stack.receive_ip(build_ipv4(src, dst, 1, icmp, tos=0x28), now)


class Errors:
    def __init__(self, stack: Stack, proto: int = PROTO) -> None:
        self.got: list[tuple[IcmpError, IPv4Header, bytes]] = []
        stack.icmp.register_error_handler(proto, lambda e, h, l4: self.got.append((e, h, l4)))


# A datagram we sent to FAR with transport header bytes we can recognise.
OURS = build_ipv4(ME, FAR, PROTO, b"PORTSxyz" + b"." * 600, ident=11)
OURS_PORTS = (int.from_bytes(b"PO", "big"), int.from_bytes(b"RT", "big"))  # its source, destination port


class Transport:
    """A stand-in for a transport in ``stack.transports``: owns the flows it is given."""

    def __init__(self, *flows: tuple[int, bytes, int]) -> None:
        self.flows = set(flows)
        self.asked: list[tuple[int, bytes, int]] = []

    def owns(self, local_port: int, remote_ip: bytes, remote_port: int) -> bool:
        self.asked.append((local_port, remote_ip, remote_port))
        return (local_port, remote_ip, remote_port) in self.flows


def own_flow(stack: Stack, dst: bytes = FAR, ports: tuple[int, int] = OURS_PORTS) -> Transport:
    stack.transports[PROTO] = t = Transport((ports[0], dst, ports[1]))
    return t


# -- echo ------------------------------------------------------------------------------------------
def test_echo_request_answered() -> None:
    s = make()
    icmp_in(s, build_echo(0x1234, 7, b"ping data"))
    [(h, msg)] = out_icmp(s)
    assert (h.src, h.dst, h.tos, h.df) == (ME, PEER, 0x28, False)  # Linux clears DF on replies
    assert (msg.type, msg.code, msg.ident, msg.seq, msg.data) == (0, 0, 0x1234, 7, b"ping data")
    assert s.counters.get("icmp", "tx_echo_reply") == 1


def test_big_fragmented_ping_answered_fragmented() -> None:
    s = make()
    data = bytes(range(256)) * 20
    req = build_ipv4(PEER, ME, 1, build_echo(1, 1, data), ident=9)
    hdr_len = 20
    body = req[hdr_len:]
    for off in range(0, len(body), 1480):
        s.receive_ip(build_ipv4(PEER, ME, 1, body[off:off + 1480], ident=9,
                                mf=off + 1480 < len(body), frag_offset=off), 0.0)
    frags = [p for _, _, p in s.arp.sent]  # type: ignore[attr-defined]
    assert len(frags) == 4
    [whole] = defragment([IP(p) for p in frags])
    assert whole[ICMP].type == 0 and bytes(whole[ICMP].payload) == data


def test_echo_not_answered_in_shared_mode_or_to_broadcast() -> None:
    shared = make(mode=SHARED)
    icmp_in(shared, build_echo(1, 1))
    assert out_icmp(shared) == []
    s = make()
    icmp_in(s, build_echo(1, 1), dst=BCAST)
    icmp_in(s, build_echo(1, 1), dst=b"\xff" * 4)
    assert out_icmp(s) == [] and s.counters.get("icmp", "drop.broadcast") == 2
    s.icmp.echo_ignore_broadcasts = False
    icmp_in(s, build_echo(1, 2), dst=BCAST)
    [(h, msg)] = out_icmp(s)
    assert h.src == ME and msg.seq == 2


def test_bad_checksum_and_truncated_dropped() -> None:
    s = make()
    bad = bytearray(build_echo(1, 1, b"abc"))
    bad[9] ^= 0xFF
    icmp_in(s, bytes(bad))
    icmp_in(s, b"\x08\x00\xf7")
    assert out_icmp(s) == []
    assert s.counters.drops("icmp") == {"icmp.drop.bad_checksum": 1, "icmp.drop.truncated": 1}


def test_send_echo_and_receive_reply() -> None:
    s = make()
    replies: list[tuple[IPv4Header, IcmpMessage]] = []
    s.icmp.register_echo_listener(77, lambda h, m: replies.append((h, m)))
    s.icmp.send_echo(FAR, 77, 3, b"payload", ttl=5)
    [(hop, _, raw)] = s.arp.sent  # type: ignore[attr-defined]
    h, payload = parse_ipv4(raw)
    pkt = ICMP(bytes(payload))
    assert (hop, h.ttl, pkt.type, pkt.id, pkt.seq, bytes(pkt.payload)) == (ROUTER, 5, 8, 77, 3, b"payload")
    icmp_in(s, build_echo(77, 3, b"payload", reply=True), src=FAR)
    icmp_in(s, build_echo(78, 3, b"payload", reply=True), src=FAR)
    assert [(h.src, m.seq, m.data) for h, m in replies] == [(FAR, 3, b"payload")]
    assert s.counters.get("icmp", "drop.echo_reply_unmatched") == 1


def test_ping_self_through_loopback() -> None:
    s = make()
    replies: list[IcmpMessage] = []
    s.icmp.register_echo_listener(5, lambda h, m: replies.append(m))
    s.icmp.send_echo(ME, 5, 1, b"me")
    s.poll(0.0)
    assert [(m.type, m.seq, m.data) for m in replies] == [(0, 1, b"me")]


# -- received errors -------------------------------------------------------------------------------
# Expected (errno, hard) per Linux icmp_err_convert, written out independently of the code.
UNREACH = {0: (errno.ENETUNREACH, False), 1: (errno.EHOSTUNREACH, False),
           2: (errno.ENOPROTOOPT, True), 3: (errno.ECONNREFUSED, True), 4: (errno.EMSGSIZE, False),
           5: (errno.EOPNOTSUPP, False), 6: (errno.ENETUNREACH, True), 7: (errno.EHOSTDOWN, True),
           8: (errno.ENONET, True), 9: (errno.ENETUNREACH, True), 10: (errno.EHOSTUNREACH, True),
           11: (errno.ENETUNREACH, False), 12: (errno.EHOSTUNREACH, False),
           13: (errno.EHOSTUNREACH, True), 14: (errno.EHOSTUNREACH, True), 15: (errno.EHOSTUNREACH, True)}
CASES = [(3, code, *v) for code, v in UNREACH.items()] + [
    (11, 0, errno.EHOSTUNREACH, False), (11, 1, errno.EHOSTUNREACH, False), (12, 0, errno.EPROTO, True)]


@pytest.mark.parametrize("type_,code,err,hard", CASES)
def test_errors_delivered_with_errno(type_: int, code: int, err: int, hard: bool) -> None:
    s = make()
    errors = Errors(s)
    own_flow(s)
    rest = frag_needed_rest(1200) if (type_, code) == (3, 4) else 0
    icmp_in(s, build_error(type_, code, OURS, rest=rest), src=ROUTER)
    [(e, h, l4)] = errors.got
    assert (e.type, e.code, e.errno, e.hard, e.origin) == (type_, code, err, hard, ROUTER)
    assert e.mtu == (1200 if (type_, code) == (3, 4) else None)
    assert (h.src, h.dst, h.proto, h.ident) == (ME, FAR, PROTO, 11) and l4.startswith(b"PORTSxyz")


def test_port_unreachable_built_by_scapy() -> None:
    s = make()
    errors = Errors(s, proto=17)
    offending = IP(src="10.0.0.1", dst="192.0.2.7") / UDP(sport=40000, dport=9) / b"q"
    icmp_in(s, bytes(ICMP(type=3, code=3) / IPerror(bytes(offending))), src=FAR)
    [(e, h, l4)] = errors.got
    assert e.errno == errno.ECONNREFUSED and e.hard and UDPerror(l4).sport == 40000


def test_frag_needed_updates_path_mtu() -> None:
    s = make()
    errors = Errors(s)
    owner = own_flow(s)
    owner.flows.add((OURS_PORTS[0], PEER, OURS_PORTS[1]))
    icmp_in(s, build_error(3, 4, OURS, rest=frag_needed_rest(1300)), src=ROUTER)
    assert s.ipv4.path_mtu(FAR) == 1300
    icmp_in(s, build_error(3, 4, OURS, rest=0), src=ROUTER)  # pre-RFC 1191 router: plateau guess
    assert s.ipv4.path_mtu(FAR) == 552 and errors.got[-1][0].mtu == 552  # 628 bytes -> 508 -> clamp
    big = build_ipv4(ME, PEER, PROTO, b"PORTSxyz" + b"." * 1400)
    icmp_in(s, build_error(3, 4, big, rest=0), src=ROUTER)
    assert s.ipv4.path_mtu(PEER) == 1006 and errors.got[-1][0].mtu == 1006
    icmp_in(s, build_error(3, 4, OURS, rest=frag_needed_rest(68)), src=ROUTER)
    assert errors.got[-1][0].mtu == 552  # never below min_pmtu
    s.ipv4.send(FAR, PROTO, b"x" * 1000)
    assert all(len(p) <= 552 for _, _, p in s.arp.sent)  # type: ignore[attr-defined]
    assert owner.asked[0] == (OURS_PORTS[0], FAR, OURS_PORTS[1])


def test_frag_needed_for_a_flow_not_ours_leaves_the_path_mtu_alone() -> None:
    """Anyone can forge an error quoting our address; only our own flows' errors are believed."""
    s = make()
    errors = Errors(s)
    icmp_in(s, build_error(3, 4, OURS, rest=frag_needed_rest(600)), src=ROUTER)  # no transport
    owner = own_flow(s, ports=(1, 2))
    icmp_in(s, build_error(3, 4, OURS, rest=frag_needed_rest(600)), src=ROUTER)  # not that flow
    assert s.ipv4.path_mtu(FAR) == 1500 and s.counters.get("icmp", "pmtu_ignored.not_owned") == 2
    assert owner.asked == [(OURS_PORTS[0], FAR, OURS_PORTS[1])]
    assert [e.mtu for e, _, _ in errors.got] == [1500, 1500]  # still reported, with the MTU in force
    probe = build_ipv4(ME, FAR, 1, build_echo(42, 1, b"x" * 1400))  # our ping, but nobody listens
    icmp_in(s, build_error(3, 4, probe, rest=frag_needed_rest(1000)), src=ROUTER)
    assert s.ipv4.path_mtu(FAR) == 1500
    s.icmp.register_echo_listener(42, lambda h, m: None, lambda e, h, l4: None)
    icmp_in(s, build_error(3, 4, probe, rest=frag_needed_rest(1000)), src=ROUTER)
    assert s.ipv4.path_mtu(FAR) == 1000
    fragment = build_ipv4(ME, PEER, PROTO, b"PORTSxyz", frag_offset=1480)  # no ports to check
    own_flow(s, dst=PEER).flows.add((OURS_PORTS[0], PEER, OURS_PORTS[1]))
    icmp_in(s, build_error(3, 4, fragment, rest=frag_needed_rest(1000)), src=ROUTER)
    assert s.ipv4.path_mtu(PEER) == 1500


@pytest.mark.parametrize("reported,accepted,pmtu", [
    (1, False, 1500), (67, False, 1500), (68, True, 552), (551, True, 552), (552, True, 552),
    (1280, True, 1280), (1500, True, 1500), (9000, True, 1500)])
def test_frag_needed_mtu_rules(reported: int, accepted: bool, pmtu: int) -> None:
    s = make()
    errors = Errors(s)
    own_flow(s)
    icmp_in(s, build_error(3, 4, OURS, rest=frag_needed_rest(reported)), src=ROUTER)
    assert s.ipv4.path_mtu(FAR) == pmtu and len(errors.got) == int(accepted)
    assert s.counters.get("icmp", "drop.frag_needed_bad_mtu") == int(not accepted)


@pytest.mark.parametrize("quoted,reason", [
    (build_ipv4(PEER, FAR, PROTO, b"PORTSxyz"), "drop.quote_not_ours"),
    (OURS[:24], "drop.quote_truncated"),
    (build_ipv4(ME, FAR, PROTO, b"PORTSxyz", frag_offset=8), "drop.quote_fragment"),
])
def test_unusable_errors_dropped(quoted: bytes, reason: str) -> None:
    s = make()
    errors = Errors(s)
    icmp_in(s, build_error(3, 3, quoted), src=ROUTER)
    assert errors.got == [] and s.counters.get("icmp", reason) == 1


def test_ignored_messages() -> None:
    s = make()
    errors = Errors(s)
    icmp_in(s, build_error(4, 0, OURS), src=ROUTER)  # source quench
    icmp_in(s, build_error(5, 1, OURS, rest=int.from_bytes(PEER, "big")), src=ROUTER)  # redirect
    icmp_in(s, build_error(3, 16, OURS), src=ROUTER)  # unknown unreachable code
    icmp_in(s, build_icmp(13, 0, 0, b"\0" * 12))  # timestamp
    icmp_in(s, build_error(3, 3, OURS), src=ROUTER, dst=BCAST)  # errors to a broadcast
    c = s.counters["icmp"]
    assert errors.got == [] and out_icmp(s) == []
    assert (c["ignored.source_quench"], c["ignored.redirect"], c["drop.bad_code"], c["ignored.other"],
            c["drop.broadcast"]) == (1, 1, 1, 1, 1)


def test_error_without_handler_counted() -> None:
    s = make()
    icmp_in(s, build_error(3, 3, OURS), src=ROUTER)
    assert s.counters.get("icmp", "drop.no_error_handler") == 1


def test_error_about_echo_goes_to_echo_listener() -> None:
    s = make()
    got: list[IcmpError] = []
    s.icmp.register_echo_listener(42, lambda h, m: None, lambda e, h, l4: got.append(e))
    probe = build_ipv4(ME, FAR, 1, build_echo(42, 1, b"trace"), ttl=1)
    icmp_in(s, build_error(11, 0, probe), src=ROUTER)
    icmp_in(s, build_error(11, 0, build_ipv4(ME, FAR, 1, build_echo(43, 1))), src=ROUTER)
    assert [(e.type, e.origin) for e in got] == [(11, ROUTER)]
    assert s.counters.get("icmp", "drop.echo_error_unmatched") == 1


# -- sending errors --------------------------------------------------------------------------------
def inbound(payload: bytes = b"PORTSxyz" + b"u" * 100, src: bytes = PEER, dst: bytes = ME,
            proto: int = 17, **kw: Any) -> bytes:
    return build_ipv4(src, dst, proto, payload, **kw)


def test_send_error_quotes_and_marks_tos() -> None:
    s = make()
    offending = inbound(b"x" * 1400, tos=0x14)
    assert s.icmp.send_error(3, 3, offending)
    [(h, msg)] = out_icmp(s)
    assert (h.dst, h.src, h.tos, h.total_length, msg.type, msg.code) == (PEER, ME, 0xD4, 576, 3, 3)
    assert msg.data == offending[:548]
    s.icmp.send_error(3, 4, inbound(), rest=frag_needed_rest(1400))
    [(h, msg)] = out_icmp(s)
    assert msg.mtu == 1400 and msg.data == inbound()  # short datagrams quoted whole


@pytest.mark.parametrize("offending,reason", [
    (inbound(build_error(3, 3, OURS), proto=1), "icmp_error"),
    (inbound(build_icmp(11, 0, 0, b"x" * 28), proto=1), "icmp_error"),
    (inbound(build_icmp(200, 0), proto=1), "icmp_error"),
    (inbound(b"", proto=1), "icmp_error"),
    (inbound(dst=BCAST), "broadcast"),
    (inbound(dst=b"\xff" * 4), "broadcast"),
    (inbound(dst=bytes([239, 1, 2, 3])), "broadcast"),
    (inbound(frag_offset=8), "fragment"),
    (inbound(src=b"\0\0\0\0"), "bad_source"),
    (inbound(src=bytes([127, 0, 0, 1])), "bad_source"),
    (inbound(src=bytes([224, 0, 0, 1])), "bad_source"),
    (inbound(src=bytes([250, 0, 0, 1])), "bad_source"),
    (inbound(src=BCAST), "bad_source"),
    (b"\x45\x00", "malformed"),
])
def test_rfc1122_no_error_cases(offending: bytes, reason: str) -> None:
    s = make()
    assert not s.icmp.send_error(3, 3, offending)
    assert out_icmp(s) == [] and s.counters.get("icmp", f"error_suppressed.{reason}") == 1


def test_errors_allowed_about_echo_and_first_fragments() -> None:
    s = make()
    assert s.icmp.send_error(3, 2, inbound(build_echo(1, 1), proto=1))
    assert s.icmp.send_error(11, 1, inbound(mf=True))
    assert len(out_icmp(s)) == 2


OUR_MAC = StackConfig().mac
PEER_MAC = b"\x02\x00\x00\x00\x00\x02"


def frame(packet: bytes, broadcast: bool) -> bytes:
    return (b"\xff" * 6 if broadcast else OUR_MAC) + PEER_MAC + b"\x08\x00" + packet


def test_no_errors_about_link_layer_broadcast_frames() -> None:
    """RFC 1122 3.2.2: a unicast-IP datagram in a frame to ff:ff:ff:ff:ff:ff gets no error."""
    s = make()
    s.receive_frame(frame(inbound(proto=254), broadcast=True), 0.0)  # protocol unreachable due
    assert out_icmp(s) == [] and s.counters.get("icmp", "error_suppressed.link_broadcast") == 1
    s.receive_frame(frame(inbound(proto=254), broadcast=False), 0.0)
    [(h, msg)] = out_icmp(s)
    assert (h.dst, msg.type, msg.code) == (PEER, 3, 2)
    s.receive_frame(frame(inbound(build_echo(1, 1), proto=1), broadcast=True), 0.0)
    [(h, msg)] = out_icmp(s)  # a ping in a broadcast frame is still answered (as Linux)
    assert msg.type == 0
    assert s.icmp.send_error(3, 3, inbound())  # outside a frame's handling: allowed again


def test_udp_port_unreachable_not_sent_about_broadcast_frames() -> None:
    s = Stack(StackConfig(address=ME, prefix_len=24, gateway=ROUTER), rng=random.Random(1))
    udp = build_ipv4(PEER, ME, 17, bytes.fromhex("9c40 0009 000c 0000") + b"udp!")  # to port 9, closed
    s.receive_frame(frame(udp, broadcast=True), 0.0)
    assert s.counters.get("icmp", "tx_error") == 0
    assert s.counters.get("icmp", "error_suppressed.link_broadcast") == 1
    s.receive_frame(frame(udp, broadcast=False), 0.0)
    assert s.counters.get("icmp", "tx_error") == 1


def test_no_errors_in_shared_mode() -> None:
    s = make(mode=SHARED)
    assert not s.icmp.send_error(3, 3, inbound())
    assert out_icmp(s) == [] and s.counters.get("icmp", "error_suppressed.shared_mode") == 1


def test_error_rate_limit_per_destination() -> None:
    s = make()
    sent = [s.icmp.send_error(3, 3, inbound()) for _ in range(10)]
    assert sent == [True] * 6 + [False] * 4  # burst of 6, like Linux
    assert s.counters.get("icmp", "error_rate_limited") == 4
    assert s.icmp.send_error(3, 3, inbound(src=bytes([10, 0, 0, 3])))  # another host has its own
    s.poll(0.99)
    assert not s.icmp.send_error(3, 3, inbound())
    s.poll(1.0)
    assert s.icmp.send_error(3, 3, inbound())  # one token per second
    assert not s.icmp.send_error(3, 3, inbound())
    assert len(out_icmp(s)) == 8


def test_error_rate_limit_global() -> None:
    s = make(prefix_len=16)
    s.icmp.error_burst = 5
    s.icmp.error_rate = 10.0
    results = [s.icmp.send_error(3, 3, inbound(src=bytes([10, 0, 1, i]))) for i in range(8)]
    assert results == [True] * 5 + [False] * 3
    s.poll(0.1)  # 10/s: one more token
    assert [s.icmp.send_error(3, 3, inbound(src=bytes([10, 0, 2, i]))) for i in range(2)] == [True, False]


def test_errors_to_ourselves_not_limited() -> None:
    s = make()
    errors = Errors(s)
    for _ in range(20):
        assert s.icmp.send_error(3, 3, inbound(b"PORTSxyz", src=ME, proto=PROTO))
    s.poll(0.0)
    assert len(errors.got) == 20 and all(e.errno == errno.ECONNREFUSED for e, _, _ in errors.got)


def test_peer_bucket_table_bounded() -> None:
    s = make(prefix_len=8)
    s.icmp.max_rate_peers = 10
    for i in range(50):
        s.icmp.send_error(3, 3, inbound(src=bytes([10, 1, 0, i])))
    assert len(s.icmp._peer_buckets) == 10


def test_protocol_unreachable_between_two_stacks() -> None:
    """A sends to B on a protocol B does not speak; B's error makes A's transport see ENOPROTOOPT."""
    a = make()
    b = make(address=PEER)
    errors = Errors(a)
    a.ipv4.send(PEER, PROTO, b"PORTSxyz hello")
    for _, _, p in a.arp.sent:  # type: ignore[attr-defined]
        b.receive_ip(p, 0.0)
    for _, _, p in b.arp.sent:  # type: ignore[attr-defined]
        a.receive_ip(p, 0.0)
    [(e, h, l4)] = errors.got
    assert (e.type, e.code, e.errno, e.hard, e.origin) == (3, 2, errno.ENOPROTOOPT, True, PEER)
    assert l4 == b"PORTSxyz hello"
