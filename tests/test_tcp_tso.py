"""TCP segmentation offload: new data leaves as super-segments when the link cuts them.

The harness plays a link with ``gso_max_size``: super-segments are kept in ``net.gso_sent`` and
cut by :func:`usocket.wire.gso.segment` (checksums completed) into what the peer receives.
Retransmissions stay MSS-sized: the retransmission queue holds one record per MSS. Also here:
the software cutter against the kernel's rules, super-segments through ARP's queue, to our own
address, and through the pcap wrapper. The real kernel path is ``test_lab_tso.py``.
"""
from __future__ import annotations

import io
import random

import pytest
from tcp_harness import ACK, FIN, PSH, Net

from usocket.config import OWN, StackConfig
from usocket.link.base import Link
from usocket.link.pcap import PcapLink, PcapWriter, read_pcap
from usocket.proto.tcp.connection import TcpConnection
from usocket.stack import Stack
from usocket.wire import MalformedError
from usocket.wire.addr import ip_aton
from usocket.wire.arp import build_arp
from usocket.wire.gso import GsoPacket, gso_packet, segment
from usocket.wire.ipv4 import IPv4Template, parse_ipv4
from usocket.wire.tcp import CWR, TcpTemplate, parse_tcp

GSO = 65535


def nodelay(conn: TcpConnection) -> None:
    conn.nodelay = True


def test_segment_cuts_like_the_kernel() -> None:
    src, dst = ip_aton("10.0.0.1"), ip_aton("10.0.0.2")
    payload = bytes(range(256)) * 23 + b"odd"  # 5891 bytes: 4 pieces of 1448 and one of 99
    seg = TcpTemplate(src, dst, 1234, 80).build_partial(1000, 77, ACK | PSH | FIN | CWR, 500,
                                                       b"\x01\x01\x08\x0a" + bytes(8), payload)
    frame = gso_packet(b"\x02" * 12 + b"\x08\x00" + IPv4Template(src, dst, 6).build(seg, 0xFFFF, df=True), 1448)
    pieces = segment(frame)
    assert len(pieces) == 5
    got = b""
    for i, p in enumerate(pieces):
        assert p[:14] == frame[:14]
        hdr, l4 = parse_ipv4(p[14:])  # the IPv4 checksum is verified
        tcp = parse_tcp(bytes(l4), src, dst, verify=True)
        assert hdr.df and hdr.ident == (0xFFFF + i) & 0xFFFF
        assert tcp.seq == 1000 + 1448 * i and tcp.ack == 77 and (tcp.ts_val, tcp.ts_ecr) == (0, 0)
        last = i == len(pieces) - 1
        assert bool(tcp.flags & (PSH | FIN)) == last and bool(tcp.flags & CWR) == (i == 0)
        got += bytes(tcp.payload)
    assert got == payload
    with pytest.raises(MalformedError):
        segment(gso_packet(b"\x00" * 60, 1448))


def test_super_segments_only_when_the_link_offers_them() -> None:
    for gso in (0, GSO):
        net = Net(gso_max_size=gso)
        conn, peer = net.established(setup=nodelay)
        mss = conn.mss
        conn.send(b"d" * (10 * mss))  # the initial window: 10 segments
        segs = peer.take()
        assert [len(s.payload) for s in segs] == [mss] * 10
        assert b"".join(bytes(s.payload) for s in segs) == b"d" * (10 * mss)
        assert [s.flags & PSH for s in segs] == [0] * 9 + [PSH]
        if gso:
            assert len(net.gso_sent) == 1
            assert net.gso_sent[0].gso_size == mss and len(net.gso_sent[0]) == 20 + 32 + 10 * mss
        else:
            assert net.gso_sent == []
        assert conn.segs_out == 2 + 10 and len(conn.rtxq) - conn.rtx_head == 10


def test_super_segments_follow_cwnd_window_and_fin() -> None:
    net = Net(gso_max_size=GSO)
    conn, peer = net.established(setup=nodelay, window=25 * 1460)
    mss = conn.mss
    data = bytes(range(256)) * 400  # 102400 bytes
    conn.send(data)
    conn.shutdown(1)
    got = b""
    fins = 0
    for _ in range(50):
        segs = peer.take()
        for s in segs:
            assert len(s.payload) <= mss
            got += bytes(s.payload)
            fins += bool(s.flags & FIN)
        if fins:
            break
        peer.send(ACK)
    assert got == data and fins == 1
    assert net.gso_sent and all(len(p) <= GSO for p in net.gso_sent)
    assert all(len(p) - 52 <= 25 * 1460 for p in net.gso_sent)  # never past the peer's window
    assert conn.retransmits == 0


def test_loss_inside_a_super_segment_is_repaired_by_mss_retransmissions() -> None:
    net = Net(gso_max_size=GSO)
    conn, peer = net.established(setup=nodelay)
    peer.send(ACK)
    mss = conn.mss
    conn.send(b"s" * (10 * mss))
    assert len(net.gso_sent) == 0
    segs = peer.take(10)
    assert len(net.gso_sent) == 1  # the ten went out as one super-segment
    starts = [s.seq for s in segs]
    hole = starts[2]  # its third piece is lost
    peer.send(ACK, ack=hole)
    for k in range(3, 10):
        peer.send(ACK, ack=hole, sack=[(starts[3], starts[k] + mss)])
    out = peer.take()
    # The hole alone, one MSS, as an ordinary segment; then new data may follow (none here).
    assert len(out) == 1
    peer.check(out[0], seq=hole, length=mss)
    assert len(net.gso_sent) == 1 and conn.retransmits == 1
    peer.send(ACK, ack=starts[9] + mss)
    net.advance(5.0)
    peer.expect_none()
    assert conn.retransmits == 1 and conn.snd_una == conn.snd_nxt


def test_whole_super_segment_lost_is_resent_in_mss_pieces() -> None:
    net = Net(gso_max_size=GSO)
    conn, peer = net.established(setup=nodelay)
    mss = conn.mss
    conn.send(b"r" * (4 * mss))
    first = peer.take()
    assert len(first) == 4 and len(net.gso_sent) == 1  # and all of it is lost
    base = first[0].seq
    got: dict[int, bytes] = {}
    for _ in range(30):
        net.advance(1.0)  # tail loss probe, then RTOs
        for s in peer.take():
            assert len(s.payload) == mss
            got[s.seq] = bytes(s.payload)
        edge = base
        while edge in got:
            edge += mss
        if edge != base:
            peer.send(ACK, ack=edge)
        if conn.snd_una == conn.snd_nxt:
            break
    assert conn.snd_una == conn.snd_nxt and conn.retransmits >= 4
    assert b"".join(got[k] for k in sorted(got)) == b"r" * (4 * mss)
    assert len(net.gso_sent) == 1  # retransmissions never go as super-segments


def test_gso_packet_is_bytes() -> None:
    p = gso_packet(b"abc", 100)
    assert isinstance(p, bytes) and type(p) is GsoPacket and p == b"abc" and p.gso_size == 100


def test_super_segment_waiting_for_arp_leaves_whole() -> None:
    """A super-segment queued while its next hop resolves is sent as one when the reply comes
    (ARP's queue keeps it a GsoPacket; a plain copy would be dropped as oversize)."""
    stack = Stack(StackConfig(mode=OWN), rng=random.Random(7))
    our_mac, peer_mac = stack.config.mac, b"\x02\x00\x00\x00\x00\x02"
    peer = ip_aton("10.0.0.2")
    packet = gso_packet(b"\x45" + bytes(3999), 1448)
    stack.arp.output(peer, 0x0800, packet)
    assert [f[12:14] for f in stack.take_output()] == [b"\x08\x06"]  # the request only
    reply = our_mac + peer_mac + b"\x08\x06" + build_arp(2, peer_mac, peer, our_mac, stack.config.address)
    stack.receive_frame(reply, 0.1)
    (frame,) = stack.take_output()
    assert type(frame) is GsoPacket and frame.gso_size == 1448
    assert frame[:14] == peer_mac + our_mac + b"\x08\x00" and frame[14:] == packet


def test_super_segment_to_our_own_address_is_cut_in_software() -> None:
    stack = Stack(StackConfig(mode=OWN), rng=random.Random(7))
    me = stack.config.address
    got: list[tuple[int, bytes]] = []

    def handler(hdr, payload, csum_ok):  # type: ignore[no-untyped-def]
        seg = parse_tcp(bytes(payload), hdr.src, hdr.dst, verify=True)  # complete checksums
        got.append((seg.seq, bytes(seg.payload)))

    stack.ipv4.register(6, handler)
    data = bytes(range(256)) * 16
    stack.ipv4.send(me, 6, TcpTemplate(me, me, 1, 2).build_partial(7, 0, ACK, 100, b"", data), gso_size=1448)
    stack.poll(0.0)
    assert [s for s, _ in got] == [7, 7 + 1448, 7 + 2896] and b"".join(p for _, p in got) == data
    assert stack.take_output() == []


class _OffloadLink(Link):
    """A link that says it cuts super-segments and keeps what it is given."""

    gso_max_size = GSO

    def __init__(self) -> None:
        super().__init__("offload0")
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> bool:
        self.sent.append(frame)
        return True


def test_pcap_wrapper_passes_super_segments_and_records_them_whole() -> None:
    inner = _OffloadLink()
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    link = PcapLink(inner, writer)
    assert link.gso_max_size == GSO
    frame = gso_packet(b"\x02" * 12 + b"\x08\x00" + bytes(20000), 1448)
    assert link.send(frame)
    writer.flush()
    assert inner.sent == [frame] and type(inner.sent[0]) is GsoPacket
    assert [f for _, f in read_pcap(buf.getvalue())] == [frame]


@pytest.mark.parametrize("where", ["ipv4", "tcp"])  # (the harness has no link boundary)
def test_output_hooks_see_wire_sized_segments(where: str) -> None:
    """While an output hook is registered (usocket.hack), TCP builds no super-segments: the hook
    sees every segment as the wire will; removing the hook turns offload back on."""
    from usocket import hack

    net = Net(gso_max_size=GSO)
    conn, peer = net.established(setup=nodelay)
    mss = conn.mss
    seen: list[int] = []
    remove = hack.hooks(net.stack).add(where, "out", lambda data, ctx: seen.append(len(data)) or data)
    conn.send(b"h" * (10 * mss))
    assert [len(s.payload) for s in peer.take()] == [mss] * 10
    assert net.gso_sent == [] and len(seen) == 10
    assert max(seen) <= {"ipv4": 20, "tcp": 0}[where] + 32 + mss
    remove()
    assert net.stack.gso_max_size == GSO
    peer.ack_all()  # room in cwnd: the next burst goes out as a super-segment again
    conn.send(b"i" * (10 * mss))
    peer.take()
    assert len(net.gso_sent) >= 1
