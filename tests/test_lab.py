"""The lab works (addresses, servers, names, loss, egress block, capture) and tears down cleanly."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import textwrap

import pytest

from usocket.lab import Lab, LabError, bulk_pattern, bulk_request, bulk_sha256, parse_sink_reply
from usocket.lab.netlab import _pid_alive
from usocket.netns import netns_path


def connect(lab: Lab, port: int, timeout: float = 5.0) -> socket.socket:
    """A kernel TCP socket in the client namespace connected to the server."""
    return lab.call(lab.client_ns, lambda: socket.create_connection((lab.server_ip, port), timeout=timeout))


def udp_socket(lab: Lab, timeout: float) -> socket.socket:
    s = lab.call(lab.client_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.settimeout(timeout)
    return s


def recv_all(s: socket.socket) -> bytes:
    chunks = []
    while data := s.recv(1 << 20):
        chunks.append(data)
    return b"".join(chunks)


def ip_json(lab: Lab, ns: str, *args: str) -> list[dict]:
    return json.loads(lab.run(ns, ["ip", "-j", *args]).stdout)


def ns_pids(ns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()


def remaining(lab: Lab) -> list[str]:
    """Paths of ``lab`` that still exist (namespaces, /etc/netns dirs, temp dir)."""
    paths = [netns_path(lab.client_ns), netns_path(lab.server_ns), f"/etc/netns/{lab.client_ns}", lab.tmpdir]
    return [p for p in paths if p and os.path.exists(p)]


# -- layout --------------------------------------------------------------------------------------
def test_addresses_routes_and_name_files(lab: Lab) -> None:
    assert lab.client_ns != lab.server_ns and lab.client_ns.startswith(f"usl-{os.getpid()}-")
    net = lab.client_ip.rsplit(".", 1)[0]
    assert (lab.server_ip, lab.own_ip, lab.prefix_len) == (f"{net}.2", f"{net}.11", 24)
    for ns, dev, ip, mac in ((lab.client_ns, lab.client_if, lab.client_ip, lab.client_mac),
                             (lab.server_ns, lab.server_if, lab.server_ip, lab.server_mac)):
        (link,) = ip_json(lab, ns, "addr", "show", "dev", dev)
        assert link["address"] == mac and link["mtu"] == 1500 and link["operstate"] == "UP"
        v4 = [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"]
        assert v4 == [(ip, 24)]
        assert not [a for a in link["addr_info"] if a["family"] == "inet6"]  # IPv6 off: quiet captures
        lo = ip_json(lab, ns, "link", "show", "dev", "lo")[0]
        assert "UP" in lo["flags"]
        # Offloads stay on, as in a container: stack code must cope with partial checksums and GSO.
        k = lab.run(ns, ["ethtool", "-k", dev]).stdout
        assert "tx-checksumming: on" in k and "tcp-segmentation-offload: on" in k
    routes = ip_json(lab, lab.client_ns, "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [(lab.server_ip, lab.client_if)]
    assert not ip_json(lab, lab.server_ns, "route", "show", "default")
    with open(lab.resolv_conf) as f:
        resolv = f.read()
    assert f"nameserver {lab.server_ip}" in resolv and f"search {lab.DOMAIN}" in resolv
    # `ip netns exec` shows the per-namespace files as /etc/resolv.conf and /etc/hosts.
    assert lab.run(lab.client_ns, ["cat", "/etc/resolv.conf"]).stdout == resolv
    assert "hostsonly" in lab.run(lab.client_ns, ["cat", "/etc/hosts"]).stdout


def test_stack_config_discovered_from_lab(lab: Lab) -> None:
    shared = lab.stack_config("shared")
    assert (shared.iface, shared.netns, shared.mode) == (lab.client_if, lab.client_ns, "shared")
    assert shared.address == socket.inet_aton(lab.client_ip) and shared.prefix_len == 24
    assert shared.gateway == socket.inet_aton(lab.server_ip)
    assert shared.mac == bytes.fromhex(lab.client_mac.replace(":", ""))
    assert shared.resolver.nameservers == [lab.server_ip] and shared.resolver.search == [lab.DOMAIN]
    assert shared.resolver.hosts["hostsonly"] == [lab.server_ip]
    own = lab.stack_config("own")
    assert own.mode == "own" and own.address == socket.inet_aton(lab.own_ip)
    assert lab.env("own")["USOCKET_ADDR"] == f"{lab.own_ip}/24"


def test_options_mtu_loss_no_servers(make_lab) -> None:
    lab = make_lab(mtu=1280, loss=0.3, servers=False)
    for ns, dev in ((lab.client_ns, lab.client_if), (lab.server_ns, lab.server_if)):
        assert ip_json(lab, ns, "link", "show", "dev", dev)[0]["mtu"] == 1280
    rules = lab.iptables_rules(lab.server_ns)
    probs = [float(r.split("--probability ")[1].split()[0]) for r in rules if "-j DROP" in r]
    assert len(probs) == 2 and all(abs(p - 0.3) < 1e-6 for p in probs), rules
    assert ns_pids(lab.server_ns) == []  # no servers
    with pytest.raises(ConnectionRefusedError):
        connect(lab, lab.ports["tcp_echo"]).close()


# -- servers -------------------------------------------------------------------------------------
def test_tcp_echo_large_and_concurrent(lab: Lab) -> None:
    data = random.Random(5).randbytes(3 << 20)
    s = connect(lab, lab.ports["tcp_echo"])
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == data  # the server closes after echoing everything
    s.close()
    socks = lab.call(lab.client_ns, lambda: [socket.create_connection((lab.server_ip, 7), timeout=5)
                                             for _ in range(250)])
    try:
        for i, c in enumerate(socks):
            c.sendall(b"conn %d" % i)
        assert [c.recv(64) for c in socks] == [b"conn %d" % i for i in range(250)]
    finally:
        for c in socks:
            c.close()


def test_udp_echo(lab: Lab) -> None:
    s = udp_socket(lab, 5.0)
    for size in (1, 1472, 8000):  # the last one is fragmented
        payload = os.urandom(size)
        s.sendto(payload, (lab.server_ip, lab.ports["udp_echo"]))
        data, addr = s.recvfrom(65536)
        assert (data, addr) == (payload, (lab.server_ip, lab.ports["udp_echo"]))
    s.close()


def test_bulk_pattern_helpers() -> None:
    assert bulk_pattern(0, 24) == (0).to_bytes(8, "big") + (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
    whole = bulk_pattern(0, 100_003)
    assert len(whole) == 100_003
    assert bulk_pattern(13, 50_001) == whole[13:50_014]
    assert bulk_pattern(8 * 1000 + 3, 5) == (1000).to_bytes(8, "big")[3:]
    assert bulk_sha256(100_003) == hashlib.sha256(whole).hexdigest()
    assert bulk_sha256(0) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("length", [0, 1, 1_000_003, 24 << 20])
def test_bulk_source(lab: Lab, length: int) -> None:
    s = connect(lab, lab.ports["bulk_source"])
    s.sendall(bulk_request(length))
    h, got = hashlib.sha256(), 0
    while data := s.recv(1 << 20):
        h.update(data)
        got += len(data)
    s.close()
    assert (got, h.hexdigest()) == (length, bulk_sha256(length))


def test_bulk_sink(lab: Lab) -> None:
    data = random.Random(3).randbytes((5 << 20) + 7)
    s = connect(lab, lab.ports["bulk_sink"])
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    reply = recv_all(s)
    s.close()
    assert parse_sink_reply(reply) == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("server", ["http", "nginx"])
def test_http_files(lab: Lab, server: str, tmp_path) -> None:
    assert set(lab.http_files) == {"/index.html", "/1k.bin", "/1m.bin", "/16m.bin"}
    assert lab.http_files["/16m.bin"][0] == 16 << 20
    for path, (size, digest) in lab.http_files.items():
        out = tmp_path / f"{server}{path.replace('/', '_')}"
        r = lab.run(lab.client_ns, ["curl", "-sS", "-o", str(out), "-w", "%{http_code}",
                                    lab.url(path, server)])
        assert r.stdout == "200"
        body = out.read_bytes()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (size, digest), path
    r = lab.run(lab.client_ns, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                lab.url("/nope", server)])
    assert r.stdout == "404"
    # "/" serves index.html
    index = lab.run(lab.client_ns, ["curl", "-sS", lab.url("/", server)]).stdout
    assert hashlib.sha256(index.encode()).hexdigest() == lab.http_files["/index.html"][1]


# -- names ---------------------------------------------------------------------------------------
def dns_query(lab: Lab, name: str, qtype: str = "A"):
    from scapy.layers.dns import DNS, DNSQR

    s = udp_socket(lab, 5.0)
    try:
        query = DNS(id=4242, rd=1, qd=DNSQR(qname=name, qtype=qtype))
        s.sendto(bytes(query), (lab.server_ip, lab.ports["dns"]))
        reply = DNS(s.recv(4096))
    finally:
        s.close()
    assert reply.id == 4242 and reply.qr == 1
    return reply


def test_dnsmasq_answers(lab: Lab) -> None:
    d = lab.DOMAIN
    r = dns_query(lab, f"server.{d}")
    assert r.rcode == 0 and [a.rdata for a in r.an] == [lab.server_ip]
    r = dns_query(lab, f"www.{d}")  # CNAME chain www -> web -> server
    assert [(a.type, a.rdata) for a in r.an] == [
        (5, f"web.{d}.".encode()), (5, f"server.{d}.".encode()), (1, lab.server_ip)]
    assert lab.dns_records[f"www.{d}"] == [lab.server_ip] and lab.dns_cnames[f"www.{d}"] == f"web.{d}"
    r = dns_query(lab, f"multi.{d}")
    assert sorted(a.rdata for a in r.an) == sorted(lab.dns_records[f"multi.{d}"]) and len(r.an) == 2
    assert dns_query(lab, lab.dns_nxdomain).rcode == 3  # NXDOMAIN inside the lab domain
    assert dns_query(lab, f"hostsonly.{d}").rcode == 3  # only in the client's hosts file
    r = dns_query(lab, ".".join(reversed(lab.server_ip.split("."))) + ".in-addr.arpa", "PTR")
    assert [a.rdata for a in r.an] == [f"server.{d}.".encode()]
    assert dns_query(lab, f"big.{d}").tc == 1  # 40 A records do not fit 512 bytes: truncated over UDP
    asked = [(t, n) for t, n, _src in lab.dns_queries()]
    for expected in (("A", f"server.{d}"), ("A", f"www.{d}"), ("A", lab.dns_nxdomain), ("PTR", r.qd[0].qname
                                                                                         .decode().rstrip("."))):
        assert expected in asked
    assert {src for _t, _n, src in lab.dns_queries()} == {lab.client_ip}


def test_system_resolver_in_client_ns(lab: Lab) -> None:
    def getent(*args: str) -> subprocess.CompletedProcess[str]:
        return lab.run(lab.client_ns, ["getent", *args], check=False)

    r = getent("ahostsv4", "www")  # search domain, CNAME chain, canonical name
    assert r.returncode == 0 and r.stdout.split()[0] == lab.server_ip and f"server.{lab.DOMAIN}" in r.stdout
    assert getent("hosts", "hostsonly").stdout.split()[0] == lab.server_ip  # from /etc/netns/<ns>/hosts
    assert getent("hosts", f"override.{lab.DOMAIN}").stdout.split()[0] == lab.server_ip  # hosts beat DNS
    assert getent("hosts", lab.dns_nxdomain).returncode == 2
    r = getent("ahostsv4", f"big.{lab.DOMAIN}")  # needs the TCP fallback after the truncated answer
    assert {line.split()[0] for line in r.stdout.splitlines()} == set(lab.dns_records[f"big.{lab.DOMAIN}"])


# -- loss, egress block, capture -------------------------------------------------------------------
def udp_echo_rate(lab: Lab, count: int) -> float:
    s = udp_socket(lab, 0.3)
    for i in range(count):
        s.sendto(b"%06d" % i, (lab.server_ip, lab.ports["udp_echo"]))
    got: set[bytes] = set()
    try:
        while len(got) < count:
            got.add(s.recv(64))
    except TimeoutError:
        pass
    s.close()
    return len(got) / count


def test_loss_drops_measurably(lab: Lab) -> None:
    lab.set_loss(0.5)  # each direction: a round trip survives with probability 0.25
    assert len(lab.iptables_rules(lab.server_ns)) == 2
    rate = udp_echo_rate(lab, 400)
    assert 0.12 < rate < 0.40, rate
    assert 0.6 * 400 < lab.loss_dropped() < 400 * 1.0
    lab.set_loss(0.5, direction="in")
    assert [r.split()[1] for r in lab.iptables_rules(lab.server_ns)] == ["INPUT"]
    lab.set_loss(0)
    assert lab.iptables_rules(lab.server_ns) == []
    assert udp_echo_rate(lab, 100) == 1.0


def test_block_kernel_egress(lab: Lab) -> None:
    connect(lab, lab.ports["tcp_echo"]).close()
    assert lab.kernel_egress_rejected() == 0
    lab.block_kernel_egress()
    lab.block_kernel_egress()  # idempotent
    assert len(lab.iptables_rules(lab.client_ns)) == 2
    with pytest.raises(ConnectionRefusedError):
        connect(lab, lab.ports["tcp_echo"])
    assert lab.kernel_egress_rejected() == 1
    s = udp_socket(lab, 1.0)
    with pytest.raises(OSError):
        s.sendto(b"x", (lab.server_ip, lab.ports["udp_echo"]))
    s.close()
    assert lab.kernel_egress_rejected() == 2
    lab.unblock_kernel_egress()
    connect(lab, lab.ports["tcp_echo"]).close()


def test_capture_is_complete_on_exit(lab: Lab) -> None:
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    s = udp_socket(lab, 5.0)
    with lab.capture(lab.server_ns, lab.server_if, "udp port 7") as pcap:
        for i in range(5):
            s.sendto(b"cap%d" % i, (lab.server_ip, lab.ports["udp_echo"]))
            assert s.recv(64) == b"cap%d" % i
        s.sendto(b"last", (lab.server_ip, lab.ports["udp_echo"]))  # sent just before the block ends
    s.close()
    payloads = [bytes(p[UDP].payload) for p in rdpcap(pcap) if UDP in p]
    assert payloads[:10] == [b"cap%d" % (i // 2) for i in range(10)]
    assert payloads.count(b"last") >= 1
    with lab.capture(lab.client_ns, lab.client_if, "tcp port 7") as pcap:  # empty capture is a valid pcap
        pass
    assert len(rdpcap(pcap)) == 0


# -- lifecycle -----------------------------------------------------------------------------------
@pytest.mark.lab
def test_teardown_when_block_raises() -> None:
    lab = Lab()
    with pytest.raises(ZeroDivisionError):
        with lab:
            sleeper = lab.popen(lab.client_ns, ["sleep", "60"])
            pids = ns_pids(lab.server_ns)
            assert len(pids) >= 3  # python servers, nginx (master + worker), dnsmasq
            raise ZeroDivisionError("the test body fails")
    assert remaining(lab) == []
    assert sleeper.poll() is not None
    assert not [p for p in pids if _pid_alive(int(p))]
    assert lab.close_and_audit() == []  # closing twice is fine
    with pytest.raises(KeyboardInterrupt):
        with Lab(servers=False) as lab2:
            raise KeyboardInterrupt
    assert remaining(lab2) == []


@pytest.mark.lab
def test_failed_build_cleans_up() -> None:
    lab = Lab(mtu=1_000_000, servers=False)  # the kernel refuses this MTU
    with pytest.raises(LabError):
        lab.build()
    assert remaining(lab) == []
    with pytest.raises(LabError):
        lab.build()  # a lab is built once


@pytest.mark.lab
def test_audit_reports_rules_left_behind() -> None:
    lab = Lab(servers=False, loss=0.2).build()
    lab.block_kernel_egress()
    assert lab.foreign_rules(lab.client_ns) == []  # the lab's own rules are not leftovers
    lab.run(lab.client_ns, ["iptables", "-N", "USOCKET-TEST"])
    lab.run(lab.client_ns, ["iptables", "-A", "INPUT", "-p", "tcp", "-j", "NFQUEUE", "--queue-num", "3"])
    problems = lab.close_and_audit()
    assert len(problems) == 2 and all(lab.client_ns in p for p in problems), problems
    assert any("USOCKET-TEST" in p for p in problems) and any("NFQUEUE" in p for p in problems)
    assert remaining(lab) == []


def test_two_labs_coexist(make_lab) -> None:
    a, b = make_lab(), make_lab()
    assert len({a.client_ns, a.server_ns, b.client_ns, b.server_ns}) == 4
    assert a.client_ip != b.client_ip
    for lab in (a, b):
        s = connect(lab, lab.ports["tcp_echo"])
        s.sendall(lab.tag.encode())
        assert s.recv(64) == lab.tag.encode()
        s.close()
    b.close()
    assert remaining(b) == [] and len(remaining(a)) == 4  # a is untouched
    assert udp_echo_rate(a, 5) == 1.0


def test_cleanup_stale_removes_dead_labs_only(lab: Lab) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"usl-{dead.pid}-1-c"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    os.makedirs(f"/etc/netns/{stale}", exist_ok=True)
    try:
        assert f"namespace {stale}" in Lab.leftovers()
        assert Lab.leftovers(pid=os.getpid()) == [f"namespace {lab.client_ns}", f"namespace {lab.server_ns}"]
        assert Lab.cleanup_stale() >= 1
        assert not os.path.exists(netns_path(stale)) and not os.path.exists(f"/etc/netns/{stale}")
        assert os.path.exists(netns_path(lab.client_ns)) and os.path.exists(netns_path(lab.server_ns))
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
        shutil.rmtree(f"/etc/netns/{stale}", ignore_errors=True)


def test_unavailable_lab_skips_but_fails_under_ci(pytester: pytest.Pytester, monkeypatch) -> None:
    pytester.makeconftest(open(os.path.join(os.path.dirname(__file__), "conftest.py")).read())
    pytester.makepyfile(textwrap.dedent("""
        import pytest
        @pytest.mark.lab
        def test_marked():
            pass
        def test_uses_fixture(lab):
            pass
        def test_plain():
            pass
    """))
    monkeypatch.setenv("USOCKET_LAB_UNAVAILABLE", "pretend")
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.setenv("CI", "false")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1, skipped=2)
    monkeypatch.setenv("CI", "true")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1, errors=2)  # pytest.fail in setup: reported as errors
    assert "cannot run under CI=true: pretend" in r.stdout.str()

