"""The stub resolver against a fake DNS server, on a virtual clock.

The fake server reads the query datagrams the stack hands to (fake) IPv4 and answers by
feeding reply datagrams into ``stack.udp.receive``; time only moves with ``stack.poll``.
"""
from __future__ import annotations

import errno
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import usocket.proto.dns as dns_mod
from usocket.config import ResolverConfig, StackConfig
from usocket.proto.dns import (
    EAI_AGAIN,
    EAI_NODATA,
    EAI_NONAME,
    DnsError,
    DnsQuery,
    DnsResult,
    Resolver,
    inet_aton_exact,
)
from usocket.proto.icmp import IcmpError
from usocket.proto.ports import PortAllocator
from usocket.stack import Stack
from usocket.wire.addr import ip_aton
from usocket.wire.dns import (
    CLASS_IN,
    FORMERR,
    NOERROR,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    TYPE_A,
    TYPE_CNAME,
    TYPE_MX,
    TYPE_PTR,
    TYPE_SOA,
    DnsHeader,
    DnsMessage,
    DnsQuestion,
    DnsRecord,
    Soa,
    build_message,
    parse_message,
)
from usocket.wire.ipv4 import IPv4Header
from usocket.wire.udp import build_udp, parse_udp

OURS = ip_aton("10.0.0.1")
NS1, NS2, NS3 = "10.0.0.53", "10.0.1.53", "10.0.2.53"


# -- fake lower layers (the same idea as tests/test_udp.py) -------------------------------------
class _Nop:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.error_handlers: dict[int, Any] = {}

    def register(self, *a: Any) -> None:
        pass

    def register_error_handler(self, proto: int, fn: Any) -> None:
        self.error_handlers[proto] = fn

    def send_error(self, *a: Any) -> None:
        pass


class _IPv4(_Nop):
    def __init__(self, stack: Any) -> None:
        super().__init__(stack)
        self.sent: list[tuple[bytes, bytes]] = []

    def send(self, dst: bytes, proto: int, payload: bytes, **opts: Any) -> None:
        assert proto == 17 and opts["src"] == OURS
        self.sent.append((dst, bytes(payload)))

    def route(self, dst: bytes) -> bytes:
        # This harness carries only UDP: the TCP fallback after a truncated answer cannot connect
        # (tests/test_sim_network.py covers the fallback with a real TCP server).
        raise OSError(errno.ENETUNREACH, "Network is unreachable")


class _Stack(Stack):
    ethernet_class = _Nop  # type: ignore[assignment]
    arp_class = _Nop  # type: ignore[assignment]
    ipv4_class = _IPv4  # type: ignore[assignment]
    icmp_class = _Nop  # type: ignore[assignment]
    ipv4: _IPv4  # type: ignore[assignment]


class Sent:
    """One query datagram the stack sent."""

    def __init__(self, dst: bytes, dgram: bytes) -> None:
        self.server = socket.inet_ntoa(dst)
        h = parse_udp(dgram, OURS, dst)
        self.sport, self.dport = h.src_port, h.dst_port
        self.msg = parse_message(dgram[8:])
        self.id = self.msg.header.id
        self.q = self.msg.questions[0]


class Harness:
    def __init__(self, nameservers: tuple[str, ...] = (NS1,), resolver_cls: type[Resolver] = Resolver,
                 rng: random.Random | None = None, ports: PortAllocator | None = None, **rc: Any) -> None:
        cfg = StackConfig(address=OURS, prefix_len=16,
                          resolver=ResolverConfig(nameservers=list(nameservers), **rc))
        self.stack = _Stack(cfg, rng=rng or random.Random(42), ports=ports)
        self.resolver = resolver_cls(self.stack)
        self.results: dict[str, Any] = {}

    def lookup(self, name: str, qtype: int = TYPE_A, key: str | None = None) -> Any:
        key = key or name
        return self.resolver.resolve(name, lambda r: self.results.__setitem__(key, r), qtype)

    def ptr(self, ip: str) -> Any:
        return self.resolver.resolve_ptr(ip, lambda r: self.results.__setitem__(ip, r))

    def sent(self) -> list[Sent]:
        out = [Sent(dst, d) for dst, d in self.stack.ipv4.sent]
        self.stack.ipv4.sent.clear()
        return out

    def one(self) -> Sent:
        s = self.sent()
        assert len(s) == 1, [(x.server, x.q) for x in s]
        return s[0]

    def advance(self, dt: float) -> None:
        self.stack.poll(self.stack.now + dt)

    def feed(self, q: Sent, msg: DnsMessage | bytes, src: str | None = None, sport: int = 53) -> None:
        raw = msg if isinstance(msg, bytes) else build_message(msg)
        src_b = ip_aton(src or q.server)
        dgram = build_udp(sport, q.sport, raw, src_b, OURS)
        hdr = IPv4Header(0, 20 + len(dgram), 0, False, False, 0, 64, 17, 0, src_b, OURS, 20, bytes(20))
        self.stack.udp.receive(hdr, dgram, False)

    def reply(self, q: Sent, answers: list[DnsRecord] | tuple[()] = (), rcode: int = NOERROR,
              authority: list[DnsRecord] | tuple[()] = (), tc: bool = False, qid: int | None = None,
              question: DnsQuestion | None = None, qr: bool = True, **kw: Any) -> None:
        hdr = DnsHeader(id=q.id if qid is None else qid, qr=qr, rd=True, ra=True, rcode=rcode, tc=tc)
        msg = DnsMessage(hdr, (question or q.q,), tuple(answers), tuple(authority))
        self.feed(q, msg, **kw)

    def counter(self, key: str, layer: str = "dns") -> int:
        return self.stack.counters.get(layer, key)

    def icmp(self, q: Sent, server: str | None = None, type_: int = 3, code: int = 3,
             errno_: int = errno.ECONNREFUSED, hard: bool = True) -> None:
        """An ICMP error from ``server`` (default: the one ``q`` went to) quoting ``q``'s datagram."""
        dst = ip_aton(server or q.server)
        quoted = build_udp(q.sport, q.dport, b"", OURS, dst)
        hdr = IPv4Header(0, 20 + len(quoted), 0, False, False, 0, 64, 17, 0, OURS, dst, 20, bytes(20))
        err = IcmpError(type_, code, errno_, hard, dst)
        self.stack.icmp.error_handlers[17](err, hdr, quoted[:8])


def A(name: str, ip: str, ttl: int = 300) -> DnsRecord:
    return DnsRecord(name, TYPE_A, CLASS_IN, ttl, ip)


def CNAME(name: str, target: str, ttl: int = 300) -> DnsRecord:
    return DnsRecord(name, TYPE_CNAME, CLASS_IN, ttl, target)


def SOA(zone: str, ttl: int = 600, minimum: int = 60) -> DnsRecord:
    return DnsRecord(zone, TYPE_SOA, CLASS_IN, ttl, Soa("ns." + zone, "admin." + zone, 1, 2, 3, 4, minimum))


def err_code(r: Any) -> int:
    assert isinstance(r, DnsError), r
    return r.code


# -- basics ---------------------------------------------------------------------------------------
def test_simple_a_lookup() -> None:
    h = Harness()
    h.lookup("www.example.com")
    q = h.one()
    assert (q.server, q.dport) == (NS1, 53)
    assert q.q == DnsQuestion("www.example.com", TYPE_A, CLASS_IN) and q.msg.header.rd
    assert 1024 <= q.sport <= 65535
    (ep,) = h.stack.udp.endpoints()
    assert (ep.remote_ip, ep.remote_port, ep.local_port) == (ip_aton(NS1), 53, q.sport)  # connected
    assert h.stack.udp.ports and not h.results
    h.reply(q, [A("www.example.com", "192.0.2.1", 120), A("www.example.com", "192.0.2.2", 100)])
    r = h.results["www.example.com"]
    assert r == DnsResult("www.example.com", "www.example.com", ["192.0.2.1", "192.0.2.2"], 100, "dns")
    assert h.stack.udp.ports == {}  # the query's endpoint is closed
    assert h.stack.poll_at() is None  # and its timer cancelled
    assert h.counter("ok") == 1 and h.counter("queries_sent") == 1


def test_fresh_id_and_port_per_query() -> None:
    h = Harness()
    for i in range(20):
        h.lookup(f"h{i}.example.com")
    qs = h.sent()
    assert len(qs) == 20
    assert len({q.sport for q in qs}) == 20 and len({q.id for q in qs}) > 15
    assert len(h.stack.udp.ports) == 20 and len(h.resolver.queries) == 20
    # many in flight, answered out of order
    for i, q in reversed(list(enumerate(qs))):
        h.reply(q, [A(q.q.name, f"192.0.2.{i}")])
    assert all(h.results[f"h{i}.example.com"].values == [f"192.0.2.{i}"] for i in range(20))
    assert h.stack.udp.ports == {} and not h.resolver.queries and not h.resolver.lookups


def test_numeric_and_hosts_answer_without_dns() -> None:
    h = Harness(hosts={"myhost": ["10.9.9.9", "10.9.9.8"], "localhost": ["127.0.0.1"]})
    for name, addr in [("192.0.2.5", "192.0.2.5"), ("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
                       ("1", "0.0.0.1"), ("01.02.03.010", "1.2.3.8")]:
        h.lookup(name)
        r = h.results[name]
        assert r.values == [addr] and r.source == "numeric" and r.canonical == name
    h.lookup("MyHost")
    assert h.results["MyHost"].values == ["10.9.9.9", "10.9.9.8"] and h.results["MyHost"].source == "hosts"
    h.ptr("10.9.9.8")
    assert h.results["10.9.9.8"].values == ["myhost"]
    assert h.sent() == []
    h.lookup("1.2.3.4.")  # not numeric (glibc's inet_aton_exact refuses it): asked as a name
    assert h.one().q.name == "1.2.3.4"


def test_inet_aton_exact() -> None:
    assert inet_aton_exact("10.1") == "10.0.0.1"
    assert inet_aton_exact("10.1.65535") == "10.1.255.255"
    assert inet_aton_exact("4294967295") == "255.255.255.255"
    for bad in ("256.1.1.1", "1.2.3.4.5", "1.2.3.4 ", "", "1..2", "0x", "08", "1.2.3.256", "a.b.c.d",
                "4294967296", "1.65536.1"):
        if bad == "0x":
            continue  # glibc accepts a bare 0x as 0; not worth pinning either way
        assert inet_aton_exact(bad) is None, bad


def test_invalid_names_fail_without_dns() -> None:
    h = Harness()
    for name in ("a..b", "x" * 64 + ".com", ".".join(["abcdefghi"] * 30), "", "bücher.example"):
        h.lookup(name)
        assert err_code(h.results[name]) == EAI_NONAME
    h.ptr("300.1.1.1")
    assert err_code(h.results["300.1.1.1"]) == EAI_NONAME
    assert h.sent() == []


def test_no_nameserver_is_eai_again() -> None:
    h = Harness(nameservers=())
    h.lookup("www.example.com")
    assert err_code(h.results["www.example.com"]) == EAI_AGAIN
    assert h.stack.udp.ports == {}


def test_error_codes_and_exceptions() -> None:
    h = Harness()
    cases: list[tuple[str, int, list[DnsRecord], int]] = [
        ("nx.example", NXDOMAIN, [], EAI_NONAME),
        ("nodata.example", NOERROR, [], EAI_NODATA),
        ("formerr.example", FORMERR, [], EAI_NONAME),
    ]
    for name, rcode, answers, _ in cases:
        h.lookup(name)
        h.reply(h.one(), answers, rcode=rcode)
    for name, _, _, code in cases:
        assert err_code(h.results[name]) == code
    e = h.results["nx.example"]
    g = e.as_gaierror()
    assert isinstance(g, socket.gaierror) and g.errno == socket.EAI_NONAME
    assert g.strerror == "Name or service not known" and str(e) == "[Errno -2] Name or service not known"
    assert h.results["nodata.example"].strerror == "No address associated with hostname"
    assert isinstance(e.as_herror(), socket.herror) and e.as_herror().errno == 1


# -- retries, timeouts, servers -------------------------------------------------------------------
def test_timeouts_and_attempts() -> None:
    h = Harness(nameservers=(NS1, NS2), timeout=5, attempts=2)
    h.lookup("slow.example")
    schedule = []
    for i in range(4):
        q = h.one()
        schedule.append((h.stack.now, q.server))
        h.stack.poll(5.0 * i + 4.999)
        assert h.sent() == [] and not h.results
        h.stack.poll(5.0 * (i + 1))
    assert schedule == [(0.0, NS1), (5.0, NS2), (10.0, NS1), (15.0, NS2)]
    assert err_code(h.results["slow.example"]) == EAI_AGAIN
    assert h.counter("timeout") == 1 and h.counter("tx.retry") == 3
    assert h.stack.udp.ports == {}


def test_endpoint_reconnected_to_each_server_late_replies_lost_like_glibc() -> None:
    h = Harness(nameservers=(NS1, NS2), timeout=2, attempts=1)
    h.lookup("late.example")
    q1 = h.one()
    h.advance(2)
    q2 = h.one()
    assert q2.server == NS2 and q2.sport == q1.sport and q2.id == q1.id  # same question, same socket
    (ep,) = h.stack.udp.endpoints()
    assert ep.remote_ip == ip_aton(NS2)
    h.reply(q1, [A("late.example", "192.0.2.9")])  # NS1 was given up on: its socket is NS2's now
    assert not h.results and h.counter("drop.no_port", "udp") == 1 and h.counter("rx") == 0
    h.reply(q2, [A("late.example", "192.0.2.10")])
    assert h.results["late.example"].values == ["192.0.2.10"]


def test_icmp_port_unreachable_moves_to_the_next_try_at_once() -> None:
    h = Harness(nameservers=(NS1, NS2), timeout=5, attempts=2)
    h.lookup("dead.example")
    q = h.one()
    h.icmp(q, server=NS2)  # about a server not being asked: not this socket's peer, ignored
    assert h.sent() == [] and h.counter("icmp_error.no_endpoint", "udp") == 1
    servers = [q.server]
    for _ in range(3):
        h.icmp(q)
        q = h.one()
        servers.append(q.server)
    assert servers == [NS1, NS2, NS1, NS2] and h.stack.now == 0  # no timeout waited
    h.icmp(q)
    r = h.results["dead.example"]
    assert err_code(r) == EAI_AGAIN and h.stack.now == 0  # like glibc: ECONNREFUSED -> TRY_AGAIN
    assert h.counter("rx.icmp_error.ECONNREFUSED") == 4 and h.counter("timeout") == 0
    assert h.stack.udp.ports == {} and h.stack.poll_at() is None
    # A refused first server, a live second one: the answer comes at once.
    h.lookup("half.example")
    h.icmp(h.one())
    q = h.one()
    assert q.server == NS2
    h.reply(q, [A("half.example", "192.0.2.4")])
    assert h.results["half.example"].values == ["192.0.2.4"] and h.stack.now == 0


def test_rotate() -> None:
    h = Harness(nameservers=(NS1, NS2, NS3), rotate=True)
    firsts = []
    for i in range(4):
        h.lookup(f"r{i}.example")
        firsts.append(h.one().server)
    assert firsts == [NS1, NS2, NS3, NS1]
    h2 = Harness(nameservers=(NS1, NS2, NS3))
    for i in range(3):
        h2.lookup(f"r{i}.example")
    assert [q.server for q in h2.sent()] == [NS1, NS1, NS1]


def test_servfail_refused_move_to_next_server() -> None:
    h = Harness(nameservers=(NS1, NS2), attempts=2)
    h.lookup("sf.example")
    q = h.one()
    h.reply(q, rcode=SERVFAIL)
    q = h.one()  # immediately, no timeout
    assert q.server == NS2 and h.stack.now == 0
    h.reply(q, [A("sf.example", "192.0.2.3")])
    assert h.results["sf.example"].values == ["192.0.2.3"]

    for rcode, code in ((SERVFAIL, EAI_AGAIN), (REFUSED, EAI_AGAIN)):
        name = f"all{rcode}.example"
        h.lookup(name)
        servers = []
        for _ in range(4):
            q = h.one()
            servers.append(q.server)
            h.reply(q, rcode=rcode)
        assert servers == [NS1, NS2, NS1, NS2]
        assert err_code(h.results[name]) == code
    assert h.stack.now == 0


def test_mismatched_replies_ignored() -> None:
    h = Harness(nameservers=(NS1, NS2))
    h.lookup("www.example.com")
    q = h.one()
    good = [A("www.example.com", "192.0.2.1")]
    h.reply(q, good, qid=(q.id + 1) & 0xFFFF)
    h.reply(q, good, question=DnsQuestion("evil.example.com", TYPE_A, CLASS_IN))
    h.reply(q, good, question=DnsQuestion("www.example.com", TYPE_MX, CLASS_IN))
    # Other sources never reach the query: its endpoint is connected to NS1:53.
    h.reply(q, good, src=NS2)  # a configured server, but not asked yet
    h.reply(q, good, src="10.0.0.66")
    h.reply(q, good, sport=5353)
    assert h.counter("drop.no_port", "udp") == 3
    h.reply(q, good, qr=False)
    h.feed(q, b"\x00\x01\x81")  # malformed
    # The resolver's own source check still stands behind the connected endpoint.
    (query,) = h.resolver.queries
    raw = build_message(DnsMessage(DnsHeader(q.id, qr=True), (q.q,), tuple(good)))
    for src, sport in ((NS2, 53), ("10.0.0.66", 53), (NS1, 5353)):
        assert h.resolver.validate_reply(query, raw, ip_aton(src), sport) is None
    assert not h.results
    assert (h.counter("drop.bad_id"), h.counter("drop.bad_question"), h.counter("drop.bad_source"),
            h.counter("drop.not_response"), h.counter("drop.malformed")) == (1, 2, 3, 1, 1)
    assert h.stack.poll_at() == 5.0  # still waiting on the same timer
    h.reply(q, good, question=DnsQuestion("WWW.Example.COM", TYPE_A, CLASS_IN))  # 0x20 case is fine
    assert h.results["www.example.com"].values == ["192.0.2.1"]


# -- search list and ndots ------------------------------------------------------------------------
def _walk(h: Harness, name: str, answers: dict[str, Any]) -> list[str]:
    """Run a lookup answering each question from ``answers`` (rcode or records; missing:
    NXDOMAIN; "timeout": let it time out); return the names asked, in order."""
    h.lookup(name)
    asked = []
    while name not in h.results:
        sent = h.sent()
        if not sent:
            h.advance(100)
            continue
        for q in sent:
            if q.server != NS1:
                continue
            asked.append(q.q.name)
            a = answers.get(q.q.name, NXDOMAIN)
            if a == "timeout":
                continue
            if isinstance(a, int):
                h.reply(q, rcode=a)
            else:
                h.reply(q, a)
    return asked


def test_search_single_label() -> None:
    h = Harness(search=["a.example", "b.example"], ndots=1)
    assert _walk(h, "host", {}) == ["host.a.example", "host.b.example", "host"]
    assert err_code(h.results["host"]) == EAI_NONAME
    h = Harness(search=["a.example", "b.example"], ndots=1)
    ok = {"host.b.example": [A("host.b.example", "192.0.2.2")]}
    assert _walk(h, "host", ok) == ["host.a.example", "host.b.example"]
    assert h.results["host"].values == ["192.0.2.2"] and h.results["host"].canonical == "host.b.example"


def test_search_dotted_names_and_ndots() -> None:
    h = Harness(search=["a.example"], ndots=1)
    assert _walk(h, "x.y", {}) == ["x.y", "x.y.a.example"]  # >= ndots dots: as-is first
    h = Harness(search=["a.example"], ndots=2)
    assert _walk(h, "x.y", {}) == ["x.y.a.example", "x.y"]  # fewer: search first, as-is last
    h = Harness(search=["a.example"], ndots=2)
    assert _walk(h, "x.y.", {}) == ["x.y"]  # trailing dot: absolute, never searched
    h = Harness(search=["a.example", "."], ndots=5)
    assert _walk(h, "x", {}) == ["x.a.example", "x"]  # root on the list: no extra as-is try
    h = Harness(search=[], ndots=1)
    assert _walk(h, "x", {}) == ["x"]


def test_search_error_precedence() -> None:
    # NODATA anywhere beats the NXDOMAINs after it
    h = Harness(search=["a.example", "b.example"])
    assert _walk(h, "host", {"host.a.example": NOERROR}) == ["host.a.example", "host.b.example", "host"]
    assert err_code(h.results["host"]) == EAI_NODATA
    # ... but the first as-is try's error wins over everything
    h = Harness(search=["a.example"], ndots=1)
    assert _walk(h, "x.y", {"x.y.a.example": NOERROR}) == ["x.y", "x.y.a.example"]
    assert err_code(h.results["x.y"]) == EAI_NONAME
    # SERVFAIL keeps searching and is reported if nothing better
    h = Harness(search=["a.example", "b.example"], attempts=1)
    assert _walk(h, "host", {"host.a.example": SERVFAIL}) == ["host.a.example", "host.b.example", "host"]
    assert err_code(h.results["host"]) == EAI_AGAIN
    # a timeout stops the search list; the as-is name is still tried
    h = Harness(search=["a.example", "b.example"], attempts=1)
    assert _walk(h, "host", {"host.a.example": "timeout"}) == ["host.a.example", "host"]
    assert err_code(h.results["host"]) == EAI_NONAME


# -- CNAMEs -----------------------------------------------------------------------------------------
def test_cname_chain_in_answer() -> None:
    h = Harness()
    h.lookup("www.example.com")
    h.reply(h.one(), [CNAME("www.example.com", "a.cdn.example", 300),
                      CNAME("a.cdn.example", "b.cdn.example", 30),
                      A("b.cdn.example", "192.0.2.77", 100), A("unrelated.example", "6.6.6.6")])
    r = h.results["www.example.com"]
    assert r.values == ["192.0.2.77"] and r.canonical == "b.cdn.example" and r.ttl == 30


def test_cname_target_requeried() -> None:
    h = Harness(search=["corp.example"])
    h.lookup("alias.example.com")
    q = h.one()
    h.reply(q, [CNAME("alias.example.com", "target.example.net", 50)])
    q2 = h.one()
    assert q2.q.name == "target.example.net" and q2.sport != q.sport  # absolute, no search domain
    h.reply(q2, [A("target.example.net", "192.0.2.50", 500)])
    r = h.results["alias.example.com"]
    assert r.values == ["192.0.2.50"] and r.canonical == "target.example.net" and r.ttl == 50
    # both names are now cached
    h.lookup("target.example.net", key="t")
    h.lookup("alias.example.com", key="a")
    assert h.sent() == [] and h.results["a"].ttl == 50 and h.results["t"].ttl == 500


def test_cname_loops_and_depth_bounded() -> None:
    h = Harness()
    h.lookup("loop.example")
    h.reply(h.one(), [CNAME("loop.example", "b.example"), CNAME("b.example", "loop.example")])
    assert err_code(h.results["loop.example"]) == EAI_NONAME
    h.lookup("deep.example")
    for i in range(20):
        sent = h.sent()
        if not sent:
            break
        h.reply(sent[0], [CNAME(sent[0].q.name, f"hop{i}.example")])
    assert i == Resolver.max_cname_depth
    assert err_code(h.results["deep.example"]) == EAI_NONAME


def test_cname_to_nodata_with_soa_not_requeried() -> None:
    h = Harness()
    h.lookup("alias.example")
    h.reply(h.one(), [CNAME("alias.example", "noaddr.example")], authority=[SOA("example")])
    assert h.sent() == [] and err_code(h.results["alias.example"]) == EAI_NODATA


# -- caching -----------------------------------------------------------------------------------------
def test_positive_cache_honours_ttl() -> None:
    h = Harness()
    h.lookup("c.example")
    h.reply(h.one(), [CNAME("c.example", "d.example", 40), A("d.example", "192.0.2.4", 90)])
    h.advance(15)
    h.lookup("C.EXAMPLE", key="again")
    assert h.sent() == []
    r = h.results["again"]
    assert r.values == ["192.0.2.4"] and r.ttl == 25 and r.source == "cache" and r.canonical == "d.example"
    h.advance(25)  # 40 s after the answer: expired
    h.lookup("c.example", key="third")
    assert h.one().q.name == "c.example"
    assert h.counter("cache.hit") == 1


def test_ttl_zero_and_huge_not_kept() -> None:
    h = Harness()
    h.lookup("z.example")
    h.reply(h.one(), [A("z.example", "192.0.2.1", 0)])
    h.lookup("z.example", key="z2")
    assert len(h.sent()) == 1
    h.lookup("neg.example")
    h.reply(h.one(), [A("neg.example", "192.0.2.1", 0x80000001)])  # RFC 2181: MSB set means 0
    assert h.results["neg.example"].ttl == 0
    h.lookup("neg.example", key="n2")
    assert len(h.sent()) == 1


def test_negative_caching() -> None:
    h = Harness()
    h.lookup("nx.example")
    h.reply(h.one(), rcode=NXDOMAIN, authority=[SOA("example", ttl=600, minimum=60)])
    h.advance(59)
    h.lookup("nx.example", key="again")
    assert h.sent() == [] and err_code(h.results["again"]) == EAI_NONAME
    h.lookup("nx.example", TYPE_MX, key="mx")  # NXDOMAIN holds for every type
    assert h.sent() == [] and err_code(h.results["mx"]) == EAI_NONAME
    h.advance(1)
    h.lookup("nx.example", key="later")
    assert len(h.sent()) == 1
    # NODATA is per type; without an SOA nothing is cached
    h.lookup("nodata.example")
    h.reply(h.one(), authority=[SOA("example", ttl=30, minimum=3600)])
    h.lookup("nodata.example", key="nd2")
    assert h.sent() == [] and err_code(h.results["nd2"]) == EAI_NODATA
    h.lookup("nodata.example", TYPE_MX, key="nd-mx")
    assert len(h.sent()) == 1
    h.lookup("nosoa.example")
    h.reply(h.one(), rcode=NXDOMAIN)
    h.lookup("nosoa.example", key="ns2")
    assert len(h.sent()) == 1


def test_cache_is_bounded() -> None:
    class Small(Resolver):
        cache_size = 8
        negative_cache_size = 4

    h = Harness(resolver_cls=Small)
    for i in range(30):
        h.lookup(f"p{i}.example")
        h.reply(h.one(), [A(f"p{i}.example", "192.0.2.1")])
        h.lookup(f"n{i}.example")
        h.reply(h.one(), rcode=NXDOMAIN, authority=[SOA("example")])
    assert len(h.resolver.cache.positive) == 8 and len(h.resolver.cache.negative) == 4
    h.lookup("p29.example", key="recent")
    h.lookup("p0.example", key="old")
    assert [q.q.name for q in h.sent()] == ["p0.example"]  # LRU: the oldest went first


# -- truncation, PTR, cancel ---------------------------------------------------------------------------
def test_truncated_replies() -> None:
    h = Harness()
    h.lookup("big.example")
    h.reply(h.one(), [A("big.example", "192.0.2.1")], tc=True)
    assert h.results["big.example"].values == ["192.0.2.1"]
    h.lookup("empty.example")
    h.reply(h.one(), [], tc=True)
    assert err_code(h.results["empty.example"]) == EAI_AGAIN
    assert h.counter("rx.truncated") == 2


def test_truncation_hook_can_defer() -> None:
    parked: list[tuple[DnsQuery, DnsMessage]] = []

    class WithTcp(Resolver):
        def on_truncated(self, query: DnsQuery, msg: DnsMessage) -> object:
            parked.append((query, msg))
            return self.DEFERRED

    h = Harness(resolver_cls=WithTcp)
    h.lookup("tc.example")
    q = h.one()
    h.reply(q, [], tc=True)
    h.advance(60)
    assert not h.results and h.sent() == []  # no retry while the "TCP" query runs
    query, msg = parked[0]
    full = msg._replace(header=msg.header._replace(tc=False), answers=(A("tc.example", "192.0.2.10"),))
    query.finish(full)
    assert h.results["tc.example"].values == ["192.0.2.10"] and h.stack.udp.ports == {}


def test_ptr_lookup() -> None:
    h = Harness(search=["a.example"])
    h.ptr("192.0.2.33")
    q = h.one()
    assert q.q == DnsQuestion("33.2.0.192.in-addr.arpa", TYPE_PTR, CLASS_IN)
    h.reply(q, [DnsRecord("33.2.0.192.in-addr.arpa", TYPE_PTR, CLASS_IN, 60, "host.example.org")])
    r = h.results["192.0.2.33"]
    assert r.values == ["host.example.org"] and r.ttl == 60
    h.ptr("192.0.2.34")
    h.reply(h.one(), rcode=NXDOMAIN)
    e = h.results["192.0.2.34"]
    assert err_code(e) == EAI_NONAME and e.as_herror().errno == 1


def test_cancel_and_close() -> None:
    h = Harness()
    lk = h.lookup("a.example")
    h.lookup("b.example")
    qa, qb = h.sent()
    lk.cancel()
    assert len(h.stack.udp.ports) == 1
    h.reply(qa, [A("a.example", "192.0.2.1")])
    assert "a.example" not in h.results
    h.resolver.close()
    h.advance(100)
    assert h.results == {} and h.stack.udp.ports == {} and h.stack.poll_at() is None


def test_callback_sees_other_types_raw() -> None:
    h = Harness()
    h.lookup("mx.example", TYPE_MX)
    q = h.one()
    assert q.q.qtype == TYPE_MX
    h.reply(q, [DnsRecord("mx.example", TYPE_MX, CLASS_IN, 60, b"\x00\x0a\x02mx\xc0\x0c")])
    assert h.results["mx.example"].values == [b"\x00\x0a\x02mx\xc0\x0c"]


@pytest.mark.parametrize("rcode", [NXDOMAIN, NOERROR])
def test_glibc_error_for_every_search_candidate(rcode: int) -> None:
    h = Harness(search=["a.example"])
    _walk(h, "solo", {"solo.a.example": rcode, "solo": rcode})
    assert err_code(h.results["solo"]) == (EAI_NONAME if rcode == NXDOMAIN else EAI_NODATA)


def test_struct_of_query_packet() -> None:
    h = Harness()
    h.lookup("x.example")
    dst, dgram = h.stack.ipv4.sent[0]
    assert dst == ip_aton(NS1) and struct.unpack_from("!H", dgram, 2)[0] == 53
    assert len(dgram) == 8 + 12 + len(b"\x01x\x07example\x00") + 4


# -- review fixes: cheap checks first, wire-form names, source ports ------------------------------------
def test_reply_header_and_question_checked_before_the_full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[int] = []
    real = dns_mod.parse_message

    def counting(data: Any, max_records: int | None = None) -> DnsMessage:
        parsed.append(len(data))
        return real(data, max_records)

    monkeypatch.setattr(dns_mod, "parse_message", counting)
    h = Harness()
    h.lookup("www.example.com")
    q = h.one()
    good = [A("www.example.com", "192.0.2.1")]
    h.reply(q, good, qid=(q.id + 1) & 0xFFFF)
    h.reply(q, good, qr=False)
    h.reply(q, good, question=DnsQuestion("evil.example.com", TYPE_A, CLASS_IN))
    two_questions = build_message(DnsMessage(DnsHeader(q.id, qr=True), (q.q, q.q), tuple(good)))
    h.feed(q, two_questions)
    assert parsed == [] and not h.results  # none of them was decoded past its question
    assert (h.counter("drop.bad_id"), h.counter("drop.not_response"), h.counter("drop.bad_question")) == (1, 1, 2)
    h.reply(q, good)
    assert len(parsed) == 1 and h.results["www.example.com"].values == ["192.0.2.1"]


def _huge_reply(qid: int, qname: str, n: int) -> bytes:
    """A reply with ``n`` A records whose owner names all point at one 253-byte name."""
    hdr = struct.pack("!HHHHHH", qid, 0x8180, 1, n, 0, 0)
    question = DnsQuestion(qname, TYPE_A, CLASS_IN)
    body = bytearray(hdr + build_message(DnsMessage(DnsHeader(0), (question,)))[12:])
    long_off = len(body)
    body += b"".join(b"\x01a" for _ in range(126)) + b"\x00" + struct.pack("!HHIH", TYPE_A, 1, 60, 4) + bytes(4)
    for _ in range(n - 1):
        body += struct.pack("!H", 0xC000 | long_off) + struct.pack("!HHIH", TYPE_A, 1, 60, 4) + bytes(4)
    return bytes(body)


def test_huge_replies_cost_little_and_are_capped() -> None:
    h = Harness()
    h.lookup("www.example.com")
    q = h.one()
    evil = _huge_reply(q.id, "www.example.com", 3800)
    assert len(evil) > 60000
    t0 = time.perf_counter()
    for _ in range(20):
        h.feed(q, _huge_reply((q.id + 1) & 0xFFFF, "www.example.com", 3800))  # wrong id
    h.feed(q, evil)  # right id and question: decoded, 256 records at most
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"{elapsed:.2f}s"  # ~0.1 s; a full decode of each took ~0.5 s before
    assert h.counter("drop.bad_id") == 20
    assert h.counter("rx.records_capped") == 1 and h.counter("rx.over_512") == 1
    # None of the records is for the name asked: NODATA, decided on the first 256 alone.
    assert err_code(h.results["www.example.com"]) == EAI_NODATA


def test_capped_answer_still_answers_and_over_512_accepted_like_glibc() -> None:
    h = Harness()
    h.lookup("many.example")
    q = h.one()
    h.reply(q, [A("many.example", f"10.{i // 256}.{i % 256}.1") for i in range(300)])
    r = h.results["many.example"]
    assert len(r.values) == Resolver.max_records and r.values[0] == "10.0.0.1"
    assert h.counter("rx.records_capped") == 1 and h.counter("rx.over_512") == 1
    h.lookup("few.example")
    q = h.one()
    h.reply(q, [A("few.example", "192.0.2.1")])
    assert h.counter("rx.records_capped") == 1 and h.counter("rx.over_512") == 1


@pytest.mark.parametrize("name", ["foo;bar.example", "a\\065.x", "q(u)o\"te@$.example", "a\\.b.example"])
def test_names_with_special_characters_match_their_reply(name: str) -> None:
    """The reply's question is decoded to escaped text (foo\\;bar); it is the same name."""
    h = Harness()
    h.lookup(name)
    q = h.one()
    h.reply(q, [A(q.q.name, "192.0.2.7")])  # the owner name as decoded from the query
    r = h.results[name]
    assert isinstance(r, DnsResult) and r.values == ["192.0.2.7"], r
    assert h.counter("drop.bad_question") == 0


def test_cname_chain_through_special_names_and_the_cache_uses_wire_keys() -> None:
    h = Harness()
    h.lookup("foo;bar.example")
    q = h.one()
    h.reply(q, [CNAME("FOO\\;bar.example", "x(y).example"), CNAME("x\\(Y\\).example", "z\\064w.example"),
                A("z@W.example", "192.0.2.8")])
    r = h.results["foo;bar.example"]
    assert isinstance(r, DnsResult) and r.values == ["192.0.2.8"], r
    assert r.canonical == "z\\@w.example"  # the last CNAME target, in glibc's presentation form
    # Another text of the same name is the same cache entry.
    h.lookup("Foo\\059bar.example", key="again")
    assert h.results["again"].source == "cache" and h.sent() == []


class ScriptedRandom(random.Random):
    """``randint`` returns the scripted values first, then random ones."""

    def __init__(self, script: list[int]) -> None:
        super().__init__(5)
        self.script = list(script)

    def randint(self, a: int, b: int) -> int:
        if self.script:
            v = self.script.pop(0)
            assert a <= v <= b
            return v
        return super().randint(a, b)


class BusyPorts(PortAllocator):
    """Ports in ``busy`` are held by someone else (the host kernel in shared mode)."""

    def __init__(self, busy: set[int]) -> None:
        super().__init__((49152, 65535), random.Random(3))
        self.busy = busy

    def claim(self, proto: int, port: int, explicit: bool, reuse_addr: bool = False) -> bool:
        if port in self.busy:
            if explicit:
                raise OSError(errno.EADDRINUSE, "Address already in use")
            return False
        return True


def test_source_port_uniform_over_a_wide_range() -> None:
    h = Harness()
    for i in range(400):
        h.lookup(f"p{i}.example")
    ports = [q.sport for q in h.sent()]
    assert len(ports) == 400 and all(1024 <= p <= 65535 for p in ports)
    below = sum(p < 33280 for p in ports)  # half of 1024..65535
    assert 150 < below < 250, below  # uniform; the kernel's 61000-65535 would give 0
    assert len(set(ports)) > 380


def test_source_port_in_use_is_redrawn_then_ephemeral() -> None:
    h = Harness(rng=ScriptedRandom([2000, 3000, 4000]), ports=BusyPorts({2000, 3000}))
    h.lookup("a.example")
    assert h.one().sport == 4000 and h.counter("bind.in_use") == 2
    # One of our own endpoints holds the drawn port: redrawn as well.
    h2 = Harness(rng=ScriptedRandom([5353, 5354]))
    mine = h2.stack.udp.open()
    h2.stack.udp.bind(mine, bytes(4), 5353)
    h2.lookup("b.example")
    assert h2.one().sport == 5354 and h2.counter("bind.in_use") == 1
    # Every draw taken: an ephemeral port from the allocator.
    busy = set(range(1024, 49152))
    h3 = Harness(rng=ScriptedRandom([1024 + i for i in range(Resolver.bind_tries)]), ports=BusyPorts(busy))
    h3.lookup("c.example")
    q = h3.one()
    assert 49152 <= q.sport <= 65535
    assert h3.counter("bind.in_use") == Resolver.bind_tries and h3.counter("bind.ephemeral") == 1
    # source_ports = None: the allocator's ephemeral ports only.

    class Ephemeral(Resolver):
        source_ports = None

    h4 = Harness(resolver_cls=Ephemeral)
    for i in range(50):
        h4.lookup(f"e{i}.example")
    assert all(49152 <= s.sport <= 65535 for s in h4.sent())


@pytest.mark.lab
@pytest.mark.parametrize("mode", ["shared", "own"])
def test_lab_refusing_nameserver_fails_at_once_not_after_timeouts(make_lab: Callable[..., Any], mode: str) -> None:
    """No DNS server in the server namespace: its kernel answers each query with ICMP port
    unreachable, which reaches the connected query endpoint through the real stack."""
    from usocket.runtime import Runtime

    lab = make_lab(servers=False)
    cfg = lab.stack_config(mode, nameservers=[lab.server_ip, lab.server_ip])
    cfg.resolver.timeout, cfg.resolver.attempts = 5.0, 2
    done = threading.Event()
    out: list[Any] = []

    def callback(r: Any) -> None:
        out.append(r)
        done.set()

    with Runtime(cfg) as rt:
        assert rt.stack is not None
        t0 = time.monotonic()
        rt.call(rt.stack.dns.resolve, "nowhere.example.", callback)
        assert done.wait(8), "no answer"
        elapsed = time.monotonic() - t0
        dns = rt.stack.counters.snapshot()["dns"]
    assert err_code(out[0]) == EAI_AGAIN
    assert elapsed < 2.5, elapsed  # four tries; waiting them out would take 20 s
    assert dns.get("rx.icmp_error.ECONNREFUSED") == 4 and dns.get("queries_sent") == 4, dns
    assert not dns.get("timeout"), dns
