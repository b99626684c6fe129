"""TapLink against the kernel on the other side of a TAP device, in a namespace of our own.

The test plays a host 10.78.0.2 (the link's MAC) on the cable whose kernel end is 10.78.0.1.
"""
from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from usocket.link.tap import TapLink, random_mac
from usocket.netns import run_in_netns
from usocket.wire.checksum import pseudo_header_sum, verify

KERNEL_IP, OUR_IP = "10.78.0.1", "10.78.0.2"
pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                 reason="needs root (network namespaces)")]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@pytest.fixture
def ns() -> Iterator[str]:
    prefix = f"usl-lk-{os.getpid()}-"
    name = prefix + "tap"
    try:
        sh("ip", "netns", "add", name)
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)
        left = [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith(prefix)]
        assert not left, f"namespaces left behind: {left}"


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def serve(link: TapLink, done: Callable[[bytes], bool], timeout: float = 5.0) -> list[bytes]:
    """Read frames until ``done(frame)``, answering the kernel's ARP requests for OUR_IP."""
    seen: list[bytes] = []
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        if not select.select([link], [], [], left)[0]:
            break
        for frame, ok in link.recv_batch():
            assert ok is False, "a TAP without offloads hands over complete checksums"
            seen.append(frame)
            if frame[12:14] == b"\x08\x06":
                arp = ARP(frame[14:])
                if arp.op == 1 and arp.pdst == OUR_IP:
                    link.send(bytes(Ether(dst=arp.hwsrc, src=mac_text(link.mac)) /
                                    ARP(op=2, hwsrc=mac_text(link.mac), psrc=OUR_IP,
                                        hwdst=arp.hwsrc, pdst=arp.psrc)))
            if done(frame):
                return seen
    raise AssertionError(f"timed out; saw {[f.hex()[:60] for f in seen]}")


def test_tap_exchanges_frames_with_kernel(ns: str) -> None:
    with TapLink("usltap%d", netns=ns) as link:
        assert link.created and link.name.startswith("usltap")
        assert link.mtu == 1500 and len(link.kernel_mac) == 6 and link.mac != link.kernel_mac
        sh("ip", "-n", ns, "addr", "add", f"{KERNEL_IP}/24", "dev", link.name)
        me = mac_text(link.mac)

        # Our ARP request -> the kernel's reply.
        assert link.send(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=me) /
                               ARP(op=1, hwsrc=me, psrc=OUR_IP, pdst=KERNEL_IP)))
        reply = serve(link, lambda f: f[12:14] == b"\x08\x06" and ARP(f[14:]).op == 2)[-1]
        assert ARP(reply[14:]).psrc == KERNEL_IP and reply[6:12] == link.kernel_mac
        assert reply[:6] == link.mac

        # Our ping -> the kernel's echo reply.
        ping = Ether(dst=mac_text(link.kernel_mac), src=me) / IP(src=OUR_IP, dst=KERNEL_IP) / \
            ICMP(id=0x4242, seq=1) / b"m-ping"
        assert link.send(bytes(ping))
        echo = serve(link, lambda f: f[12:14] == b"\x08\x00" and f[23] == 1)[-1]
        assert echo[34] == 0 and echo.endswith(b"m-ping")

        # A kernel UDP sender -> a whole frame with a complete checksum.
        def send_udp() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"m-udp-from-kernel", (OUR_IP, 7777))
        run_in_netns(ns, send_udp)
        udp = serve(link, lambda f: f.endswith(b"m-udp-from-kernel"))[-1]
        seg = udp[34:]
        assert verify(seg, pseudo_header_sum(udp[26:30], udp[30:34], 17, len(seg)))
        assert link.counters["tx"] == 2 and link.counters["rx"] >= 3
        name = link.name
    assert link.closed
    gone = sh("ip", "-n", ns, "link", "show", name, check=False)
    assert gone.returncode != 0, "the device we created must disappear on close"


def test_tap_attaches_to_existing_device_and_leaves_it(ns: str) -> None:
    sh("ip", "-n", ns, "tuntap", "add", "dev", "usltapp", "mode", "tap")
    sh("ip", "-n", ns, "link", "set", "usltapp", "mtu", "1400")
    mac = random_mac()
    with TapLink("usltapp", netns=ns, mac=mac) as link:
        assert not link.created
        assert link.mac == mac and mac[0] & 0x03 == 0x02
        assert link.mtu == 1400
    assert sh("ip", "-n", ns, "link", "show", "usltapp", check=False).returncode == 0
    # Writing to a device whose kernel side is down is counted, not raised.
    with TapLink("usltapp", netns=ns, up=False) as link:
        sh("ip", "-n", ns, "link", "set", "usltapp", "down")
        assert link.send(b"\xff" * 6 + link.mac + b"\x08\x06" + b"\x00" * 28) is False
        assert link.counters["drop.tx_eio"] == 1
