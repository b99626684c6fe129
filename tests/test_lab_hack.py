"""The hacking API against the Linux kernel, in the lab (both modes unless said otherwise).

Per-socket congestion control, IP_TTL/IP_TOS as a capture at the peer shows them, packet hooks
on a running stack, a custom IP protocol answered to the kernel's raw socket (own mode), and a
hand-built stack run by a runtime talking to the kernel's UDP echo server.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

import usocket
from usocket import hack
from usocket.facade.sockets import socket_on
from usocket.lab import Lab
from usocket.lab.run import stack_ip
from usocket.lab.servers import parse_sink_reply
from usocket.proto.arp import ArpLayer
from usocket.proto.ethernet import EthernetLayer
from usocket.proto.icmp import IcmpLayer
from usocket.proto.ipv4 import IPv4Layer
from usocket.proto.udp import UdpLayer
from usocket.runtime import Runtime

pytestmark = pytest.mark.lab


def tshark(pcap: str, *fields: str, display: str = "") -> list[list[str]]:
    argv = ["tshark", "-r", pcap, "-T", "fields", *[x for f in fields for x in ("-e", f)]]
    if display:
        argv += ["-Y", display]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def test_congestion_control_is_chosen_per_socket(lab: Lab, runtime: Runtime) -> None:
    socks = []
    for name in (b"reno", b"cubic"):
        s = socket_on(runtime)
        s.setsockopt(usocket.IPPROTO_TCP, usocket.TCP_CONGESTION, name)
        s.settimeout(10)
        s.connect((lab.server_ip, lab.ports["bulk_sink"]))
        socks.append(s)
    payload = b"c" * (4 << 20)
    replies: list[bytes] = [b"", b""]

    def upload(i: int) -> None:
        socks[i].sendall(payload)
        socks[i].shutdown(usocket.SHUT_WR)
        while chunk := socks[i].recv(100):
            replies[i] += chunk

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    kinds = [runtime.call(lambda c=s.connection: type(c.cc).__name__) for s in socks]
    names = [s.getsockopt(usocket.IPPROTO_TCP, usocket.TCP_CONGESTION, 16).rstrip(b"\0") for s in socks]
    for s in socks:
        s.close()
    assert names == [b"reno", b"cubic"]
    assert kinds == ["NewReno", "Cubic"]
    assert [parse_sink_reply(r)[0] for r in replies] == [len(payload)] * 2  # the sink counted it all
    with pytest.raises(OSError):
        socket_on(runtime).setsockopt(usocket.IPPROTO_TCP, usocket.TCP_CONGESTION, b"no-such-cc")


def test_ip_ttl_and_tos_per_socket_in_a_capture(lab: Lab, runtime: Runtime, mode: str) -> None:
    me = stack_ip(lab, mode)
    with lab.capture(lab.server_ns, lab.server_if, f"src host {me} and (tcp or udp)") as pcap:
        u = socket_on(runtime, usocket.AF_INET, usocket.SOCK_DGRAM)
        u.setsockopt(usocket.IPPROTO_IP, usocket.IP_TTL, 33)
        u.setsockopt(usocket.IPPROTO_IP, usocket.IP_TOS, 0x28)
        u.settimeout(5)
        u.sendto(b"ttl", (lab.server_ip, lab.ports["udp_echo"]))
        assert u.recvfrom(100)[0] == b"ttl"
        t = socket_on(runtime)
        t.setsockopt(usocket.IPPROTO_IP, usocket.IP_TTL, 77)
        t.setsockopt(usocket.IPPROTO_IP, usocket.IP_TOS, 0x10)
        t.settimeout(5)
        t.connect((lab.server_ip, lab.ports["tcp_echo"]))
        t.sendall(b"tos")
        assert t.recv(100) == b"tos"
        uport, tport = u.getsockname()[1], t.getsockname()[1]
        u.close()
        t.close()
    rows = tshark(pcap, "ip.ttl", "ip.dsfield", "udp.srcport", "tcp.srcport")
    udp_rows = {(r[0], r[1]) for r in rows if r[2] == str(uport)}
    tcp_rows = {(r[0], r[1]) for r in rows if r[3] == str(tport)}
    assert udp_rows == {("33", "0x28")}, rows
    assert tcp_rows == {("77", "0x10")}, rows  # every segment: SYN, data, ACKs, FIN


def test_hooks_on_a_running_stack_observe_modify_and_unhook(lab: Lab, runtime: Runtime) -> None:
    frames: list[int] = []
    h = hack.hooks(runtime)

    def shout(data: bytes, ctx: hack.HookContext) -> bytes:
        if data[8:] == b"quiet":  # the echo server's reply: rewrite it, checksum 0 ("none")
            return data[:6] + b"\0\0" + b"LOUD!"
        return data

    ip_in: list[bytes] = []
    remove_in = runtime.call(h.add, "udp", "in", shout)
    remove_out = runtime.call(h.add, "link", "out", lambda d, ctx: frames.append(len(d)) or d)
    # IPv4 input: frames from the link (own mode) and packets from NFQUEUE (shared mode) alike
    remove_ip = runtime.call(h.add, "ipv4", "in", lambda d, ctx: ip_in.append(d) or d)
    u = socket_on(runtime, usocket.AF_INET, usocket.SOCK_DGRAM)
    u.settimeout(5)
    u.sendto(b"quiet", (lab.server_ip, lab.ports["udp_echo"]))
    assert u.recvfrom(100)[0] == b"LOUD!"
    assert frames and 14 + 20 + 8 + 5 in frames
    assert any(d[9] == 17 and d[28:] == b"quiet" for d in ip_in)  # the echo, as it arrived
    runtime.call(remove_in)
    runtime.call(remove_out)
    runtime.call(remove_ip)
    u.sendto(b"quiet", (lab.server_ip, lab.ports["udp_echo"]))
    assert u.recvfrom(100)[0] == b"quiet"
    u.close()
    from usocket.hack.hooks import _ClassPatch

    assert runtime.call(lambda: not h.chains and not _ClassPatch.active)


@pytest.mark.parametrize("mode", ["own"])
def test_a_custom_ip_protocol_answers_the_kernels_raw_socket(lab: Lab, runtime: Runtime, mode: str) -> None:
    handle: list[Any] = []

    def on_packet(payload: bytes, src: str, dst: str) -> None:
        handle[0].send(src, b"re:" + payload)

    handle.append(hack.register_protocol(runtime, 253, on_packet))
    me = stack_ip(lab, mode)
    out = lab.run(lab.server_ns, [sys.executable, "-c", textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
        s.settimeout(5)
        s.sendto(b"experimental", ("{me}", 0))
        data, addr = s.recvfrom(2048)
        print(addr[0], data[(data[0] & 15) * 4:].decode())
    """)]).stdout
    assert out.split() == [me, "re:experimental"]
    runtime.call(handle[0].close)


@pytest.mark.parametrize("mode", ["own"])
def test_a_runtime_runs_a_hand_built_stack_against_the_kernel(lab: Lab, mode: str) -> None:
    factory = hack.stack_factory([EthernetLayer, ArpLayer, IPv4Layer, IcmpLayer, UdpLayer])
    got: list[bytes] = []
    done = threading.Event()

    class Client(hack.UdpApplication):
        def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
            got.append(data)
            done.set()

    with Runtime(lab.stack_config(mode), stack_class=factory) as rt:
        assert rt.stack is not None and rt.stack.tcp is None
        app = hack.open_udp(rt, 0, Client())
        rt.call(app.sendto, b"hand-built", (lab.server_ip, lab.ports["udp_echo"]))
        assert done.wait(5)
    assert got == [b"hand-built"]
