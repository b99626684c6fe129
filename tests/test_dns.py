"""The stub resolver against a fake DNS server, on a virtual clock.

The fake server reads the query datagrams the stack hands to (fake) IPv4 and answers by
feeding reply datagrams into ``stack.udp.receive``; time only moves with ``stack.poll``.
"""
from __future__ import annotations

import random
import socket
import struct
from typing import Any

import pytest

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
                 **rc: Any) -> None:
        cfg = StackConfig(address=OURS, prefix_len=16,
                          resolver=ResolverConfig(nameservers=list(nameservers), **rc))
        self.stack = _Stack(cfg, rng=random.Random(42))
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

    def counter(self, key: str) -> int:
        return self.stack.counters.get("dns", key)


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
    assert 49152 <= q.sport <= 65535
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


def test_late_reply_from_earlier_server_accepted() -> None:
    h = Harness(nameservers=(NS1, NS2), timeout=2, attempts=1)
    h.lookup("late.example")
    q1 = h.one()
    h.advance(2)
    q2 = h.one()
    assert q2.server == NS2 and q2.sport == q1.sport and q2.id == q1.id  # same question, same socket
    h.reply(q1, [A("late.example", "192.0.2.9")])
    assert h.results["late.example"].values == ["192.0.2.9"]


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
    h.reply(q, good, src=NS2)  # a configured server, but not asked yet
    h.reply(q, good, src="10.0.0.66")
    h.reply(q, good, sport=5353)
    h.reply(q, good, qr=False)
    h.feed(q, b"\x00\x01\x81")  # malformed
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
