"""TCP connection teardown and attack resistance, packet by packet: every close path (active,
passive, simultaneous, half-close, abortive), TIME_WAIT rules, orphans, the RFC 5961
protections (RST and SYN handling, ACK validation, challenge ACK rate limit) and malformed input.
"""
from __future__ import annotations

import errno
from typing import Any

import pytest
from tcp_harness import ACK, FIN, MASK, ME, PEER_IP, RST, SYN, Net, Peer

from usocket.proto.tcp.connection import TcpConnection, TcpState
from usocket.wire.ipv4 import build_ipv4
from usocket.wire.tcp import build_tcp

S = TcpState


def rcv_nxt_of(peer: Peer) -> int:
    """The stack's RCV.NXT on the wire: what the peer sends next."""
    return peer.seq


# ================================================================ active close
def test_active_close_fin_wait_1_2_time_wait_closed_after_2msl() -> None:
    net = Net(msl=5.0)
    conn, peer = net.established()
    conn.send(b"bye")
    peer.expect(payload=b"bye", u=1)
    conn.shutdown(1)  # SHUT_WR; the application still holds the socket
    fin = peer.expect(flags=FIN | ACK, u=4, ack=peer.seq, length=0)
    assert conn.state == S.FIN_WAIT_1
    with pytest.raises(BrokenPipeError):
        conn.send(b"more")
    peer.send(ACK)  # acknowledges data and FIN
    peer.expect_none()
    assert conn.state == S.FIN_WAIT_2
    net.advance(3600)  # not an orphan: FIN_WAIT_2 has no timeout
    assert conn.state == S.FIN_WAIT_2
    peer.send(FIN | ACK)
    peer.expect(flags=ACK, u=5, ack=peer.seq)
    assert conn.state == S.TIME_WAIT and conn.recv(10) == b""
    t0 = net.now
    net.run_until(t0 + 9.999)
    assert conn.state == S.TIME_WAIT
    net.run_until(t0 + 10.0)  # 2 * MSL
    assert conn.state == S.CLOSED
    assert net.tcp.conns == {}
    peer.expect_none()
    assert fin.seq == peer.stack_seq(4)


def test_fin_and_ack_of_fin_in_one_segment_goes_straight_to_time_wait() -> None:
    net = Net()
    conn, peer = net.established()
    conn.shutdown(1)
    peer.expect(flags=FIN | ACK)
    peer.send(FIN | ACK)
    peer.expect(flags=ACK, ack=peer.seq)
    assert conn.state == S.TIME_WAIT


def test_fin_is_retransmitted() -> None:
    net = Net()
    conn, peer = net.established()
    conn.close()
    fin = peer.expect(flags=FIN | ACK)
    rto = conn.rtt.rto
    net.advance(rto - 0.001)
    peer.expect_none()
    net.advance(0.001)
    peer.expect(flags=FIN | ACK, seq=fin.seq, ack=fin.ack)
    net.advance(2 * rto)  # backed off
    peer.expect(flags=FIN | ACK, seq=fin.seq)
    assert conn.state == S.FIN_WAIT_1
    peer.send(ACK)
    assert conn.state == S.FIN_WAIT_2
    net.advance(60)
    peer.expect_none()


def test_retransmitted_fin_in_time_wait_is_acked_and_restarts_the_timer() -> None:
    net = Net(msl=5.0)
    conn, peer = net.established()
    conn.shutdown(1)
    peer.expect(flags=FIN | ACK)
    peer.send(ACK)
    peer.send(FIN | ACK)
    peer.expect(flags=ACK, ack=peer.seq)
    assert conn.state == S.TIME_WAIT
    net.advance(6.0)
    peer.send(FIN | ACK, seq=peer.seq - 1)  # our ACK "was lost"
    peer.expect(flags=ACK, ack=peer.seq, u=2)
    t1 = net.now
    net.run_until(t1 + 9.99)
    assert conn.state == S.TIME_WAIT  # 10 s from the first FIN would have ended it at 10.0
    net.run_until(t1 + 10.0)
    assert conn.state == S.CLOSED


def test_time_wait_blocks_the_port_for_binders_without_reuseaddr() -> None:
    net = Net()
    conn, peer = net.established(setup=lambda c: net.tcp.bind(c, ME, 5555))
    conn.shutdown(1)
    peer.expect(flags=FIN | ACK)
    peer.send(FIN | ACK)
    assert conn.state == S.TIME_WAIT
    other = net.tcp.open()
    with pytest.raises(OSError) as e:
        net.tcp.bind(other, ME, 5555)
    assert e.value.errno == errno.EADDRINUSE
    other.reuse_addr = True
    net.tcp.bind(other, ME, 5555)


def time_wait_server(net: Net, **peer_kw: Any) -> tuple[TcpConnection, TcpConnection, Peer]:
    """A server connection that closed first and sits in TIME_WAIT, its listener still open."""
    lst, child, peer = net.accepted(**peer_kw)
    child.send(b"response")
    peer.expect(payload=b"response")
    child.close()
    peer.expect(flags=FIN | ACK)
    peer.send(FIN | ACK)
    peer.expect(flags=ACK, ack=peer.seq)
    assert child.state == S.TIME_WAIT
    return lst, child, peer


def test_syn_with_higher_seq_to_time_wait_opens_a_new_connection() -> None:
    net = Net()
    lst, old, peer = time_wait_server(net, ts=False)
    new_isn = (peer.seq + 100000) & MASK  # RFC 6191 / RFC 1122 4.2.2.13: above the old RCV.NXT
    peer2 = Peer(net, stack_port=80, port=peer.port, isn=new_isn, ts=False)
    peer2.send(SYN)
    peer2.expect(flags=SYN | ACK, ack=new_isn + 1)
    assert old.state == S.CLOSED
    peer2.send(ACK)
    new = net.tcp.accept(lst)
    assert new is not None and new is not old and new.state == S.ESTABLISHED


def test_syn_with_newer_timestamp_to_time_wait_opens_a_new_connection() -> None:
    net = Net()
    lst, old, peer = time_wait_server(net)
    net.advance(1.0)  # the peer's timestamp clock moves on
    peer2 = Peer(net, stack_port=80, port=peer.port, isn=peer.seq - 50000)  # lower seq, newer TS
    peer2.send(SYN)
    peer2.expect(flags=SYN | ACK, ack=peer2.iss + 1)
    assert old.state == S.CLOSED


def test_syn_with_old_seq_to_time_wait_does_not_reopen() -> None:
    net = Net()
    lst, old, peer = time_wait_server(net, ts=False)
    peer2 = Peer(net, stack_port=80, port=peer.port, isn=peer.seq - 50000, ts=False)
    peer2.send(SYN)
    assert old.state == S.TIME_WAIT
    for seg in peer2.take():
        assert not seg.flags & SYN  # no new connection (an ACK, if any, is for the old one)
    assert not lst.syn_children


# ================================================================ passive close
def test_passive_close_close_wait_last_ack_closed() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(ACK, b"request")
    peer.expect(flags=ACK, ack=peer.seq)  # quick ACK at the start of a connection
    peer.send(FIN | ACK)
    peer.expect(flags=ACK, ack=peer.seq)  # a FIN is ACKed at once
    assert conn.state == S.CLOSE_WAIT
    assert conn.recv(100) == b"request" and conn.recv(100) == b"" and conn.at_eof
    conn.send(b"answer")  # half-close: we may still send
    peer.expect(payload=b"answer", u=1)
    conn.close()
    peer.expect(flags=FIN | ACK, u=7, ack=peer.seq)
    assert conn.state == S.LAST_ACK
    peer.send(ACK)
    assert conn.state == S.CLOSED and net.tcp.conns == {}
    peer.expect_none()


def test_last_ack_fin_retransmitted_then_rst_closes_quietly() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(FIN | ACK)
    peer.expect(flags=ACK)
    conn.close()
    fin = peer.expect(flags=FIN | ACK)
    net.advance(conn.rtt.rto)
    peer.expect(flags=FIN | ACK, seq=fin.seq)
    peer.send(RST, seq=peer.seq, ts=False)
    assert conn.state == S.CLOSED and conn.error == 0  # no error reported in LAST_ACK


def test_half_close_data_keeps_flowing_towards_the_fin_sender() -> None:
    net = Net()
    conn, peer = net.established()
    conn.shutdown(1)
    peer.expect(flags=FIN | ACK, u=1)
    peer.send(ACK)
    assert conn.state == S.FIN_WAIT_2
    for i in range(3):
        peer.send(ACK, bytes([65 + i]) * 1000)
    net.advance(0.2)
    acks = peer.take()
    assert acks and acks[-1].ack == peer.seq and acks[-1].seq == peer.stack_seq(2)
    assert conn.recv(5000) == b"A" * 1000 + b"B" * 1000 + b"C" * 1000
    peer.send(FIN | ACK)
    assert conn.state == S.TIME_WAIT and conn.recv(10) == b""


def test_half_close_by_the_peer_we_keep_sending() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(FIN | ACK)
    peer.expect(flags=ACK)
    conn.nodelay = True
    total = b"".join(bytes([i]) * 700 for i in range(10))
    assert conn.send(total) == 7000
    got = b""
    for _ in range(10):
        segs = peer.take()
        got += b"".join(bytes(s.payload) for s in segs)
        if not segs:
            break
        peer.send(ACK)
    assert got == total
    assert conn.state == S.CLOSE_WAIT


def test_shutdown_rd_then_data_is_still_acked() -> None:
    net = Net()
    conn, peer = net.established()
    conn.shutdown(0)
    assert conn.recv(10) == b""
    peer.send(ACK, b"x" * 100)
    peer.expect(flags=ACK, ack=peer.seq)
    assert conn.state == S.ESTABLISHED


# ================================================================ simultaneous close
def test_simultaneous_close_closing_then_time_wait() -> None:
    net = Net(msl=1.0)
    conn, peer = net.established()
    conn.shutdown(1)
    fin = peer.expect(flags=FIN | ACK, u=1)
    peer.send(FIN | ACK, ack=fin.seq)  # crosses ours: does not acknowledge it
    peer.expect(flags=ACK, u=2, ack=peer.seq)
    assert conn.state == S.CLOSING
    peer.send(ACK)  # now ours is acknowledged
    assert conn.state == S.TIME_WAIT
    peer.expect_none()
    net.advance(2.0)
    assert conn.state == S.CLOSED


def test_closing_fin_is_retransmitted() -> None:
    net = Net()
    conn, peer = net.established()
    conn.shutdown(1)
    fin = peer.expect(flags=FIN | ACK)
    peer.send(FIN | ACK, ack=fin.seq)
    peer.expect(flags=ACK)
    assert conn.state == S.CLOSING
    net.advance(conn.rtt.rto)
    peer.expect(flags=FIN | ACK, seq=fin.seq, ack=peer.seq)


# ================================================================ abortive close and orphans
def test_close_with_unread_data_sends_rst() -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"hello")
    peer.expect(payload=b"hello")
    peer.send(ACK, b"unread")
    peer.take()
    conn.close()  # RFC 2525 2.17, Linux tcp_close: unread data -> RST, not FIN
    peer.expect(flags=RST | ACK, u=6, ack=peer.seq)
    assert conn.state == S.CLOSED and net.tcp.conns == {}
    assert net.count("abort.on_close") == 1


def test_linger_zero_sends_rst() -> None:
    net = Net()
    conn, peer = net.established()
    conn.linger = 0
    conn.send(b"pending")
    peer.take()
    conn.close()
    peer.expect(flags=RST | ACK, u=8)
    assert conn.state == S.CLOSED
    net.advance(10)
    peer.expect_none()  # nothing retransmitted


def test_abort_sends_rst_and_forgets() -> None:
    net = Net()
    conn, peer = net.established()
    conn.abort()
    peer.expect(flags=RST | ACK, u=1, ack=peer.seq)
    assert conn.state == S.CLOSED
    peer.send(ACK, b"x")  # the peer's next segment: no connection any more
    peer.expect(flags=RST, u=1)


def test_orphan_in_fin_wait_2_times_out() -> None:
    net = Net(fin_timeout=60.0)
    conn, peer = net.established()
    conn.close()
    peer.expect(flags=FIN | ACK)
    peer.send(ACK)
    assert conn.state == S.FIN_WAIT_2 and conn.orphan
    net.advance(59.9)
    assert conn.state == S.FIN_WAIT_2
    net.advance(0.1)
    assert conn.state == S.CLOSED and net.tcp.conns == {}
    peer.expect_none()
    assert net.count("fin_wait_2_timeout") == 1


def test_data_to_an_orphan_draws_rst() -> None:
    net = Net()
    conn, peer = net.established()
    conn.close()
    peer.expect(flags=FIN | ACK)
    peer.send(ACK)
    peer.send(ACK, b"nobody reads this")
    peer.expect(flags=RST | ACK, u=2)
    assert conn.state == S.CLOSED
    assert net.count("abort.data_after_close") == 1


def test_orphan_still_delivers_its_queued_data_before_the_fin() -> None:
    net = Net()
    conn, peer = net.established(window=2000, wscale=None)
    conn.send(b"k" * 5000)
    conn.close()
    got = b""
    for _ in range(10):
        segs = peer.take()
        got += b"".join(bytes(s.payload) for s in segs)
        if segs and segs[-1].flags & FIN:
            break
        peer.send(ACK)
    assert got == b"k" * 5000
    assert peer.u(segs[-1].seq) + len(segs[-1].payload) == 5001
    peer.send(ACK)
    assert conn.state == S.FIN_WAIT_2


# ================================================================ RFC 5961
def test_rst_with_exact_seq_resets_econnreset() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(RST, seq=peer.seq, ts=False)
    assert conn.state == S.CLOSED
    peer.expect_none()
    with pytest.raises(ConnectionResetError):
        conn.recv(10)
    assert net.tcp.conns == {}


def test_rst_in_close_wait_is_epipe() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(FIN | ACK)
    peer.expect(flags=ACK)
    peer.send(RST, seq=peer.seq, ts=False)
    assert conn.state == S.CLOSED and conn.take_error() == errno.EPIPE


def test_rst_in_window_but_not_exact_draws_challenge_ack() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(RST, seq=peer.seq + 1000, ts=False)
    peer.expect(flags=ACK, ack=peer.seq, u=1)  # RFC 5961 3.2: challenge ACK
    assert conn.state == S.ESTABLISHED and conn.error == 0
    assert net.count("rx.rst_challenged") == 1
    # The data flows on.
    peer.send(ACK, b"still here")
    assert conn.recv(100) == b"still here"


def test_rst_out_of_window_is_ignored() -> None:
    net = Net()
    conn, peer = net.established()
    for off in (-10, 1 << 30, conn.rcvbuf.capacity + 10):
        peer.send(RST, seq=peer.seq + off, ts=False)
    peer.expect_none()
    assert conn.state == S.ESTABLISHED


def test_rst_ack_with_exact_seq_resets_too() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(RST | ACK, seq=peer.seq, ts=False)
    assert conn.state == S.CLOSED and conn.take_error() == errno.ECONNRESET


def test_syn_in_established_draws_challenge_ack() -> None:
    net = Net()
    conn, peer = net.established()
    for seq in (peer.seq, peer.iss, peer.seq + 5000):  # in window, old, and anywhere
        peer.send(SYN, seq=seq)
        peer.expect(flags=ACK, ack=peer.seq, u=1)
    assert conn.state == S.ESTABLISHED
    assert net.count("rx.syn_challenged") >= 2


def test_ack_below_snd_una_minus_max_snd_wnd_is_challenged_and_dropped() -> None:
    net = Net()
    _, conn, peer = net.accepted(window=8192, wscale=None)
    assert conn.max_snd_wnd == 8192
    conn.nodelay = True
    for _ in range(4):  # move SND.UNA 20000 bytes on
        conn.send(b"s" * 5000)
        peer.take()
        peer.send(ACK)
    assert conn.snd_una == 20001
    too_old = peer.stack_seq(20001 - 8192 - 1)
    peer.send(ACK, b"payload", ack=too_old)
    peer.expect(flags=ACK, ack=peer.seq - 7, u=20001)  # RFC 5961 5.2: challenge ACK, data dropped
    assert conn.readable == 0 and net.count("drop.ack_too_old") == 1
    peer.seq -= 7
    old_but_ok = peer.stack_seq(20001 - 8192 + 1)
    peer.send(ACK, b"payload", ack=old_but_ok)  # within MAX.SND.WND: an old duplicate, accepted
    assert conn.recv(100) == b"payload"


def test_ack_for_unsent_data_draws_ack_and_is_dropped() -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"12345")
    peer.take()
    peer.send(ACK, b"data", ack=peer.stack_seq(6 + 1000))
    peer.expect(flags=ACK, ack=peer.seq - 4)  # RFC 9293 3.10.7.4: ACK and drop
    assert conn.readable == 0 and conn.snd_una == 1
    assert net.count("drop.ack_unsent") == 1


def test_challenge_ack_rate_limit() -> None:
    net = Net(challenge_ack_limit=3)
    conn, peer = net.established()
    for i in range(6):
        peer.send(RST, seq=peer.seq + 100 + i, ts=False)
    assert len(peer.take()) == 3
    assert net.count("challenge_ack.limited") == 3
    net.advance(1.0)  # a new second
    peer.send(SYN, seq=peer.seq)
    peer.expect(flags=ACK)
    assert conn.state == S.ESTABLISHED


def test_challenge_ack_limit_is_layer_wide() -> None:
    net = Net(challenge_ack_limit=2)
    _, c1, p1 = net.accepted()
    p2 = Peer(net, stack_port=80, port=40001, isn=777)
    p2.send(SYN)
    p2.expect(flags=SYN | ACK)
    p2.send(ACK)
    for p in (p1, p2, p1, p2):
        p.send(RST, seq=p.seq + 50, ts=False)
    assert len(p1.take()) + len(p2.take()) == 2


def test_out_of_window_data_gets_a_dup_ack_and_is_dropped() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(ACK, b"z" * 10, seq=peer.seq + conn.rcvbuf.capacity + 1000)
    peer.expect(flags=ACK, ack=peer.seq)
    assert conn.readable == 0 and net.count("drop.out_of_window") == 1


def test_segment_without_ack_is_dropped() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send(0, b"noack")
    peer.expect_none()
    assert conn.readable == 0


# ================================================================ bad input
def valid_tcp(peer: Peer, payload: bytes = b"", flags: int = ACK) -> bytes:
    assert peer.rcv_nxt is not None
    return build_tcp(PEER_IP, ME, peer.port, peer.stack_port, peer.seq, peer.rcv_nxt, flags, 1000, b"", payload)


def test_truncated_header_is_counted_and_dropped() -> None:
    net = Net()
    conn, peer = net.established()
    peer.send_raw_tcp(valid_tcp(peer)[:19])
    assert net.count("drop.too_short") == 1
    peer.expect_none()
    assert conn.state == S.ESTABLISHED


@pytest.mark.parametrize("offset", [0, 4, 15])
def test_bad_data_offset_is_counted_and_dropped(offset: int) -> None:
    net = Net()
    conn, peer = net.established()
    tcp = bytearray(valid_tcp(peer, b"abc"))
    tcp[12] = (offset << 4) | (tcp[12] & 0x0F)  # under 5 words, or past the end of the segment
    peer.send_raw_tcp(bytes(tcp))
    assert net.count("drop.bad_offset") == 1
    peer.expect_none()
    assert conn.readable == 0


def test_bad_checksum_is_counted_and_dropped() -> None:
    net = Net()
    conn, peer = net.established()
    tcp = bytearray(build_tcp(PEER_IP, ME, peer.port, peer.stack_port, peer.seq, 0, RST, 0))
    tcp[16] ^= 0x55
    peer.send_raw_tcp(bytes(tcp))  # a RST at exactly RCV.NXT, but corrupted
    assert net.count("drop.bad_checksum") == 1
    assert conn.state == S.ESTABLISHED
    good = valid_tcp(peer, b"fine")
    bad = bytearray(good)
    bad[-1] ^= 1
    peer.send_raw_tcp(bytes(bad))
    assert net.count("drop.bad_checksum") == 2 and conn.readable == 0
    peer.send_raw_tcp(good)
    assert conn.recv(10) == b"fine"


def test_segment_for_another_address_is_not_answered() -> None:
    net = Net()
    peer = Peer(net, stack_port=80)
    tcp = build_tcp(PEER_IP, bytes([10, 0, 0, 255]), peer.port, 80, 1, 0, SYN, 1000)
    net.inject(build_ipv4(PEER_IP, bytes([10, 0, 0, 255]), 6, tcp))
    net.assert_quiet()


def test_a_hook_that_aborts_in_the_middle_of_a_segment_does_not_break_its_processing() -> None:
    """An ACK that frees send space arriving with the peer's FIN: ``on_writable`` runs first; a
    subclass (or a socket facade) that resets the connection from it must not make the rest of
    the segment's processing (the FIN's ACK) fail."""

    class AbortOnWritable(TcpConnection):
        def on_writable(self) -> None:
            if self.state != S.CLOSED:
                self.abort()

    net = Net()
    conn, peer = net.established(AbortOnWritable)
    conn.send(b"data")
    peer.expect(payload=b"data", u=1)
    peer.send(FIN | ACK)  # acknowledges the data (on_writable -> abort) and carries a FIN
    rst = peer.expect(flags=RST | ACK)
    assert rst is not None and conn.state == S.CLOSED and net.tcp.conns == {}
    peer.expect_none()


def test_a_closed_listener_port_stays_the_stacks_for_a_grace_in_shared_mode() -> None:
    """Shared mode: SYNs already queued for a listener that just closed (a loaded stack reads
    its NFQUEUE late) are the stack's, answered with its RST, for ``closed_listener_grace``;
    only then is the port's diversion closed, so the host kernel never answers them."""
    from usocket.config import SHARED
    from usocket.stack import FlowObserver

    closed: list[tuple[int, int, object]] = []

    class Flows(FlowObserver):
        def flow_closed(self, proto: int, local_port: int, remote: object) -> None:
            closed.append((proto, local_port, remote))

    net = Net()
    net.stack.config.mode = SHARED
    net.stack.flows = Flows()
    lst = net.listen(8080)
    net.tcp.close(lst)
    assert closed == [] and net.tcp.owns(8080, b"\x0a\x00\x00\x02", 40000)
    peer = Peer(net, ip=b"\x0a\x00\x00\x02", port=40000, stack_port=8080)
    peer.send(flags=SYN)
    rst = peer.take(1)[0]
    assert rst.flags == RST | ACK and rst.ack == (peer.seq) % 2**32
    net.advance(net.tcp.config.closed_listener_grace + 0.01)
    assert closed == [(6, 8080, None)]
    assert not net.tcp.owns(8080, b"\x0a\x00\x00\x02", 40001)
    # a listener closed and opened again on the port keeps it, and its grace ends harmlessly
    again = net.listen(8080)
    net.tcp.close(again)
    third = net.listen(8080)
    net.advance(1.0)
    assert net.tcp.owns(8080, b"\x0a\x00\x00\x02", 40002) and third.state.name == "LISTEN"
