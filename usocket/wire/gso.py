"""TCP super-segments for segmentation offload (TSO/GSO), and their software segmentation.

A :class:`GsoPacket` is ``bytes`` (an IPv4 packet, or the Ethernet frame around it) holding one
TCP segment whose payload is larger than the path MTU allows, plus ``gso_size``: the payload
bytes each wire segment carries. Its TCP checksum field holds only the pseudo-header sum
(:meth:`usocket.wire.tcp.TcpTemplate.build_partial`), like a Linux ``CHECKSUM_PARTIAL`` skb.
The link cuts it: :mod:`usocket.link.packet` hands it to the kernel with a ``virtio_net_hdr``
(the kernel segments it, or a veth passes it whole to its peer); :func:`segment` does the same
cutting in Python, the way ``tcp_gso_segment`` does: every piece gets the header with the
sequence number advanced, the IP identification incremented, FIN and PSH only on the last
piece, CWR only on the first, and full IP and TCP checksums.

Being a ``bytes`` subclass, a super-segment passes unchanged through code that only stores or
writes frames (ARP's queue, the pcap writer); a link that cannot offload must never be given
one (such links advertise ``gso_max_size = 0`` and TCP then builds none).
"""
from __future__ import annotations

import struct

from . import MalformedError
from .checksum import checksum

_IPV4_ETHERTYPE = b"\x08\x00"
_FIN_PSH = 0x09
_CWR = 0x80


class GsoPacket(bytes):
    """A TCP super-segment (see the module doc). ``gso_size`` is set by :func:`gso_packet`."""

    gso_size: int = 0


def gso_packet(data: bytes | bytearray | memoryview, gso_size: int) -> GsoPacket:
    """``data`` as a :class:`GsoPacket` to be cut into ``gso_size``-byte payloads."""
    p = GsoPacket(data)
    p.gso_size = gso_size
    return p


def segment(frame: bytes, l2_len: int = 14) -> list[bytes]:
    """Cut the super-segment ``frame`` (``l2_len`` bytes of link header, then an IPv4 packet
    carrying TCP, checksum field partial) into wire segments of ``frame.gso_size`` payload
    bytes with complete checksums. Raises :class:`MalformedError` for anything else."""
    gso_size = getattr(frame, "gso_size", 0)
    b = bytes(frame)
    if len(b) < l2_len + 40 or b[l2_len] >> 4 != 4 or b[l2_len + 9] != 6:
        raise MalformedError("not an IPv4 TCP super-segment")
    ihl = (b[l2_len] & 0x0F) * 4
    t = l2_len + ihl
    thl = (b[t + 12] >> 4) * 4
    if ihl < 20 or thl < 20 or len(b) < t + thl:
        raise MalformedError("bad IPv4 or TCP header length")
    l2, ip, th, payload = b[:l2_len], b[l2_len:t], b[t:t + thl], b[t + thl:]
    size = gso_size if gso_size > 0 else max(len(payload), 1)
    ident = struct.unpack_from("!H", ip, 4)[0]
    seq = struct.unpack_from("!I", th, 4)[0]
    flags = th[13]
    pseudo = int.from_bytes(ip[12:20], "big") + 6
    out = []
    for i, off in enumerate(range(0, max(len(payload), 1), size)):
        chunk = payload[off:off + size]
        f = flags if off + size >= len(payload) else flags & ~_FIN_PSH
        if i:
            f &= ~_CWR
        iph = bytearray(ip)
        struct.pack_into("!HH", iph, 2, ihl + thl + len(chunk), (ident + i) & 0xFFFF)
        iph[10:12] = b"\0\0"
        struct.pack_into("!H", iph, 10, checksum(iph))
        tcp = bytearray(th)
        struct.pack_into("!I", tcp, 4, (seq + off) & 0xFFFFFFFF)
        tcp[13] = f
        tcp[16:18] = b"\0\0"
        struct.pack_into("!H", tcp, 16, checksum(bytes(tcp) + chunk, pseudo + thl + len(chunk)))
        out.append(l2 + bytes(iph) + bytes(tcp) + chunk)
    return out


__all__ = ["GsoPacket", "gso_packet", "segment"]
