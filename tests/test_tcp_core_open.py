"""TCP connection establishment, packet by packet: active and passive open, option negotiation,
SYN/SYN-ACK retransmission, listen queues, simultaneous open, per-connection subclasses.

Each test drives one real stack with the scripted peer of :mod:`tcp_harness` and checks the
segments on the wire (flags, sequence and acknowledgment numbers, windows, options) and the
connection's state.
"""
from __future__ import annotations

import errno
import struct
from typing import Any

import pytest
from tcp_harness import ACK, MASK, ME, PEER_IP, RST, SYN, Net, Peer

from usocket.proto.tcp.connection import TcpConnection, TcpState
from usocket.wire.tcp import Segment, syn_options

S = TcpState


def tcp_options(net: Net, seg: Segment) -> bytes:
    """The raw option bytes of an emitted segment."""
    raw = net.raw(seg)
    hl = (raw[20 + 12] >> 4) * 4
    return raw[40:20 + hl]


# ================================================================ active open
def test_syn_carries_mss_ws_ts_sackperm_in_linux_layout() -> None:
    net = Net()
    conn = net.connect()
    assert conn.state == S.SYN_SENT
    peer = net.peer_of(conn)
    syn = peer.expect(flags=SYN, ack=0, mss=1460, wscale=7, sack_perm=True, ts=True, ts_ecr=0, length=0)
    assert syn.window == 65535  # never scaled in a SYN; the 128 KiB buffer does not fit
    # Linux tcp_options_write: MSS, SACK_PERM+TS, NOP+WSCALE.
    assert tcp_options(net, syn) == (b"\x02\x04\x05\xb4" + b"\x04\x02\x08\x0a" + struct.pack("!II", syn.ts_val, 0)
                                     + b"\x01\x03\x03\x07")
    assert conn.local_ip == ME and conn.remote_ip == PEER_IP


def test_syn_mss_follows_the_mtu() -> None:
    net = Net(mtu=1280)
    peer = net.peer_of(net.connect())
    peer.expect(flags=SYN, mss=1240)


def test_syn_without_optional_options_when_disabled() -> None:
    net = Net(window_scaling=False, timestamps=False, sack=False)
    peer = net.peer_of(net.connect())
    syn = peer.expect(flags=SYN, mss=1460, wscale=None, sack_perm=False, ts=False)
    assert tcp_options(net, syn) == b"\x02\x04\x05\xb4"


def syn_times(net: Net, conn: TcpConnection, peer: Peer) -> list[float]:
    """Run the clock until ``conn`` leaves SYN_SENT; the times at which SYNs were sent."""
    first = peer.expect(flags=SYN)
    times = [net.now]
    while conn.state == S.SYN_SENT:
        d = net.next_deadline()
        assert d is not None
        net.run_until(d)
        for seg in peer.take():
            peer.check(seg, flags=SYN, seq=first.seq, mss=1460, wscale=7, sack_perm=True, ts=True)
            times.append(net.now)
    return times


def test_syn_retries_exhausted_is_etimedout_without_rst() -> None:
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn)
    times = syn_times(net, conn, peer)
    assert len(times) == 1 + net.tcp.config.syn_retries  # tcp_syn_retries = 6 retransmissions
    assert conn.state == S.CLOSED and conn.error == errno.ETIMEDOUT
    peer.expect_none()  # no RST on a timeout abort (Linux tcp_write_err)
    with pytest.raises(TimeoutError):
        conn.send(b"x")
    assert net.tcp.conns == {}


def test_syn_retransmitted_with_exponential_backoff() -> None:
    # RFC 6298 5.5 doubles the RTO on each expiry; Linux with tcp_syn_retries=6 sends SYNs at
    # 0, 1, 3, 7, 15, 31, 63 s and gives up at 127 s. The 3 s of RFC 6298 5.7 is the RTO to use
    # *once established* when the handshake gave no sample (Linux tcp_init_transfer).
    net = Net()
    conn = net.connect()
    times = syn_times(net, conn, net.peer_of(conn))
    assert times == [0, 1, 3, 7, 15, 31, 63]
    assert net.now == 127


def test_syn_retries_is_per_connection() -> None:
    net = Net()
    conn = net.connect(setup=lambda c: setattr(c, "syn_retries", 2))
    times = syn_times(net, conn, net.peer_of(conn))
    assert len(times) == 3
    assert conn.state == S.CLOSED and conn.take_error() == errno.ETIMEDOUT


def test_rst_ack_to_syn_is_econnrefused() -> None:
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn)
    syn = peer.expect(flags=SYN)
    peer.send(RST | ACK, ack=syn.seq + 1, ts=False)
    assert conn.state == S.CLOSED
    assert conn.take_error() == errno.ECONNREFUSED
    peer.expect_none()
    assert net.tcp.conns == {}


def test_rst_to_syn_with_wrong_ack_or_without_ack_is_ignored() -> None:
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn)
    syn = peer.expect(flags=SYN)
    peer.send(RST | ACK, ack=syn.seq + 7, ts=False)  # RFC 9293 3.10.7.3: unacceptable ACK, RST dropped
    peer.send(RST, ack=0, ts=False)  # no ACK: dropped
    assert conn.state == S.SYN_SENT and conn.error == 0
    peer.expect_none()


@pytest.mark.parametrize("bad", [0, 2, -1000])
def test_synack_with_bad_ack_draws_rst_seq_seg_ack(bad: int) -> None:
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn)
    syn = peer.expect(flags=SYN)
    wrong = (syn.seq + bad) & MASK  # +0: acknowledges nothing; +2: beyond SND.NXT
    peer.send(SYN | ACK, ack=wrong)
    peer.expect(flags=RST, seq=wrong)  # RFC 9293 3.10.7.3: <SEQ=SEG.ACK><CTL=RST>
    assert conn.state == S.SYN_SENT
    # The real SYN-ACK still completes the handshake.
    peer.seq = peer.iss
    peer.send(SYN | ACK, ack=syn.seq + 1)
    peer.expect(flags=ACK, ack=peer.iss + 1)
    assert conn.state == S.ESTABLISHED


def test_synack_completes_handshake_and_negotiates_everything() -> None:
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn, mss=1400, wscale=5)
    syn = peer.expect(flags=SYN)
    peer.send(SYN | ACK)
    ack = peer.expect(flags=ACK, u=1, ack=peer.iss + 1, ts=True, length=0)
    assert ack.ts_ecr == peer.ts_val()  # echoes the SYN-ACK's TSval
    assert conn.state == S.ESTABLISHED and conn.established
    assert (conn.ws_ok, conn.ts_ok, conn.sack_ok) == (True, True, True)
    assert conn.snd_wscale == 5 and conn.rcv_wscale == syn.wscale == 7
    assert conn.mss == 1400 - 12  # the peer's MSS less the timestamp option
    # The ACK's window is scaled by our shift: the free buffer >> 7.
    assert ack.window == conn.rcvbuf.capacity >> 7
    conn.send(b"d" * 3000)
    segs = peer.take(2)
    assert [len(s.payload) for s in segs] == [1388, 1388]  # Nagle holds the 224-byte tail
    assert all(s.ts_val is not None for s in segs)




def test_synack_window_is_not_scaled() -> None:
    # RFC 7323 2.2: "The window field in a SYN (i.e., a <SYN> or <SYN,ACK>) segment itself is
    # never scaled." Linux tcp_rcv_synsent_state_process: tp->snd_wnd = ntohs(th->window).
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn, wscale=7, window=3000)
    peer.expect(flags=SYN)
    peer.send(SYN | ACK)
    peer.expect(flags=ACK)
    assert conn.snd_wnd == 3000


def test_synack_scaled_window_bug_lets_data_overrun_the_peer() -> None:
    net = Net()
    conn = net.connect(setup=lambda c: setattr(c, "nodelay", True))
    peer = net.peer_of(conn, wscale=7, window=3000)
    peer.expect(flags=SYN)
    peer.send(SYN | ACK)
    peer.expect(flags=ACK)
    conn.send(b"z" * 10000)
    sent = sum(len(s.payload) for s in peer.take())
    assert sent <= 3000, f"{sent} bytes sent into a 3000-byte window"


def test_no_timestamps_in_synack_means_none_on_data() -> None:
    net = Net()
    conn, peer = net.established(ts=False)
    assert not conn.ts_ok
    assert conn.mss == 1460  # no 12 bytes kept for the option
    conn.send(b"q" * 2000)
    segs = peer.take(1)  # Nagle keeps the 540-byte tail
    peer.check(segs[0], flags=ACK, length=1460, ts=False)
    peer.send(ACK, b"r" * 10)
    peer.expect(flags=ACK, ts=False)


def test_no_window_scale_in_synack_means_unscaled_windows_both_ways() -> None:
    net = Net()
    conn = net.connect(setup=lambda c: setattr(c, "nodelay", True))
    peer = net.peer_of(conn, wscale=None, window=2000)
    syn = peer.expect(flags=SYN)
    assert syn.wscale == 7  # offered, but the peer did not answer with one
    peer.send(SYN | ACK)
    ack = peer.expect(flags=ACK)
    assert not conn.ws_ok and conn.rcv_wscale == 0 and conn.snd_wscale == 0
    assert ack.window == 65535  # 128 KiB free, unscaled field clamped
    # The peer's window field is taken as bytes: 2000, not 2000 << 7.
    peer.send(ACK, raw_window=2000)
    conn.send(b"w" * 5000)
    sent = sum(len(s.payload) for s in peer.take())
    assert 1448 <= sent <= 2000  # scaled, it would have been 256000 bytes: all 5000 would go


def test_peer_mss_is_respected() -> None:
    net = Net()
    conn, peer = net.established(mss=500, ts=False)
    assert conn.mss == 500
    conn.nodelay = True
    conn.send(b"m" * 1200)
    assert [len(s.payload) for s in peer.take()] == [500, 500, 200]


def test_mss_536_when_the_peer_sends_none() -> None:
    net = Net()
    conn, peer = net.established(mss=None, ts=False)
    assert conn.peer_mss == 536 and conn.mss == 536
    conn.nodelay = True
    conn.send(b"m" * 1100)
    assert [len(s.payload) for s in peer.take()] == [536, 536, 28]


def test_no_sack_perm_in_synack_means_no_sack_blocks() -> None:
    net = Net()
    conn, peer = net.established(sack=False)
    assert not conn.sack_ok
    peer.send(ACK, b"b" * 100, seq=peer.seq + 100)  # out of order
    dup = peer.expect(flags=ACK, ack=peer.seq)
    assert dup.sack == ()


def test_connect_twice_or_after_listen_fails() -> None:
    net = Net()
    conn = net.connect()
    with pytest.raises(OSError) as e:
        net.tcp.connect(conn, PEER_IP, 80)
    assert e.value.errno == errno.EALREADY
    lst = net.listen(port=81)
    with pytest.raises(OSError) as e:
        net.tcp.connect(lst, PEER_IP, 80)
    assert e.value.errno == errno.EISCONN


# ================================================================ passive open
def test_listen_syn_gets_synack_echoing_the_peers_options() -> None:
    net = Net()
    lst = net.listen()
    peer = Peer(net, stack_port=80, mss=1400, wscale=3)
    peer.send(SYN)
    sa = peer.expect(flags=SYN | ACK, ack=peer.iss + 1, mss=1460, wscale=7, sack_perm=True, ts=True,
                     ts_ecr=peer.ts_val())
    assert sa.window == 65535
    assert tcp_options(net, sa)[:4] == b"\x02\x04\x05\xb4"
    assert net.tcp.accept(lst) is None  # not established yet
    child = next(iter(lst.syn_children))
    assert child.state == S.SYN_RECEIVED and child.mss == 1400 - 12 and child.snd_wscale == 3
    peer.send(ACK)
    peer.expect_none()
    got = net.tcp.accept(lst)
    assert got is child and got.state == S.ESTABLISHED
    assert net.tcp.accept(lst) is None
    assert (got.remote_ip, got.remote_port, got.local_port) == (PEER_IP, peer.port, 80)


@pytest.mark.parametrize("offer,expected", [
    (dict(wscale=None, sack=False, ts=False), b"\x02\x04\x05\xb4"),
    (dict(wscale=None, sack=True, ts=False), b"\x02\x04\x05\xb4\x01\x01\x04\x02"),
    (dict(wscale=2, sack=False, ts=False), b"\x02\x04\x05\xb4\x01\x03\x03\x07"),
])
def test_synack_only_echoes_what_the_syn_offered(offer: dict[str, Any], expected: bytes) -> None:
    net = Net()
    net.listen()
    peer = Peer(net, stack_port=80, **offer)
    peer.send(SYN)
    sa = peer.expect(flags=SYN | ACK, ts=False)
    assert tcp_options(net, sa) == expected


def test_synack_with_timestamps_only_uses_nop_nop_ts() -> None:
    net = Net()
    net.listen()
    peer = Peer(net, stack_port=80, wscale=None, sack=False, ts=True)
    peer.send(SYN)
    sa = peer.expect(flags=SYN | ACK, ts=True)
    assert tcp_options(net, sa) == b"\x02\x04\x05\xb4\x01\x01\x08\x0a" + struct.pack("!II", sa.ts_val, sa.ts_ecr)


def test_retransmitted_syn_gets_the_synack_again() -> None:
    net = Net()
    lst = net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(SYN)
    first = peer.expect(flags=SYN | ACK)
    net.advance(0.3)
    peer.send(SYN, seq=peer.iss)  # our SYN-ACK "was lost"
    again = peer.expect(flags=SYN | ACK, seq=first.seq, ack=peer.iss + 1)
    assert again.mss == first.mss and again.wscale == first.wscale
    assert len(lst.syn_children) == 1
    peer.send(ACK)
    assert net.tcp.accept(lst) is not None


def synack_times(net: Net, peer: Peer) -> tuple[list[float], Segment]:
    """Run the clock until nothing is scheduled; the times at which SYN-ACKs were sent."""
    first = peer.expect(flags=SYN | ACK)
    times = [net.now]
    for _ in range(20):
        d = net.next_deadline()
        if d is None:
            break
        net.run_until(d)
        for seg in peer.take():
            peer.check(seg, flags=SYN | ACK, seq=first.seq, ack=peer.iss + 1)
            times.append(net.now)
    return times, first


def test_synack_retries_then_the_child_disappears() -> None:
    net = Net()
    lst = net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(SYN)
    times, first = synack_times(net, peer)
    assert len(times) == 1 + net.tcp.config.synack_retries  # tcp_synack_retries = 5
    assert not lst.syn_children and net.tcp.conns == {}
    peer.expect_none()  # dropped silently
    assert lst.state == S.LISTEN
    # A late handshake ACK now goes to the listener: RST.
    peer.send(ACK)
    peer.expect(flags=RST, seq=first.seq + 1)
    assert net.tcp.accept(lst) is None


def test_synack_retransmitted_with_exponential_backoff() -> None:
    # Linux (tcp_synack_retries = 5, TCP_TIMEOUT_INIT 1 s doubling): SYN-ACKs at 0, 1, 3, 7, 15,
    # 31 s, the request dropped at 63 s.
    net = Net()
    net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(SYN)
    times, _ = synack_times(net, peer)
    assert times == [0, 1, 3, 7, 15, 31]
    assert net.now == 63


def test_ack_to_listener_gets_rst() -> None:
    net = Net()
    net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(ACK, ack=0x12345678, seq=peer.iss + 1)
    peer.expect(flags=RST, seq=0x12345678)
    assert net.count("rx.ack_to_listener") == 1


def test_rst_to_listener_is_ignored_and_fin_is_dropped() -> None:
    net = Net()
    lst = net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(RST, ts=False)
    peer.send(0x01)  # FIN alone
    peer.send(SYN | 0x01)  # SYN+FIN
    peer.expect_none()
    assert lst.state == S.LISTEN and not lst.syn_children


def test_syn_to_closed_port_gets_rst_ack() -> None:
    net = Net()
    peer = Peer(net, stack_port=81)
    peer.send(SYN)
    peer.expect(flags=RST | ACK, seq=0, ack=peer.iss + 1)
    assert net.count("drop.no_connection") == 1


def test_rst_from_peer_in_syn_received_drops_the_child_silently() -> None:
    net = Net()
    lst = net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(SYN)
    peer.expect(flags=SYN | ACK)
    peer.send(RST, ts=False)
    assert not lst.syn_children and net.tcp.accept(lst) is None
    peer.expect_none()


def test_accept_queue_holds_backlog_plus_one_then_syns_are_dropped() -> None:
    net = Net()
    lst = net.listen(backlog=1)
    peers = [Peer(net, stack_port=80, port=41000 + i, isn=1000 * i) for i in range(3)]
    for p in peers[:2]:
        p.send(SYN)
        p.expect(flags=SYN | ACK)
        p.send(ACK)
        p.expect_none()
    assert len(lst.accept_queue) == 2  # backlog + 1 (Linux sk_acceptq_is_full)
    peers[2].send(SYN)
    peers[2].expect_none()  # dropped silently: the client retries
    assert net.count("listen_overflow") == 1 and not lst.syn_children
    assert net.tcp.accept(lst) is not None
    peers[2].send(SYN, seq=peers[2].iss)  # its retransmitted SYN now gets in
    peers[2].expect(flags=SYN | ACK)


def test_handshake_ack_dropped_when_queue_full_then_synack_retry_gets_it_in() -> None:
    net = Net()
    lst = net.listen(backlog=1)
    a, b, c = (Peer(net, stack_port=80, port=42000 + i, isn=7000 * (i + 1)) for i in range(3))
    a.send(SYN)
    a.expect(flags=SYN | ACK)
    a.send(ACK)
    c.send(SYN)  # half-open while there is still room
    c_synack = c.expect(flags=SYN | ACK)
    b.send(SYN)
    b.expect(flags=SYN | ACK)
    b.send(ACK)
    assert len(lst.accept_queue) == 2
    c.send(ACK)  # the queue is full: Linux drops the ACK, the child stays half-open
    c.expect_none()
    (child_c,) = lst.syn_children
    assert child_c.state == S.SYN_RECEIVED and len(lst.accept_queue) == 2
    assert net.tcp.accept(lst) is not None  # room again
    net.advance(1.0)  # the SYN-ACK timer fires
    c.expect(flags=SYN | ACK, seq=c_synack.seq)
    c.send(ACK, seq=c.iss + 1)  # the client ACKs the duplicate SYN-ACK
    assert child_c.state == S.ESTABLISHED
    assert list(lst.accept_queue)[-1] is child_c


def test_closing_the_listener_resets_pending_children() -> None:
    net = Net()
    lst = net.listen()
    a = Peer(net, stack_port=80, port=43000)
    b = Peer(net, stack_port=80, port=43001)
    a.send(SYN)
    a.expect(flags=SYN | ACK)
    a.send(ACK)
    b.send(SYN)
    b.expect(flags=SYN | ACK)
    net.tcp.close(lst)
    a.expect(flags=RST | ACK)
    b.expect(flags=RST | ACK)
    assert net.tcp.conns == {} and net.tcp.listeners == {}


# ================================================================ simultaneous open
def test_simultaneous_open_syn_crossing_syn() -> None:
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn)
    syn = peer.expect(flags=SYN)
    peer.send(SYN)  # crosses ours: RFC 9293 figure 8
    sa = peer.expect(flags=SYN | ACK, seq=syn.seq, ack=peer.iss + 1, mss=1460, wscale=7, sack_perm=True)
    assert sa.ts_ecr == peer.ts_val()
    assert conn.state == S.SYN_RECEIVED
    peer.send(ACK)  # the peer's ACK of our SYN
    assert conn.state == S.ESTABLISHED
    conn.send(b"hello")
    peer.expect(flags=ACK, u=1, payload=b"hello", ack=peer.iss + 1)


def test_simultaneous_open_synack_in_syn_received_establishes() -> None:
    # RFC 9293 figure 8 step 5: the SYN-ACK crossing ours establishes the connection. Linux
    # tcp_validate_incoming lets a SYN-ACK with SEG.SEQ+1 == RCV.NXT and SEG.ACK == SND.NXT
    # through in SYN_RECV for a socket that did connect() (instead of a challenge ACK).
    net = Net()
    conn = net.connect()
    peer = net.peer_of(conn)
    syn = peer.expect(flags=SYN)
    peer.send(SYN)
    peer.expect(flags=SYN | ACK)
    peer.send(SYN | ACK, seq=peer.iss, ack=syn.seq + 1)
    assert conn.state == S.ESTABLISHED
    net.advance(0.5)
    peer.expect_none()  # no SYN-ACK retransmission once established


# ================================================================ per-connection subclasses
class FixedIsn(TcpConnection):
    def choose_isn(self) -> int:
        return 0x01020304


class TinySynAck(FixedIsn):
    def syn_options(self, synack: bool) -> bytes:
        if synack:
            return syn_options(1000, None, False, None)
        return super().syn_options(synack)


def test_subclass_fixed_isn_on_the_wire() -> None:
    net = Net()
    conn = net.connect(cls=FixedIsn)
    peer = net.peer_of(conn)
    peer.expect(flags=SYN, seq=0x01020304)
    peer.send(SYN | ACK)
    peer.expect(flags=ACK, seq=0x01020305)
    conn.send(b"abc")
    peer.expect(payload=b"abc", seq=0x01020305)


def test_subclass_synack_options_and_child_class() -> None:
    net = Net()
    lst = net.listen()
    lst.child_class = TinySynAck
    peer = Peer(net, stack_port=80, wscale=None, sack=False, ts=False)
    peer.send(SYN)
    sa = peer.expect(flags=SYN | ACK, seq=0x01020304, mss=1000)
    assert tcp_options(net, sa) == b"\x02\x04\x03\xe8"
    peer.send(ACK)
    child = net.tcp.accept(lst)
    assert type(child) is TinySynAck and child.state == S.ESTABLISHED
    child.send(b"xyz")
    peer.expect(flags=ACK, seq=0x01020305, payload=b"xyz")


def test_listener_subclass_children_default_to_the_listener_class() -> None:
    net = Net()
    lst = net.listen(cls=FixedIsn)
    peer = Peer(net, stack_port=80)
    peer.send(SYN)
    peer.expect(flags=SYN | ACK, seq=0x01020304)
    peer.send(ACK)
    assert type(net.tcp.accept(lst)) is FixedIsn


def test_bad_ack_in_syn_received_draws_rst_and_the_child_waits() -> None:
    net = Net()
    lst = net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(SYN)
    sa = peer.expect(flags=SYN | ACK)
    wrong = (sa.seq + 1000) & MASK
    peer.send(ACK, ack=wrong)
    peer.expect(flags=RST, seq=wrong)  # RFC 9293 3.10.7.4 SYN-RECEIVED: <SEQ=SEG.ACK><CTL=RST>
    (child,) = lst.syn_children
    assert child.state == S.SYN_RECEIVED
    peer.send(ACK)
    assert net.tcp.accept(lst) is child


def test_data_on_the_handshake_ack_is_delivered() -> None:
    net = Net()
    lst = net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(SYN)
    peer.expect(flags=SYN | ACK)
    peer.send(ACK, b"GET / HTTP/1.0\r\n\r\n")
    child = net.tcp.accept(lst)
    assert child is not None and child.recv(100) == b"GET / HTTP/1.0\r\n\r\n"
    peer.expect(flags=ACK, ack=peer.seq)


def test_rst_in_window_in_syn_received_is_challenged() -> None:
    net = Net()
    lst = net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(SYN)
    peer.expect(flags=SYN | ACK)
    peer.send(RST, seq=peer.seq + 100, ts=False)
    peer.expect(flags=ACK, ack=peer.seq)
    assert len(lst.syn_children) == 1


def test_fin_on_the_handshake_ack_queues_a_close_wait_child() -> None:
    net = Net()
    lst = net.listen()
    peer = Peer(net, stack_port=80)
    peer.send(SYN)
    peer.expect(flags=SYN | ACK)
    peer.send(ACK | 0x01)
    peer.expect(flags=ACK, ack=peer.seq)
    child = net.tcp.accept(lst)
    assert child is not None and child.state == S.CLOSE_WAIT and child.recv(10) == b""


def test_syn_queue_holds_max_backlog_8_half_open_connections() -> None:
    net = Net()
    lst = net.listen(backlog=2)
    answered = []
    for i in range(10):
        p = Peer(net, stack_port=80, port=45000 + i)
        p.send(SYN)
        answered.append(len(p.take()))
    assert answered == [1] * 8 + [0, 0]  # min(max(backlog, 8), tcp_max_syn_backlog), no SYN cookies
    assert len(lst.syn_children) == 8 and net.count("syn_queue_full") == 2


def test_peer_window_scale_above_14_is_clamped() -> None:
    net = Net()
    _, conn, _ = net.accepted(wscale=15)
    assert conn.snd_wscale == 14  # RFC 7323 2.3
