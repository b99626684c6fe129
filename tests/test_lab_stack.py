"""The whole foundation against the Linux kernel peer, in the lab.

The stack runs in the client namespace (in this process, sockets opened inside the namespace);
the peer is the kernel's own stack with real servers. The kernel's own TCP/UDP egress in the
client namespace is REJECTed, so anything that works went through the userland path.
"""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from lab_runtime import stack_ip, usocket_rules

from usocket.facade.sockets import socket as usocket_socket
from usocket.facade.sockets import socket_on
from usocket.runtime import Runtime
from usocket.wire.addr import ip_aton, mac_aton

pytestmark = pytest.mark.lab


def udp(rt: Runtime) -> usocket_socket:
    """``socket(AF_INET, SOCK_DGRAM)`` on ``rt`` (the facade's, as an application gets it)."""
    return socket_on(rt, socket.AF_INET, socket.SOCK_DGRAM)


def test_arp_resolves_the_peer(lab, runtime, mode):
    with udp(runtime) as s:
        s.settimeout(5)
        s.sendto(b"hello", (lab.server_ip, lab.ports["udp_echo"]))
        data, addr = s.recvfrom(100)
    assert data == b"hello" and addr == (lab.server_ip, lab.ports["udp_echo"])
    stack = runtime.stack
    assert runtime.call(stack.arp.lookup, ip_aton(lab.server_ip)) == mac_aton(lab.server_mac)
    arp = stack.counters.snapshot()["arp"]
    assert arp.get("tx.request", 0) + arp.get("learned", 0) >= 1, arp
    if mode == "own":
        # The peer kernel learnt the stack's own address from the stack's ARP answers.
        neigh = lab.run(lab.server_ns, ["ip", "neigh", "show", lab.own_ip]).stdout
        assert lab.client_mac.lower() in neigh.lower(), neigh


SIZES = [1, 100, 1472, 1473, 8000, 30000, 60000, 65503]


def test_udp_echo_all_sizes_with_fragmentation_both_ways(lab, runtime, mode):
    stack = runtime.stack
    with udp(runtime) as s:
        s.settimeout(5)
        s.connect((lab.server_ip, lab.ports["udp_echo"]))
        # 65507 is the largest UDP payload; in shared mode NFQUEUE copies at most 65531 bytes of
        # a packet, so 65504..65507-byte datagrams cannot arrive whole (a documented limit).
        for size in SIZES + ([65507] if mode == "own" else []):
            payload = os.urandom(size)
            s.send(payload)
            got = s.recv(70000)
            assert len(got) == size and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert s.getsockname()[0] == stack_ip(lab, mode)
    c = stack.counters
    assert c.get("ipv4", "fragments_tx") > 0  # we fragmented the big ones
    if mode == "own":
        assert c.get("ipv4", "reassembled") >= 4  # and reassembled the kernel's fragments
    assert not c.drops("udp"), c.drops("udp")


def test_shared_mode_oversized_datagram_is_counted_not_corrupted(lab):
    lab.block_kernel_egress()
    with Runtime(lab.stack_config("shared")) as rt, udp(rt) as s:
        s.settimeout(1)
        s.connect((lab.server_ip, lab.ports["udp_echo"]))
        s.send(os.urandom(65507))
        with pytest.raises(TimeoutError):
            s.recv(70000)
        s.send(b"after")
        s.settimeout(5)
        assert s.recv(100) == b"after"
        assert rt.stack.counters.get("divert", "truncated") == 1
        assert rt.stack.counters.get("ipv4", "drop.bad_length") == 1


def test_connected_udp_gets_connection_refused_from_icmp(lab, runtime):
    with udp(runtime) as s:
        s.settimeout(5)
        s.connect((lab.server_ip, lab.ports["closed"]))
        s.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError) as ei:
            s.recv(10)
        assert ei.value.errno == errno.ECONNREFUSED


def test_dns_through_the_stack_with_kernel_udp_blocked(lab, runtime, mode):
    from usocket.resolver import Resolver

    res = Resolver(runtime)
    # A records, a CNAME chain, a name with 40 addresses, and a short name via the search list.
    for name, want in lab.dns_records.items():
        if name not in lab.hosts_records:
            assert res.gethostbyname(name) in want, name
    canonical, aliases, addrs = res.gethostbyname_ex(f"www.{lab.DOMAIN}")
    assert canonical == f"server.{lab.DOMAIN}" and addrs == [lab.server_ip], (canonical, aliases, addrs)
    # 40 addresses do not fit in 512 bytes: dnsmasq truncates (TC), and the stack asks again over
    # its own TCP (RFC 7766), as glibc does: all 40 addresses.
    big = res.gethostbyname_ex(f"big.{lab.DOMAIN}")[2]
    assert set(big) == set(lab.dns_records[f"big.{lab.DOMAIN}"]), big
    assert runtime.stack.counters.get("dns", "truncated") >= 1
    assert runtime.stack.counters.get("dns", "tcp.answered") >= 1
    assert res.gethostbyname("server") == lab.server_ip  # search domain from the namespace's resolv.conf
    assert res.gethostbyaddr(lab.client_ip)[0] == f"client.{lab.DOMAIN}"  # PTR through the stack
    assert res.gethostbyaddr(lab.server_ip)[0] == f"hostsonly.{lab.DOMAIN}"  # hosts first, like glibc
    with pytest.raises(socket.gaierror) as ei:
        res.gethostbyname(lab.dns_nxdomain)
    assert ei.value.errno == socket.EAI_NONAME
    queries = lab.dns_queries()
    assert queries, "dnsmasq saw no query: the names did not come through the stack"
    assert {src for _, _, src in queries} == {stack_ip(lab, mode)}, queries
    # /etc/hosts first: a name only in the namespace's hosts file needs no query.
    before = len(lab.dns_queries())
    assert res.gethostbyname(f"hostsonly.{lab.DOMAIN}") == lab.server_ip
    assert res.gethostbyname(f"override.{lab.DOMAIN}") == lab.server_ip  # hosts beats DNS
    assert len(lab.dns_queries()) == before
    assert runtime.stack.counters.get("dns", "queries_sent") >= len(lab.dns_records)


def test_shared_mode_kernel_never_answers_the_stacks_flows(lab):
    """With the diversion, the client kernel sends no ICMP port unreachable for the stack's port."""
    lab.block_kernel_egress()
    rt = Runtime(lab.stack_config("shared"))
    with lab.capture(lab.server_ns, lab.server_if, f"icmp and src host {lab.client_ip}") as pcap:
        with rt, udp(rt) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
            rules = usocket_rules(lab)
            assert any(f"--dport {port}" in r for r in rules), rules
            # The server sends to the stack's port from a fresh kernel socket: it must reach us.
            lab.run(lab.server_ns, [sys.executable, "-c", textwrap.dedent(f"""
                import socket
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i in range(5):
                    s.sendto(b"x%d" % i, ("{lab.client_ip}", {port}))
            """)])
            s.settimeout(5)
            got = sorted(s.recv(10) for _ in range(5))
            assert got == [b"x0", b"x1", b"x2", b"x3", b"x4"]
        assert usocket_rules(lab) == []
    from scapy.utils import rdpcap

    assert len(rdpcap(pcap)) == 0, "the client kernel answered the stack's traffic"


CHILD = textwrap.dedent("""
    import os, sys, time
    from usocket.runtime import Runtime
    import socket
    from usocket.facade.sockets import socket_on
    from usocket.config import discover
    rt = Runtime(discover(netns=sys.argv[1], iface=sys.argv[2], mode="shared")).start()
    s = socket_on(rt, socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", 0))
    print(s.getsockname()[1], flush=True)
    time.sleep(60)
""")


def _start_child(lab):
    p = subprocess.Popen([sys.executable, "-c", CHILD, lab.client_ns, lab.client_if],
                         stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    return p, port


def test_sigkilled_stack_rules_are_cleared_by_the_next_start(lab):
    p, port = _start_child(lab)
    try:
        assert any(f"--dport {port}" in r and f"pid={p.pid}" in r for r in usocket_rules(lab))
    finally:
        p.kill()
        p.wait()
    assert any(f"pid={p.pid}" in r for r in usocket_rules(lab)), "SIGKILL cannot clean up: rules expected"
    rt = Runtime(lab.stack_config("shared"))
    rt.start()
    try:
        assert not any(f"pid={p.pid}" in r for r in usocket_rules(lab)), usocket_rules(lab)
    finally:
        rt.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_remove_the_rules(lab, sig):
    p, port = _start_child(lab)
    assert any(f"pid={p.pid}" in r for r in usocket_rules(lab))
    p.send_signal(sig)
    p.wait(timeout=20)
    assert not any(f"pid={p.pid}" in r for r in usocket_rules(lab)), usocket_rules(lab)


FIDELITY_PROBE = textwrap.dedent("""
    import json, socket, sys
    out = {}
    for kind, arg in json.loads(sys.argv[1]):
        try:
            if kind == "ex":
                out[kind + ":" + arg] = list(socket.gethostbyname_ex(arg))
            elif kind == "addr":
                out[kind + ":" + arg] = list(socket.gethostbyaddr(arg))
            else:
                out[kind + ":" + arg] = socket.gethostbyname(arg)
        except OSError as e:
            out[kind + ":" + arg] = [type(e).__name__, e.errno]
    print(json.dumps(out))
""")


def test_name_lookups_answer_exactly_what_the_stdlib_answers(lab):
    """The same questions to glibc (kernel path, before the block) and to the stack's resolver."""
    import json

    from usocket.resolver import Resolver

    d = lab.DOMAIN
    questions = [("ex", f"www.{d}"), ("ex", "server"), ("ex", "hostsonly"), ("ex", f"override.{d}"),
                 ("ex", f"multi.{d}"), ("ex", lab.dns_nxdomain), ("name", ""), ("name", "server"),
                 ("addr", lab.client_ip), ("addr", lab.server_ip), ("ex", lab.server_ip)]
    want = json.loads(lab.run(lab.client_ns, [sys.executable, "-c", FIDELITY_PROBE, json.dumps(questions)]).stdout)
    lab.block_kernel_egress()
    with Runtime(lab.stack_config("shared")) as rt:
        res = Resolver(rt)
        got = {}
        for kind, arg in questions:
            fn = {"ex": res.gethostbyname_ex, "addr": res.gethostbyaddr, "name": res.gethostbyname}[kind]
            try:
                r = fn(arg)
                got[kind + ":" + arg] = list(r) if isinstance(r, tuple) else r
            except OSError as e:
                got[kind + ":" + arg] = [type(e).__name__, e.errno]
    for key in want:
        w, g = want[key], got[key]
        if key.startswith("ex:multi"):  # address order is the server's round robin
            w, g = [w[0], w[1], sorted(w[2])], [g[0], g[1], sorted(g[2])]
        assert g == w, f"{key}: stdlib {w!r}, usocket {g!r}"
