"""Two whole stacks joined by the in-memory network: virtual clock, seeded faults.

Stack A is the client, stack B runs a UDP echo application and a small authoritative DNS server
written against the stack's own UDP endpoints. Everything below (ARP, IPv4 fragmentation and
reassembly, ICMP, UDP, the resolver) runs for real; only the wire and the clock are simulated,
so every run with the same seed replays exactly.
"""
from __future__ import annotations

import errno
import hashlib
import random

import pytest

from usocket.config import OWN, ResolverConfig, StackConfig
from usocket.link.memory import MemoryNetwork
from usocket.proto.dns import DnsError, DnsResult
from usocket.proto.tcp.connection import TcpConnection
from usocket.proto.udp import UdpEndpoint
from usocket.stack import Stack
from usocket.wire.addr import ip_aton, mac_aton
from usocket.wire.dns import (
    CLASS_IN,
    NXDOMAIN,
    TYPE_A,
    DnsHeader,
    DnsMessage,
    DnsRecord,
    build_message,
    name_key,
    parse_message,
)

A_IP, B_IP = "10.9.0.1", "10.9.0.2"
ZONE = {"alpha.sim.test": "10.9.0.50", "beta.sim.test": "10.9.0.51"}


class EchoEndpoint(UdpEndpoint):
    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        self.layer.sendto(self, data, src_ip, src_port)


class DnsServerEndpoint(UdpEndpoint):
    """Answers A queries for ZONE, NXDOMAIN otherwise (a real server, on the userland stack)."""

    answered = 0

    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        q = parse_message(data)
        question = q.questions[0]
        addr = ZONE.get(name_key(question.name))
        answers = (DnsRecord(question.name, TYPE_A, CLASS_IN, 300, addr),) if addr else ()
        reply = DnsMessage(DnsHeader(q.header.id, qr=True, aa=True, rd=q.header.rd, ra=True,
                                     rcode=0 if addr else NXDOMAIN), q.questions, answers)
        DnsServerEndpoint.answered += 1
        self.layer.sendto(self, build_message(reply), src_ip, src_port)


def make_pair(seed: int, **faults: float) -> tuple[MemoryNetwork, Stack, Stack]:
    net = MemoryNetwork(seed=seed, latency=0.0005, **faults)
    resolver = ResolverConfig(nameservers=[B_IP], search=["sim.test"], timeout=1.0, attempts=4)
    a = Stack(StackConfig(iface="a0", mac=mac_aton("02:00:00:00:0a:01"), address=ip_aton(A_IP),
                          mode=OWN, resolver=resolver), rng=random.Random(seed))
    b = Stack(StackConfig(iface="b0", mac=mac_aton("02:00:00:00:0b:01"), address=ip_aton(B_IP), mode=OWN),
              rng=random.Random(seed + 1))
    net.attach(a, name="A")
    net.attach(b, name="B")
    echo = b.udp.open(EchoEndpoint)
    b.udp.bind(echo, b"\0\0\0\0", 7)
    dns = b.udp.open(DnsServerEndpoint)
    b.udp.bind(dns, b"\0\0\0\0", 53)
    return net, a, b


def echo_all(net: MemoryNetwork, a: Stack, payloads: list[bytes], timeout: float = 5.0) -> list[bytes]:
    ep = a.udp.open()
    a.udp.connect(ep, ip_aton(B_IP), 7)
    got: list[bytes] = []
    for p in payloads:
        a.udp.send(ep, p)
        net.run_for(0.01)
        while (item := ep.pop()) is not None:
            got.append(item[0])
    net.run_for(timeout)
    while (item := ep.pop()) is not None:
        got.append(item[0])
    a.udp.close(ep)
    return got


SIZES = [1, 18, 1472, 1473, 2961, 8000, 30000, 65507]


def test_udp_echo_every_size_on_a_clean_network() -> None:
    net, a, b = make_pair(1)
    payloads = [random.Random(s).randbytes(s) for s in SIZES]
    assert echo_all(net, a, payloads) == payloads
    assert a.counters.get("ipv4", "reassembled") == 5 and b.counters.get("ipv4", "reassembled") == 5
    assert a.counters.get("arp", "tx.request") == 1  # resolved once, then cached
    assert not a.counters.drops() and not b.counters.drops()


@pytest.mark.parametrize("seed", [3, 4])
def test_duplication_and_reordering_never_corrupt_a_datagram(seed: int) -> None:
    net, a, b = make_pair(seed, duplicate=0.2, reorder=0.3)
    payloads = [random.Random(seed * 100 + i).randbytes(s) for i, s in enumerate(SIZES)]
    got = echo_all(net, a, payloads)
    # UDP does not deduplicate, so a duplicated small datagram may come back twice; a fragmented
    # one is reassembled once per set of fragments. Nothing arrives that was not sent.
    assert set(got) == set(payloads)
    assert net.counters["duplicated"] > 0 and net.counters["reordered"] > 0


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_corruption_is_caught_by_checksums(seed: int) -> None:
    net, a, b = make_pair(seed, corrupt=0.15)
    payloads = [random.Random(seed * 10 + i).randbytes(s) for i, s in enumerate([100, 600, 1400] * 10)]
    got = echo_all(net, a, payloads)
    sent = {hashlib.sha256(p).digest() for p in payloads}
    assert got and all(hashlib.sha256(g).digest() in sent for g in got), "a corrupted datagram got through"
    assert net.counters["corrupted"] > 0
    assert len(got) < len(payloads)  # some were lost to corruption ...
    caught = sum(v for k, v in {**a.counters.drops(), **b.counters.drops()}.items() if "checksum" in k)
    assert caught > 0  # ... because the checksums caught them


def resolve(net: MemoryNetwork, stack: Stack, name: str, timeout: float = 30.0) -> DnsResult | DnsError:
    box: list[DnsResult | DnsError] = []
    stack.dns.resolve(name, box.append)
    assert net.run_until(lambda: box, timeout), f"no answer for {name} in {timeout} s of virtual time"
    return box[0]


@pytest.mark.parametrize("loss", [0.0, 0.2, 0.4])
def test_dns_resolves_through_loss_by_retrying(loss: float) -> None:
    net, a, b = make_pair(11, loss=loss)
    DnsServerEndpoint.answered = 0
    for short, full in (("alpha", "alpha.sim.test"), ("beta.sim.test", "beta.sim.test")):
        r = resolve(net, a, short)
        assert isinstance(r, DnsResult), r
        assert r.values == [ZONE[full]] and r.canonical == full
    nx = resolve(net, a, "gamma.sim.test.")
    assert isinstance(nx, DnsError) and nx.code == -2  # EAI_NONAME
    if loss:
        assert a.counters.get("dns", "queries_sent") > 3  # the retries are what made it work
    # Answers are cached for their TTL: no new query.
    sent = a.counters.get("dns", "queries_sent")
    assert isinstance(resolve(net, a, "alpha.sim.test"), DnsResult)
    assert a.counters.get("dns", "queries_sent") == sent


def test_port_unreachable_reaches_the_connected_endpoint() -> None:
    net, a, b = make_pair(21)
    ep = a.udp.open()
    a.udp.connect(ep, ip_aton(B_IP), 9)
    a.udp.send(ep, b"knock")
    assert net.run_until(lambda: ep.pending_error is not None, 5.0)
    assert ep.take_error() == errno.ECONNREFUSED
    assert b.counters.get("icmp", "tx_error") == 1


def test_lost_fragments_time_out_and_memory_is_released() -> None:
    net, a, b = make_pair(31)
    echo_all(net, a, [b"warm-up"])  # resolve ARP both ways
    # Lose a third of the frames from A to B: most fragmented datagrams cannot complete.
    port_a, port_b = net.ports
    from usocket.link.memory import Faults

    net.set_path(port_a, port_b, Faults(latency=0.0005, loss=0.34))
    ep = a.udp.open()
    a.udp.connect(ep, ip_aton(B_IP), 7)
    for i in range(20):
        a.udp.send(ep, bytes([i]) * 20000)
    net.run_for(1.0)
    assert b.ipv4.reassembly_bytes > 0  # incomplete datagrams held ...
    net.run_for(31.0)  # ... until the 30 s reassembly timeout
    assert b.counters.get("ipv4", "reasm_timeout") > 0
    assert b.ipv4.reassembly_bytes == 0


# -- DNS over TCP after a truncated UDP answer (RFC 7766) -------------------------------------------
BIG = "big.sim.test"
BIG_ADDRS = [f"10.9.1.{i}" for i in range(1, 41)]  # 40 A records: far over 512 bytes


def big_answer(query: bytes, truncated: bool) -> bytes:
    q = parse_message(query)
    question = q.questions[0]
    answers = () if truncated else tuple(DnsRecord(question.name, TYPE_A, CLASS_IN, 300, a) for a in BIG_ADDRS)
    return build_message(DnsMessage(DnsHeader(q.header.id, qr=True, aa=True, tc=truncated, rd=q.header.rd,
                                              ra=True), q.questions, answers))


class TruncatingDns(UdpEndpoint):
    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        self.layer.sendto(self, big_answer(data, truncated=True), src_ip, src_port)


class TcpDnsServer(TcpConnection):
    """A DNS server over TCP on stack B: one length-prefixed query in, one answer out."""

    served = 0

    def make_child(self) -> TcpDnsServer:
        return TcpDnsServer(self.layer)

    def on_readable(self) -> None:
        if self.wr_shut:
            return
        data = self.recv(65536) or b""
        self.buf = getattr(self, "buf", b"") + data
        if len(self.buf) >= 2 and len(self.buf) >= 2 + int.from_bytes(self.buf[:2], "big"):
            reply = big_answer(self.buf[2:], truncated=False)
            self.send(len(reply).to_bytes(2, "big") + reply)
            TcpDnsServer.served += 1
            self.close()


def make_truncating_pair(seed: int, tcp_server: bool, **faults: float) -> tuple[MemoryNetwork, Stack, Stack]:
    net, a, b = make_pair(seed, **faults)
    for ep in list(b.udp.endpoints()):
        if ep.local_port == 53:
            b.udp.close(ep)
    udp = b.udp.open(TruncatingDns)
    b.udp.bind(udp, b"\0\0\0\0", 53)
    if tcp_server:
        lst = b.tcp.open(TcpDnsServer)
        b.tcp.bind(lst, b"\0\0\0\0", 53)
        b.tcp.listen(lst, 8)
    return net, a, b


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_truncated_dns_answer_is_asked_again_over_tcp(loss: float) -> None:
    TcpDnsServer.served = 0
    net, a, b = make_truncating_pair(5, tcp_server=True, loss=loss)
    r = resolve(net, a, BIG, timeout=60)
    assert isinstance(r, DnsResult), r
    assert sorted(r.values) == sorted(BIG_ADDRS)
    dns = a.counters.snapshot()["dns"]
    assert dns["truncated"] >= 1 and dns["tcp.answered"] == 1 and TcpDnsServer.served >= 1
    # the TCP exchange ended and released everything
    assert net.run_until(lambda: not a.tcp.conns or all(c.state.name == "TIME_WAIT" for c in a.tcp.conns.values()), 30)


def test_truncated_dns_answer_without_a_tcp_server_fails_with_try_again() -> None:
    net, a, b = make_truncating_pair(6, tcp_server=False)
    r = resolve(net, a, BIG, timeout=60)
    assert isinstance(r, DnsError), r
    dns = a.counters.snapshot()["dns"]
    # refused by B's RST (own mode; once per name of the search list), and the truncated answer had nothing
    assert dns["tcp.failed"] >= 1 and not dns.get("tcp.answered")
