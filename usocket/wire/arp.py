"""ARP packet codec (RFC 826), restricted to what IPv4 over Ethernet uses.

The packet is 28 bytes: hardware type 1 (Ethernet), protocol type 0x0800 (IPv4), hardware
length 6, protocol length 4, operation 1 (request) or 2 (reply), then sender MAC, sender IP,
target MAC, target IP. Anything else (RARP ops 3/4, InARP, other hardware) is refused with a
reason naming the field, used by the ARP layer as its drop counter key. Bytes after the 28
(Ethernet padding up to 60) are ignored.

:func:`build_arp` returns exactly 28 bytes: padding the frame to the Ethernet minimum is the
link's business (see :mod:`usocket.wire.ethernet` for what Linux does).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from . import MalformedError

ARP_LEN = 28
HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800
OP_REQUEST = 1
OP_REPLY = 2

_ARP = struct.Struct("!HHBBH6s4s6s4s")
_new = tuple.__new__


class ArpPacket(NamedTuple):
    op: int
    sha: bytes  # sender hardware address, 6 bytes
    spa: bytes  # sender protocol address, 4 bytes
    tha: bytes  # target hardware address, 6 bytes
    tpa: bytes  # target protocol address, 4 bytes


def parse_arp(buf: bytes | bytearray | memoryview) -> ArpPacket:
    """Parse an Ethernet/IPv4 ARP packet. Reasons: ``too_short``, ``bad_htype``, ``bad_ptype``,
    ``bad_hlen``, ``bad_plen``, ``bad_op``."""
    if len(buf) < ARP_LEN:
        raise MalformedError("too_short", f"{len(buf)} bytes")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf)
    if htype != HTYPE_ETHERNET:
        raise MalformedError("bad_htype", str(htype))
    if ptype != PTYPE_IPV4:
        raise MalformedError("bad_ptype", f"0x{ptype:04x}")
    if hlen != 6:
        raise MalformedError("bad_hlen", str(hlen))
    if plen != 4:
        raise MalformedError("bad_plen", str(plen))
    if op != OP_REQUEST and op != OP_REPLY:
        raise MalformedError("bad_op", str(op))
    return _new(ArpPacket, (op, sha, spa, tha, tpa))  # = ArpPacket(...), without the Python-level __new__


def build_arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    """The 28-byte packet (no padding)."""
    if len(sha) != 6 or len(tha) != 6 or len(spa) != 4 or len(tpa) != 4:
        raise ValueError("ARP addresses are 6-byte MACs and 4-byte IPv4 addresses")
    return _ARP.pack(HTYPE_ETHERNET, PTYPE_IPV4, 6, 4, op, sha, spa, tha, tpa)
