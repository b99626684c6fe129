"""The stdlib's resolver functions, answered by the userland stack instead of the kernel's libc.

``getaddrinfo``, ``gethostbyname``, ``gethostbyname_ex``, ``gethostbyaddr`` and ``getnameinfo``
behave as CPython's do on Linux with glibc (2.36 was the model), for AF_INET: the same argument
conversions and errors (``TypeError``/``OverflowError``/``UnicodeError`` texts included), the same
``gaierror``/``herror`` codes and messages, the same results. What glibc would ask its name
services (``/etc/hosts``, then DNS) is asked of the stack's stub resolver
(:mod:`usocket.proto.dns`: numeric forms, the hosts table, the cache, DNS with the search list)
through :class:`usocket.resolver.Resolver`; the services database (port names) is read with the
stdlib's ``getservbyname``/``getservbyport``, i.e. the files, as glibc does.

Nothing here starts the stack on its own: numeric hosts, ``None`` hosts, ``AI_NUMERICHOST`` and
``NI_NUMERICHOST`` are answered without the runtime; the first name that needs a lookup gets
:func:`usocket.runtime.get_runtime`.

glibc's behaviour, reproduced step by step (see each helper):

- ``getaddrinfo``: ``"*"`` as host or service means none; flags outside glibc's set and
  ``AI_CANONNAME`` without a host are ``EAI_BADFLAGS``; families other than
  ``AF_UNSPEC``/``AF_INET``/``AF_INET6`` ``EAI_FAMILY``; the service is a number as ``strtoul``
  reads it (stored in an ``int``: ``"-1"`` is no number but a name) or a name from the services
  database; type and protocol pick rows of glibc's ``gaih_inet_typeproto`` table, in its order
  (``EAI_SOCKTYPE``/``EAI_SERVICE`` when none fits), all of that before the host is looked at; a
  host in one of ``inet_aton``'s forms is numeric; several addresses are sorted as glibc's
  RFC 3484 sort does for IPv4 on a host without IPv6 (:func:`rfc3484_sort`; the source address
  being the stack's own, or 127.0.0.1 for loopback destinations, which the facade leaves to
  the kernel); the
  canonical name goes to the first entry only. ``AI_ADDRCONFIG`` is accepted and ignored.
- ``gethostbyname*``/``gethostbyaddr``: CPython's ``setipaddr`` first (``""`` is 0.0.0.0,
  ``"<broadcast>"`` 255.255.255.255, then a strict dotted quad, then ``getaddrinfo``), then the
  ``hostent`` lookup: all-digits-and-dots names are answered as numbers, as glibc's
  ``__nss_hostname_digits_dots`` does.
- ``getnameinfo``: CPython's argument checks, the address parsed with ``AI_NUMERICHOST``, then
  the PTR name (hosts table first) unless ``NI_NUMERICHOST``, the numeric form unless
  ``NI_NAMEREQD``, ``NI_NOFQDN`` stripping glibc's local domain, the service by port.

IPv6: the stack is IPv4 only, so names and ``None`` hosts only ever give IPv4 answers, with
``AF_UNSPEC`` too (glibc would put ``::1`` or AAAA answers first). An IPv6 *literal* is parsed
as glibc parses it (``AF_INET6`` entries, or the IPv4 address of a v4-mapped literal under
``AF_INET``): no lookup is involved, and ``AF_INET6`` sockets of the facade are the kernel's, so
``create_connection(("::1", port))`` keeps working. ``AF_INET6`` with a name raises ``gaierror``
``EAI_FAMILY`` ("ai_family not supported"): the stack's resolver does not do IPv6 lookups, and
saying so beats a misleading "no such name". ``gethostbyaddr``/``getnameinfo`` of an IPv6 address
find no name (``herror(1)``, the numeric form, or ``EAI_NONAME`` under ``NI_NAMEREQD``).
"""
from __future__ import annotations

import builtins
import operator
import socket as _std
import threading
import weakref
from collections.abc import Iterable
from typing import Any, NamedTuple

from .. import runtime as _runtime
from ..proto.dns import (
    EAI_AGAIN,
    EAI_BADFLAGS,
    EAI_FAMILY,
    EAI_NONAME,
    EAI_SERVICE,
    EAI_SOCKTYPE,
    GAI_STRERROR,
    H_STRERROR,
    HOST_NOT_FOUND,
    NO_RECOVERY,
    TRY_AGAIN,
    DnsError,
    inet_aton_exact,
)
from ..resolver import Resolver

__all__ = ["getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"]

AF_UNSPEC, AF_INET, AF_INET6 = _std.AF_UNSPEC, _std.AF_INET, _std.AF_INET6

# The flags glibc accepts (anything else is EAI_BADFLAGS): AI_PASSIVE .. AI_ADDRCONFIG (0x3f),
# AI_IDN 0x40, AI_CANONIDN 0x80, the deprecated IDN flags 0x300, AI_NUMERICSERV 0x400.
AI_MASK = 0x7FF
# NI_NUMERICHOST .. NI_DGRAM (0x1f), NI_IDN 0x20, the deprecated IDN flags 0xc0.
NI_MASK = 0xFF
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_ULONG_MAX = (1 << 64) - 1


class _TypeProto(NamedTuple):
    socktype: int
    protocol: int
    raw: bool  # glibc's GAI_PROTO_PROTOANY | GAI_PROTO_NOSERVICE: any protocol, no port
    default: bool  # returned when neither type nor protocol is asked for
    name: str  # the protocol name in the services database


# glibc's gaih_inet_typeproto, in its order (the order of getaddrinfo's answers).
TYPEPROTO = (
    _TypeProto(_std.SOCK_STREAM, _std.IPPROTO_TCP, False, True, "tcp"),
    _TypeProto(_std.SOCK_DGRAM, _std.IPPROTO_UDP, False, True, "udp"),
    _TypeProto(6, 33, False, False, "dccp"),  # SOCK_DCCP, IPPROTO_DCCP (not in the stdlib)
    _TypeProto(_std.SOCK_DGRAM, 136, False, False, "udplite"),  # IPPROTO_UDPLITE
    _TypeProto(_std.SOCK_STREAM, 132, False, False, "sctp"),  # IPPROTO_SCTP
    _TypeProto(_std.SOCK_SEQPACKET, 132, False, False, "sctp"),
    _TypeProto(_std.SOCK_RAW, 0, True, True, "raw"),
)


# -- errors and argument conversion (CPython's exact texts) ------------------------------------
def _gaierror(code: int) -> OSError:
    return _std.gaierror(code, GAI_STRERROR.get(code, "Unknown error"))


def _herror(code: int) -> OSError:
    return _std.herror(code, H_STRERROR.get(code, "Resolver internal error"))


def _index(value: Any) -> int:
    """``operator.index`` with CPython's argument-parsing message."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer") from None


def _c_long(value: Any) -> int:
    n = _index(value)
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError("Python int too large to convert to C long")
    return n


def _c_int(value: Any) -> int:
    """The ``i`` format of ``PyArg_Parse``."""
    n = _c_long(value)
    if n > _INT_MAX:
        raise OverflowError("signed integer is greater than maximum")
    if n < _INT_MIN:
        raise OverflowError("signed integer is less than minimum")
    return n


def _c_uint_mask(value: Any) -> int:
    """The ``I`` format: any integer, taken modulo 2**32 (no overflow check)."""
    return _index(value) & 0xFFFFFFFF


def _cstr(b: bytes) -> bytes:
    """What C code sees of ``b``: up to the first NUL."""
    return b.split(b"\0", 1)[0]


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _et_idna(value: Any, fname: str) -> bytes:
    """CPython's ``et`` conversion with the idna codec (``gethostbyname`` & co.)."""
    if isinstance(value, str):
        b = value.encode("idna")
    elif isinstance(value, (bytes, bytearray)):
        b = bytes(value)
    else:
        raise TypeError(f"{fname}() argument 1 must be str, bytes or bytearray, not {_type_name(value)}")
    if b"\0" in b:
        raise TypeError(f"{fname}() argument 1 must be encoded string without null bytes, "
                        f"not {type(value).__name__}")
    return b


def _text(name: bytes) -> str:
    """A host name as the stack's resolver takes it (non-ASCII bytes become surrogates, which
    no DNS name encodes: such a name is not found)."""
    return name.decode("ascii", "surrogateescape")


# -- the runtime, only when a lookup needs it --------------------------------------------------
def _resolver() -> Resolver:
    return Resolver(_runtime.get_runtime())


def _stack_config(resolver: Resolver) -> Any:
    """The configuration of the stack ``resolver`` asks (its address and routes)."""
    return resolver._rt.config  # noqa: SLF001 - the Resolver keeps its runtime there


# -- getaddrinfo --------------------------------------------------------------------------------
def getaddrinfo(host: Any, port: Any, family: Any = 0, type: Any = 0, proto: Any = 0,
                flags: Any = 0) -> list[tuple[Any, Any, int, str, Any]]:
    """Translate ``host``/``port`` into a list of ``(family, type, proto, canonname, sockaddr)``
    like ``socket.getaddrinfo``, looking names up through the userland stack."""
    # The common call of create_connection() and friends, a dotted-quad IPv4 literal and a
    # port number, asks no name service: its answer is remembered (~70 us a call otherwise).
    if builtins.type(host) is str and builtins.type(port) is int and flags == 0 and isinstance(
            family, int) and isinstance(type, int) and isinstance(proto, int) and isinstance(flags, int):
        key = (host, port, family, type, proto)
        hit = _numeric_answers.get(key)
        if hit is not None:
            return list(hit)
        numeric = True
        try:
            _std.inet_pton(AF_INET, host)
        except (OSError, ValueError):
            numeric = False
    else:
        numeric = False
    out = _getaddrinfo_args(host, port, family, type, proto, flags)
    if numeric:
        if len(_numeric_answers) >= 256:
            _numeric_answers.clear()
        _numeric_answers[key] = tuple(out)
    return out


_numeric_answers: dict[tuple[Any, ...], tuple[tuple[Any, Any, int, str, Any], ...]] = {}


def _getaddrinfo_args(host: Any, port: Any, family: Any, type: Any, proto: Any,
                      flags: Any) -> list[tuple[Any, Any, int, str, Any]]:
    # CPython: the integers are parsed first, then the host (idna), then the port.
    family, type, proto, flags = _c_int(family), _c_int(type), _c_int(proto), _c_int(flags)
    if host is None:
        hb = None
    elif isinstance(host, str):
        hb = _cstr(host.encode("idna"))
    elif isinstance(host, bytes):
        hb = _cstr(host)
    else:
        raise TypeError("getaddrinfo() argument 1 must be string or None")
    if port is None:
        pb = None
    elif builtins.type(port) is int:  # PyLong_CheckExact: not bool, not int subclasses
        pb = b"%d" % _c_long(port)
    elif isinstance(port, str):
        pb = _cstr(port.encode("utf-8"))
    elif isinstance(port, bytes):
        pb = _cstr(port)
    else:
        raise OSError("Int or String expected")
    out = []
    for af, kind, pr, canon, sa in _getaddrinfo(hb, pb, family, type, proto, flags):
        out.append((_intenum(af, _std.AddressFamily), _intenum(kind, _std.SocketKind), pr, canon, sa))
    return out


def _intenum(value: int, enum_klass: Any) -> Any:
    """The stdlib's ``_intenum_converter``: the enum member if there is one, else the int."""
    try:
        return enum_klass(value)
    except ValueError:
        return value


def _strtoul_int(s: bytes) -> int | None:
    """``(int) strtoul(s, &end, 10)`` when all of ``s`` is read, else None (then it is a
    service name). Like C: leading white space, a sign, wrap-around of negatives, ULONG_MAX on
    overflow, then the truncation to a 32-bit ``int``."""
    i, n = 0, len(s)
    while i < n and s[i] in b" \t\n\v\f\r":
        i += 1
    neg = False
    if i < n and s[i] in b"+-":
        neg = s[i] == ord("-")
        i += 1
    start = i
    while i < n and 48 <= s[i] <= 57:
        i += 1
    if i == start or i != n:
        return None
    v = int(s[start:i])
    if v > _ULONG_MAX:
        v = _ULONG_MAX
    elif neg:
        v = (-v) & _ULONG_MAX
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v > _INT_MAX else v


def _getservbyname(name: bytes, proto: str) -> int | None:
    try:
        return _std.getservbyname(name.decode("utf-8"), proto)
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _servtuples(service: tuple[bytes, int] | None, socktype: int, proto: int) -> list[tuple[int, int, int]]:
    """glibc's ``get_servtuples``: ``(socktype, protocol, port)`` for each answer per address."""
    tp: _TypeProto | None = None
    if socktype or proto:
        for cand in TYPEPROTO:
            if (socktype and socktype != cand.socktype) or (proto and not cand.raw and proto != cand.protocol):
                continue
            tp = cand
            break
        else:
            raise _gaierror(EAI_SOCKTYPE if socktype else EAI_SERVICE)
    if service is not None and tp is not None and tp.raw:
        raise _gaierror(EAI_SERVICE)
    if service is None or service[1] >= 0:
        port = service[1] & 0xFFFF if service is not None else 0  # htons(int)
        if tp is not None:
            return [(tp.socktype, proto if tp.raw else tp.protocol, port)]
        return [(c.socktype, c.protocol, port) for c in TYPEPROTO if c.default]
    name = service[0]
    if tp is not None:
        found = _getservbyname(name, tp.name)
        if found is None:
            raise _gaierror(EAI_SERVICE)
        return [(tp.socktype, proto if tp.raw else tp.protocol, found)]
    out = []
    for c in TYPEPROTO:  # neither type nor protocol: every row that has the service
        if c.raw:
            continue
        found = _getservbyname(name, c.name)
        if found is not None:
            out.append((c.socktype, c.protocol, found))
    if not out:
        raise _gaierror(EAI_SERVICE)
    return out


def _ipv6_literal(name: bytes) -> bool:
    """glibc's second numeric form: ``inet_pton(AF_INET6)`` of the part before any ``%scope``."""
    try:
        _std.inet_pton(AF_INET6, name.split(b"%", 1)[0].decode("ascii"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return True


def _numeric_kernel(host: bytes | None, serv: bytes | None, family: int, socktype: int, proto: int,
                    flags: int) -> list[tuple[Any, ...]]:
    """IPv6 literals and IPv6 wildcards, parsed by the libc itself: ``AI_NUMERICHOST`` makes it
    a pure parser (no name service is asked)."""
    try:
        return _std.getaddrinfo(host, serv, family, socktype, proto, flags | _std.AI_NUMERICHOST)
    except _std.gaierror as e:
        raise _gaierror(e.args[0]) from None


def _getaddrinfo(host: bytes | None, serv: bytes | None, family: int, socktype: int, proto: int,
                 flags: int) -> list[tuple[Any, ...]]:
    """glibc's ``getaddrinfo`` on C strings (None: a NULL pointer), its checks in its order."""
    if host == b"*":
        host = None
    if serv == b"*":
        serv = None
    if host is None and serv is None:
        raise _gaierror(EAI_NONAME)
    if flags & ~AI_MASK:
        raise _gaierror(EAI_BADFLAGS)
    if flags & _std.AI_CANONNAME and host is None:
        raise _gaierror(EAI_BADFLAGS)
    if family not in (AF_UNSPEC, AF_INET, AF_INET6):
        raise _gaierror(EAI_FAMILY)
    service: tuple[bytes, int] | None = None
    if serv:
        num = _strtoul_int(serv)
        if num is None:
            if flags & _std.AI_NUMERICSERV:
                raise _gaierror(EAI_NONAME)
            num = -1
        service = (serv, num)
    if family == AF_INET6 and (host is None or flags & _std.AI_NUMERICHOST):
        return _numeric_kernel(host, serv, family, socktype, proto, flags)
    tuples = _servtuples(service, socktype, proto)  # service errors come before host errors
    if host is None:  # only IPv4 wildcards: the stack has no IPv6 (glibc would put :: first)
        return _entries(["0.0.0.0" if flags & _std.AI_PASSIVE else "127.0.0.1"], tuples, "")
    text = _text(host)
    canon = text if flags & _std.AI_CANONNAME else ""
    addr = inet_aton_exact(text)
    if addr is not None:
        if family == AF_INET6:  # v4-mapped under AI_V4MAPPED, else EAI_ADDRFAMILY: glibc's call
            return _numeric_kernel(host, serv, family, socktype, proto, flags)
        return _entries([addr], tuples, canon)
    if _ipv6_literal(host):
        return _numeric_kernel(host, serv, family, socktype, proto, flags)
    if flags & _std.AI_NUMERICHOST or not host:  # "" is no name: not found, no lookup needed
        raise _gaierror(EAI_NONAME)
    if family == AF_INET6:
        raise _gaierror(EAI_FAMILY)  # no IPv6 lookups in the stack's resolver (see the module doc)
    resolver = _resolver()
    try:
        result = resolver.resolve(text)
    except DnsError as e:
        raise e.as_gaierror() from None
    addrs = [str(a) for a in result.values]
    if len(addrs) > 1:
        addrs = rfc3484_sort(addrs, _stack_config(resolver))
    return _entries(addrs, tuples, result.canonical if flags & _std.AI_CANONNAME else "")


def _entries(addrs: Iterable[str], tuples: list[tuple[int, int, int]], canon: str) -> list[tuple[Any, ...]]:
    out = []
    for a in addrs:
        for socktype, proto, port in tuples:
            out.append((AF_INET, socktype, proto, canon, (a, port)))
            canon = ""  # the canonical name goes to the first entry only
    return out


# -- glibc's RFC 3484 sort, for IPv4 destinations ---------------------------------------------
def _scope(ip: int) -> int:
    """glibc's default IPv4 scopes: 169.254/16 and 127/8 link-local (2), the rest global (14)."""
    return 2 if ip >> 24 == 127 or ip >> 16 == 0xA9FE else 14


def _source(dst: int, config: Any) -> int | None:
    """The source address a datagram to ``dst`` would leave from, None if it could not be sent
    (glibc connects a UDP socket to find out). Loopback destinations (and 0.0.0.0, which Linux
    treats as local) are the kernel's, from 127.0.0.1; the rest the stack's, when on its subnet
    or when it has a gateway; 255.255.255.255 fails (connect() without SO_BROADCAST)."""
    if dst >> 24 == 127 or dst == 0:
        return 0x7F000001
    if dst == 0xFFFFFFFF:
        return None
    src = int.from_bytes(bytes(config.address), "big")
    mask = (0xFFFFFFFF << (32 - int(config.prefix_len))) & 0xFFFFFFFF
    if (dst & mask) == (src & mask) or config.gateway:
        return src
    return None


def rfc3484_sort(addrs: list[str], config: Any) -> list[str]:
    """The order glibc's ``rfc3484_sort`` gives IPv4 addresses on a host without IPv6, as the
    stack is: usable destinations first (rule 1), matching scope (2), smaller scope (8), then
    the answer's order (10). Rule 9 (longest matching prefix) needs the source's prefix length,
    which glibc only learns when the host has IPv6 addresses (``__check_pf`` fills ``in6ai``
    only then); without it the mask covers all 32 bits, so only a destination equal to the
    source address ranks first. Rules 3-7 cannot tell two IPv4 destinations apart."""

    def key(item: tuple[int, str]) -> tuple[int, ...]:
        index, text = item
        dst = int.from_bytes(_std.inet_aton(text), "big")
        src = _source(dst, config)
        if src is None:
            return (1, 0, _scope(dst), 0, index)
        return (0, 0 if _scope(dst) == _scope(src) else 1, _scope(dst), -32 if dst == src else 0, index)

    return [text for _, text in sorted(enumerate(addrs), key=key)]


# -- gethostbyname, gethostbyname_ex, gethostbyaddr ---------------------------------------------
def _setipaddr(name: bytes, af: int) -> tuple[int, str]:
    """CPython's ``setipaddr``: ``(family, address text)`` of ``name``."""
    if name == b"":
        if af == AF_INET:
            return AF_INET, "0.0.0.0"
        # AF_UNSPEC: glibc answers the passive wildcard with both "::" and "0.0.0.0".
        raise OSError("wildcard resolved to multiple address")
    if name in (b"255.255.255.255", b"<broadcast>"):
        return AF_INET, "255.255.255.255"
    text = name.decode("latin-1")
    try:
        return AF_INET, _std.inet_ntop(AF_INET, _std.inet_pton(AF_INET, text))
    except OSError:
        pass
    if af == AF_UNSPEC and b"%" not in name:
        try:
            return AF_INET6, _std.inet_ntop(AF_INET6, _std.inet_pton(AF_INET6, text))
        except OSError:
            pass
    first = _getaddrinfo(name, None, af, 0, 0, 0)[0]
    return int(first[0]), str(first[4][0])


def gethostbyname(hostname: Any, /) -> str:
    """The IPv4 address of ``hostname`` (the first ``getaddrinfo`` answer, as in CPython)."""
    return _setipaddr(_et_idna(hostname, "gethostbyname"), AF_INET)[1]


def _digits_dots(name: bytes) -> bool:
    """glibc's ``__nss_hostname_digits_dots`` takes such names as numbers, not names."""
    return bool(name) and 48 <= name[0] <= 57 and not name.endswith(b".") and all(
        48 <= c <= 57 or c == 46 for c in name)


def gethostbyname_ex(hostname: Any, /) -> tuple[str, list[str], list[str]]:
    """``(canonical name, aliases, addresses)`` of ``hostname``: the hosts table's line(s) or the
    DNS answer (CNAME chain as aliases, addresses in the answer's order, as glibc)."""
    name = _et_idna(hostname, "gethostbyname_ex")
    text = _text(name)
    numeric = inet_aton_exact(text)
    if name in (b"", b"*") or numeric is not None or _digits_dots(name) or _ipv6_literal(name):
        _setipaddr(name, AF_INET)  # CPython's first step, with its errors
        if numeric is not None and _digits_dots(name):
            return text, [], [numeric]
        if name == b"":
            raise _herror(NO_RECOVERY)  # glibc's gethostbyname_r refuses the empty name
        # Other numeric forms (0x7f.1, ::ffff:1.2.3.4) are names to gethostbyname_r, which the
        # name services do not know (the stack's resolver would take them as numbers).
        raise _herror(HOST_NOT_FOUND)
    resolver = _resolver()
    if name == b"<broadcast>":  # CPython's setipaddr knows it; gethostbyname_r asks for it as a name
        try:
            result = resolver.resolve(text)
        except DnsError as e:
            raise e.as_herror() from None
        return result.canonical, [a for a in result.aliases if a != result.canonical], [str(v) for v in result.values]
    return resolver.gethostbyname_ex(text)


def gethostbyaddr(ip_address: Any, /) -> tuple[str, list[str], list[str]]:
    """``(name, aliases, [address])`` for an address (a name is resolved first): the hosts
    table's line, else the PTR record, through the stack. ``herror`` when none."""
    name = _et_idna(ip_address, "gethostbyaddr")
    family, addr = _setipaddr(name, AF_UNSPEC)
    if family != AF_INET:
        raise _herror(HOST_NOT_FOUND)  # no IPv6 names in the stack's hosts table, no ip6.arpa
    return _resolver().gethostbyaddr(addr)


# -- getnameinfo --------------------------------------------------------------------------------
def getnameinfo(sockaddr: Any, flags: Any, /) -> tuple[str, str]:
    """``(host, port)`` text for ``sockaddr``: the name of the address through the stack (or its
    numeric form) and the service name of the port (or its number)."""
    flags = _c_int(flags)
    if not isinstance(sockaddr, tuple):
        raise TypeError("getnameinfo() argument 1 must be a tuple")
    if not 2 <= len(sockaddr) <= 4 or not isinstance(sockaddr[0], str):
        raise TypeError("getnameinfo(): illegal sockaddr argument")
    host = sockaddr[0].encode("utf-8")
    if b"\0" in host:
        raise ValueError("embedded null character")
    port = _c_int(sockaddr[1])
    flowinfo = _c_uint_mask(sockaddr[2]) if len(sockaddr) > 2 else 0
    if len(sockaddr) > 3:
        _c_uint_mask(sockaddr[3])
    if flowinfo > 0xFFFFF:
        raise OverflowError("getnameinfo(): flowinfo must be 0-1048575.")
    res = _getaddrinfo(host, b"%d" % port, AF_UNSPEC, _std.SOCK_DGRAM, 0, _std.AI_NUMERICHOST)
    if len(res) > 1 or _cstr(host) == b"*":  # "*" is glibc's wildcard: "::1" and "127.0.0.1"
        raise OSError("sockaddr resolved to multiple addresses")
    if res[0][0] == AF_INET:
        if len(sockaddr) != 2:
            raise OSError("IPv4 sockaddr must be 2 tuple")
    if flags & ~NI_MASK:
        raise _gaierror(EAI_BADFLAGS)
    if res[0][0] != AF_INET:  # IPv6: the libc formats it; no name is found for it here
        if flags & _std.NI_NAMEREQD:
            raise _gaierror(EAI_NONAME)
        try:
            return _std.getnameinfo(sockaddr, flags | _std.NI_NUMERICHOST)
        except _std.gaierror as e:
            raise _gaierror(e.args[0]) from None
    ip, nport = res[0][4]
    name = None
    if not flags & _std.NI_NUMERICHOST:
        resolver = _resolver()
        try:
            name = resolver.gethostbyaddr(ip)[0]
        except _std.herror as e:
            if e.errno == TRY_AGAIN:
                raise _gaierror(EAI_AGAIN) from None
        if name is not None and flags & _std.NI_NOFQDN:
            domain = _local_domain(resolver)
            at = name.find(domain) if domain else -1
            if at > 0 and name[at - 1] == ".":
                name = name[:at - 1]
    if name is None:
        if flags & _std.NI_NAMEREQD:
            raise _gaierror(EAI_NONAME)
        name = ip
    serv = str(nport)
    if not flags & _std.NI_NUMERICSERV:
        try:
            serv = _std.getservbyport(nport, "udp" if flags & _std.NI_DGRAM else "tcp")
        except OSError:
            pass
    return name, serv


_domains: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
_domains_lock = threading.Lock()


def _local_domain(resolver: Resolver) -> str | None:
    """glibc's ``nrl_domainname`` (what ``NI_NOFQDN`` strips), once per runtime: the part after
    the first dot of localhost's canonical name, else of the host name, else of the host name's
    canonical name, else of 127.0.0.1's name."""
    rt = resolver._rt  # noqa: SLF001
    with _domains_lock:
        if rt in _domains:
            return _domains[rt]

    def after_dot(name: str | None) -> str | None:
        return name.split(".", 1)[1] if name and "." in name else None

    def canonical(name: str) -> str | None:
        try:
            return resolver.gethostbyname_ex(name)[0]
        except OSError:
            return None

    domain = after_dot(canonical("localhost"))
    if domain is None:
        hostname = _std.gethostname()
        domain = after_dot(hostname) or after_dot(canonical(hostname))
        if domain is None:
            try:
                domain = after_dot(resolver.gethostbyaddr("127.0.0.1")[0])
            except OSError:
                domain = None
    with _domains_lock:
        _domains[rt] = domain
    return domain
