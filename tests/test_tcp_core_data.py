"""The TCP data path, packet by packet: sequence wrap, options (window scale, timestamps with
PAWS, SACK both ways, malformed options), reliability (RTO, fast retransmit, NewReno partial
ACKs, retry limits), flow control (zero window and persist probes, window edges, receiver SWS,
Nagle, delayed ACKs), keepalive and ICMP errors.
"""
from __future__ import annotations

import errno
from typing import Any

import pytest
from tcp_harness import ACK, FIN, MASK, PSH, SYN, Net, Peer

from usocket.proto.tcp.config import TcpConfig
from usocket.proto.tcp.connection import TcpConnection, TcpState
from usocket.wire.icmp import build_error
from usocket.wire.ipv4 import build_ipv4
from usocket.wire.tcp import Segment

S = TcpState
NO_TLP = {"tlp": False} if hasattr(TcpConfig(), "tlp") else {}


def nodelay(conn: TcpConnection) -> None:
    conn.nodelay = True


def data_of(segs: list[Segment]) -> bytes:
    return b"".join(bytes(s.payload) for s in segs)


# ================================================================ sequence wrap
class WrapIsn(TcpConnection):
    def choose_isn(self) -> int:
        return 2**32 - 1000


def test_100k_each_way_across_the_sequence_wrap() -> None:
    net = Net()
    conn, peer = net.established(cls=WrapIsn, isn=2**32 - 500)
    assert peer.irs == 2**32 - 1000
    data = bytes(range(256)) * 400  # 102400 bytes
    # -- stack to peer: every segment at the exact wire sequence, the ACKs are exact
    assert conn.send(data) == len(data)
    got = b""
    for _ in range(50):
        segs = peer.take()
        if not segs:
            break
        for s in segs:
            peer.check(s, flags=ACK, seq=peer.irs + 1 + len(got), ack=peer.iss + 1)
            got += bytes(s.payload)
        peer.send(ACK, ack=peer.irs + 1 + len(got))
    assert got == data
    assert conn.snd_una == len(data) + 1 and conn.sndbuf.free == conn.sndbuf.capacity
    assert (peer.irs + 1 + len(data)) > 2**32  # the wrap was crossed
    # -- peer to stack: 1000-byte segments; every ACK is exact, the data arrives intact
    received = b""
    acks: list[int] = []
    for i in range(0, len(data), 1000):
        peer.send(ACK, data[i:i + 1000])
        received += conn.recv(1 << 20) or b""
        for s in peer.take():
            peer.check(s, flags=ACK, seq=peer.irs + 1 + len(data))
            acks.append(peer.r(s.ack))
    net.advance(1.0)
    acks += [peer.r(s.ack) for s in peer.take()]
    assert received == data
    assert acks == sorted(acks) and acks[-1] == 1 + len(data)
    assert (peer.iss + acks[-1]) > 2**32 and acks[-1] in {peer.r(peer.seq)}


# ================================================================ options
def test_window_scaling_our_field_is_shifted() -> None:
    net = Net()
    conn, peer = net.established(window=1 << 20, wscale=7)
    assert conn.rcv_wscale == 7
    peer.send(ACK, b"x" * 1000)
    ack = peer.expect(flags=ACK)
    free = conn.rcvbuf.capacity - 1000
    # The field is the window >> 7, rounded up so the edge already offered is not retracted.
    assert ack.window == -(-free // 128) == 1017


def test_window_scaling_the_peers_window_is_scaled() -> None:
    net = Net()
    _, conn, peer = net.accepted(window=2896, wscale=3, setup=nodelay)
    assert conn.snd_wscale == 3 and conn.snd_wnd == 2896 and conn.mss == 1448
    peer.send(ACK, raw_window=362)  # 362 << 3 = 2896 bytes: two segments
    conn.send(b"w" * 10000)
    assert [len(s.payload) for s in peer.take()] == [1448, 1448]
    peer.send(ACK, raw_window=543)  # 4344 bytes beyond the new ACK: three more
    assert [len(s.payload) for s in peer.take()] == [1448, 1448, 1448]


def test_timestamps_tsval_ticks_in_ms_and_tsecr_echoes_ts_recent() -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"a")
    s1 = peer.expect(ts=True, ts_ecr=peer.ts_val())  # the SYN-ACK's TSval
    peer.send(ACK)
    net.advance(1.5)
    peer.send(ACK, b"b" * 10)  # the peer's TSval is now 1500 ms later
    s2 = peer.expect(flags=ACK, ts_ecr=peer.ts_val())
    assert s1.ts_val is not None and s2.ts_val is not None
    assert (s2.ts_val - s1.ts_val) & MASK == 1500


def test_paws_drops_a_segment_with_an_old_timestamp_with_a_dup_ack() -> None:
    net = Net()
    conn, peer = net.established()
    net.advance(1.0)
    peer.send(ACK, b"fresh")
    peer.expect(flags=ACK, ack=peer.seq)
    stale = (peer.ts_val() - 100) & MASK
    peer.send(ACK, b"stale", ts=(stale, peer.ts_recent))
    peer.expect(flags=ACK, ack=peer.seq - 5)  # RFC 7323 5.3: dropped, duplicate ACK
    assert conn.recv(100) == b"fresh"
    assert net.count("drop.paws") == 1
    peer.seq -= 5
    peer.send(ACK, b"later")  # current timestamp: accepted
    assert conn.recv(100) == b"later"


def test_paws_does_not_apply_to_rst() -> None:
    net = Net()
    conn, peer = net.established()
    net.advance(1.0)
    peer.send(ACK, b"x")
    peer.send(0x04, ts=((peer.ts_val() - 100) & MASK, peer.ts_recent))
    assert conn.state == S.CLOSED and conn.take_error() == errno.ECONNRESET


def test_sack_blocks_for_out_of_order_data_most_recent_first() -> None:
    net = Net()
    conn, peer = net.established()
    base = peer.seq
    peer.send(ACK, b"B" * 1000, seq=base + 1000)
    peer.expect(flags=ACK, ack=base, sack=[(base + 1000, base + 2000)])  # immediate, RFC 5681 4.2
    peer.send(ACK, b"D" * 1000, seq=base + 3000)
    peer.expect(flags=ACK, ack=base, sack=[(base + 3000, base + 4000), (base + 1000, base + 2000)])
    peer.send(ACK, b"F" * 1000, seq=base + 5000)
    peer.expect(flags=ACK, ack=base, sack=[(base + 5000, base + 6000), (base + 3000, base + 4000),
                                           (base + 1000, base + 2000)])
    peer.send(ACK, b"C" * 1000, seq=base + 2000)  # joins the first two blocks; reported first
    peer.expect(flags=ACK, ack=base, sack=[(base + 1000, base + 4000), (base + 5000, base + 6000)])
    peer.send(ACK, b"A" * 1000, seq=base)  # fills the hole at the left edge
    peer.expect(flags=ACK, ack=base + 4000, sack=[(base + 5000, base + 6000)])
    peer.send(ACK, b"E" * 1000, seq=base + 4000)
    peer.expect(flags=ACK, ack=base + 6000, sack=[])
    assert conn.recv(10000) == b"A" * 1000 + b"B" * 1000 + b"C" * 1000 + b"D" * 1000 + b"E" * 1000 + b"F" * 1000


@pytest.mark.parametrize("ts,blocks", [(True, 3), (False, 4)])
def test_sack_blocks_are_limited_by_option_space(ts: bool, blocks: int) -> None:
    net = Net()
    conn, peer = net.established(ts=ts)
    base = peer.seq
    for k in range(5):  # five separate out-of-order ranges
        peer.send(ACK, b"z" * 100, seq=base + 200 * (k + 1))
        last = peer.expect(flags=ACK, ack=base)
    # RFC 2018 4: the most recent first, then as many of the others as fit (3 with timestamps).
    assert last.sack == tuple(((base + 200 * k) & MASK, (base + 200 * k + 100) & MASK)
                              for k in range(5, 5 - blocks, -1))


def test_sack_received_drives_retransmission_of_the_hole_only() -> None:
    net = Net()
    conn, peer = net.established(setup=nodelay)
    peer.send(ACK)
    mss = conn.mss
    conn.send(b"s" * (10 * mss))
    segs = peer.take(10)
    starts = [s.seq for s in segs]
    hole = starts[2]  # segment 3 is lost
    peer.send(ACK, ack=hole)
    for k in range(3, 10):  # SACKs for segments 4..10, one per arriving segment
        peer.send(ACK, ack=hole, sack=[(starts[3], starts[k] + mss)])
        out = peer.take()
        if k < 5:
            assert out == [], f"retransmitted before DupThresh SACKed segments: {out}"
        elif k == 5:
            assert len(out) == 1
            peer.check(out[0], seq=hole, length=mss)  # RFC 6675: the hole, only the hole
        else:
            assert out == []
    peer.send(ACK, ack=starts[9] + mss)
    net.advance(5.0)
    peer.expect_none()
    assert conn.retransmits == 1


def test_sack_blocks_outside_the_window_are_ignored() -> None:
    net = Net()
    conn, peer = net.established(setup=nodelay)
    conn.send(b"q" * 3000)
    segs = peer.take()
    una = segs[0].seq
    for block in [(una - 5000, una - 1000), (una + 100000, una + 101000), (una + 2000, una + 1000)]:
        peer.send(ACK, ack=una, sack=[block])
    peer.expect_none()
    assert conn.sacked_bytes == 0 and net.count("rx.sack_ignored") == 3


@pytest.mark.parametrize("options", [
    b"\x08\x00\x00\x00",  # timestamps with length 0
    b"\x01\x01\x05\x20" + b"\x00" * 8,  # SACK running past the end
    b"\x02\x03\x05\xb4",  # MSS with length 3
    b"\x01\x01\x01\x08",  # a kind as the very last byte
    b"\xfe\x01\x00\x00",  # unknown kind, length 1
])
def test_malformed_options_do_not_crash_and_the_segment_is_processed(options: bytes) -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(ACK, b"payload", options=options)
    peer.expect(flags=ACK, ack=peer.seq)
    assert conn.recv(100) == b"payload" and conn.state == S.ESTABLISHED


# ================================================================ reliability
def rtt_connection(rtt: float, **peer_kw: Any) -> tuple[Net, TcpConnection, Peer]:
    """An established active open whose handshake took ``rtt`` seconds."""
    net = Net()
    conn = net.connect(setup=nodelay)
    peer = net.peer_of(conn, **peer_kw)
    peer.expect(flags=SYN)
    net.advance(rtt)
    peer.send(SYN | ACK)
    peer.expect(flags=ACK)
    return net, conn, peer


def test_rto_retransmission_with_exponential_backoff() -> None:
    net, conn, peer = rtt_connection(0.1, sack=False)  # no SACK: no tail loss probe before the RTO
    assert conn.rtt.srtt == pytest.approx(0.1)
    rto = conn.rtt.rto
    assert rto == pytest.approx(0.1 + 0.2)  # SRTT + max(4 * RTTVAR, 200 ms): Linux
    conn.send(b"r" * 500)
    first = peer.expect(length=500)
    t0 = net.now
    times = []
    for _ in range(4):
        d = net.next_deadline()
        assert d is not None
        net.run_until(d)
        peer.expect(seq=first.seq, payload=bytes(first.payload), ack=first.ack)
        times.append(net.now - t0)
    assert times == pytest.approx([rto, 3 * rto, 7 * rto, 15 * rto])
    assert conn.retransmits == 4 and conn.state == S.ESTABLISHED
    peer.send(ACK)  # progress: the backoff is cleared
    assert conn.rtt.backoffs == 0 and conn.rtt.rto < 2 * rto


def test_after_an_rto_the_window_slow_starts() -> None:
    # RFC 5681 3.1: after a timeout cwnd = 1 MSS and slow start resumes, growing by up to one
    # (ABC: two) MSS per ACK. Linux grows cwnd in the Loss state (tcp_cong_avoid is not skipped
    # there), so the lost flight is resent in 1, 2, 4... segments per round trip.
    net, conn, peer = rtt_connection(0.05, sack=False)
    peer.send(ACK)
    mss = conn.mss
    conn.send(b"g" * (10 * mss))
    starts = [s.seq for s in peer.take(10)]
    net.advance(conn.rtt.rto)  # the whole flight was lost
    rounds = []
    for _ in range(3):
        out = peer.take()
        rounds.append([peer.u(s.seq) for s in out])
        peer.send(ACK, ack=out[-1].seq + len(out[-1].payload))
    assert rounds[0] == [peer.u(starts[0])]
    assert rounds[1] == [peer.u(x) for x in starts[1:3]]
    assert rounds[2] == [peer.u(x) for x in starts[3:7]]


def test_rto_resends_from_the_first_unacknowledged_segment() -> None:
    net, conn, peer = rtt_connection(0.05, sack=False)
    peer.send(ACK)
    conn.send(b"g" * (6 * conn.mss))
    starts = [s.seq for s in peer.take(6)]
    net.advance(conn.rtt.rto)
    peer.expect(seq=starts[0], length=conn.mss)  # cwnd = 1 MSS: one segment (RFC 5681 3.1)
    assert conn.cc is not None and conn.cc.cwnd == conn.mss
    assert conn.cc.ssthresh < 10 * conn.mss  # reduced (by the algorithm's own rule)
    peer.send(ACK, ack=starts[1])
    out = peer.take()
    assert out and peer.u(out[0].seq) == peer.u(starts[1])  # go-back-N from SND.UNA


def test_rto_keeps_sacked_segments() -> None:
    net = Net(**NO_TLP)  # the RTO itself, not a tail loss probe
    conn, peer = net.established(setup=nodelay)
    peer.send(ACK)
    conn.send(b"g" * (6 * conn.mss))
    starts = [s.seq for s in peer.take(6)]
    peer.send(ACK, ack=starts[0], sack=[(starts[1], starts[3])])
    net.advance(conn.rtt.rto)
    peer.expect(seq=starts[0])
    peer.send(ACK, ack=starts[1], sack=[(starts[1], starts[3])])
    out = peer.take()
    assert out and all(peer.u(s.seq) >= peer.u(starts[3]) for s in out)  # 2 and 3 are not resent


def test_rto_after_samples_follows_rfc6298_with_linux_floor() -> None:
    net, conn, peer = rtt_connection(0.05, ts=False)
    samples = [0.05]
    for delay in (0.08, 0.03, 0.2, 0.06):
        conn.send(b"m" * 100)
        peer.expect(length=100)
        net.advance(delay)
        peer.send(ACK)
        samples.append(delay)
    srtt = rttvar = 0.0
    for i, r in enumerate(samples):
        if i == 0:
            srtt, rttvar = r, r / 2
        else:
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)
            srtt = 0.875 * srtt + 0.125 * r
    assert conn.rtt.srtt == pytest.approx(srtt)
    assert conn.rtt.rttvar == pytest.approx(rttvar)
    assert conn.rtt.rto == pytest.approx(srtt + max(4 * rttvar, 0.2))
    # And the timer really runs on that value.
    conn.send(b"n" * 10)
    peer.expect(length=10)
    net.advance(conn.rtt.rto - 0.0005)
    peer.expect_none()
    net.advance(0.001)
    peer.expect(length=10)


def test_fast_retransmit_on_the_third_duplicate_ack_not_before() -> None:
    net = Net()
    conn, peer = net.established(sack=False, setup=nodelay)
    peer.send(ACK)  # the peer's window from now on (a window change is no duplicate ACK)
    mss = conn.mss
    conn.send(b"f" * (5 * mss))
    segs = peer.take(5)
    una = segs[0].seq
    for n in (1, 2):
        peer.send(ACK, ack=una)
        peer.expect_none()
        assert conn.dupacks == n
    peer.send(ACK, ack=una)
    peer.expect(seq=una, length=mss)  # RFC 5681 3.2
    assert net.count("fast_retransmit") == 1
    assert conn.retransmits == 1


def test_dup_acks_with_data_or_window_change_do_not_count() -> None:
    net = Net()
    conn, peer = net.established(sack=False, setup=nodelay)
    conn.send(b"f" * (5 * conn.mss))
    una = peer.take(5)[0].seq
    peer.send(ACK, b"x", ack=una)  # carries data: not a duplicate (RFC 5681 2)
    peer.send(ACK, ack=una, window=peer.window - 1024)  # window update: not a duplicate
    peer.send(ACK, ack=una, window=peer.window - 1024)
    assert conn.dupacks == 1
    assert conn.retransmits == 0


def test_newreno_partial_ack_retransmits_the_next_hole() -> None:
    net = Net()
    conn, peer = net.established(sack=False, setup=nodelay)
    peer.send(ACK)
    mss = conn.mss
    conn.send(b"n" * (6 * mss))
    starts = [s.seq for s in peer.take(6)]
    # Segments 1 and 3 are lost: segments 2, 4, 5, 6 each draw a duplicate ACK for segment 1.
    for _ in range(3):
        peer.send(ACK, ack=starts[0])
    peer.expect(seq=starts[0], length=mss)
    peer.send(ACK, ack=starts[0])
    peer.expect_none()
    # The retransmission fills the first hole: a partial ACK up to segment 3 (RFC 6582 3.2 step 4).
    peer.send(ACK, ack=starts[2])
    peer.expect(seq=starts[2], length=mss)
    assert conn.recovery  # still in recovery until everything sent before it is acknowledged
    peer.send(ACK, ack=starts[5] + mss)
    assert not conn.recovery and conn.retransmits == 2
    net.advance(5.0)
    peer.expect_none()


def test_retries_exhausted_is_etimedout() -> None:
    net = Net(retries2=3)
    conn, peer = net.established()
    conn.send(b"lost")
    peer.expect(payload=b"lost")
    while conn.state == S.ESTABLISHED:
        d = net.next_deadline()
        assert d is not None
        net.run_until(d)
    assert len(peer.take()) == 3  # three retransmissions, then the abort (no RST)
    assert conn.state == S.CLOSED and conn.take_error() == errno.ETIMEDOUT
    assert net.tcp.conns == {}


def test_retries_exhausted_reports_the_soft_icmp_error_instead() -> None:
    net = Net(retries2=3)
    conn, peer = net.established()
    conn.send(b"lost")
    seg = peer.expect(payload=b"lost")
    net.icmp(3, 1, about=seg)  # host unreachable: soft, remembered
    assert conn.state == S.ESTABLISHED and conn.error == 0 and conn.soft_error == errno.EHOSTUNREACH
    while conn.state == S.ESTABLISHED:
        d = net.next_deadline()
        assert d is not None
        net.run_until(d)
    assert conn.take_error() == errno.EHOSTUNREACH
    with pytest.raises(OSError):
        conn.send(b"x")


# ================================================================ flow control
def test_zero_window_persist_probes_back_off_and_opening_resumes() -> None:
    net = Net()
    conn, peer = net.established(setup=nodelay)
    conn.send(b"a" * 100)
    peer.expect(length=100)
    peer.send(ACK, window=0)
    conn.send(b"b" * 3000)
    peer.expect_none()  # nothing may go into a zero window
    rto = conn.rtt.rto
    t0 = net.now
    times = []
    for _ in range(4):
        d = net.next_deadline()
        assert d is not None
        net.run_until(d)
        probe = peer.expect(flags=ACK, u=100, length=0)  # SND.UNA - 1: forces an ACK (Linux)
        assert probe.ack == peer.seq
        times.append(net.now - t0)
        peer.send(ACK, window=0)  # still closed
    gaps = [b - a for a, b in zip([0.0] + times, times, strict=False)]
    assert gaps[0] == pytest.approx(rto)
    assert all(g2 > g1 * 1.9 for g1, g2 in zip(gaps, gaps[1:], strict=False))  # backs off
    assert conn.state == S.ESTABLISHED
    peer.send(ACK, window=65535)  # the window opens: the data goes at once
    got = data_of(peer.take())
    assert got == b"b" * 3000
    assert conn.persist is False


def test_window_update_without_probe_also_resumes() -> None:
    net = Net()
    conn, peer = net.established(setup=nodelay, wscale=None)
    peer.send(ACK, window=0)
    conn.send(b"c" * 5000)
    peer.expect_none()
    peer.send(ACK, window=2000)
    segs = peer.take()
    assert 1448 <= len(data_of(segs)) <= 2000
    assert peer.u(segs[0].seq) == 1


def test_advertised_right_edge_never_shrinks() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(ACK, b"x" * 100)
    a1 = peer.expect(flags=ACK)
    edge = peer.r(a1.ack) + peer.window_of(a1)
    # Out-of-order data takes buffer space without moving RCV.NXT: the edge must stay.
    peer.send(ACK, b"o" * 3000, seq=peer.seq + 5000)
    a2 = peer.expect(flags=ACK)
    assert peer.r(a2.ack) + peer.window_of(a2) >= edge  # RFC 9293 3.8.6.2.2
    # The application shrinks the buffer: still no retraction.
    conn.rcvbuf.capacity = 4000
    conn.rcvbuf_locked = True
    peer.send(ACK, b"y" * 10)
    a3 = peer.expect(flags=ACK)
    assert peer.r(a3.ack) + peer.window_of(a3) >= edge
    # And data inside the offered window is still taken.
    peer.send(ACK, b"z" * 1000)
    assert conn.readable == 1110


def small_rcvbuf(conn: TcpConnection) -> None:
    conn.rcvbuf.capacity = 10000
    conn.rcvbuf_locked = True


def full_small_buffer(**peer_kw: Any) -> tuple[Net, TcpConnection, Peer]:
    """A passive open with a 10000-byte receive buffer (unscaled windows) the peer has filled."""
    net = Net(quickacks=0)
    _, conn, peer = net.accepted(setup=small_rcvbuf, wscale=None, **peer_kw)
    assert conn.rcv_wscale == 0 and conn.rcvbuf.capacity == 10000
    for _ in range(10):
        peer.send(ACK, b"d" * 1000)
    net.advance(0.1)
    last = peer.take()[-1]
    peer.check(last, flags=ACK, ack=peer.seq, window=0)  # the buffer is full
    return net, conn, peer


def test_receiver_sws_no_window_update_for_a_tiny_read_then_one_after_an_mss() -> None:
    net, conn, peer = full_small_buffer()
    assert conn.recv(500) == b"d" * 500
    peer.expect_none()  # 500 bytes is less than one MSS: no window update (RFC 1122 4.2.3.3)
    assert conn.recv(600) == b"d" * 600
    upd = peer.expect(flags=ACK, ack=peer.seq)  # now more than one MSS is free: window update
    assert 1000 <= upd.window <= 1100
    peer.send(ACK, b"e" * upd.window)
    assert conn.readable == 10000 - 1100 + upd.window


def test_receiver_sws_right_edge_moves_only_in_large_steps() -> None:
    net = Net(quickacks=0)
    _, conn, peer = net.accepted(setup=small_rcvbuf, wscale=None)
    for _ in range(6):
        peer.send(ACK, b"d" * 1000)
    net.advance(0.1)
    peer.take()
    edge = 1 + 10000  # offered at the handshake, in the peer's sequence space
    assert conn.recv(300) == b"d" * 300
    peer.send(ACK, b"e" * 100)
    net.advance(0.1)
    ack = peer.expect(flags=ACK, ack=peer.seq)
    assert peer.r(ack.ack) + ack.window == edge  # 300 bytes freed: below min(BUFF/2, MSS), no move
    assert conn.recv(1000) == b"d" * 1000
    peer.send(ACK, b"f" * 100)
    net.advance(0.1)
    ack = peer.expect(flags=ACK, ack=peer.seq)
    assert peer.r(ack.ack) + ack.window == edge + 1300  # 1300 freed: the edge moves, all of it


def test_receiver_sws_window_stays_closed_for_a_tiny_increase() -> None:
    # RFC 1122 4.2.3.3: RCV.WND stays fixed (here 0) until RCV.BUFF - RCV.USER - RCV.WND >=
    # min(RCV.BUFF / 2, Eff.snd.MSS). Linux __tcp_select_window returns 0 when the free space is
    # under half the buffer and under one MSS.
    net, conn, peer = full_small_buffer()
    assert conn.recv(500) == b"d" * 500
    peer.send(ACK, b"d" * 10, seq=peer.seq - 10)  # an old duplicate forces an ACK
    peer.expect(flags=ACK, ack=peer.seq, window=0)


def test_active_open_advertises_the_whole_buffer() -> None:
    # Linux tcp_rcv_synsent_state_process sets rcv_wup = rcv_nxt = irs + 1 and keeps rcv_wnd:
    # the handshake ACK offers the full window, and the peer may fill it.
    net = Net(quickacks=0)
    conn, peer = net.established(setup=small_rcvbuf, wscale=None)
    ack = peer.got[-1]
    assert ack.window == 10000
    for _ in range(10):
        peer.send(ACK, b"d" * 1000)
    assert conn.readable == 10000


def test_window_update_when_the_application_drains_a_full_buffer() -> None:
    net = Net(quickacks=0)
    _, conn, peer = net.accepted(setup=small_rcvbuf, wscale=None)
    for _ in range(10):
        peer.send(ACK, b"d" * 1000)
    net.advance(0.1)
    peer.take()
    assert conn.recv(20000) == b"d" * 10000
    upd = peer.expect(flags=ACK, ack=peer.seq)
    assert upd.window == 10000


def test_nagle_holds_a_small_segment_while_data_is_unacknowledged() -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"1" * 100)
    peer.expect(payload=b"1" * 100)  # nothing in flight: goes at once
    conn.send(b"2" * 100)
    conn.send(b"3" * 100)
    peer.expect_none()  # RFC 896
    peer.send(ACK)
    peer.expect(payload=b"2" * 100 + b"3" * 100, flags=ACK | PSH)


def test_nodelay_sends_small_segments_at_once() -> None:
    net = Net()
    conn, peer = net.established(setup=nodelay)
    conn.send(b"1" * 100)
    conn.send(b"2" * 100)
    segs = peer.take(2)
    assert [bytes(s.payload) for s in segs] == [b"1" * 100, b"2" * 100]


def test_nagle_does_not_hold_full_segments() -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"1" * 10)
    peer.take(1)
    conn.send(b"x" * (2 * conn.mss + 10))
    segs = peer.take()
    assert [len(s.payload) for s in segs] == [conn.mss, conn.mss]


def test_delayed_ack_one_ack_per_two_full_segments() -> None:
    net = Net(quickacks=0)
    conn, peer = net.established()
    peer.send(ACK, b"a" * 1448)
    peer.expect_none()
    peer.send(ACK, b"b" * 1448)
    peer.expect(flags=ACK, ack=peer.seq)  # RFC 5681 4.2 / RFC 9293 3.8.6.3
    for _ in range(3):
        peer.send(ACK, b"c" * 1448)
    peer.expect(flags=ACK, ack=peer.seq - 1448)
    net.advance(0.04)
    peer.expect(flags=ACK, ack=peer.seq)


def test_delayed_ack_timer_for_a_single_segment() -> None:
    net = Net(quickacks=0)
    conn, peer = net.established()
    peer.send(ACK, b"one" * 100)
    net.advance(0.039)
    peer.expect_none()
    net.advance(0.001)  # config.delack = 40 ms
    peer.expect(flags=ACK, ack=peer.seq)
    net.advance(1.0)
    peer.expect_none()


def test_delayed_ack_is_piggybacked_on_data() -> None:
    net = Net(quickacks=0)
    conn, peer = net.established()
    peer.send(ACK, b"question")
    conn.send(b"answer")
    peer.expect(payload=b"answer", ack=peer.seq)
    net.advance(0.1)
    peer.expect_none()  # the delayed ACK went with the data


def test_out_of_order_segment_is_acked_at_once() -> None:
    net = Net(quickacks=0)
    conn, peer = net.established()
    peer.send(ACK, b"x" * 500, seq=peer.seq + 1000)
    peer.expect(flags=ACK, ack=peer.seq)
    peer.send(ACK, b"y" * 1000)  # fills the hole: also ACKed at once
    peer.expect(flags=ACK, ack=peer.seq + 500)


def test_quick_acks_at_the_start_of_a_connection() -> None:
    net = Net()  # quickacks = 16, Linux TCP_MAX_QUICKACKS
    conn, peer = net.established()
    for _ in range(16):
        peer.send(ACK, b"q" * 100)
        peer.expect(flags=ACK, ack=peer.seq)
    peer.send(ACK, b"q" * 100)  # then delayed ACKs
    peer.expect_none()
    net.advance(net.tcp.config.delack)
    peer.expect(flags=ACK, ack=peer.seq)


# ================================================================ keepalive
def test_keepalive_is_off_by_default() -> None:
    net = Net()
    conn, peer = net.established()
    net.advance(3 * 7200.0)
    peer.expect_none()
    assert conn.state == S.ESTABLISHED


def keepalive(conn: TcpConnection) -> None:
    conn.keepalive = True
    conn.keepidle, conn.keepintvl, conn.keepcnt = 10.0, 2.0, 3


def test_keepalive_probes_then_abort_after_keepcnt() -> None:
    net = Net()
    conn, peer = net.established(setup=keepalive)
    conn.send(b"hi")
    peer.expect(payload=b"hi")
    peer.send(ACK)
    t0 = net.now
    times = []
    resets = []
    while conn.state == S.ESTABLISHED:
        d = net.next_deadline()
        assert d is not None
        net.run_until(d)
        for seg in peer.take():
            if seg.flags & 0x04:
                resets.append(peer.check(seg, flags=0x04 | ACK, u=3))
                continue
            peer.check(seg, flags=ACK, u=2, length=0, ack=peer.seq)  # SEG.SEQ = SND.UNA - 1
            times.append(net.now - t0)
    assert times == [10.0, 12.0, 14.0]
    assert net.now - t0 == 16.0
    assert len(resets) == 1  # Linux tcp_keepalive_timer: tcp_send_active_reset, then the error
    assert conn.take_error() == errno.ETIMEDOUT


def test_answered_keepalive_resets_the_count() -> None:
    net = Net()
    conn, peer = net.established(setup=keepalive)
    net.run_until(10.0)
    peer.expect(flags=ACK, u=0, length=0)
    net.run_until(12.0)
    peer.expect(flags=ACK, u=0, length=0)
    assert conn.ka_probes == 2
    peer.send(ACK)  # the answer to the probe
    assert conn.ka_probes == 0
    net.run_until(21.99)
    peer.expect_none()  # idle again, counted from the answer
    net.run_until(22.0)
    peer.expect(flags=ACK, u=0)
    net.run_until(27.99)  # probes at 22, 24, 26: a fresh count of three
    assert len(peer.take()) == 2 and conn.state == S.ESTABLISHED
    net.run_until(28.0)
    assert conn.state == S.CLOSED and conn.take_error() == errno.ETIMEDOUT


def test_keepalive_idle_counts_from_the_last_segment_received() -> None:
    net = Net()
    conn, peer = net.established(setup=keepalive)
    net.advance(8.0)
    peer.send(ACK, b"data")
    peer.take()
    net.advance(9.9)
    peer.expect_none()
    net.advance(0.1)
    peer.expect(flags=ACK, length=0, u=0)


# ================================================================ ICMP
def test_port_unreachable_in_syn_sent_is_econnrefused() -> None:
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn)
    syn = peer.expect(flags=SYN)
    net.icmp(3, 3, about=syn, src=peer.ip)
    assert conn.state == S.CLOSED and conn.take_error() == errno.ECONNREFUSED
    net.advance(10)
    peer.expect_none()


def test_host_unreachable_in_syn_sent_aborts_too() -> None:
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn)
    net.icmp(3, 1, about=peer.expect(flags=SYN))
    assert conn.state == S.CLOSED and conn.take_error() == errno.EHOSTUNREACH


def test_icmp_error_in_established_is_soft() -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"data")
    seg = peer.expect(payload=b"data")
    net.icmp(3, 3, about=seg)  # even "port unreachable": soft once established (Linux, no IP_RECVERR)
    assert conn.state == S.ESTABLISHED and conn.error == 0
    assert conn.soft_error == errno.ECONNREFUSED
    peer.send(ACK)
    conn.send(b"more")
    peer.expect(payload=b"more")


def test_frag_needed_lowers_the_mss_and_retransmits() -> None:
    net = Net()
    conn, peer = net.established(setup=nodelay)
    assert conn.mss == 1448
    conn.send(b"p" * (2 * 1448))
    segs = peer.take(2)
    net.icmp(3, 4, about=segs[0], mtu=1000)
    assert conn.mss == 1000 - 40 - 12
    out = peer.take()
    assert out, "nothing retransmitted after the MTU drop"
    peer.check(out[0], seq=segs[0].seq, length=948)
    assert all(len(s.payload) <= 948 for s in out)
    got = {peer.u(s.seq): len(s.payload) for s in out}
    peer.send(ACK)
    assert conn.snd_una == 2 * 1448 + 1
    assert got[1] == 948
    conn.send(b"q" * 2000)
    assert [len(s.payload) for s in peer.take()] == [948, 948, 104]


def test_icmp_quoting_a_seq_outside_the_window_is_ignored() -> None:
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn)
    syn = peer.expect(flags=SYN)
    forged = bytearray(net.raw(syn))
    forged[24:28] = ((syn.seq + 5000) & MASK).to_bytes(4, "big")  # RFC 5927 4.1: not in SND.UNA..SND.NXT
    net.inject(build_ipv4(peer.ip, net.stack.config.address, 1, build_error(3, 3, bytes(forged))))
    assert conn.state == S.SYN_SENT and conn.error == 0
    assert net.count("icmp_error.out_of_window") == 1


def test_hard_icmp_error_drops_a_half_open_child_soft_one_does_not() -> None:
    net = Net()
    lst = net.listen()
    a = Peer(net, stack_port=80, port=46000)
    b = Peer(net, stack_port=80, port=46001)
    a.send(SYN)
    b.send(SYN)
    sa_a = a.expect(flags=SYN | ACK)
    sa_b = b.expect(flags=SYN | ACK)
    net.icmp(3, 3, about=sa_a)  # port unreachable: hard (Linux tcp_req_err drops the request)
    net.icmp(3, 1, about=sa_b)  # host unreachable: soft, ignored for a request
    assert [c.remote_port for c in lst.syn_children] == [46001]
    a.expect_none()
    b.send(ACK)
    assert net.tcp.accept(lst) is not None


def test_icmp_about_already_acknowledged_data_is_ignored() -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"old")
    old = peer.expect(payload=b"old")
    peer.send(ACK)
    net.icmp(3, 1, about=old)
    assert conn.soft_error == 0 and net.count("icmp_error.out_of_window") == 1


def test_fin_carries_ack_and_is_in_sequence_after_data() -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"abc")
    conn.shutdown(1)
    segs = peer.take()
    assert data_of(segs) == b"abc"
    fin = segs[-1]
    assert fin.flags & FIN and peer.u(fin.seq) + len(fin.payload) == 4


# ================================================================ receive-side edge cases
def test_fin_out_of_order_is_taken_when_the_hole_fills() -> None:
    net = Net()
    conn, peer = net.established()
    base = peer.seq
    peer.send(FIN | ACK, b"tail", seq=base + 4)  # data and FIN after a 4-byte hole
    peer.expect(flags=ACK, ack=base, sack=[(base + 4, base + 8)])
    assert conn.state == S.ESTABLISHED and not conn.at_eof
    peer.send(ACK, b"head", seq=base)
    acks = peer.take()
    assert acks and all(peer.check(a, flags=ACK, ack=base + 9) for a in acks)  # data and the FIN
    assert conn.state == S.CLOSE_WAIT
    assert conn.recv(100) == b"headtail" and conn.recv(100) == b""


def test_filling_the_hole_before_a_fin_sends_one_ack() -> None:
    # Two identical pure ACKs look like a duplicate ACK to a peer with data in flight.
    net = Net()
    conn, peer = net.established()
    base = peer.seq
    peer.send(FIN | ACK, b"tail", seq=base + 4)
    peer.take()
    peer.send(ACK, b"head", seq=base)
    peer.expect(flags=ACK, ack=base + 9)


def test_data_beyond_the_window_is_trimmed_to_it() -> None:
    net = Net()
    _, conn, peer = net.accepted(setup=small_rcvbuf, wscale=None)
    peer.send(ACK, b"x" * 9000)
    peer.send(ACK, b"y" * 2000)  # only 1000 bytes fit
    net.advance(0.1)
    acks = peer.take()
    assert peer.r(acks[-1].ack) == 1 + 10000 and acks[-1].window == 0
    assert conn.recv(20000) == b"x" * 9000 + b"y" * 1000


def test_overlapping_retransmission_with_new_data_is_trimmed() -> None:
    net = Net()
    conn, peer = net.established()
    base = peer.seq
    peer.send(ACK, b"abcdef")
    peer.send(ACK, b"defghi", seq=base + 3)  # 3 old bytes, 3 new
    assert conn.recv(100) == b"abcdefghi"
    peer.take()
    peer.send(ACK, b"abc", seq=base)  # entirely old: a duplicate ACK at once
    peer.expect(flags=ACK, ack=base + 9)
    assert conn.readable == 0


def test_tsecr_echoes_the_in_order_segment_not_an_out_of_order_one() -> None:
    net = Net()
    conn, peer = net.established()
    base = peer.seq
    peer.send(ACK, b"a" * 10, ts=(1000000, peer.ts_recent))
    peer.expect(ts_ecr=1000000)
    peer.send(ACK, b"c" * 10, seq=base + 20, ts=(1000050, peer.ts_recent))
    peer.expect(ack=base + 10, ts_ecr=1000000)  # RFC 7323 4.3: TS.Recent only from the left edge
    peer.send(ACK, b"b" * 10, seq=base + 10, ts=(1000060, peer.ts_recent))
    peer.expect(ack=base + 30, ts_ecr=1000060)


def test_karn_no_rtt_sample_from_a_retransmitted_segment_without_timestamps() -> None:
    net, conn, peer = rtt_connection(0.1, ts=False)
    srtt = conn.rtt.srtt
    conn.send(b"k" * 100)
    peer.expect(length=100)
    net.advance(conn.rtt.rto)
    peer.expect(length=100)  # retransmitted
    net.advance(0.01)
    peer.send(ACK)  # which transmission does this acknowledge? Neither is sampled (RFC 6298 3)
    assert conn.rtt.srtt == srtt
    assert conn.rtt.backoffs == 0  # but the backoff is cleared by the progress


def test_user_mss_clamps_the_syn_option_and_the_segments() -> None:
    net = Net()
    conn = net.connect(setup=lambda c: setattr(c, "user_mss", 1000))
    peer = net.peer_of(conn)
    peer.expect(flags=SYN, mss=1000)
    peer.send(SYN | ACK)
    peer.expect(flags=ACK)
    conn.nodelay = True
    conn.send(b"u" * 2500)
    assert [len(s.payload) for s in peer.take()] == [988, 988, 524]  # 1000 less 12 for timestamps


def test_ack_in_time_wait_data_is_reacked() -> None:
    net = Net(msl=5.0)
    conn, peer = net.established()
    conn.shutdown(1)
    peer.expect(flags=FIN | ACK)
    peer.send(FIN | ACK)
    peer.expect(flags=ACK)
    assert conn.state == S.TIME_WAIT
    peer.send(ACK, b"late", seq=peer.seq - 1 - 4)  # an old duplicate segment
    peer.expect(flags=ACK, ack=peer.seq)
    assert conn.state == S.TIME_WAIT


def test_recv_peek_does_not_consume() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(ACK, b"peekaboo")
    assert conn.recv(4, peek=True) == b"peek"
    assert conn.recv(100) == b"peekaboo"
    assert conn.recv(100) is None


def test_a_small_window_is_used_when_the_persist_timer_fires() -> None:
    # RFC 9293 3.8.6.2.1: with a usable window below Fs * max window, data is sent when the
    # override timeout fires. Linux's probe timer sends what fits (tcp_write_wakeup).
    net = Net()
    conn, peer = net.established(setup=nodelay)
    peer.send(ACK)
    peer.send(ACK, raw_window=3)  # 384 bytes, far below half of the largest window seen
    conn.send(b"s" * 3000)
    got = b""
    for _ in range(6):
        d = net.next_deadline()
        assert d is not None
        net.run_until(d)
        for seg in peer.take():
            assert len(seg.payload) <= 384
            got += bytes(seg.payload)
        peer.send(ACK, raw_window=3)
    assert len(got) >= 384 and got == b"s" * len(got)


def test_zero_window_probe_with_data_gets_an_ack_with_the_window() -> None:
    net = Net()
    _, conn, peer = net.accepted(setup=small_rcvbuf, wscale=None)
    for _ in range(10):
        peer.send(ACK, b"d" * 1000)
    peer.take()
    peer.send(ACK, b"P")  # the peer probes the zero window with one byte
    peer.expect(flags=ACK, ack=peer.seq - 1, window=0)
    assert conn.readable == 10000 and net.count("drop.beyond_window") == 1


def test_keepalive_probe_from_the_peer_is_answered() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(ACK, seq=peer.seq - 1)  # SEG.SEQ = RCV.NXT - 1, no data: a keepalive probe
    peer.expect(flags=ACK, ack=peer.seq, u=1)
    peer.send(ACK, b"z", seq=peer.seq - 1)  # the BSD form, with one garbage byte
    peer.expect(flags=ACK, ack=peer.seq, u=1)
    assert conn.readable == 0


def test_after_a_reset_send_raises_econnreset_once_then_epipe() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(0x04, seq=peer.seq, ts=False)
    with pytest.raises(ConnectionResetError):
        conn.send(b"x")
    with pytest.raises(BrokenPipeError):
        conn.send(b"x")
    assert conn.recv(10) == b""


def test_full_segment_with_sack_blocks_fits_the_mtu() -> None:
    # Linux tcp_current_mss subtracts the SACK blocks' length from the MSS while they are sent.
    net = Net()
    conn, peer = net.established(setup=nodelay)
    peer.send(ACK, b"o" * 100, seq=peer.seq + 100)  # we hold out-of-order data: our ACKs carry SACK
    peer.take()
    conn.send(b"f" * conn.mss)
    segs = peer.take()
    assert data_of(segs) == b"f" * conn.mss
    assert all(20 + s.header_len + len(s.payload) <= 1500 for s in segs)
    assert net.count("tx.error") == 0


def test_an_old_reordered_ack_does_not_update_the_send_window() -> None:
    net = Net()
    conn, peer = net.established(setup=nodelay, wscale=None, window=60000)
    conn.send(b"x" * 100)
    peer.expect(length=100)
    peer.send(ACK, window=60000)
    peer.send(ACK, ack=peer.stack_seq(1), window=0)  # an older ACK, delayed in the network
    assert conn.snd_wnd == 60000  # RFC 9293 3.10.7.4: SND.WL2 > SEG.ACK, it is older
    conn.send(b"go")
    peer.expect(payload=b"go")


def test_fin_rides_on_the_last_queued_data_segment() -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"a")
    peer.expect(payload=b"a")
    conn.send(b"b")  # held by Nagle
    conn.shutdown(1)  # FIN queued behind it: one segment carries both (Linux tcp_send_fin)
    peer.expect(flags=FIN | ACK | PSH, payload=b"b", u=2)
    peer.send(ACK)
    assert conn.state == S.FIN_WAIT_2
