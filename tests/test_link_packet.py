"""PacketLink and the BPF filters.

The first tests need no root: the hand-assembled filters are run in the Python interpreter
next to what ``tcpdump -dd`` compiles for the same expression, over a corpus of frames. The
lab tests build two namespaces joined by a veth pair (A: 10.77.0.1 on ``va``, B: 10.77.0.2 on
``vb``) and check the link against the real kernel.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from usocket.link import bpf, packet
from usocket.link.base import Link
from usocket.link.packet import PacketLink
from usocket.netns import run_in_netns
from usocket.wire.checksum import pseudo_header_sum, verify

IP_A, IP_B, IP_OTHER, BCAST = "10.77.0.1", "10.77.0.2", "10.77.0.50", "10.77.0.255"
lab = pytest.mark.lab
needs_root = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="needs root (network namespaces)")


def aton(s: str) -> bytes:
    return socket.inet_aton(s)


# -- a corpus of frames and the verdicts both filters must give --------------------------------------
def corpus(dst_mac: str = "02:00:00:00:00:aa", src_mac: str = "02:00:00:00:00:bb") -> dict[str, bytes]:
    e = Ether(dst=dst_mac, src=src_mac)
    bc = Ether(dst="ff:ff:ff:ff:ff:ff", src=src_mac)
    return {
        "arp": bytes(bc / ARP(op=1, hwsrc=src_mac, psrc=IP_B, pdst=IP_A)),
        "icmp_to_a": bytes(e / IP(src=IP_B, dst=IP_A) / ICMP(id=1) / b"m-icmp_to_a"),
        "icmp_to_other": bytes(e / IP(src=IP_B, dst=IP_OTHER) / ICMP(id=2) / b"m-icmp_to_other"),
        "udp_to_a": bytes(e / IP(src=IP_B, dst=IP_A) / UDP(sport=1000, dport=9) / b"m-udp_to_a"),
        "tcp_to_a": bytes(e / IP(src=IP_B, dst=IP_A) / TCP(sport=1000, dport=9) / b"m-tcp_to_a"),
        "udp_bcast": bytes(bc / IP(src=IP_B, dst="255.255.255.255") / UDP(dport=9) / b"m-udp_bcast"),
        "udp_subnet_bcast": bytes(bc / IP(src=IP_B, dst=BCAST) / UDP(dport=9) / b"m-udp_subnet_bcast"),
        "udp_to_other": bytes(e / IP(src=IP_B, dst=IP_OTHER) / UDP(dport=9) / b"m-udp_to_other"),
        "ipv6": bytes(e / IPv6(src="fd00::2", dst="fd00::1") / UDP(dport=9) / b"m-ipv6"),
    }


SHARED_PASS = {"arp", "icmp_to_a"}
OWN_PASS = {"arp", "icmp_to_a", "udp_to_a", "tcp_to_a", "udp_bcast", "udp_subnet_bcast"}


def test_filters_verdicts_in_interpreter() -> None:
    shared = bpf.shared_mode_filter(aton(IP_A))
    own = bpf.own_mode_filter(aton(IP_A), aton(BCAST))
    for name, frame in corpus().items():
        assert bool(bpf.run_filter(shared, frame)) == (name in SHARED_PASS), name
        assert bool(bpf.run_filter(own, frame)) == (name in OWN_PASS), name
        # A tag stripped by the NIC (ancillary "VLAN present") is always rejected.
        assert bpf.run_filter(shared, frame, {bpf.SKF_AD_VLAN_TAG_PRESENT: 1}) == 0
        assert bpf.run_filter(own, frame, {bpf.SKF_AD_VLAN_TAG_PRESENT: 1}) == 0
    # Without a subnet broadcast the own-mode filter only takes its IP and 255.255.255.255.
    narrow = bpf.own_mode_filter(aton(IP_A))
    assert not bpf.run_filter(narrow, corpus()["udp_subnet_bcast"])
    assert bpf.run_filter(narrow, corpus()["udp_bcast"]) == bpf.ACCEPT_ALL
    # Truncated frames never crash the filter; they are rejected.
    for cut in (0, 5, 13, 20, 29):
        assert bpf.run_filter(shared, corpus()["icmp_to_a"][:cut]) == 0


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_filters_match_tcpdump() -> None:
    """Same verdicts as tcpdump's compilation of the equivalent expressions, frame by frame."""
    def dd(expr: str) -> bpf.Program:
        out = subprocess.run(["tcpdump", "-y", "EN10MB", "-dd", expr], capture_output=True,
                             text=True, check=True).stdout
        prog = bpf.parse_dd(out)
        assert prog, out
        return prog

    pairs = [
        (bpf.shared_mode_filter(aton(IP_A)), dd(f"arp or (icmp and dst host {IP_A})")),
        (bpf.own_mode_filter(aton(IP_A), aton(BCAST)),
         dd(f"arp or (ip and (dst host {IP_A} or dst host 255.255.255.255 or dst host {BCAST}))")),
    ]
    frames = list(corpus().values())
    # Plus every prefix of a few frames (bounds checks) and single-byte mutations of the key fields.
    frames += [corpus()["icmp_to_a"][:n] for n in range(0, 40)]
    for off in (12, 13, 23, 30, 31, 32, 33):
        for frame in corpus().values():
            if len(frame) > off:
                frames.append(frame[:off] + bytes([frame[off] ^ 0x01]) + frame[off + 1:])
    for mine, theirs in pairs:
        for frame in frames:
            assert bpf.run_filter(mine, frame) == bpf.run_filter(theirs, frame), frame.hex()


def test_assemble_rejects_bad_jumps() -> None:
    with pytest.raises(KeyError):
        bpf.assemble([(bpf.JMP | bpf.JEQ | bpf.K, "nowhere", 0, 1), (bpf.RET | bpf.K, 0, 0, 0)])
    with pytest.raises(ValueError):
        bpf.attach_filter(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), [])


# -- receive-path parsing against a scripted socket (no root) ---------------------------------------------
class ScriptedSocket:
    """Plays back ``recvmsg`` results, then raises BlockingIOError; records sends."""

    def __init__(self, script: list[object]) -> None:
        self.script = list(script)
        self.sent: list[bytes] = []

    def recvmsg(self, bufsize: int, ancbufsize: int) -> object:
        assert bufsize >= 65550 and ancbufsize >= socket.CMSG_SPACE(20)
        if not self.script:
            raise BlockingIOError
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def send(self, data: bytes) -> int:
        if data == b"full":
            raise BlockingIOError
        self.sent.append(data)
        return len(data)


def scripted_link(script: list[object]) -> PacketLink:
    link = PacketLink.__new__(PacketLink)
    Link.__init__(link, "fake0")
    link.sock = ScriptedSocket(script)  # type: ignore[assignment]
    link._pending = []
    return link


def aux(status: int, tci: int = 0, tpid: int = 0) -> list[tuple[int, int, bytes]]:
    return [(packet.SOL_PACKET, packet.PACKET_AUXDATA, struct.pack("IIIHHHH", status, 0, 0, 0, 0, tci, tpid))]


def test_recv_parsing_status_bits() -> None:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + b"payload"
    host = ("fake0", 0x0800, socket.PACKET_HOST, 1, b"\x04" * 6)
    out = ("fake0", 0x0800, packet.PACKET_OUTGOING, 1, b"\x04" * 6)
    link = scripted_link([
        (eth, aux(0), 0, host),                                       # nothing known
        (eth, aux(packet.TP_STATUS_CSUMNOTREADY), 0, host),           # partial checksum
        (eth, aux(packet.TP_STATUS_CSUM_VALID), 0, host),             # validated
        (eth, [], 0, host),                                           # no aux data at all
        (eth, aux(packet.TP_STATUS_VLAN_VALID, tci=0x2007), 0, host),  # stripped 802.1Q tag
        (eth, aux(packet.TP_STATUS_VLAN_VALID | packet.TP_STATUS_VLAN_TPID_VALID, 5, 0x88A8), 0, host),
        (eth, aux(0), 0, out),                                        # our own transmission
        (eth, aux(0), socket.MSG_TRUNC, host),                        # too big for the buffer
        (b"\x02" * 10, aux(0), 0, host),                               # runt
        OSError(100, "Network is down"),
    ])
    got = link.recv_batch()
    assert got == [(eth, False), (eth, True), (eth, True), (eth, False),
                   (eth[:12] + b"\x81\x00\x20\x07" + eth[12:], False),
                   (eth[:12] + b"\x88\xa8\x00\x05" + eth[12:], False)]
    c = link.counters
    assert (c["rx"], c["skip.outgoing"], c["drop.truncated"], c["drop.runt"], c["drop.rx_enetdown"]) == \
        (6, 1, 1, 1, 1)
    assert link.recv_batch() == []
    many = scripted_link([(eth, aux(0), 0, host)] * 10)
    assert len(many.recv_batch(4)) == 4 and len(many.recv_batch(100)) == 6
    assert many.send(eth) and not many.send(b"full") and many.counters["drop.tx_busy"] == 1


# -- the lab ---------------------------------------------------------------------------------------------
@dataclass
class Veth:
    a: str
    b: str
    mac_a: bytes
    mac_b: bytes


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def ns_sh(ns: str, *argv: str) -> str:
    return sh("ip", "netns", "exec", ns, *argv)


def mac_of(ns: str, dev: str) -> bytes:
    info = json.loads(sh("ip", "-j", "-n", ns, "link", "show", dev))
    return bytes.fromhex(info[0]["address"].replace(":", ""))


@pytest.fixture
def veth() -> Iterator[Veth]:
    prefix = f"usl-lk-{os.getpid()}-"
    a, b = prefix + "a", prefix + "b"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", "name", "va", "netns", a, "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, addr in ((a, "va", IP_A), (b, "vb", IP_B)):
            ns_sh(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            ns_sh(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield Veth(a, b, mac_of(a, "va"), mac_of(b, "vb"))
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        left = [n for n in sh("ip", "netns", "list").split() if n.startswith(prefix)]
        assert not left, f"namespaces left behind: {left}"


def collect(links: list[PacketLink], done: Callable[[list[tuple[bytes, bool]]], bool],
            timeout: float = 5.0) -> list[tuple[bytes, bool]]:
    """Read from ``links[0]`` until ``done(frames)`` or timeout; event driven with select."""
    got: list[tuple[bytes, bool]] = []
    end = time.monotonic() + timeout
    while not done(got):
        left = end - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([links[0]], [], [], left)
        if r:
            got.extend(links[0].recv_batch())
    return got


def arp_request(src_mac: bytes, src_ip: str, target_ip: str) -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=src_mac) /
                 ARP(op=1, hwsrc=src_mac, psrc=src_ip, pdst=target_ip))


@lab
@needs_root
def test_arp_request_gets_kernel_reply(veth: Veth) -> None:
    with PacketLink("va", netns=veth.a) as link:
        assert link.mac == veth.mac_a and link.mtu == 1500
        assert link.send(arp_request(link.mac, IP_A, IP_B))

        def is_reply(fr: bytes) -> bool:
            return fr[12:14] == b"\x08\x06" and fr[20:22] == b"\x00\x02"
        frames = collect([link], lambda got: any(is_reply(f) for f, _ in got))
        replies = [f for f, _ in frames if is_reply(f)]
        assert replies, frames
        arp = ARP(replies[0][14:])
        assert arp.psrc == IP_B and arp.pdst == IP_A
        assert bytes.fromhex(arp.hwsrc.replace(":", "")) == veth.mac_b
        assert replies[0][:6] == link.mac
        # Our own transmission is not looped back to us.
        assert not any(f[6:12] == link.mac for f, _ in frames)
        assert link.counters["tx"] == 1 and link.counters["rx"] == len(frames)


@lab
@needs_root
def test_kernel_outgoing_frames_are_skipped(veth: Veth) -> None:
    """A's kernel sends a UDP datagram to a closed port of B: the link on va must not see it,
    but sees B's ICMP port unreachable coming back."""
    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"m-outgoing", (IP_B, 9))
    with PacketLink("va", netns=veth.a) as link:
        run_in_netns(veth.a, send)

        def unreachable(f: bytes) -> bool:
            return f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 3
        frames = collect([link], lambda got: any(unreachable(f) for f, _ in got))
        assert [f for f, _ in frames if unreachable(f)], frames
        assert all(f[6:12] != veth.mac_a for f, _ in frames), "an outgoing frame was returned"
        assert not any(f.endswith(b"m-outgoing") and f[23] == 17 for f, _ in frames)


def udp_from_b(veth: Veth, payload: bytes, sport: int = 40000, dport: int = 9999) -> None:
    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((IP_B, sport))
            s.sendto(payload, (IP_A, dport))
    run_in_netns(veth.b, send)


def read_udp(link: PacketLink, marker: bytes) -> tuple[bytes, bool]:
    frames = collect([link], lambda got: any(f.endswith(marker) for f, _ in got))
    hits = [(f, ok) for f, ok in frames if f.endswith(marker)]
    assert len(hits) == 1, frames
    return hits[0]


def udp_checksum_verifies(frame: bytes) -> bool:
    ihl = (frame[14] & 0x0F) * 4
    udp = frame[14 + ihl:]
    init = pseudo_header_sum(frame[26:30], frame[30:34], 17, len(udp))
    return verify(udp, init)


@lab
@needs_root
def test_udp_checksum_offload_flags(veth: Veth) -> None:
    """csum_ok follows what the kernel knows: partial (offloaded by the veth peer) -> True;
    a software checksum the kernel did not validate -> False (the stack must verify it)."""
    with PacketLink("va", netns=veth.a) as link:
        udp_from_b(veth, b"payload-offloaded")
        frame, ok = read_udp(link, b"payload-offloaded")
        assert ok is True
        assert not udp_checksum_verifies(frame), "with tx offload the field holds a partial sum"

        ns_sh(veth.b, "ethtool", "-K", "vb", "tx", "off")
        udp_from_b(veth, b"payload-sw-csum")
        frame, ok = read_udp(link, b"payload-sw-csum")
        assert ok is False, "veth (Linux >= 5.x) does not vouch for a software checksum"
        assert udp_checksum_verifies(frame)


@lab
@needs_root
def test_gso_super_packets_arrive_whole(veth: Veth) -> None:
    """A kernel TCP sender with TSO on the veth hands the reader segments far above the MTU."""
    total = 4 << 20
    port = 5001
    srv = run_in_netns(veth.a, lambda: socket.create_server((IP_A, port)))
    received = []

    def serve() -> None:
        conn, _ = srv.accept()
        n = 0
        while chunk := conn.recv(1 << 20):
            n += len(chunk)
        received.append(n)
        conn.close()

    with PacketLink("va", netns=veth.a) as link, srv:
        t = threading.Thread(target=serve)
        t.start()
        cli = run_in_netns(veth.b, lambda: socket.create_connection((IP_A, port)))
        with cli:
            cli.sendall(b"\x5a" * total)
        t.join(10)
        assert received == [total]
        sizes = []
        while batch := link.recv_batch(256):
            for f, ok in batch:
                if f[12:14] == b"\x08\x00" and f[23] == 6 and f[26:30] == aton(IP_B):
                    ip_len = struct.unpack_from("!H", f, 16)[0]
                    assert ip_len + 14 == len(f), "frame cut short"
                    # Super-packets carry a partial checksum; the kernel's control-socket ACKs
                    # (TIME-WAIT) are checksummed in software and may come with ok=False.
                    assert ok or len(f) <= 1514
                    sizes.append(len(f))
        assert link.counters["drop.truncated"] == 0
        assert max(sizes) > 1514 * 4, f"no super-packet seen (max {max(sizes)})"
        assert max(sizes) <= 65535 + 14


@lab
@needs_root
def test_bpf_filters_in_the_kernel(veth: Veth) -> None:
    frames = corpus(dst_mac=":".join(f"{b:02x}" for b in veth.mac_a))
    vlan = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:bb") / Dot1Q(vlan=7) /
                 IP(src=IP_B, dst=IP_A) / ICMP() / b"m-vlan")
    frames["vlan"] = vlan
    with PacketLink("va", netns=veth.a) as plain, \
            PacketLink("va", netns=veth.a, bpf=bpf.shared_mode_filter(aton(IP_A))) as shared, \
            PacketLink("va", netns=veth.a, bpf=bpf.own_mode_filter(aton(IP_A), aton(BCAST))) as own, \
            PacketLink("vb", netns=veth.b) as sender:
        for frame in frames.values():
            assert sender.send(frame)

        def name_of(f: bytes) -> str | None:
            for name, sent in frames.items():
                if f == sent:
                    return name
            return None
        got = collect([plain], lambda g: {name_of(f) for f, _ in g} >= set(frames))
        assert {name_of(f) for f, _ in got} >= set(frames), "the unfiltered link sees everything"
        # The unfiltered link got the VLAN frame with its tag put back, byte for byte.
        assert vlan in [f for f, _ in got]
        # Delivery to all packet sockets is synchronous: the filtered ones have theirs now.
        assert {name_of(f) for f, _ in shared.recv_batch(256)} - {None} == SHARED_PASS
        assert {name_of(f) for f, _ in own.recv_batch(256)} - {None} == OWN_PASS


@lab
@needs_root
def test_attach_filter_on_live_link_refilters_queue(veth: Veth) -> None:
    frames = corpus(dst_mac=":".join(f"{b:02x}" for b in veth.mac_a))
    with PacketLink("va", netns=veth.a) as link, PacketLink("vb", netns=veth.b) as sender:
        sender.send(frames["udp_to_a"])
        sender.send(frames["arp"])
        dropped = link.attach_filter(bpf.shared_mode_filter(aton(IP_A)))
        assert dropped >= 1
        sender.send(frames["tcp_to_a"])
        sender.send(frames["icmp_to_a"])
        got = collect([link], lambda g: any(f == frames["icmp_to_a"] for f, _ in g))
        names = [n for f, _ in got for n, sent in frames.items() if f == sent]
        assert names == ["arp", "icmp_to_a"]
        assert link.counters["drop.filter_drain"] == dropped


@lab
@needs_root
def test_send_errors_are_counted_not_raised(veth: Veth) -> None:
    with PacketLink("va", netns=veth.a) as link:
        big = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=link.mac) / IP(dst=IP_B) / UDP() / (b"x" * 3000))
        assert link.send(big) is False
        assert link.counters["drop.tx_emsgsize"] == 1
    assert link.closed
