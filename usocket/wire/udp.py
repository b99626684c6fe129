"""UDP header codec (RFC 768) with the IPv4 pseudo-header checksum.

The checksum covers the pseudo header (source, destination, protocol 17, UDP length), the
UDP header and the payload. Over IPv4 a transmitted checksum of 0 means "none computed";
a computed value of 0 is therefore sent as 0xFFFF (the other representation of zero in
one's complement).

The payload of a parsed datagram is ``buf[UDP_HEADER_LEN:hdr.length]``: bytes past the UDP
length (e.g. Ethernet padding the IP layer did not strip) are not part of the datagram.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from . import MalformedError
from .checksum import ones_sum, pseudo_header_sum

PROTO_UDP = 17
UDP_HEADER_LEN = 8
# The largest payload of one UDP datagram over IPv4: 65535 - 20 (IP header) - 8 (UDP header).
MAX_UDP_PAYLOAD = 65507

_HDR = struct.Struct("!HHHH")


class UdpHeader(NamedTuple):
    src_port: int
    dst_port: int
    length: int  # header + payload, as carried in the length field
    checksum: int  # 0: the sender computed none


def udp_checksum_ok(buf: bytes | memoryview, length: int, src: bytes, dst: bytes) -> bool:
    """True when the first ``length`` bytes of ``buf`` (a whole datagram, its non-zero checksum
    field included) sum to all ones with the pseudo header of ``src`` -> ``dst``."""
    data = buf if len(buf) == length else buf[:length]
    return ones_sum(data, pseudo_header_sum(src, dst, PROTO_UDP, length)) == 0xFFFF


def parse_udp(buf: bytes | memoryview, src: bytes | None = None, dst: bytes | None = None,
              verify: bool = True) -> UdpHeader:
    """Parse and validate the UDP header at the start of ``buf`` (the IP payload).

    The length field must be at least 8 and fit in ``buf``. When ``verify`` is true and the
    checksum field is non-zero, the checksum is checked against the pseudo header built from
    ``src`` and ``dst`` (4-byte IPv4 addresses, required then).

    Raises :class:`MalformedError` with reason ``too_short``, ``bad_length`` or ``bad_checksum``.
    """
    if len(buf) < UDP_HEADER_LEN:
        raise MalformedError("too_short", f"{len(buf)} bytes")
    sport, dport, length, csum = _HDR.unpack_from(buf)
    if length < UDP_HEADER_LEN or length > len(buf):
        raise MalformedError("bad_length", f"length field {length}, {len(buf)} bytes present")
    if verify and csum:
        if src is None or dst is None:
            raise ValueError("checksum verification needs the IPv4 source and destination")
        if not udp_checksum_ok(buf, length, src, dst):
            raise MalformedError("bad_checksum", f"checksum {csum:#06x}")
    return UdpHeader(sport, dport, length, csum)


def build_udp(src_port: int, dst_port: int, payload: bytes | bytearray | memoryview,
              src: bytes | None = None, dst: bytes | None = None, checksum: bool = True) -> bytes:
    """A UDP datagram (header + payload).

    With ``checksum`` (the default) the checksum is computed over the pseudo header of ``src``
    -> ``dst`` (required then); a computed 0 is sent as 0xFFFF. ``checksum=False`` sends 0
    ("no checksum", allowed over IPv4). Ports must be 0..65535 and the datagram at most 65535
    bytes (``ValueError``/``struct.error`` otherwise; the UDP layer enforces the IPv4 limit).
    """
    length = UDP_HEADER_LEN + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"UDP datagram too long: {length} bytes")
    csum = 0
    if checksum:
        if src is None or dst is None:
            raise ValueError("the UDP checksum needs the IPv4 source and destination")
        # The header words (checksum field 0) are added to the partial sum instead of being
        # concatenated to the payload: no copy of the payload just to checksum it.
        initial = pseudo_header_sum(src, dst, PROTO_UDP, length) + src_port + dst_port + length
        csum = ~ones_sum(payload, initial) & 0xFFFF or 0xFFFF
    return _HDR.pack(src_port, dst_port, length, csum) + bytes(payload)
