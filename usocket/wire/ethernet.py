"""Ethernet II frame header codec (IEEE 802.3 framing with an EtherType, RFC 894).

A frame as an AF_PACKET socket or a TAP device hands it over: 6-byte destination, 6-byte source,
2-byte EtherType, payload from offset 14. No preamble and no FCS (the NIC strips and checks it).

Deliberate limits, documented here because callers rely on "payload starts at 14":

- 802.1Q / 802.1ad (QinQ) tagged frames raise ``MalformedError("vlan_tagged")``: their payload
  starts at 18 (or 22), usocket does not do VLANs, and Linux's AF_PACKET usually hands frames
  over with the tag already stripped into the aux data (hardware VLAN offload) anyway.
- IEEE 802.3 length-field frames (EtherType field < 0x0600, LLC/SNAP: STP, CDP ...) raise
  ``MalformedError("not_ethernet_ii")``; IP and ARP never use them.

Padding: frames shorter than 60 bytes (:data:`ETH_ZLEN`) are legal on the wire only once padded.
Linux does not pad in software (its own ARP frames leave ``arp_create`` at 42 bytes) and does not
pad AF_PACKET sends either: verified on a veth pair, a 42-byte frame sent with AF_PACKET arrives
as 42 bytes. Physical NIC drivers pad (hardware, or ``skb_put_padto`` in the driver), so
:func:`build_ethernet` does not pad unless asked (``pad=True``). Receivers must therefore not
assume that payload length equals the frame length minus 14: IPv4 strips padding by its total
length, ARP ignores bytes past its 28.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from . import MalformedError
from .addr import BROADCAST_MAC as BROADCAST_MAC  # re-exported: the layers use it from here
from .addr import ZERO_MAC

ETH_ALEN = 6
ETH_HLEN = 14
ETH_ZLEN = 60  # minimum frame length without the FCS
ETH_P_802_3_MIN = 0x0600  # EtherType values below this are 802.3 length fields

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_QINQ = 0x88A8
VLAN_ETHERTYPES = frozenset((ETHERTYPE_VLAN, ETHERTYPE_QINQ, 0x9100, 0x9200))

_HDR = struct.Struct("!6s6sH")
_new = tuple.__new__


class EthernetHeader(NamedTuple):
    dst: bytes  # 6 bytes
    src: bytes  # 6 bytes
    ethertype: int


def parse_ethernet(buf: bytes | bytearray | memoryview) -> EthernetHeader:
    """Parse the 14-byte header of ``buf``; the payload is ``buf[ETH_HLEN:]``.

    Raises :class:`MalformedError` with reason ``too_short``, ``vlan_tagged`` or
    ``not_ethernet_ii`` (see the module docstring for why the last two are refused).
    """
    if len(buf) < ETH_HLEN:
        raise MalformedError("too_short", f"{len(buf)} bytes")
    dst, src, ethertype = _HDR.unpack_from(buf)
    if ethertype < ETH_P_802_3_MIN:
        raise MalformedError("not_ethernet_ii", f"length field {ethertype}")
    if ethertype in VLAN_ETHERTYPES:
        raise MalformedError("vlan_tagged", f"tag protocol 0x{ethertype:04x}")
    return _new(EthernetHeader, (dst, src, ethertype))  # = EthernetHeader(...), 2x faster


def build_header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """The 14 header bytes (handy to cache per destination: ``header + payload`` is a frame)."""
    if len(dst) != ETH_ALEN or len(src) != ETH_ALEN:
        raise ValueError("MAC addresses are 6 bytes")
    return _HDR.pack(dst, src, ethertype)


def build_ethernet(dst: bytes, src: bytes, ethertype: int,
                   payload: bytes | bytearray | memoryview = b"", pad: bool = False) -> bytes:
    """A whole frame; with ``pad=True`` zero-padded to :data:`ETH_ZLEN` bytes."""
    frame = build_header(dst, src, ethertype) + payload
    if pad and len(frame) < ETH_ZLEN:
        frame += bytes(ETH_ZLEN - len(frame))
    return frame


def is_multicast_mac(mac: bytes) -> bool:
    """True for group addresses (I/G bit set), broadcast included."""
    return bool(mac[0] & 1)


def is_unicast_mac(mac: bytes) -> bool:
    """True for a usable station address: not a group address and not all zeros."""
    return len(mac) == ETH_ALEN and not mac[0] & 1 and mac != ZERO_MAC


def ipv4_multicast_mac(ip: bytes) -> bytes:
    """The MAC an IPv4 multicast group maps to (RFC 1112 §6.4): 01:00:5e + low 23 bits."""
    return b"\x01\x00\x5e" + bytes((ip[1] & 0x7F, ip[2], ip[3]))
