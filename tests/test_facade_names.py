"""The resolver functions of the drop-in module (usocket/facade/names.py).

1. Numeric hosts, flags and argument errors, compared case by case with the real ``socket``
   module (glibc): no runtime may be started for any of them (``get_runtime`` is made to fail).
   Only inputs glibc answers without asking a name service are compared with it.
2. In-process: a runtime with its own hosts table and a DNS server of the test's own, a usocket
   UDP socket on the stack's address (CNAME chains, several addresses, NODATA, SERVFAIL, PTR).
3. The lab: the stack's answers for dnsmasq's names against what glibc answers in the same
   namespace, asked before the kernel's egress is blocked.
"""
from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import usocket
import usocket.runtime
from usocket.config import ResolverConfig, StackConfig, parse_host_lines, parse_hosts
from usocket.facade import names
from usocket.wire.dns import (
    CLASS_IN,
    NXDOMAIN,
    SERVFAIL,
    TYPE_A,
    TYPE_CNAME,
    TYPE_PTR,
    DnsHeader,
    DnsMessage,
    DnsRecord,
    build_message,
    parse_message,
)

S = socket


def outcome(fn: Callable[..., Any], *args: Any) -> Any:
    """What a call gives, comparable across implementations: the repr of the result (so the
    enum types count), or the exception's type and args."""
    try:
        return repr(fn(*args))
    except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt is not expected here
        return type(e).__name__, e.args


@pytest.fixture
def no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to get the process-wide runtime fails the test."""

    def refuse() -> Any:
        raise AssertionError("this call must not need the runtime")

    monkeypatch.setattr(usocket.runtime, "get_runtime", refuse)


# == 1. compared with the real socket module, no runtime ==========================================
NUMERIC_HOSTS = [None, "*", b"*", "127.0.0.1", "127.1", "0x7f.1", "0X7F.0.0.1", "0177.0.0.1", "4294967295",
                 "1.2.3", b"10.0.0.1", "255.255.255.255", "0.0.0.0", "127.0.0.1\0junk", "::1", "::ffff:1.2.3.4",
                 "fe80::1%lo", "::"]
PORTS = [None, 0, 80, 65535, 65536, 70000, -1, 2**31, 2**32 + 80, "80", "http", "domain", "echo", "amqp", "",
         "*", " 80", "+80", "-0", "0x50", "80 ", "4294967296", "2147483648", "18446744073709551615",
         "99999999999999999999999", "no-such-service", b"53", b"http", "ht\0tp", "\u00e9"]
TYPES = [0, S.SOCK_STREAM, S.SOCK_DGRAM, S.SOCK_RAW, S.SOCK_SEQPACKET, S.SOCK_RDM, 6, 10]
PROTOS = [0, S.IPPROTO_TCP, S.IPPROTO_UDP, 132, 136, 33, 99]
FLAGS = [0, S.AI_PASSIVE, S.AI_CANONNAME, S.AI_NUMERICHOST, S.AI_NUMERICSERV, S.AI_ADDRCONFIG, S.AI_V4MAPPED,
         S.AI_ALL, 0x800, S.AI_PASSIVE | S.AI_CANONNAME, S.AI_CANONNAME | S.AI_NUMERICHOST,
         S.AI_NUMERICSERV | S.AI_NUMERICHOST, -1]
FAMILIES = [0, S.AF_INET, S.AF_INET6, S.AF_UNIX, 17, 99, -1]

GAI_CASES = (
    [(h, p, 0, 0, 0, 0) for h, p in itertools.product(NUMERIC_HOSTS, PORTS)]
    + [("127.0.0.1", p, 0, t, pr, 0) for p, t, pr in itertools.product([None, 80, "http", "amqp"], TYPES, PROTOS)]
    + [(h, p, f, 0, 0, fl) for h, p, f, fl in itertools.product(
        [None, "127.1", "::1", "*"], [None, 80, "http", "nope"], [0, S.AF_INET], FLAGS)]
    + [(h, 80, f, 0, 0, fl) for h, f, fl in itertools.product(
        [None, "127.0.0.1", "::1", "::ffff:1.2.3.4", "fe80::1%lo", "fe80::1%no-such-if"], FAMILIES,
        [0, S.AI_V4MAPPED, S.AI_PASSIVE])]
    # names, but numeric-only: glibc asks no name service
    + [(h, p, f, t, 0, S.AI_NUMERICHOST | fl) for h, p, f, t, fl in itertools.product(
        ["localhost", "example.com", "1.2.3.4.5", "", "127.0.0.1 ", " 127.0.0.1", "1..2"], [None, 80, "x"],
        [0, S.AF_INET, S.AF_INET6], [0, S.SOCK_RAW], [0, S.AI_CANONNAME])]
)


@pytest.mark.parametrize("args", GAI_CASES, ids=repr)
def test_getaddrinfo_numeric_matches_the_stdlib(no_runtime: None, args: tuple[Any, ...]) -> None:
    want = outcome(S.getaddrinfo, *args)
    host, _, family = args[:3]
    if host in (None, "*", b"*") and family == 0 and want[0] == "[":
        # glibc puts the IPv6 wildcard first; the stack is IPv4 only (see the module doc).
        want = repr([e for e in S.getaddrinfo(*args) if e[0] == S.AF_INET])
    assert outcome(usocket.getaddrinfo, *args) == want


@pytest.mark.parametrize("args", [
    (1, 80), (bytearray(b"1.2.3.4"), 80), ("1.2.3.4", True), ("1.2.3.4", 1.5), ("1.2.3.4", bytearray(b"80")),
    ("1.2.3.4", 2**63), ("1.2.3.4", -(2**63) - 1), ("1.2.3.4", "\udc80"), ("a..b", 80), ("a..b", object()),
    ("\udc80", 80), ("x" * 64 + ".com", 80), ("1.2.3.4", 80, "x"), ("1.2.3.4", 80, 2**31),
    ("1.2.3.4", 80, -(2**31) - 1), ("1.2.3.4", 80, 2**63), ("1.2.3.4", 80, 0, 1.0), ("1.2.3.4", 80, 0, 0, None),
    ("1.2.3.4", 80, 0, 0, 0, "0"), ("1.2.3.4", object(), "x"), (None, None),
    ("1.2.3.4", 80, S.AF_INET, S.SOCK_STREAM, 0, S.AI_CANONNAME),
], ids=repr)
def test_getaddrinfo_argument_errors_match_the_stdlib(no_runtime: None, args: tuple[Any, ...]) -> None:
    assert outcome(usocket.getaddrinfo, *args) == outcome(S.getaddrinfo, *args)


def test_getaddrinfo_keywords_and_enums(no_runtime: None) -> None:
    got = usocket.getaddrinfo(host="10.1.2.3", port="http", family=S.AF_INET, type=S.SOCK_STREAM,
                              proto=0, flags=S.AI_CANONNAME)
    assert got == [(S.AF_INET, S.SOCK_STREAM, 6, "10.1.2.3", ("10.1.2.3", 80))]
    assert type(got[0][0]) is S.AddressFamily and type(got[0][1]) is S.SocketKind
    # glibc's order for type 0 (stream, datagram, raw), the wildcard, AI_PASSIVE
    assert usocket.getaddrinfo(None, 0) == [
        (S.AF_INET, S.SOCK_STREAM, 6, "", ("127.0.0.1", 0)), (S.AF_INET, S.SOCK_DGRAM, 17, "", ("127.0.0.1", 0)),
        (S.AF_INET, S.SOCK_RAW, 0, "", ("127.0.0.1", 0))]
    assert usocket.getaddrinfo(None, 80, 0, S.SOCK_DGRAM, 0, S.AI_PASSIVE) == [
        (S.AF_INET, S.SOCK_DGRAM, 17, "", ("0.0.0.0", 80))]
    # SOCK_DCCP (6) has no SocketKind member: the stdlib's wrapper keeps the int
    kinds = [e[1] for e in usocket.getaddrinfo("1.2.3.4", None, 0, 6)]
    assert kinds == [6] and type(kinds[0]) is int


def test_ipv6_names_are_refused_clearly(no_runtime: None) -> None:
    """AF_INET6 with a name: the stack's resolver has no IPv6 (documented choice), so EAI_FAMILY,
    after the service checks (which come first in glibc) and without starting the stack."""
    with pytest.raises(socket.gaierror) as ei:
        usocket.getaddrinfo("example.com", 80, S.AF_INET6)
    assert ei.value.args == (S.EAI_FAMILY, "ai_family not supported")
    with pytest.raises(socket.gaierror) as ei:
        usocket.getaddrinfo("example.com", "no-such-service", S.AF_INET6)
    assert ei.value.errno == S.EAI_SERVICE
    # an IPv6 literal is no lookup: answered as glibc parses it, also under AF_UNSPEC
    assert usocket.getaddrinfo("::1", 443, 0, S.SOCK_STREAM) == S.getaddrinfo("::1", 443, 0, S.SOCK_STREAM)


NI_SOCKADDRS = [("127.0.0.1", 80), ("127.1", 53), ("1.2.3.4", 0), ("1.2.3.4", -1), ("1.2.3.4", 70000),
                ("1.2.3.4", 2**31), ("1.2.3.4", True), ("1.2.3.4", "80"), ("1.2.3.4", 80.0), ("1.2.3.4", 80, 0),
                ("1.2.3.4", 80, 0, 0), ("::1", 80), ("::1", 80, 1, 2), ("::1", 80, 2**20), ("::1", 80, -1),
                ("::1", 80, 0, -1), ("::1", 80, 0, 2**40), ("::1", 80, None), ("fe80::1%lo", 22, 0, 0),
                ("fe80::1", 22, 0, 1), ("*", 80), ("", 80), ("localhost", 80), ("a\0b", 1), (b"1.2.3.4", 1),
                ("1.2.3.4",), ("1.2.3.4", 1, 2, 3, 4), ["1.2.3.4", 1], "1.2.3.4", ("\udc80", 1),
                ("::ffff:1.2.3.4", 80), ("::ffff:1.2.3.4", 80, 0, 0), ("0x7f.1", 7)]
NI_FLAGS = [S.NI_NUMERICHOST, S.NI_NUMERICHOST | S.NI_NUMERICSERV, S.NI_NUMERICHOST | S.NI_DGRAM,
            S.NI_NUMERICHOST | S.NI_NAMEREQD, S.NI_NUMERICHOST | 0x100, S.NI_NUMERICHOST | S.NI_NOFQDN, "1", 2**31]


@pytest.mark.parametrize("sockaddr,flags", list(itertools.product(NI_SOCKADDRS, NI_FLAGS)), ids=repr)
def test_getnameinfo_numeric_matches_the_stdlib(no_runtime: None, sockaddr: Any, flags: Any) -> None:
    assert outcome(usocket.getnameinfo, sockaddr, flags) == outcome(S.getnameinfo, sockaddr, flags)


BYNAME = ["127.0.0.1", "127.1", "0177.0.0.1", "0x7f.1", "4294967295", "255.255.255.255", "<broadcast>", "",
          "1.2.3", b"1.2.3.4", bytearray(b"1.2.3.4"), "::1", "::ffff:1.2.3.4", "fe80::1%lo", "*", 1, None, "a\0b",
          b"a\0b", "a..b", "\udc80"]


@pytest.mark.parametrize("name", BYNAME, ids=repr)
def test_gethostbyname_numeric_matches_the_stdlib(no_runtime: None, name: Any) -> None:
    assert outcome(usocket.gethostbyname, name) == outcome(S.gethostbyname, name)


@pytest.mark.parametrize("name", ["127.0.0.1", "127.1", "0177.0.0.1", "4294967295", "255.255.255.255", "",
                                  "1.2.3", b"1.2.3.4", bytearray(b"1.2.3.4"), "::1", "*", 1, "a\0b", "a..b"],
                         ids=repr)
def test_gethostbyname_ex_numeric_matches_the_stdlib(no_runtime: None, name: Any) -> None:
    assert outcome(usocket.gethostbyname_ex, name) == outcome(S.gethostbyname_ex, name)


@pytest.mark.parametrize("name", ["", "*", 1, None, b"a\0b", "a..b"], ids=repr)
def test_gethostbyaddr_argument_errors_match_the_stdlib(no_runtime: None, name: Any) -> None:
    assert outcome(usocket.gethostbyaddr, name) == outcome(S.gethostbyaddr, name)


def test_numeric_forms_that_are_names_to_glibc(no_runtime: None) -> None:
    """gethostbyname_r takes only all-digits-and-dots names as numbers: other inet_aton forms and
    v4-mapped literals go to the name services, which know no such name (glibc asks DNS; the stack
    would read them as numbers, so they are answered without asking)."""
    for name in ("0x7f.1", "::ffff:127.0.0.1"):
        assert outcome(usocket.gethostbyname_ex, name) == ("herror", (1, "Unknown host"))
        assert usocket.gethostbyname(name) == "127.0.0.1"
    # IPv6 addresses have no name on the IPv4 stack
    assert outcome(usocket.gethostbyaddr, "::1") == ("herror", (1, "Unknown host"))
    assert outcome(usocket.getnameinfo, ("::1", 80), S.NI_NAMEREQD) == ("gaierror", (S.EAI_NONAME,
                                                                                      "Name or service not known"))


# glibc's __inet_aton_exact reads each part with strtoul(part, &end, 0) and wants all of it read.
@pytest.mark.parametrize("host", ["0_7.0.0.1", "127.0.0.07 ", "0x", "127.0.0.0x", "1.0x.0.1", "07 .0.0.1"])
def test_inet_aton_forms_glibc_rejects(no_runtime: None, host: str) -> None:
    args = (host, 80, S.AF_INET, S.SOCK_STREAM, 0, S.AI_NUMERICHOST)
    assert outcome(usocket.getaddrinfo, *args) == outcome(S.getaddrinfo, *args)


def test_rfc3484_sort_like_glibc() -> None:
    """The orders glibc 2.36 gave in a namespace with 10.0.0.1/24 and IPv6 disabled."""
    cfg = StackConfig(address=bytes([10, 0, 0, 1]), prefix_len=24)
    # no gateway: 192.0.2.9 is unusable (rule 1), like the broadcast address; loopback has the
    # smaller scope (rule 8); the stack's own address first among the rest (rule 9), else the
    # answer's order (no prefix length is known without IPv6 addresses)
    answer = ["192.0.2.9", "10.0.0.200", "10.0.0.3", "255.255.255.255", "127.0.0.5", "10.0.0.1"]
    assert names.rfc3484_sort(answer, cfg) == [
        "127.0.0.5", "10.0.0.1", "10.0.0.200", "10.0.0.3", "192.0.2.9", "255.255.255.255"]
    assert names.rfc3484_sort(["10.0.0.2", "10.0.0.130", "10.0.0.3"], cfg) == ["10.0.0.2", "10.0.0.130", "10.0.0.3"]
    with_gw = cfg.replace(gateway=bytes([10, 0, 0, 254]))
    # link-local from a global source: scopes differ (rule 2)
    assert names.rfc3484_sort(["169.254.1.1", "192.0.2.9", "10.0.0.3"], with_gw) == [
        "192.0.2.9", "10.0.0.3", "169.254.1.1"]


def test_import_and_numeric_calls_start_no_runtime() -> None:
    code = (
        "import usocket, usocket.runtime as r\n"
        "assert usocket.getaddrinfo('10.1.1.1', 'http')[0][4] == ('10.1.1.1', 80)\n"
        "assert usocket.gethostbyname('10.1') == '10.0.0.1'\n"
        "assert usocket.gethostbyname_ex('10.0.0.1') == ('10.0.0.1', [], ['10.0.0.1'])\n"
        "assert usocket.getnameinfo(('10.0.0.1', 53), usocket.NI_NUMERICHOST | usocket.NI_DGRAM)"
        " == ('10.0.0.1', 'domain')\n"
        "assert usocket.getaddrinfo(None, 80, flags=usocket.AI_PASSIVE)[0][4] == ('0.0.0.0', 80)\n"
        "assert r._runtime is None, 'a runtime was started'\n"
        "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


# == 2. in-process: hosts table and a DNS server of our own =====================================
HOSTS = """\
127.0.0.1   localhost.example.test localhost
10.0.0.1    me.example.test me
10.0.0.7    web.example.test web   # comment
10.0.0.8    two.example.test two
10.0.0.8    second.example.test
::1         ip6-localhost
"""
# The zone the test's DNS server answers (search domain example.test); anything else: NXDOMAIN.
ZONE_A = {
    "host.example.test": ["10.0.0.7"],
    "multi.example.test": ["192.0.2.9", "10.0.0.200", "10.0.0.3", "127.0.0.5"],
    "far.other.test": ["10.0.0.30"],
}
ZONE_CNAME = {"www.example.test": "alias.example.test", "alias.example.test": "host.example.test"}
ZONE_PTR = {"20.0.0.10.in-addr.arpa": ["ptr.example.test"], "30.0.0.10.in-addr.arpa": ["far.other.test"]}
NODATA = {"nodata.example.test"}
FAIL = {"fail.example.test", "66.0.0.10.in-addr.arpa"}


def _answer(query: DnsMessage) -> DnsMessage:
    q = query.questions[0]
    name, rcode, answers = q.name.lower().rstrip("."), 0, []
    if name in FAIL:
        rcode = SERVFAIL
    elif q.qtype == TYPE_PTR and name in ZONE_PTR:
        answers = [DnsRecord(q.name, TYPE_PTR, CLASS_IN, 60, t) for t in ZONE_PTR[name]]
    elif q.qtype == TYPE_A and (name in ZONE_A or name in ZONE_CNAME):
        owner = q.name
        while name in ZONE_CNAME:
            answers.append(DnsRecord(owner, TYPE_CNAME, CLASS_IN, 60, ZONE_CNAME[name]))
            owner = name = ZONE_CNAME[name]
        answers += [DnsRecord(owner, TYPE_A, CLASS_IN, 60, a) for a in ZONE_A[name]]
    elif name not in NODATA:
        rcode = NXDOMAIN
    header = DnsHeader(id=query.header.id, qr=True, rd=True, ra=True, rcode=rcode)
    return DnsMessage(header, (q,), tuple(answers), ())


class DnsServer:
    """A UDP DNS server on the stack's own address (usocket sockets of the same runtime)."""

    def __init__(self) -> None:
        self.sock = usocket.socket(usocket.AF_INET, usocket.SOCK_DGRAM)
        self.sock.bind(("10.0.0.1", 53))
        self.questions: list[tuple[str, int]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            data, addr = self.sock.recvfrom(4096)
            if data == b"stop":
                return
            query = parse_message(data)
            self.questions.append((query.questions[0].name, query.questions[0].qtype))
            self.sock.sendto(build_message(_answer(query)), addr)

    def close(self) -> None:
        with usocket.socket(usocket.AF_INET, usocket.SOCK_DGRAM) as s:
            s.sendto(b"stop", ("10.0.0.1", 53))
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.sock.close()


@pytest.fixture
def make_runtime() -> Iterator[Callable[..., Any]]:
    """``make_runtime(hosts_text, dns=True)``: a runtime built like ``loop_runtime`` (10.0.0.1/24
    on an in-memory link, no network) with that hosts table, installed process-wide; with
    ``dns``, a DNS server of the test's own on 10.0.0.1:53 and the search domain example.test."""
    from usocket.link.memory import link_pair
    from usocket.runtime import Runtime, set_runtime

    made: list[tuple[Any, Any, Any, DnsServer | None]] = []

    def make(hosts_text: str = HOSTS, dns: bool = True) -> Any:
        rc = ResolverConfig(nameservers=["10.0.0.1"] if dns else [], search=["example.test"], timeout=2,
                            attempts=1, hosts=parse_hosts(hosts_text), host_lines=parse_host_lines(hosts_text))
        end, other = link_pair()
        rt = Runtime(StackConfig(address=bytes([10, 0, 0, 1]), prefix_len=24, resolver=rc), link=end, divert=False)
        rt.start()
        prev = set_runtime(rt)
        made.append((rt, other, prev, DnsServer() if dns else None))
        return rt

    try:
        yield make
    finally:
        for rt, other, prev, server in reversed(made):
            if server is not None:
                server.close()
            set_runtime(prev)
            rt.stop()
            other.close()


def test_names_through_dns_cname_chain_and_search(make_runtime: Callable[..., Any]) -> None:
    make_runtime()
    want = [(S.AF_INET, S.SOCK_STREAM, 6, "host.example.test", ("10.0.0.7", 80)),
            (S.AF_INET, S.SOCK_DGRAM, 17, "", ("10.0.0.7", 80)), (S.AF_INET, S.SOCK_RAW, 0, "", ("10.0.0.7", 80))]
    assert usocket.getaddrinfo("www.example.test", 80, flags=S.AI_CANONNAME) == want
    assert usocket.getaddrinfo("www", 80, S.AF_INET, 0, 0, S.AI_CANONNAME) == want  # the search list
    assert usocket.getaddrinfo("www.example.test", 80, S.AF_INET, S.SOCK_STREAM) == [
        (S.AF_INET, S.SOCK_STREAM, 6, "", ("10.0.0.7", 80))]
    assert usocket.gethostbyname_ex("www.example.test") == (
        "host.example.test", ["www.example.test", "alias.example.test"], ["10.0.0.7"])
    assert usocket.gethostbyname("www") == "10.0.0.7"


def test_several_addresses_sorted_like_glibc(make_runtime: Callable[..., Any]) -> None:
    make_runtime()
    got = [e[4][0] for e in usocket.getaddrinfo("multi.example.test", 80, S.AF_INET, S.SOCK_STREAM)]
    assert got == ["127.0.0.5", "10.0.0.200", "10.0.0.3", "192.0.2.9"]  # as glibc ordered them
    assert usocket.gethostbyname("multi.example.test") == "127.0.0.5"  # the first getaddrinfo answer
    # gethostbyname_r does not sort: the answer's order
    assert usocket.gethostbyname_ex("multi.example.test")[2] == ZONE_A["multi.example.test"]


def test_lookup_failures_carry_glibc_codes(make_runtime: Callable[..., Any]) -> None:
    make_runtime()
    cases = [("nosuch.example.test", S.EAI_NONAME, "Name or service not known"),
             ("nodata.example.test", S.EAI_NODATA, "No address associated with hostname"),
             ("fail.example.test", S.EAI_AGAIN, "Temporary failure in name resolution")]
    for name, code, text in cases:
        for fn in (lambda n: usocket.getaddrinfo(n, 80), usocket.gethostbyname, usocket.gethostbyname_ex,
                   usocket.gethostbyaddr):
            with pytest.raises(socket.gaierror) as ei:
                fn(name)
            assert ei.value.args == (code, text), (name, fn)
    with pytest.raises(socket.herror) as ei:
        usocket.gethostbyaddr("10.0.0.99")
    assert ei.value.args == (1, "Unknown host")
    with pytest.raises(socket.herror) as ei:  # CPython's setipaddr knows it, gethostbyname_r asks DNS
        usocket.gethostbyname_ex("<broadcast>")
    assert ei.value.args == (1, "Unknown host")
    with pytest.raises(socket.herror) as ei:
        usocket.gethostbyaddr("10.0.0.66")  # SERVFAIL
    assert ei.value.args == (2, "Host name lookup failure")


def test_hosts_table_first(make_runtime: Callable[..., Any]) -> None:
    make_runtime()
    assert usocket.getaddrinfo("web", 80, S.AF_INET, S.SOCK_STREAM, 0, S.AI_CANONNAME) == [
        (S.AF_INET, S.SOCK_STREAM, 6, "web.example.test", ("10.0.0.7", 80))]
    assert usocket.gethostbyname_ex("two") == ("two.example.test", ["two"], ["10.0.0.8"])
    assert usocket.gethostbyname("localhost") == "127.0.0.1"
    assert usocket.gethostbyaddr("10.0.0.7") == ("web.example.test", ["web"], ["10.0.0.7"])
    assert usocket.gethostbyaddr("web") == ("web.example.test", ["web"], ["10.0.0.7"])  # a name: resolved first
    assert usocket.gethostbyaddr("10.0.0.20") == ("ptr.example.test", [], ["10.0.0.20"])  # PTR through DNS
    assert usocket.gethostbyaddr("0x0a.0.0.20") == ("ptr.example.test", [], ["10.0.0.20"])
    assert usocket.getfqdn("web") == "web.example.test"
    assert usocket.getfqdn("10.0.0.20") == "ptr.example.test"
    assert usocket.getfqdn("nosuch.example.test") == "nosuch.example.test"


def test_gethostbyaddr_takes_the_first_hosts_line(make_runtime: Callable[..., Any]) -> None:
    make_runtime(dns=False)
    assert usocket.gethostbyaddr("10.0.0.8") == ("two.example.test", ["two"], ["10.0.0.8"])


def test_getnameinfo_through_the_stack(make_runtime: Callable[..., Any]) -> None:
    make_runtime()
    assert usocket.getnameinfo(("10.0.0.7", 80), 0) == ("web.example.test", "http")
    assert usocket.getnameinfo(("10.0.0.7", 53), S.NI_DGRAM) == ("web.example.test", "domain")
    assert usocket.getnameinfo(("10.0.0.7", 80), S.NI_NUMERICSERV) == ("web.example.test", "80")
    assert usocket.getnameinfo(("10.0.0.7", 80), S.NI_NUMERICHOST) == ("10.0.0.7", "http")
    assert usocket.getnameinfo(("10.0.0.20", 65000), 0) == ("ptr.example.test", "65000")  # PTR, no service
    assert usocket.getnameinfo(("10.0.0.99", 80), 0) == ("10.0.0.99", "http")  # no name: numeric
    with pytest.raises(socket.gaierror) as ei:
        usocket.getnameinfo(("10.0.0.99", 80), S.NI_NAMEREQD)
    assert ei.value.args == (S.EAI_NONAME, "Name or service not known")
    with pytest.raises(socket.gaierror) as ei:
        usocket.getnameinfo(("10.0.0.66", 80), 0)  # SERVFAIL: TRY_AGAIN is EAI_AGAIN
    assert ei.value.errno == S.EAI_AGAIN
    # NI_NOFQDN strips the local domain: from localhost's canonical name, localhost.example.test
    assert usocket.getnameinfo(("10.0.0.7", 80), S.NI_NOFQDN) == ("web", "http")
    assert usocket.getnameinfo(("10.0.0.30", 80), S.NI_NOFQDN) == ("far.other.test", "http")


def test_etc_hosts_localhost_like_the_stdlib(make_runtime: Callable[..., Any]) -> None:
    """The real /etc/hosts in the stack's table: localhost answers what glibc's files backend
    answers (IPv4 only; glibc's AF_UNSPEC answer may add ::1)."""
    with open("/etc/hosts") as f:
        text = f.read()
    if "localhost" not in parse_hosts(text):
        pytest.skip("no localhost in /etc/hosts: glibc would ask DNS")
    make_runtime(text, dns=False)
    for args in [("localhost", 80, S.AF_INET, 0, 0, S.AI_CANONNAME), ("localhost", "http", S.AF_INET, S.SOCK_STREAM),
                 ("LocalHost", None, S.AF_INET)]:
        assert outcome(usocket.getaddrinfo, *args) == outcome(S.getaddrinfo, *args)
    assert usocket.gethostbyname("localhost") == S.gethostbyname("localhost")
    assert usocket.gethostbyname_ex("localhost") == S.gethostbyname_ex("localhost")


def test_no_nameserver_is_a_temporary_failure(make_runtime: Callable[..., Any]) -> None:
    make_runtime(dns=False)
    with pytest.raises(socket.gaierror) as ei:
        usocket.getaddrinfo("nosuch.example.test", 80)
    assert ei.value.errno == S.EAI_AGAIN
    with pytest.raises(socket.gaierror) as ei:
        usocket.getaddrinfo("", 80)  # no name at all: not found, no lookup
    assert ei.value.errno == S.EAI_NONAME


def test_sockets_resolve_host_names_through_gethostbyname(make_runtime: Callable[..., Any]) -> None:
    make_runtime()
    with usocket.socket(usocket.AF_INET, usocket.SOCK_DGRAM) as srv, \
            usocket.socket(usocket.AF_INET, usocket.SOCK_DGRAM) as cli:
        srv.bind(("me", 0))  # hosts table
        srv.settimeout(5)
        port = srv.getsockname()[1]
        assert srv.getsockname()[0] == "10.0.0.1"
        cli.sendto(b"by hosts", ("me.example.test", port))
        cli.connect(("host.example.test", 9))  # DNS: 10.0.0.7
        assert cli.getpeername() == ("10.0.0.7", 9)
        assert srv.recvfrom(100) == (b"by hosts", (cli.getsockname()[0], cli.getsockname()[1]))


# == 3. the lab: dnsmasq's names, against glibc in the same namespace ==========================
PROBE = r"""
import json, socket, sys
def call(kind, args):
    try:
        if kind == "gai":
            return [[e[0], e[1], e[2], e[3], list(e[4])] for e in socket.getaddrinfo(*args)]
        if kind == "name":
            return socket.gethostbyname(*args)
        if kind == "ex":
            return list(socket.gethostbyname_ex(*args))
        if kind == "addr":
            return list(socket.gethostbyaddr(*args))
        if kind == "ni":
            return list(socket.getnameinfo(tuple(args[0]), args[1]))
        if kind == "fqdn":
            return socket.getfqdn(*args)
    except OSError as e:
        return [type(e).__name__, e.errno]
print(json.dumps([call(kind, args) for kind, args in json.loads(sys.argv[1])]))
"""


def _ours(kind: str, args: list[Any]) -> Any:
    try:
        if kind == "gai":
            return [[int(e[0]), int(e[1]), e[2], e[3], list(e[4])] for e in usocket.getaddrinfo(*args)]
        if kind == "name":
            return usocket.gethostbyname(*args)
        if kind == "ex":
            return list(usocket.gethostbyname_ex(*args))
        if kind == "addr":
            return list(usocket.gethostbyaddr(*args))
        if kind == "ni":
            return list(usocket.getnameinfo(tuple(args[0]), args[1]))
        if kind == "fqdn":
            return usocket.getfqdn(*args)
    except OSError as e:
        return [type(e).__name__, e.errno]
    raise AssertionError(kind)


def _rotation_of(got: list[Any], want: list[Any]) -> bool:
    """dnsmasq rotates the addresses of a name from one answer to the next."""
    return len(got) == len(want) and any(got == want[i:] + want[:i] for i in range(max(1, len(want))))


@pytest.mark.lab
def test_lab_names_answer_what_glibc_answers(lab: Any, mode: str, request: pytest.FixtureRequest) -> None:
    from lab_runtime import stack_ip

    d, net = lab.DOMAIN, lab.server_ip.rsplit(".", 1)[0]
    several = (f"multi.{d}", f"big.{d}")
    gai = socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_CANONNAME
    questions: list[tuple[str, list[Any]]] = [
        ("gai", [f"www.{d}", 80, *gai]), ("gai", ["server", "http", *gai]), ("gai", [f"multi.{d}", 80, *gai]),
        ("gai", [f"big.{d}", 80, *gai]), ("gai", ["hostsonly", 80, *gai]), ("gai", [f"override.{d}", 80, *gai]),
        ("gai", [lab.dns_nxdomain, 80, *gai]), ("gai", ["localhost", 80, *gai]), ("gai", [f"www.{d}", 443]),
        ("name", [f"multi.{d}"]), ("name", [f"big.{d}"]), ("name", ["server"]),
        ("ex", [f"www.{d}"]), ("ex", [f"big.{d}"]), ("ex", ["hostsonly"]), ("ex", [lab.dns_nxdomain]),
        ("addr", [lab.client_ip]), ("addr", [lab.server_ip]), ("addr", [f"{net}.77"]), ("addr", [f"www.{d}"]),
        ("ni", [[lab.client_ip, 53], socket.NI_DGRAM]), ("ni", [[f"{net}.77", 80], 0]),
        ("ni", [[f"{net}.77", 80], socket.NI_NAMEREQD]), ("fqdn", ["client"]),
    ]
    # glibc first, while the kernel may still send; then the stack, with the kernel's egress blocked
    want = json.loads(lab.run(lab.client_ns, [sys.executable, "-c", PROBE, json.dumps(questions)]).stdout)
    request.getfixturevalue("facade_runtime")
    before = len(lab.dns_queries())
    got = [_ours(kind, args) for kind, args in questions]
    for (kind, args), w, g in zip(questions, want, got, strict=True):
        where = f"{kind}{tuple(args)}: glibc {w!r}, usocket {g!r}"
        if args[0] in several and kind == "gai":  # not re-sorted (see rfc3484_sort), one canonname
            assert _rotation_of([e[4] for e in g], [e[4] for e in w]), where
            assert [e[:4] for e in g] == [e[:4] for e in w], where
        elif args[0] in several and kind == "name":
            assert g in lab.dns_records[args[0]], where
        elif args[0] in several and kind == "ex":
            assert g[:2] == w[:2] and _rotation_of(g[2], w[2]), where
        else:
            assert g == w, where
    assert len(got[3]) == 40, got[3]  # big: the truncated answer was asked again over TCP
    queries = lab.dns_queries()[before:]
    assert queries and {ip for _, _, ip in queries} == {stack_ip(lab, mode)}, queries  # the stack asked
