"""IPv4 header codec (RFC 791).

- :func:`parse_ipv4` validates a datagram as received (version, IHL, total length against the
  buffer, header checksum) and strips link-layer padding using the total length.
- :func:`parse_ipv4_quoted` reads the header quoted inside an ICMP error, which is truncated by
  design, so it checks only what a quote can satisfy.
- :func:`build_ipv4` builds any header (options included); :class:`IPv4Template` is the fast path
  for a stream of packets sharing source, destination, protocol, TTL and TOS: the checksum of the
  constant fields is summed once, so a header costs one ``struct.pack`` and a few additions.
- :func:`reassembled_header` is the header of a datagram rebuilt from its fragments.

Offsets are in bytes (the wire field times 8) everywhere in this package.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from . import MalformedError
from .checksum import checksum, ones_sum, verify

Buffer = bytes | bytearray | memoryview

# Flags/fragment-offset word.
FLAG_RESERVED = 0x8000
FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF

MIN_HEADER = 20
MAX_HEADER = 60
MAX_DATAGRAM = 65535

# Protocol numbers used in this project.
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

_FIXED = struct.Struct("!BBHHHBBH4s4s")  # parse: v/ihl tos len id flags ttl proto csum src dst
_WORDS = struct.Struct("!HHHHHH4s4s")  # build: v/ihl+tos len id flags ttl+proto csum src dst


class IPv4Header(NamedTuple):
    """A parsed IPv4 header. ``raw`` is the header's own bytes (options included), so
    ``hdr.raw + payload`` reproduces the datagram (e.g. to quote it in an ICMP error)."""

    tos: int
    total_length: int
    ident: int
    df: bool
    mf: bool
    frag_offset: int  # in bytes (the field value * 8)
    ttl: int
    proto: int
    checksum: int
    src: bytes  # 4 bytes
    dst: bytes  # 4 bytes
    header_len: int  # bytes (IHL * 4)
    raw: bytes


def _header(buf: Buffer, hl: int) -> IPv4Header:
    """Decode the fields of a header already known to hold ``hl`` (>= 20) bytes."""
    vihl, tos, total, ident, flags, ttl, proto, csum, src, dst = _FIXED.unpack_from(buf)
    return IPv4Header(tos, total, ident, bool(flags & FLAG_DF), bool(flags & FLAG_MF),
                      (flags & OFFSET_MASK) << 3, ttl, proto, csum, src, dst, hl, bytes(buf[:hl]))


def parse_ipv4(buf: Buffer, verify_checksum: bool = True) -> tuple[IPv4Header, Buffer]:
    """Parse a received datagram into ``(header, payload)``.

    ``payload`` is a slice of ``buf`` (same type: a memoryview stays zero-copy) ending at the
    header's total length, so Ethernet padding is stripped. Raises :class:`MalformedError`
    with reason ``truncated`` (shorter than its header), ``bad_version``, ``bad_ihl`` (IHL < 5),
    ``bad_length`` (total length below the header length or beyond the buffer) or
    ``bad_checksum``.
    """
    n = len(buf)
    if n < MIN_HEADER:
        raise MalformedError("truncated", f"{n} bytes")
    vihl, tos, total, ident, flags, ttl, proto, csum, src, dst = _FIXED.unpack_from(buf)
    if vihl >> 4 != 4:
        raise MalformedError("bad_version", str(vihl >> 4))
    hl = (vihl & 0x0F) << 2
    if hl < MIN_HEADER:
        raise MalformedError("bad_ihl", str(hl))
    if hl > n:
        raise MalformedError("truncated", f"header {hl} > {n} bytes")
    if total < hl or total > n:
        raise MalformedError("bad_length", f"total length {total}, header {hl}, buffer {n}")
    raw = bytes(buf[:hl])
    if verify_checksum and not verify(raw):
        raise MalformedError("bad_checksum")
    hdr = IPv4Header(tos, total, ident, bool(flags & FLAG_DF), bool(flags & FLAG_MF),
                     (flags & OFFSET_MASK) << 3, ttl, proto, csum, src, dst, hl, raw)
    return hdr, buf[hl:total]


def parse_ipv4_quoted(buf: Buffer, l4_min: int = 8) -> tuple[IPv4Header, bytes]:
    """Parse the datagram quoted in an ICMP error into ``(header, first transport bytes)``.

    A quote is cut short on purpose, so its total length is not checked against the buffer, and
    neither is its checksum (NAT boxes rewrite addresses in quotes, not always the checksum). At
    least ``l4_min`` transport bytes must follow the header (RFC 792 promises 8: the ports).
    Reasons: ``truncated``, ``bad_version``, ``bad_ihl``.
    """
    n = len(buf)
    if n < MIN_HEADER:
        raise MalformedError("truncated", f"quote of {n} bytes")
    vihl = buf[0]
    if vihl >> 4 != 4:
        raise MalformedError("bad_version", str(vihl >> 4))
    hl = (vihl & 0x0F) << 2
    if hl < MIN_HEADER:
        raise MalformedError("bad_ihl", str(hl))
    if n < hl + l4_min:
        raise MalformedError("truncated", f"quote of {n} bytes, header {hl}")
    return _header(buf, hl), bytes(buf[hl:])


def _flags_word(df: bool, mf: bool, frag_offset: int) -> int:
    if frag_offset & 7 or not 0 <= frag_offset <= OFFSET_MASK << 3:
        raise ValueError(f"fragment offset {frag_offset} is not a multiple of 8 in 0..65528")
    return (FLAG_DF if df else 0) | (FLAG_MF if mf else 0) | (frag_offset >> 3)


def build_ipv4(src: bytes, dst: bytes, proto: int, payload: Buffer = b"", *, tos: int = 0,
               ttl: int = 64, ident: int = 0, df: bool = False, mf: bool = False,
               frag_offset: int = 0, options: bytes = b"", total_length: int | None = None) -> bytes:
    """A full datagram (header with a correct checksum, then ``payload``).

    ``options`` are padded with zeros (End of Option List) to a multiple of 4 bytes.
    ``total_length`` overrides the computed length (for crafting malformed packets in tests).
    """
    if len(options) & 3:
        options = options + b"\x00" * (4 - (len(options) & 3))
    hl = MIN_HEADER + len(options)
    if hl > MAX_HEADER:
        raise ValueError(f"options too long ({len(options)} bytes)")
    total = hl + len(payload) if total_length is None else total_length
    if not 0 <= total <= MAX_DATAGRAM:
        raise ValueError(f"datagram of {total} bytes exceeds 65535")
    head = _WORDS.pack(((0x40 | hl >> 2) << 8) | tos, total, ident, _flags_word(df, mf, frag_offset),
                       (ttl << 8) | proto, 0, src, dst) + options
    csum = checksum(head)
    return head[:10] + csum.to_bytes(2, "big") + head[12:] + bytes(payload)


class IPv4Template:
    """Option-less headers for one (src, dst, proto, ttl, tos): the hot send path.

    The one's complement sum of the constant words is computed once; :meth:`header` adds the
    three per-packet words (length, identification, flags/offset) and folds. Immutable, so a
    layer may cache templates freely.
    """

    __slots__ = ("src", "dst", "proto", "ttl", "tos", "_w0", "_w4", "_sum")

    def __init__(self, src: bytes, dst: bytes, proto: int, ttl: int = 64, tos: int = 0) -> None:
        if len(src) != 4 or len(dst) != 4:
            raise ValueError("IPv4 addresses are 4 bytes")
        self.src, self.dst, self.proto, self.ttl, self.tos = src, dst, proto, ttl, tos
        self._w0 = 0x4500 | tos
        self._w4 = (ttl << 8) | proto
        self._sum = ones_sum(src + dst, self._w0 + self._w4)

    def header(self, payload_len: int, ident: int, df: bool = False, mf: bool = False,
               frag_offset: int = 0) -> bytes:
        """The 20-byte header of a datagram carrying ``payload_len`` bytes."""
        total = MIN_HEADER + payload_len
        if total > MAX_DATAGRAM:
            raise ValueError(f"datagram of {total} bytes exceeds 65535")
        flags = (FLAG_DF if df else 0) | (FLAG_MF if mf else 0) | (frag_offset >> 3)
        s = self._sum + total + ident + flags
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return _WORDS.pack(self._w0, total, ident, flags, self._w4, ~s & 0xFFFF, self.src, self.dst)

    def build(self, payload: Buffer, ident: int, df: bool = False, mf: bool = False,
              frag_offset: int = 0) -> bytes:
        """Header + ``payload``."""
        return self.header(len(payload), ident, df, mf, frag_offset) + payload


def reassembled_header(first: IPv4Header, payload_len: int) -> IPv4Header:
    """The header of a datagram reassembled from fragments: the first fragment's header (its
    options kept, as Linux does) with the total length set, MF and offset cleared, DF kept and
    the checksum recomputed, so ``raw + payload`` is a valid datagram."""
    total = first.header_len + payload_len
    if total > MAX_DATAGRAM:
        raise ValueError(f"reassembled datagram of {total} bytes exceeds 65535")
    flags = FLAG_DF if first.df else 0
    head = first.raw[:2] + struct.pack("!HHH", total, first.ident, flags) + first.raw[8:10] + b"\0\0" \
        + first.raw[12:]
    csum = checksum(head)
    raw = head[:10] + csum.to_bytes(2, "big") + head[12:]
    return first._replace(total_length=total, mf=False, frag_offset=0, checksum=csum, raw=raw)
