"""The runtime (the stack thread) on real links: TAP, pcap recording, lazy start and clean exit."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from usocket.config import OWN, StackConfig
from usocket.facade.sockets import socket_on
from usocket.link.tap import TapLink
from usocket.runtime import Runtime
from usocket.wire.addr import ip_aton

pytestmark = pytest.mark.lab


def usocket_rules(lab):
    return [r for r in lab.iptables_rules(lab.client_ns) if "usocket" in r.lower() or "NFQUEUE" in r] + [
        f"ipset {name}" for name in lab.usocket_sets(lab.client_ns)]


def test_stack_on_a_tap_talks_to_the_kernel(lab):
    """Own mode on a TAP: the kernel on the other side of the TAP is the peer."""
    tap = TapLink("usktap%d", netns=lab.client_ns)
    lab.run(lab.client_ns, ["ip", "addr", "add", "198.19.250.1/24", "dev", tap.name])
    cfg = StackConfig(iface=tap.name, mac=tap.mac, address=ip_aton("198.19.250.2"), prefix_len=24,
                      mtu=tap.mtu, mode=OWN)
    with Runtime(cfg, link=tap) as rt, socket_on(rt, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 5000))
        s.settimeout(10)

        def echo_once() -> None:
            data, addr = s.recvfrom(100)
            s.sendto(data.upper(), addr)

        t = threading.Thread(target=echo_once)
        t.start()
        out = lab.run(lab.client_ns, [sys.executable, "-c", textwrap.dedent("""
            import socket
            k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            k.settimeout(10)
            k.sendto(b"over the tap", ("198.19.250.2", 5000))
            print(k.recvfrom(100)[0].decode())
        """)]).stdout
        t.join(10)
        assert out.strip() == "OVER THE TAP"
        assert rt.stack.counters.get("arp", "tx.reply") >= 1  # the stack answered the kernel's ARP
    tap.close()


def test_pcap_records_every_frame_both_ways_in_shared_mode(lab, tmp_path):
    path = str(tmp_path / "session.pcap")
    with Runtime(lab.stack_config("shared"), pcap=path) as rt, socket_on(rt, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.connect((lab.server_ip, lab.ports["udp_echo"]))
        for size in (10, 5000):  # the second is fragmented on the way out
            s.send(b"p" * size)
            assert len(s.recv(10000)) == size
    out = subprocess.run(["tshark", "-r", path, "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "udp.length"],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    rows = [line.split("\t") for line in out if line.strip()]
    to_server = [r for r in rows if r[:2] == [lab.client_ip, lab.server_ip]]
    from_server = [r for r in rows if r[:2] == [lab.server_ip, lab.client_ip]]
    # Out: 1 + 4 fragments (the replies come from NFQUEUE already reassembled, recorded as-is).
    assert len(to_server) == 5, rows
    assert len(from_server) == 2 and {r[2] for r in from_server} == {"18", "5008"}, rows


CHILD = textwrap.dedent("""
    import sys
    import usocket as socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the process-wide runtime starts here, lazily
    assert s.userland
    s.settimeout(5)
    s.sendto(b"lazy", (sys.argv[1], 7))
    print(s.recv(10).decode(), flush=True)
    # no close, no stop: the interpreter exit must clean up
""")


def test_runtime_starts_lazily_and_cleans_up_at_interpreter_exit(lab):
    env = dict(os.environ, **lab.env("shared"))
    env.pop("USOCKET_DEFAULT_RUNTIME", None)  # the child's default runtime is the point here
    p = subprocess.run([sys.executable, "-c", CHILD, lab.server_ip], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "lazy"
    assert usocket_rules(lab) == []
