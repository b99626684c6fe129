"""Introspection: the netstat-like socket table and the counters, over the packet harness (a
virtual clock, scripted peers) and through the socket facade on an in-memory runtime."""
from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest
from tcp_harness import ACK, MASK, ME, PEER_IP, SYN, Net, Peer

from usocket.config import OWN, StackConfig
from usocket.introspect import SocketRow, format_counters, format_table
from usocket.proto.tcp.connection import TcpConnection
from usocket.stack import Stack
from usocket.wire.ipv4 import build_ipv4
from usocket.wire.udp import build_udp


def nodelay(conn: TcpConnection) -> None:
    conn.nodelay = True


def by_state(rows: list[SocketRow], state: str) -> list[SocketRow]:
    return [r for r in rows if r.state == state]


def test_listener_row_counts_the_accept_queue_and_the_backlog() -> None:
    net = Net()
    listener = net.listen(8080, backlog=5)
    [row] = net.stack.sockets()
    assert (row.proto, row.state, row.local, row.remote) == ("tcp", "LISTEN", "10.0.0.1:8080", "*:*")
    assert (row.recv_q, row.send_q, row.backlog) == (0, 5, 5)
    for port in (40001, 40002):  # two handshakes completed, not accepted yet
        peer = Peer(net, stack_port=8080, port=port)
        peer.send(flags=SYN)
        peer.expect(flags=SYN | ACK)
        peer.send(flags=ACK)
    rows = net.stack.sockets()
    [lrow] = by_state(rows, "LISTEN")
    assert lrow.recv_q == 2 == len(listener.accept_queue)
    est = by_state(rows, "ESTABLISHED")
    assert sorted(r.remote for r in est) == ["10.0.0.2:40001", "10.0.0.2:40002"]
    assert all(r.local == "10.0.0.1:8080" and r.pid == os.getpid() for r in est)


def test_connection_row_queues_windows_rtt_cwnd_and_retransmissions() -> None:
    net = Net(tlp=False)  # no tail loss probe: the RTO is what fires
    conn, peer = net.established(setup=nodelay, window=100_000)
    [row] = net.stack.sockets()
    assert (row.state, row.local.split(":")[0], row.remote) == ("ESTABLISHED", "10.0.0.1", "10.0.0.2:80")
    assert row.options == ["ts", "sack", f"wscale:{peer.shift},{conn.rcv_wscale}"]
    assert row.mss == conn.mss and row.snd_wnd == conn.snd_wnd > 0 and row.rcv_wnd and row.rcv_wnd > 0
    assert row.srtt == conn.rtt.srtt and row.ssthresh is None and row.congestion == conn.congestion

    # 30 segments queued, the initial window (10) sent, none acknowledged yet; the RTO is armed
    conn.send(b"x" * (30 * conn.mss))
    net.flush()
    [row] = net.stack.sockets()
    cwnd0 = row.cwnd
    assert cwnd0 == conn.cc.cwnd == 10 * conn.mss  # type: ignore[union-attr]
    assert row.send_q == 30 * conn.mss and row.in_flight == cwnd0
    assert row.timer == "rtx" and row.timer_in is not None and row.timer_in > 0

    # 50 ms later the peer acknowledges those 10 and sends 700 bytes the application leaves unread
    net.advance(0.05)
    peer.take()
    peer.send(flags=ACK, payload=b"y" * 700)
    [row] = net.stack.sockets()
    assert row.recv_q == 700 and row.bytes_received == 700 and row.bytes_acked == 10 * conn.mss
    assert row.send_q == 20 * conn.mss
    # slow start with one stretch ACK: +2 SMSS (RFC 3465's L), and the new window is filled
    assert row.cwnd == cwnd0 + 2 * conn.mss and row.in_flight == row.cwnd  # type: ignore[operator]
    assert row.snd_wnd == 100_000 >> peer.shift << peer.shift  # now from a scaled ACK
    # RFC 6298: the handshake's sample (1 ms) smoothed with this one (50 ms)
    assert row.srtt == pytest.approx(0.875 * 0.001 + 0.125 * 0.05, rel=0.01) and row.rttvar
    assert row.segs_out >= 23 and row.segs_in >= 2  # type: ignore[operator]
    for _ in range(5):
        net.advance(0.05)
        peer.take()
        peer.send(flags=ACK)
    [row] = net.stack.sockets()
    assert row.send_q == 0 and row.in_flight == 0 and row.bytes_acked == 30 * conn.mss

    # a segment that is never acknowledged is retransmitted at the RTO
    conn.send(b"z" * 100)
    net.flush()
    net.advance(row.rto + 0.3)  # type: ignore[operator]
    [row] = net.stack.sockets()
    assert row.retransmits is not None and row.retransmits >= 1
    assert row.rtx_retries is not None and row.rtx_retries >= 1 and row.timer == "rtx"
    assert row.ssthresh is not None  # the timeout set it
    text = format_table(net.stack.sockets())
    assert "ESTABLISHED" in text and "10.0.0.2:80" in text
    assert f"retrans:{row.rtx_retries}/{row.retransmits}" in text and "cwnd:" in text


def test_closing_states_appear_in_the_table() -> None:
    net = Net()
    conn, peer = net.established()
    conn.close()
    net.flush()
    assert [r.state for r in net.stack.sockets()] == ["FIN_WAIT_1"]
    assert net.stack.sockets()[0].orphan
    fin = peer.take()[-1]
    peer.send(flags=ACK | 1, seq=peer.seq, ack=(fin.seq + 1) & MASK)  # FIN|ACK (FIN is bit 0)
    assert [r.state for r in net.stack.sockets()] == ["TIME_WAIT"]
    assert net.stack.sockets()[0].timer == "timewait"


def test_udp_rows_show_bound_connected_and_queued_bytes() -> None:
    stack = Stack(StackConfig(address=ME, prefix_len=24, mode=OWN), rng=random.Random(1))
    udp = stack.udp
    server = udp.open()
    udp.bind(server, bytes(4), 5353)
    client = udp.open()
    udp.connect(client, PEER_IP, 53)
    for payload in (b"a" * 100, b"b" * 50):
        dgram = build_udp(1234, 5353, payload, PEER_IP, ME)
        stack.ipv4.receive(build_ipv4(PEER_IP, ME, 17, dgram), False)
    rows = stack.sockets()
    assert [r.proto for r in rows] == ["udp", "udp"]
    srv = next(r for r in rows if r.local == "0.0.0.0:5353")
    assert (srv.state, srv.remote, srv.send_q) == ("UNCONN", "*:*", 0)
    assert srv.recv_q == server.queued_bytes > 150  # payload plus the per-datagram overhead
    cli = next(r for r in rows if r.remote == "10.0.0.2:53")
    assert cli.state == "ESTAB" and cli.local.startswith("10.0.0.1:") and cli.recv_q == 0
    assert cli.cwnd is None and cli.srtt is None


def test_rows_round_trip_through_json() -> None:
    net = Net()
    net.established()
    net.listen(81)
    rows = net.stack.sockets()
    back = [SocketRow.from_dict(d) for d in json.loads(json.dumps([r.to_dict() for r in rows]))]
    assert back == rows
    assert format_table(back) == format_table(rows)


def test_counters_format() -> None:
    net = Net()
    net.established()
    snap = net.stack.counters.snapshot()
    assert snap["tcp"]["active_open"] == 1
    text = format_counters(snap)
    assert "active_open=1" in text and "tcp:" in text


# ---------------------------------------------------------------------------- through the facade
def test_netstat_through_the_socket_facade(loop_runtime: Any) -> None:
    import usocket

    with usocket.socket() as srv:
        srv.bind(("10.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        cli = usocket.create_connection(("10.0.0.1", port), timeout=5)
        conn, _ = srv.accept()
        with cli, conn:
            cli.sendall(b"q" * 100_000)
            got = 0
            while got < 100_000:
                got += len(conn.recv(65536))
            rows = usocket.netstat()
            assert len(rows) == 3
            [lst] = by_state(rows, "LISTEN")
            assert lst.local == f"10.0.0.1:{port}" and lst.fd == srv.fileno() and lst.pid == os.getpid()
            est = {r.local: r for r in by_state(rows, "ESTABLISHED")}
            mine = f"10.0.0.1:{cli.getsockname()[1]}"
            assert set(est) == {mine, f"10.0.0.1:{port}"}
            assert est[mine].fd == cli.fileno() and est[f"10.0.0.1:{port}"].fd == conn.fileno()
            assert est[f"10.0.0.1:{port}"].bytes_received == 100_000  # what the application read
            assert 0 < est[mine].bytes_acked <= 100_000  # (the last ACK may still be on its way)
            assert est[mine].kind == "FacadeConnection"
            counters = loop_runtime.counters()
            assert counters["tcp"]["active_open"] >= 1 and counters["tcp"]["rx"] > 0
            table = format_table(rows)
            assert f"fd={cli.fileno()}" in table and "LISTEN" in table


# ---------------------------------------------------------------------------- the control endpoint
@pytest.fixture
def ctl_dir(tmp_path: Any) -> Any:
    d = tmp_path / "ctl"
    d.mkdir(mode=0o700)
    return d


def test_control_endpoint_answers_the_table_and_counters(loop_runtime: Any, ctl_dir: Any, capsys: Any) -> None:
    import usocket
    from usocket.cli import main as cli_main
    from usocket.control import ControlServer, query, query_path

    server = ControlServer(loop_runtime, path=str(ctl_dir / f"{os.getpid()}.sock")).start()
    try:
        assert oct(os.stat(server.path).st_mode & 0o777) == "0o600"
        with usocket.socket() as srv:
            srv.bind(("10.0.0.1", 0))
            srv.listen()
            port = srv.getsockname()[1]
            with usocket.create_connection(("10.0.0.1", port), timeout=5) as cli:
                conn, _ = srv.accept()
                with conn:
                    reply = query(os.getpid(), directory=str(ctl_dir))
                    assert reply["pid"] == os.getpid() and reply["address"] == "10.0.0.1/24"
                    rows = [SocketRow.from_dict(d) for d in reply["sockets"]]
                    states = sorted((r.state, r.local) for r in rows)
                    assert states == sorted([("LISTEN", f"10.0.0.1:{port}"), ("ESTABLISHED", f"10.0.0.1:{port}"),
                                             ("ESTABLISHED", f"10.0.0.1:{cli.getsockname()[1]}")])
                    assert reply["counters"]["tcp"]["active_open"] >= 1
                    only = query_path(server.path, "counters")
                    assert "sockets" not in only and "tcp" in only["counters"]
                    assert query_path(server.path, "ping")["pid"] == os.getpid()
                    capsys.readouterr()
                    assert cli_main(["ss", "-a", "-i", "-c", "--dir", str(ctl_dir), str(os.getpid())]) == 0
                    out = capsys.readouterr().out
                    cli_fd = cli.fileno()
        assert server.served == 4
        assert "LISTEN" in out and f"fd={cli_fd}" in out and "ESTABLISHED" in out and "rtt:" in out
        assert "active_open=" in out  # the counters
    finally:
        server.close()
    assert not os.path.exists(server.path)


def test_control_endpoint_rejects_bad_requests_and_keeps_serving(loop_runtime: Any, ctl_dir: Any) -> None:
    import socket as std

    from usocket.control import MAX_REQUEST, ControlError, ControlServer, query_path

    server = ControlServer(loop_runtime, path=str(ctl_dir / "x.sock")).start()
    try:
        with pytest.raises(ControlError, match="unknown query"):
            query_path(server.path, "rm -rf /")
        for junk in (b"[1, 2]\n", b"{not json\n", b"x" * (MAX_REQUEST + 10)):
            s = std.socket(std.AF_UNIX, std.SOCK_STREAM)
            s.settimeout(5)
            s.connect(server.path)
            s.sendall(junk)
            reply = json.loads(s.makefile("rb").readline())
            s.close()
            assert "error" in reply
        assert "sockets" in query_path(server.path)  # still serving
    finally:
        server.close()


def test_runtime_opens_and_removes_its_control_endpoint(ctl_dir: Any) -> None:
    from usocket.config import StackConfig as Cfg
    from usocket.control import query_path
    from usocket.link.memory import link_pair
    from usocket.runtime import Runtime

    path = str(ctl_dir / "rt.sock")
    end, other = link_pair()
    rt = Runtime(Cfg(address=bytes([10, 0, 0, 1]), prefix_len=24), link=end, divert=False, control=path)
    with rt:
        assert rt.control is not None and query_path(path)["sockets"] == []
    assert not os.path.exists(path)
    other.close()


def test_control_refuses_a_directory_open_to_others(loop_runtime: Any, tmp_path: Any) -> None:
    from usocket.control import ControlServer

    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o755)
    with pytest.raises(PermissionError):
        ControlServer(loop_runtime, path=str(d / "x.sock")).start()
    assert not (d / "x.sock").exists()


def test_stale_socket_files_of_killed_processes_are_removed(loop_runtime: Any, ctl_dir: Any) -> None:
    import socket as std

    from usocket.control import ControlServer, remove_stale

    dead = std.socket(std.AF_UNIX, std.SOCK_STREAM)
    dead.bind(str(ctl_dir / "999999.sock"))  # bound, never listening: what a killed process leaves
    dead.close()
    (ctl_dir / "notes.txt").write_text("not ours")
    server = ControlServer(loop_runtime, path=str(ctl_dir / "1.sock")).start()
    try:
        assert remove_stale(str(ctl_dir)) in (0, 1)  # the server's thread may have done it first
        assert sorted(p.name for p in ctl_dir.iterdir()) == ["1.sock", "notes.txt"]
    finally:
        server.close()


def test_a_forked_child_drops_the_endpoint_and_leaves_the_parents_file(loop_runtime: Any, ctl_dir: Any) -> None:
    from usocket.control import ControlServer, query_path

    server = ControlServer(loop_runtime, path=str(ctl_dir / "p.sock")).start()
    try:
        pid = os.fork()
        if pid == 0:  # the child: no thread, no listening socket; its exit must not unlink the file
            ok = server.sock is None and server._stop_r == -1
            server.close()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists(server.path) and query_path(server.path, "ping")["pid"] == os.getpid()
    finally:
        server.close()
