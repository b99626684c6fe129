"""A stub resolver (sans-IO) over the stack's UDP: what glibc's getaddrinfo does for IPv4.

``Resolver(stack).resolve(name, callback)`` answers from, in order: a numeric address
(``inet_aton`` forms, like glibc), the hosts table (``config.hosts``), the cache, then DNS.
``callback`` gets a :class:`DnsResult` or a :class:`DnsError` whose ``code`` is the
``socket.EAI_*`` value ``getaddrinfo`` raises as ``gaierror``:

==============================================  ===============================================
outcome                                         code (h_errno kept in ``DnsError.h_errno``)
==============================================  ===============================================
NXDOMAIN; invalid name                          ``EAI_NONAME`` (HOST_NOT_FOUND)
the name exists, no record of the type (NODATA)  ``EAI_NODATA`` (NO_DATA) - glibc's getaddrinfo
                                                returns ``-EAI_NODATA`` here ("No address
                                                associated with hostname"; sysdeps
                                                getaddrinfo.c, "the name is known, though")
no reply in time, an ICMP error (port            ``EAI_AGAIN`` (TRY_AGAIN), as glibc's res_send
unreachable), SERVFAIL, REFUSED or NOTIMP
from every server; no nameserver
FORMERR, other rcodes, CNAME chain too long      ``EAI_NONAME`` (NO_RECOVERY: glibc's getaddrinfo
                                                folds it into EAI_NONAME); see
                                                :attr:`Resolver.EAI_FOR_HERRNO`
==============================================  ===============================================

How names are tried is glibc's ``res_search``: a name with a trailing dot is asked as-is
only; a name with at least ``ndots`` dots is asked as-is first, then with each search domain
appended, then (if not yet tried) as-is last. A NODATA or SERVFAIL answer for one candidate
lets the search go on; a timeout or a hard failure stops the search list (the as-is try
still happens). When everything fails the error is the first as-is try's, else NO_DATA if any
candidate had one, else TRY_AGAIN if any SERVFAIL, else the last one's.

Each question is one :class:`DnsQuery`: a random 16-bit id, a fresh UDP endpoint closed
afterwards, the nameservers in order (``rotate`` starts each query one server further),
``attempts`` rounds of ``timeout`` seconds per try. The endpoint's source port is drawn
uniformly from :attr:`Resolver.source_ports` (1024-65535, RFC 5452: as much entropy as
possible; a port in use is retried ``bind_tries`` times, then an ephemeral port is taken).

Like glibc's ``send_dg`` the endpoint is *connected* to the server being asked (and
re-connected for the next one), so an ICMP port unreachable from a dead server reaches it:
the query moves on to the next try at once instead of waiting out the timeout. The price, as
in glibc: a late reply from a server already given up on no longer arrives. Replies must come
from a server the query was sent to, from port 53; their header is checked before anything
else is decoded (the QR bit, opcode 0, the id, exactly one question), then the question (type,
class, and the name compared as lower-cased wire form: ``foo;bar`` and ``foo\\;bar`` are one
name); anything else is counted and ignored while the query keeps waiting. Only then is the
message decoded, at most :attr:`Resolver.max_records` records per section. A reply over 512
bytes, which RFC 1035 does not expect without EDNS0, is accepted (counted ``rx.over_512``) as
glibc accepts it (its ``send_dg`` grows the buffer to 64 KiB): servers and middleboxes that
send one do exist, and the checks above bound what it costs. SERVFAIL/NOTIMP/REFUSED move on
to the next server at once (glibc ``res_send``).

CNAME chains are followed inside the answer, then by asking the chain's last name again
(``max_cname_depth`` names at most). Answers are cached (LRU, TTL = the minimum along the
chain, capped); NXDOMAIN/NODATA answers carrying an SOA are cached negatively for
min(SOA TTL, SOA MINIMUM) (RFC 2308), in a smaller LRU.

Callbacks run inside the stack thread; for numeric, hosts and cached answers they run before
``resolve`` returns.
"""
from __future__ import annotations

import errno as _errno
import socket as _socket
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..config import ResolverConfig
from ..wire import MalformedError
from ..wire.addr import ANY_IP, ip_aton
from ..wire.dns import (
    CLASS_IN,
    MAX_UDP_MESSAGE,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    TYPE_A,
    TYPE_CNAME,
    TYPE_PTR,
    TYPE_SOA,
    DnsMessage,
    Soa,
    build_query,
    encode_name,
    parse_header,
    parse_message,
    parse_question,
    reverse_name,
    wire_key,
)
from .tcp.connection import CLOSED, TcpConnection
from .udp import UdpEndpoint, UdpLayer

if TYPE_CHECKING:
    from ..core.timers import Timer
    from ..proto.icmp import IcmpError
    from ..stack import Stack

DNS_PORT = 53

# netdb.h h_errno values (what gethostbyname/gethostbyaddr report, socket.herror codes)
HOST_NOT_FOUND = 1
TRY_AGAIN = 2
NO_RECOVERY = 3
NO_DATA = 4

EAI_BADFLAGS: int = getattr(_socket, "EAI_BADFLAGS", -1)
EAI_NONAME: int = getattr(_socket, "EAI_NONAME", -2)
EAI_AGAIN: int = getattr(_socket, "EAI_AGAIN", -3)
EAI_FAIL: int = getattr(_socket, "EAI_FAIL", -4)
EAI_NODATA: int = getattr(_socket, "EAI_NODATA", -5)
EAI_FAMILY: int = getattr(_socket, "EAI_FAMILY", -6)
EAI_SOCKTYPE: int = getattr(_socket, "EAI_SOCKTYPE", -7)
EAI_SERVICE: int = getattr(_socket, "EAI_SERVICE", -8)
EAI_ADDRFAMILY: int = getattr(_socket, "EAI_ADDRFAMILY", -9)

# glibc's gai_strerror / hstrerror texts (what the stdlib's exceptions carry).
GAI_STRERROR = {
    EAI_BADFLAGS: "Bad value for ai_flags",
    EAI_NONAME: "Name or service not known",
    EAI_AGAIN: "Temporary failure in name resolution",
    EAI_FAIL: "Non-recoverable failure in name resolution",
    EAI_NODATA: "No address associated with hostname",
    EAI_FAMILY: "ai_family not supported",
    EAI_SOCKTYPE: "ai_socktype not supported",
    EAI_SERVICE: "Servname not supported for ai_socktype",
    EAI_ADDRFAMILY: "Address family for hostname not supported",
}
H_STRERROR = {
    HOST_NOT_FOUND: "Unknown host",
    TRY_AGAIN: "Host name lookup failure",
    NO_RECOVERY: "Unknown server error",
    NO_DATA: "No address associated with name",
}


class DnsResult(NamedTuple):
    """A successful lookup. ``values`` are dotted-quad strings for A, names for PTR, decoded
    rdata for other types. ``canonical`` is the last name of the CNAME chain (the name
    itself for numeric answers, the first name of the hosts line). ``aliases`` are the other
    names, as ``gethostbyname_ex`` reports them: the owner names along the CNAME chain, or the
    other names of the hosts lines. ``ttl`` is in seconds (0: not from DNS)."""

    name: str
    canonical: str
    values: list[Any]
    ttl: int
    source: str  # "numeric", "hosts", "cache" or "dns"
    aliases: tuple[str, ...] = ()

    @property
    def addresses(self) -> list[Any]:
        return self.values


class DnsError(Exception):
    """A failed lookup: ``code`` is the ``socket.EAI_*`` value, ``h_errno`` the netdb one."""

    def __init__(self, code: int, name: str, h_errno: int, reason: str = "") -> None:
        self.code = code
        self.strerror = GAI_STRERROR.get(code, "Unknown error")
        self.name = name
        self.h_errno = h_errno
        self.reason = reason
        super().__init__(code, self.strerror)

    def __str__(self) -> str:
        return f"[Errno {self.code}] {self.strerror}"

    def as_gaierror(self) -> OSError:
        """The ``socket.gaierror`` getaddrinfo would raise."""
        return _socket.gaierror(self.code, self.strerror)

    def as_herror(self) -> OSError:
        """The ``socket.herror`` gethostbyaddr would raise."""
        return _socket.herror(self.h_errno, H_STRERROR.get(self.h_errno, "Resolver internal error"))


Callback = Callable[[Any], None]  # receives a DnsResult or a DnsError


def inet_aton_exact(text: str) -> str | None:
    """glibc ``__inet_aton_exact``: ``a``, ``a.b``, ``a.b.c``, ``a.b.c.d`` with decimal, octal
    (leading 0) or hex (0x) parts, nothing else. Returns the dotted quad or None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    vals = []
    for p in parts:  # each part as strtoul(p, &end, 0) reads it, all of it
        if p[:2] in ("0x", "0X") and len(p) > 2:
            digits, base, allowed = p[2:], 16, "0123456789abcdefABCDEF"
        elif p[:1] == "0":
            digits, base, allowed = p, 8, "01234567"
        else:
            digits, base, allowed = p, 10, "0123456789"
        if not digits or any(c not in allowed for c in digits):
            return None
        vals.append(int(digits, base))
    last_bits = 8 * (5 - len(vals))
    if any(v > 255 for v in vals[:-1]) or vals[-1] >= 1 << last_bits:
        return None
    n = 0
    for v in vals[:-1]:
        n = (n << 8) | v
    n = (n << last_bits) | vals[-1]
    return _socket.inet_ntoa(n.to_bytes(4, "big"))


# -- the cache -------------------------------------------------------------------------------
class CacheEntry(NamedTuple):
    status: int  # 0: positive, else the h_errno (HOST_NOT_FOUND, NO_DATA) of a negative entry
    canonical: str
    values: list[Any]
    expires: float
    aliases: tuple[str, ...] = ()


class DnsCache:
    """Answers by ``(wire_key, qtype)``, each LRU-bounded; negative entries kept apart so a
    flood of NXDOMAINs cannot evict the positive ones. NXDOMAIN is stored with qtype 0: it
    holds for every type of the name (RFC 2308 section 5)."""

    def __init__(self, size: int = 1024, negative_size: int = 256) -> None:
        self.size = size
        self.negative_size = negative_size
        self.positive: OrderedDict[tuple[bytes, int], CacheEntry] = OrderedDict()
        self.negative: OrderedDict[tuple[bytes, int], CacheEntry] = OrderedDict()

    def get(self, name: str, qtype: int, now: float) -> CacheEntry | None:
        key = (wire_key(name), qtype)
        for table, k in ((self.positive, key), (self.negative, key), (self.negative, (key[0], 0))):
            entry = table.get(k)
            if entry is None:
                continue
            if entry.expires <= now:
                del table[k]
                continue
            table.move_to_end(k)
            return entry
        return None

    def put(self, name: str, qtype: int, entry: CacheEntry) -> None:
        if entry.status == 0:
            table, limit = self.positive, self.size
        else:
            table, limit = self.negative, self.negative_size
        key = (wire_key(name), 0 if entry.status == HOST_NOT_FOUND else qtype)
        table[key] = entry
        table.move_to_end(key)
        while len(table) > limit:
            table.popitem(last=False)

    def clear(self) -> None:
        self.positive.clear()
        self.negative.clear()

    def __len__(self) -> int:
        return len(self.positive) + len(self.negative)


# -- one question ----------------------------------------------------------------------------
class Outcome(NamedTuple):
    """What one answered (or unanswered) question means."""

    status: int  # 0 (records found) or an h_errno
    canonical: str = ""
    values: Sequence[Any] = ()
    ttl: int = 0
    follow: str | None = None  # CNAME target to ask next (the chain was cut short)
    servfail: bool = False
    negative_ttl: int | None = None  # cacheable negative answer (an SOA was present)
    aliases: tuple[str, ...] = ()  # CNAME owner names walked to reach ``canonical``


class QueryEndpoint(UdpEndpoint):
    """The UDP endpoint of one query: hands datagrams and ICMP errors to it, no queueing."""

    def __init__(self, layer: UdpLayer, query: DnsQuery) -> None:
        super().__init__(layer)
        self.query = query

    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        self.query.on_datagram(data, src_ip, src_port)

    def on_error(self, err: IcmpError) -> None:
        self.query.on_error(err)


class DnsQuery:
    """One question sent to the nameservers until a usable reply or the tries run out;
    then ``on_done(query, message_or_None)``. ``bad_rcode`` holds the last SERVFAIL/NOTIMP/
    REFUSED seen and ``icmp_errno`` the last ICMP error (ECONNREFUSED...): both make the query
    move on to the next try at once."""

    def __init__(self, resolver: Resolver, qname: str, qtype: int,
                 on_done: Callable[[DnsQuery, DnsMessage | None], None]) -> None:
        self.resolver = resolver
        self.stack = resolver.stack
        self.qname = qname
        self.qtype = qtype
        self.key = wire_key(qname)
        self.on_done = on_done
        self.qid = self.stack.rng.randrange(0x10000)
        self.wire = build_query(self.qid, qname, qtype)
        self.tries = resolver.plan_tries()
        self.index = 0
        self.sent_to: set[bytes] = set()
        self.last_server: bytes | None = None
        self.last_timeout = 5.0
        self.endpoint: UdpEndpoint | None = None
        self.timer: Timer | None = None
        self.bad_rcode: int | None = None
        self.icmp_errno: int | None = None
        self.deferred = False
        self.done = False

    def start(self) -> None:
        if not self.tries:
            self.finish(None)
            return
        try:
            self.endpoint = self.resolver.open_endpoint(self)
        except OSError:
            self.resolver.c["drop.no_port"] += 1
            self.finish(None)
            return
        self.send_next()

    def send_next(self) -> None:
        """Send to the next server of the plan and arm its timeout; finish when none is left."""
        c = self.resolver.c
        udp = self.stack.udp
        while self.index < len(self.tries) and not self.done:
            server, timeout = self.tries[self.index]
            self.index += 1
            try:
                assert self.endpoint is not None
                udp.connect(self.endpoint, server, DNS_PORT)
                udp.send(self.endpoint, self.wire)
            except OSError:
                c["tx.error"] += 1
                continue
            c["queries_sent"] += 1
            if self.index > 1:
                c["tx.retry"] += 1
            self.sent_to.add(server)
            self.last_server = server
            self.last_timeout = timeout
            self.timer = self.stack.call_later(timeout, self._timed_out)
            return
        if not self.done:
            if self.bad_rcode is None and self.icmp_errno is None:
                c["timeout"] += 1
            self.finish(None)

    def _timed_out(self) -> None:
        self.timer = None
        self.send_next()

    def on_error(self, err: IcmpError) -> None:
        """An ICMP error about our datagram to the server being asked (the endpoint is
        connected to it): glibc's ``send_dg`` gives up on that server at once (POLLERR, or
        ECONNREFUSED from ``recvfrom``), so do we."""
        if self.done or self.deferred:
            return
        c = self.resolver.c
        c["rx.icmp_error"] += 1
        c["rx.icmp_error." + _errno.errorcode.get(err.errno, str(err.errno))] += 1
        self.icmp_errno = err.errno
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.send_next()

    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        if self.done or self.deferred:
            return
        msg = self.resolver.validate_reply(self, data, src_ip, src_port)
        if msg is None:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        h = msg.header
        if h.tc:
            self.resolver.c["rx.truncated"] += 1
            used = self.resolver.on_truncated(self, msg)
            if used is Resolver.DEFERRED:
                self.deferred = True
                return
            self.finish(used)  # type: ignore[arg-type]
            return
        if h.rcode in (SERVFAIL, NOTIMP, REFUSED):
            self.resolver.c[f"rx.rcode{h.rcode}"] += 1
            self.bad_rcode = h.rcode
            self.send_next()
            return
        self.finish(msg)

    def finish(self, msg: DnsMessage | None) -> None:
        """End the query with ``msg`` (None: no usable answer). Public for TCP fallbacks."""
        if self.done:
            return
        self.done = True
        self._release()
        self.on_done(self, msg)

    def cancel(self) -> None:
        self.done = True
        self._release()

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.endpoint is not None:
            self.stack.udp.close(self.endpoint)
            self.endpoint = None


# -- one user request -------------------------------------------------------------------------
class Lookup:
    """One ``resolve``/``resolve_ptr`` in progress: walks the search plan, follows CNAMEs,
    reports once. ``cancel()`` abandons it without calling back."""

    def __init__(self, resolver: Resolver, name: str, qtype: int, callback: Callback,
                 plan: list[tuple[str, str]]) -> None:
        self.resolver = resolver
        self.name = name
        self.qtype = qtype
        self.callback = callback
        self.plan = plan  # (absolute name, kind): kind is "first", "search" or "last"
        self.step = -1
        self.query: DnsQuery | None = None
        self.done = False
        # glibc res_search bookkeeping
        self.saved_herrno: int | None = None
        self.got_nodata = False
        self.got_servfail = False
        self.stop_search = False
        self.last_status = HOST_NOT_FOUND
        # CNAME chain of the current step
        self.chain_ttl: int | None = None
        self.depth = 0
        self.aliases: tuple[str, ...] = ()
        self.source = "dns"

    # -- driving ----------------------------------------------------------------------------
    def next_step(self) -> None:
        while not self.done:
            self.step += 1
            if self.step >= len(self.plan):
                self.fail()
                return
            qname, kind = self.plan[self.step]
            if kind == "search" and self.stop_search:
                continue
            self.chain_ttl = None
            self.depth = 0
            self.aliases = ()
            self.ask(qname)
            return

    def ask(self, qname: str) -> None:
        """Ask ``qname`` (the step's name or a CNAME target): from the cache or the network."""
        r = self.resolver
        entry = r.cache.get(qname, self.qtype, r.stack.now)
        if entry is not None:
            r.c["cache.hit"] += 1
            ttl = max(0, int(entry.expires - r.stack.now))
            if self.source == "dns" and self.depth == 0:
                self.source = "cache"
            self.step_done(Outcome(entry.status, entry.canonical, entry.values, ttl, aliases=entry.aliases))
            return
        r.c["cache.miss"] += 1
        self.source = "dns"
        self.query = DnsQuery(r, qname, self.qtype, self.query_done)
        r.queries.add(self.query)
        self.query.start()

    def query_done(self, query: DnsQuery, msg: DnsMessage | None) -> None:
        r = self.resolver
        r.queries.discard(query)
        self.query = None
        outcome = r.classify(query, msg)
        r.remember(query.qname, query.qtype, outcome)
        self.step_done(outcome)

    def step_done(self, outcome: Outcome) -> None:
        """Combine ``outcome`` with the chain so far, then succeed or apply the search rules."""
        if outcome.status == 0 or outcome.follow is not None:
            self.aliases += outcome.aliases
            self.chain_ttl = outcome.ttl if self.chain_ttl is None else min(self.chain_ttl, outcome.ttl)
        follow = outcome.follow
        if follow is not None:
            self.depth += 1
            if self.depth >= self.resolver.max_cname_depth:
                self.resolver.c["drop.cname_depth"] += 1
                outcome = Outcome(NO_RECOVERY)
            else:
                self.ask(follow)
                return
        if outcome.status == 0:
            ttl = outcome.ttl if self.chain_ttl is None else self.chain_ttl
            if self.depth:  # the step's own name resolves through the whole chain
                qname = self.plan[self.step][0]
                self.resolver.remember(qname, self.qtype, Outcome(0, outcome.canonical, outcome.values, ttl,
                                                                  aliases=self.aliases))
            self.succeed(DnsResult(self.name, outcome.canonical, list(outcome.values), ttl, self.source,
                                   self.aliases))
            return
        status = outcome.status
        self.last_status = status
        kind = self.plan[self.step][1]
        if kind == "first":
            self.saved_herrno = status
        elif kind == "search":
            if status == NO_DATA:
                self.got_nodata = True
            elif status == TRY_AGAIN and outcome.servfail:
                self.got_servfail = True
            elif status != HOST_NOT_FOUND:
                self.stop_search = True
        self.next_step()

    # -- reporting --------------------------------------------------------------------------
    def fail(self) -> None:
        if self.saved_herrno is not None:
            status = self.saved_herrno
        elif self.got_nodata:
            status = NO_DATA
        elif self.got_servfail:
            status = TRY_AGAIN
        else:
            status = self.last_status
        self.report(self.resolver.error(self.name, status))

    def succeed(self, result: DnsResult) -> None:
        self.resolver.c["ok"] += 1
        self.report(result)

    def report(self, result: DnsResult | DnsError) -> None:
        if self.done:
            return
        self.done = True
        self.resolver.lookups.discard(self)
        self.callback(result)

    def cancel(self) -> None:
        if self.done:
            return
        self.done = True
        self.resolver.lookups.discard(self)
        if self.query is not None:
            self.resolver.queries.discard(self.query)
            self.query.cancel()
            self.query = None


class Resolver:
    """The stub resolver of one stack. Subclass to change a step (see the method docs)."""

    DEFERRED = object()  # returned by on_truncated when it will finish the query itself

    # h_errno -> the EAI code getaddrinfo raises. glibc's getaddrinfo actually reports
    # NO_RECOVERY as EAI_NONAME and, since res_send treats REFUSED/NOTIMP like SERVFAIL (try
    # the next server, then TRY_AGAIN), all-REFUSED as EAI_AGAIN. We follow glibc exactly,
    # since programs compare these codes with what the stdlib raises.
    EAI_FOR_HERRNO = {HOST_NOT_FOUND: EAI_NONAME, NO_DATA: EAI_NODATA, TRY_AGAIN: EAI_AGAIN,
                      NO_RECOVERY: EAI_NONAME}
    max_cname_depth = 8
    # Records decoded per section of a reply: a 64 KiB reply could hold ~6000 (see validate_reply).
    max_records = 256
    # Source ports are drawn uniformly from this range (None: the stack's ephemeral allocator);
    # a port in use (EADDRINUSE: one of ours, or the host kernel's in shared mode) is redrawn
    # up to ``bind_tries`` times before falling back to an ephemeral port. The range is wide
    # for entropy (RFC 5452 section 10); the cost is that a program binding a fixed port of
    # this stack while a query holds it gets EADDRINUSE for that moment.
    source_ports: tuple[int, int] | None = (1024, 65535)
    bind_tries = 8
    query_endpoint_class = QueryEndpoint
    max_ttl = 86400  # positive answers are not kept longer than a day
    max_negative_ttl = 3600  # RFC 2308 section 5: one to three hours at most
    cache_size = 1024
    negative_cache_size = 256

    def __init__(self, stack: Stack, config: ResolverConfig | None = None) -> None:
        self.stack = stack
        self.config = config if config is not None else stack.config.resolver
        self.c = stack.counters.layer("dns")
        self.cache = DnsCache(self.cache_size, self.negative_cache_size)
        self.lookups: set[Lookup] = set()
        self.queries: set[DnsQuery] = set()
        self._rotation = 0

    # -- public API -------------------------------------------------------------------------
    def resolve(self, name: str, callback: Callback, qtype: int = TYPE_A) -> Lookup:
        """Look ``name`` up; ``callback(DnsResult | DnsError)`` is called exactly once
        (unless the returned :class:`Lookup` is cancelled)."""
        self.c["lookup"] += 1
        lookup = Lookup(self, name, qtype, callback, [])
        self.lookups.add(lookup)
        if qtype == TYPE_A:
            addr = inet_aton_exact(name)
            if addr is not None:
                self.c["numeric"] += 1
                lookup.succeed(DnsResult(name, name, [addr], 0, "numeric"))
                return lookup
            addrs = self.hosts_lookup(name)
            if addrs:
                self.c["hosts"] += 1
                canonical, aliases = self.hosts_names(name)
                lookup.succeed(DnsResult(name, canonical, addrs, 0, "hosts", aliases))
                return lookup
        plan = self.search_plan(name)
        if not plan:
            self.c["invalid_name"] += 1
            lookup.report(self.error(name, HOST_NOT_FOUND, "invalid name"))
            return lookup
        lookup.plan = plan
        lookup.next_step()
        return lookup

    def resolve_ptr(self, ip_text: str, callback: Callback) -> Lookup:
        """The names of IPv4 address ``ip_text`` (hosts table first, then a PTR query)."""
        self.c["lookup"] += 1
        lookup = Lookup(self, ip_text, TYPE_PTR, callback, [])
        self.lookups.add(lookup)
        try:
            qname = reverse_name(ip_text)
        except ValueError:
            lookup.report(self.error(ip_text, HOST_NOT_FOUND, "not an IPv4 address"))
            return lookup
        names = self.hosts_reverse(ip_text)
        if names:
            self.c["hosts"] += 1
            lookup.succeed(DnsResult(ip_text, names[0], names, 0, "hosts"))
            return lookup
        lookup.plan = [(qname, "last")]
        lookup.next_step()
        return lookup

    def close(self) -> None:
        """Abandon every lookup in flight (no callbacks) and release their endpoints."""
        for lookup in list(self.lookups):
            lookup.cancel()
        for query in list(self.queries):
            query.cancel()
        self.queries.clear()

    # -- policy steps (override to change) ---------------------------------------------------
    def hosts_lookup(self, name: str) -> list[str]:
        """Addresses of ``name`` in the hosts table (exact name, case-insensitive)."""
        return list(self.config.hosts.get(name.lower(), ()))

    def hosts_names(self, name: str) -> tuple[str, tuple[str, ...]]:
        """Canonical name and aliases of ``name`` from the hosts lines, as glibc's files backend
        (with Debian's ``multi on``) reports them: the first matching line's first name is
        canonical, every other name of the matching lines an alias."""
        key = name.lower()
        canonical: str | None = None
        aliases: list[str] = []
        for _, names in self.config.host_lines:
            if key not in (n.lower() for n in names):
                continue
            if canonical is None:
                canonical = names[0]
            for n in names:
                if n != canonical and n not in aliases:
                    aliases.append(n)
        return (canonical or name), tuple(aliases)

    def hosts_reverse(self, ip_text: str) -> list[str]:
        """The names of ``ip_text`` in the hosts table: glibc's files backend answers
        gethostbyaddr from the first line with the address (its first name canonical)."""
        for addr, names in self.config.host_lines:
            if addr == ip_text:
                return list(names)
        return [name for name, addrs in self.config.hosts.items() if ip_text in addrs]

    def search_plan(self, name: str) -> list[tuple[str, str]]:
        """The names to ask, in order, as glibc ``res_search`` would (empty: invalid name)."""
        if name.endswith(".") and name != ".":
            bare, trailing = name[:-1], True
        else:
            bare, trailing = name, False
        if not self.valid_name(bare) or bare in ("", "."):
            return []
        if trailing:
            return [(bare, "last")]
        plan: list[tuple[str, str]] = []
        dots = bare.count(".")
        tried_as_is = False
        if dots >= self.config.ndots:
            plan.append((bare, "first"))
            tried_as_is = True
        root_on_list = False
        for domain in self.config.search:
            domain = domain.strip(".")
            if not domain:
                root_on_list = True
                candidate = bare
            else:
                candidate = f"{bare}.{domain}"
            if self.valid_name(candidate):
                plan.append((candidate, "search"))
            else:
                self.c["drop.search_too_long"] += 1
        if not (tried_as_is or root_on_list):
            plan.append((bare, "last"))
        return plan

    @staticmethod
    def valid_name(name: str) -> bool:
        try:
            encode_name(name)
        except ValueError:  # MalformedError included
            return False
        return True

    def nameservers(self) -> list[bytes]:
        out = []
        for text in self.config.nameservers:
            try:
                out.append(ip_aton(text))
            except OSError:
                continue  # IPv6 or junk: not usable by this IPv4 stack
        return out

    def plan_tries(self) -> list[tuple[bytes, float]]:
        """``(server, timeout)`` for each try of one query: ``attempts`` rounds over the
        servers, starting one server further for each query when ``rotate`` is set."""
        servers = self.nameservers()
        if not servers:
            return []
        if self.config.rotate:
            k = self._rotation % len(servers)
            self._rotation += 1
            servers = servers[k:] + servers[:k]
        attempts = max(1, int(self.config.attempts))
        return [(s, self.try_timeout(r)) for r in range(attempts) for s in servers]

    def try_timeout(self, round_index: int) -> float:
        """Seconds to wait for one try. resolv.conf's ``timeout`` every time (glibc backs
        off to ``timeout << round / len(servers)``; override this to do the same)."""
        return float(self.config.timeout)

    def open_endpoint(self, query: DnsQuery) -> UdpEndpoint:
        """A bound UDP endpoint for ``query`` (see :attr:`source_ports`); raises OSError."""
        udp = self.stack.udp
        ep = udp.open(self.query_endpoint_class, query)
        try:
            self.bind_source_port(ep)
        except BaseException:
            udp.close(ep)
            raise
        return ep

    def bind_source_port(self, ep: UdpEndpoint) -> None:
        """Bind ``ep`` to a random port of :attr:`source_ports`, else to an ephemeral one."""
        udp = self.stack.udp
        if self.source_ports is not None:
            lo, hi = self.source_ports
            for _ in range(self.bind_tries):
                try:
                    udp.bind(ep, ANY_IP, self.stack.rng.randint(lo, hi))
                    return
                except OSError as exc:
                    if exc.errno != _errno.EADDRINUSE:
                        raise
                    self.c["bind.in_use"] += 1
            self.c["bind.ephemeral"] += 1
        udp.autobind(ep)

    def validate_reply(self, query: DnsQuery, data: bytes, src_ip: bytes, src_port: int) -> DnsMessage | None:
        """The parsed reply if it answers ``query``; else None (counted, the query waits on).

        Cheap checks come first, so a reply that is not for us costs almost nothing whatever
        its size: the source, then the header alone, then the one question; only a reply that
        passes them is decoded, at most :attr:`max_records` records per section (counted
        ``rx.records_capped`` when that leaves records out).
        """
        c = self.c
        c["rx"] += 1
        if src_port != DNS_PORT or src_ip not in query.sent_to:
            c["drop.bad_source"] += 1
            return None
        try:
            h, qd, an, ns, ar = parse_header(data)
            if not h.qr or h.opcode != 0:
                c["drop.not_response"] += 1
                return None
            if h.id != query.qid:
                c["drop.bad_id"] += 1
                return None
            if qd != 1:
                c["drop.bad_question"] += 1
                return None
            q, _ = parse_question(data)
            if q.qtype != query.qtype or q.qclass != CLASS_IN or wire_key(q.name) != query.key:
                c["drop.bad_question"] += 1
                return None
            msg = parse_message(data, self.max_records)
        except MalformedError as e:
            c["drop.malformed"] += 1
            c["drop.malformed." + e.reason] += 1
            return None
        if len(data) > MAX_UDP_MESSAGE:
            c["rx.over_512"] += 1
        if (len(msg.answers), len(msg.authority), len(msg.additional)) != (an, ns, ar):
            c["rx.records_capped"] += 1
        return msg

    def on_truncated(self, query: DnsQuery, msg: DnsMessage) -> object:
        """The TCP-fallback hook: ``msg`` came with the TC bit set.

        Return the message to use, ``None`` to fail the question with TRY_AGAIN
        (``EAI_AGAIN``), or :attr:`DEFERRED` after arranging to call
        ``query.finish(full_message_or_None)`` later. The default asks the same server again
        over TCP (RFC 7766 / RFC 1035 4.2.2: two-byte length prefix) when the stack has a TCP
        layer; if that fails, it falls back to :meth:`truncated_fallback`.
        """
        self.c["truncated"] += 1
        tcp = getattr(self.stack, "tcp", None)
        server = query.last_server  # the server that truncated (replies come only from sent_to)
        if tcp is None or server is None:
            return self.truncated_fallback(query, msg)
        try:
            DnsOverTcp.start(self, query, msg, server)
        except OSError:
            self.c["tcp.error"] += 1
            return self.truncated_fallback(query, msg)
        self.c["tcp.queries"] += 1
        return Resolver.DEFERRED

    def truncated_fallback(self, query: DnsQuery, msg: DnsMessage) -> DnsMessage | None:
        """Without a usable TCP answer: the truncated answer if it already holds records of the
        asked type (what glibc does with a partial answer), else TRY_AGAIN."""
        if any(rr.type == query.qtype and rr.rclass == CLASS_IN for rr in msg.answers):
            return msg
        return None

    def classify(self, query: DnsQuery, msg: DnsMessage | None) -> Outcome:
        """What a finished query means (see :class:`Outcome`)."""
        if msg is None:
            if query.bad_rcode == SERVFAIL:
                return Outcome(TRY_AGAIN, servfail=True)
            if query.bad_rcode is not None:  # REFUSED, NOTIMP: glibc's res_send -> TRY_AGAIN
                return Outcome(TRY_AGAIN, servfail=True)
            return Outcome(TRY_AGAIN)
        rcode = msg.header.rcode
        if rcode == NXDOMAIN:
            # Behind a CNAME the NXDOMAIN is about the chain's end, not the name asked.
            aliased = any(rr.type == TYPE_CNAME for rr in msg.answers)
            return Outcome(HOST_NOT_FOUND, negative_ttl=None if aliased else self._negative_ttl(msg))
        if rcode != 0:
            if rcode in (SERVFAIL, NOTIMP, REFUSED):
                return Outcome(TRY_AGAIN, servfail=True)
            return Outcome(NO_RECOVERY)
        # Walk the chain from the question's name through the answer section.
        answers = [(wire_key(rr.name), rr) for rr in msg.answers if rr.rclass == CLASS_IN]
        cur = query.key
        ttl: int | None = None
        canonical = query.qname
        aliases: list[str] = []
        seen = {cur}
        while True:
            rrset = [rr for key, rr in answers if rr.type == query.qtype and key == cur]
            if rrset:
                rr_ttl = min(self._ttl(rr.ttl) for rr in rrset)
                ttl = rr_ttl if ttl is None else min(ttl, rr_ttl)
                return Outcome(0, canonical, [rr.data for rr in rrset], ttl, aliases=tuple(aliases))
            if query.qtype == TYPE_CNAME:
                break
            cname = next((rr for key, rr in answers
                          if rr.type == TYPE_CNAME and key == cur and isinstance(rr.data, str)), None)
            if cname is None:
                break
            target = wire_key(str(cname.data))
            ttl = self._ttl(cname.ttl) if ttl is None else min(ttl, self._ttl(cname.ttl))
            if target in seen or len(seen) > self.max_cname_depth:
                self.c["drop.cname_loop"] += 1
                return Outcome(NO_RECOVERY)
            seen.add(target)
            aliases.append(canonical)
            cur, canonical = target, str(cname.data)
        neg = self._negative_ttl(msg)
        if cur != query.key and neg is None:
            return Outcome(0, canonical, [], ttl or 0, follow=canonical, aliases=tuple(aliases))
        return Outcome(NO_DATA, negative_ttl=neg if cur == query.key else None)

    def remember(self, qname: str, qtype: int, outcome: Outcome) -> None:
        """Cache a query's outcome: positive for min(TTL, max_ttl), negative per RFC 2308."""
        now = self.stack.now
        if outcome.status == 0 and outcome.follow is None:
            ttl = min(outcome.ttl, self.max_ttl)
            if ttl > 0:
                entry = CacheEntry(0, outcome.canonical, list(outcome.values), now + ttl, outcome.aliases)
                self.cache.put(qname, qtype, entry)
        elif outcome.status in (HOST_NOT_FOUND, NO_DATA) and outcome.negative_ttl:
            self.cache.put(qname, qtype, CacheEntry(outcome.status, "", [], now + outcome.negative_ttl))

    def error(self, name: str, h_errno: int, reason: str = "") -> DnsError:
        code = self.EAI_FOR_HERRNO.get(h_errno, EAI_FAIL)
        self.c[f"error.{code}"] += 1
        return DnsError(code, name, h_errno, reason)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _ttl(ttl: int) -> int:
        return 0 if ttl & 0x80000000 else ttl  # RFC 2181 section 8

    def _negative_ttl(self, msg: DnsMessage) -> int | None:
        for rr in msg.authority:
            if rr.type == TYPE_SOA and isinstance(rr.data, Soa):
                return min(self._ttl(rr.ttl), rr.data.minimum, self.max_negative_ttl)
        return None



class DnsOverTcp(TcpConnection):
    """One question asked again over TCP after a truncated UDP answer (RFC 7766): connect to
    the server that truncated, send the query with its two-byte length, read one length-prefixed
    reply, validate it like a UDP reply, close. Any failure (refused, reset, timeout, a bad
    reply) falls back to :meth:`Resolver.truncated_fallback` with the truncated message."""

    def __init__(self, layer: Any, resolver: Resolver, query: DnsQuery, truncated: DnsMessage,
                 server: bytes) -> None:
        super().__init__(layer)
        self.resolver, self.query, self.truncated, self.server = resolver, query, truncated, server
        self.buf = bytearray()
        self.finished = False
        self.deadline_timer: Timer | None = None

    @classmethod
    def start(cls, resolver: Resolver, query: DnsQuery, truncated: DnsMessage, server: bytes) -> DnsOverTcp:
        tcp = resolver.stack.tcp
        conn = tcp.open(cls, resolver, query, truncated, server)
        assert isinstance(conn, DnsOverTcp)
        tcp.connect(conn, server, DNS_PORT)
        conn.deadline_timer = resolver.stack.call_later(max(query.last_timeout, 1.0), conn.give_up)
        return conn

    def on_established(self) -> None:
        wire = self.query.wire
        self.send(len(wire).to_bytes(2, "big") + wire)

    def on_readable(self) -> None:
        data = self.recv(65537)
        if data:
            self.buf += data
        if len(self.buf) >= 2:
            n = int.from_bytes(self.buf[:2], "big")
            if len(self.buf) >= 2 + n:
                msg = self.resolver.validate_reply(self.query, bytes(self.buf[2:2 + n]), self.server, DNS_PORT)
                self.end(msg if msg is not None and not msg.header.tc else None)
                return
        if self.at_eof:
            self.end(None)

    def on_error(self) -> None:
        self.end(None)

    def on_closed(self) -> None:
        if not self.finished:
            self.end(None)

    def give_up(self) -> None:
        self.deadline_timer = None
        self.resolver.c["tcp.timeout"] += 1
        self.end(None)

    def end(self, msg: DnsMessage | None) -> None:
        if self.finished:
            return
        self.finished = True
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None
        if self.state != CLOSED:  # finish politely (or reset if unread data remains)
            self.close()
        if msg is None:
            self.resolver.c["tcp.failed"] += 1
            msg = self.resolver.truncated_fallback(self.query, self.truncated)
        else:
            self.resolver.c["tcp.answered"] += 1
        self.query.finish(msg)

__all__ = [
    "DnsError", "DnsResult", "DnsQuery", "DnsCache", "Lookup", "Resolver", "inet_aton_exact",
    "EAI_NONAME", "EAI_AGAIN", "EAI_FAIL", "EAI_NODATA", "HOST_NOT_FOUND", "TRY_AGAIN",
    "NO_RECOVERY", "NO_DATA",
]
