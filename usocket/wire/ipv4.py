"""IPv4 header codec (RFC 791). (Being completed by the IPv4 engineer; IPv4Header is fixed.)"""
from __future__ import annotations

from typing import NamedTuple


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
