"""ICMPv4 codec (RFC 792, RFC 1191 for "fragmentation needed", RFC 4884 lengths not used).

Every ICMP message is an 8-byte header (type, code, checksum, one 32-bit word whose meaning
depends on the type) followed by data. :class:`IcmpMessage` keeps that word as ``rest`` and
offers the per-type readings as properties (``ident``/``seq`` for echo, ``mtu`` for
fragmentation needed, ``pointer`` for parameter problem, ``gateway`` for redirect).

Errors quote the offending datagram's header and as much of its data as keeps the error
datagram within 576 bytes (RFC 1812 4.3.2.3; what Linux sends): :func:`build_error`.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from . import MalformedError
from .checksum import checksum, verify
from .ipv4 import IPv4Header, parse_ipv4_quoted

Buffer = bytes | bytearray | memoryview

# Types.
ECHO_REPLY = 0
DEST_UNREACH = 3
SOURCE_QUENCH = 4
REDIRECT = 5
ECHO_REQUEST = 8
ROUTER_ADVERT = 9
ROUTER_SOLICIT = 10
TIME_EXCEEDED = 11
PARAM_PROBLEM = 12
TIMESTAMP = 13
TIMESTAMP_REPLY = 14
ERROR_TYPES = frozenset({DEST_UNREACH, SOURCE_QUENCH, REDIRECT, TIME_EXCEEDED, PARAM_PROBLEM})

# Destination unreachable codes (RFC 792, 1122, 1812).
NET_UNREACH = 0
HOST_UNREACH = 1
PROTO_UNREACH = 2
PORT_UNREACH = 3
FRAG_NEEDED = 4
SR_FAILED = 5
NET_UNKNOWN = 6
HOST_UNKNOWN = 7
HOST_ISOLATED = 8
NET_ANO = 9
HOST_ANO = 10
NET_UNR_TOS = 11
HOST_UNR_TOS = 12
PKT_FILTERED = 13
PREC_VIOLATION = 14
PREC_CUTOFF = 15

# Time exceeded codes.
EXC_TTL = 0
EXC_FRAGTIME = 1

HEADER_LEN = 8
ERROR_DATAGRAM_LIMIT = 576  # an error datagram (IP header included) never exceeds this

_HDR = struct.Struct("!BBHI")


class IcmpMessage(NamedTuple):
    """A parsed ICMP message: the fixed header and the ``data`` after it."""

    type: int
    code: int
    checksum: int
    rest: int  # the type-specific 32-bit word after the checksum
    data: bytes

    @property
    def ident(self) -> int:
        """Echo/timestamp identifier."""
        return self.rest >> 16

    @property
    def seq(self) -> int:
        """Echo/timestamp sequence number."""
        return self.rest & 0xFFFF

    @property
    def mtu(self) -> int:
        """Next-hop MTU of a "fragmentation needed" (0 from pre-RFC 1191 routers)."""
        return self.rest & 0xFFFF

    @property
    def pointer(self) -> int:
        """Offset of the offending octet of a parameter problem."""
        return self.rest >> 24

    @property
    def gateway(self) -> bytes:
        """Better first hop named by a redirect."""
        return self.rest.to_bytes(4, "big")

    @property
    def is_error(self) -> bool:
        return self.type in ERROR_TYPES


def parse_icmp(buf: Buffer, verify_checksum: bool = True) -> IcmpMessage:
    """Parse an ICMP message (the IPv4 payload). Reasons: ``truncated``, ``bad_checksum``."""
    if len(buf) < HEADER_LEN:
        raise MalformedError("truncated", f"{len(buf)} bytes")
    if verify_checksum and not verify(buf):
        raise MalformedError("bad_checksum")
    type_, code, csum, rest = _HDR.unpack_from(buf)
    return IcmpMessage(type_, code, csum, rest, bytes(buf[HEADER_LEN:]))


def parse_quote(msg: IcmpMessage) -> tuple[IPv4Header, bytes]:
    """The offending datagram quoted by an error: ``(its IPv4 header, its first L4 bytes)``.
    Raises :class:`MalformedError` (``truncated``, ``bad_version``, ``bad_ihl``)."""
    return parse_ipv4_quoted(msg.data)


def build_icmp(type_: int, code: int, rest: int = 0, data: Buffer = b"") -> bytes:
    """Any ICMP message, checksum filled in."""
    head = _HDR.pack(type_, code, 0, rest)
    csum = checksum(head + data) if data else checksum(head)
    return _HDR.pack(type_, code, csum, rest) + bytes(data)


def build_echo(ident: int, seq: int, data: Buffer = b"", *, reply: bool = False) -> bytes:
    """An echo request (or reply with ``reply=True``)."""
    return build_icmp(ECHO_REPLY if reply else ECHO_REQUEST, 0, (ident << 16) | seq, data)


def quote(offending: Buffer, ip_header_len: int = 20, limit: int = ERROR_DATAGRAM_LIMIT) -> bytes:
    """The part of ``offending`` an error quotes: as much as keeps the error within ``limit``
    bytes once the error's own IP (``ip_header_len``) and ICMP headers are added."""
    return bytes(offending[:max(0, limit - ip_header_len - HEADER_LEN)])


def build_error(type_: int, code: int, offending: Buffer, *, rest: int = 0, ip_header_len: int = 20,
                limit: int = ERROR_DATAGRAM_LIMIT) -> bytes:
    """An error message quoting ``offending`` (a whole IPv4 datagram, header first).

    ``rest`` is the type-specific word: ``mtu`` for fragmentation needed (see
    :func:`frag_needed_rest`), ``pointer << 24`` for parameter problem, the gateway for redirect.
    """
    return build_icmp(type_, code, rest, quote(offending, ip_header_len, limit))


def frag_needed_rest(mtu: int) -> int:
    """The ``rest`` word of a "fragmentation needed" carrying the next-hop MTU."""
    return mtu & 0xFFFF


def param_problem_rest(pointer: int) -> int:
    """The ``rest`` word of a parameter problem pointing at octet ``pointer``."""
    return (pointer & 0xFF) << 24
