"""RFC 9293 requirements that docs/compliance.md claims and no other test isolates: the address
checks of an OPEN and of an incoming SYN, the local address of a bound connect, the TTL and
Diffserv field of a connection's segments (also changed mid-connection), the application's R2,
the keep-alive default, ICMP errors that must not abort a connection, and a RST meeting a zero
receive window."""
from __future__ import annotations

import errno

import pytest
from tcp_harness import ACK, ME, PEER_IP, SYN, Net

from usocket.proto.tcp.config import TcpConfig
from usocket.proto.tcp.connection import TcpConnection, TcpState
from usocket.wire.ipv4 import build_ipv4
from usocket.wire.tcp import build_tcp, syn_options

S = TcpState


@pytest.mark.parametrize("dst,code", [
    (bytes([224, 0, 0, 1]), errno.ENETUNREACH),  # multicast
    (bytes([255, 255, 255, 255]), errno.ENETUNREACH),  # limited broadcast
    (bytes([0, 0, 0, 0]), errno.ECONNREFUSED),  # as Linux
])
def test_must_46_open_to_a_broadcast_or_multicast_address_is_refused(dst: bytes, code: int) -> None:
    net = Net()
    conn = net.tcp.open()
    with pytest.raises(OSError) as ei:
        net.tcp.connect(conn, dst, 80)
    assert ei.value.errno == code
    net.assert_quiet()


@pytest.mark.parametrize("dst", [bytes([10, 0, 0, 255]), bytes([255, 255, 255, 255]), bytes([224, 0, 0, 1])])
def test_must_57_a_syn_to_a_broadcast_or_multicast_address_is_silently_discarded(dst: bytes) -> None:
    net = Net()
    net.listen(80)
    syn = build_tcp(PEER_IP, dst, 40000, 80, 1000, 0, SYN, 65535, options=syn_options(1460, None, False, None))
    net.inject(build_ipv4(PEER_IP, dst, 6, syn))
    net.assert_quiet()  # no SYN-ACK, no RST
    assert net.tcp.conns == {}
    net.inject(build_ipv4(PEER_IP, ME, 6, build_tcp(PEER_IP, ME, 40000, 80, 1000, 0, SYN, 65535)))
    [(_, synack)] = net.take_for(PEER_IP, 40000)  # the same SYN to our address is answered
    assert synack.flags == SYN | ACK


def test_must_43_45_a_bound_local_address_and_port_are_the_syns() -> None:
    net = Net()
    conn = net.connect(local_port=5555)
    net.collect()
    hdr, syn, _ = net.log[-1]
    assert (hdr.src, syn.sport, syn.flags) == (ME, 5555, SYN)
    assert (conn.local_ip, conn.local_port) == (ME, 5555)


def test_must_49_shld_21_22_ttl_and_diffserv_per_connection_even_mid_connection() -> None:
    net = Net()
    conn, peer = net.established(setup=lambda c: setattr(c, "nodelay", True))
    conn.ttl, conn.tos = 5, 0x28
    conn.send(b"a")
    net.flush()
    peer.expect(payload=b"a")
    hdr = net.log[-1][0]
    assert (hdr.ttl, hdr.tos) == (5, 0x28)
    conn.tos = 0xB8  # changed during the connection: the next segment carries it unchanged
    conn.send(b"b")
    net.flush()
    peer.expect(payload=b"b")
    assert net.log[-1][0].tos == 0xB8


def test_must_21_the_application_sets_r2_per_connection() -> None:
    net = Net()  # the stack's default retries2 is 15
    conn, peer = net.established(setup=lambda c: setattr(c, "retries2", 2))
    conn.send(b"lost")
    peer.expect(payload=b"lost")
    net.advance(60.0)  # RTOs of 0.2 s, 0.4 s, 0.8 s (at most): long over
    assert conn.state == S.CLOSED
    assert len(peer.take()) == 2 and conn.take_error() == errno.ETIMEDOUT


def test_must_28_keepalive_interval_defaults_to_two_hours() -> None:
    assert TcpConfig().keepalive_time >= 7200.0
    net = Net()
    conn, peer = net.established()
    conn.set_keepalive(True)
    net.advance(7199.0)
    peer.expect_none()
    net.advance(1.0)
    probe = peer.expect(flags=ACK, length=0)
    assert peer.u(probe.seq) == 0  # SND.UNA - 1: no data
    assert conn.state == S.ESTABLISHED


@pytest.mark.parametrize("type_,code", [(11, 0), (12, 0)])
def test_must_56_time_exceeded_and_parameter_problem_do_not_abort(type_: int, code: int) -> None:
    net = Net()
    conn, peer = net.established()
    conn.send(b"x" * 100)
    net.flush()
    seg = peer.expect(payload=b"x" * 100)
    net.icmp(type_, code, about=seg)
    assert conn.state == S.ESTABLISHED and conn.error == 0


def test_must_66_rst_is_processed_with_a_zero_receive_window() -> None:
    net = Net()
    small = 4096

    def tiny_buffer(c: TcpConnection) -> None:
        c.rcvbuf_locked = True
        c.rcvbuf.capacity = small  # type: ignore[attr-defined]

    conn, peer = net.established(setup=tiny_buffer)
    while conn.rcv_adv - conn.rcv_nxt > 0:  # fill the window: the application never reads
        peer.send(flags=ACK, payload=b"z" * min(1000, conn.rcv_adv - conn.rcv_nxt))
    peer.take()
    assert conn.rcv_adv - conn.rcv_nxt == 0
    peer.send(flags=0x04)  # RST at RCV.NXT
    assert conn.state == S.CLOSED and conn.take_error() == errno.ECONNRESET

