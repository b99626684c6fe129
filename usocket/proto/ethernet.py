"""The Ethernet layer: frame demultiplexing on receive, header building on send.

Receive (``receive(frame, csum_ok)``) checks, in order, and drops with a counter in layer
``"ethernet"`` when a check fails:

=========================  =================================================================
``drop.too_short``         fewer than 14 bytes
``drop.vlan_tagged``       802.1Q/802.1ad tagged (usocket does not do VLANs)
``drop.not_ethernet_ii``   802.3 length-field frame (LLC/SNAP: STP, CDP ...)
``drop.multicast``         a group destination other than broadcast, not in ``multicast``
``drop.not_for_us``        a unicast destination other than our MAC (promiscuous links)
``drop.own_src``           sent from our own MAC (a looped copy of our own output)
``drop.bad_src``           a group (multicast/broadcast) source address, which is never valid
``drop.unknown_ethertype`` no handler registered (IPv6, LLDP ...)
=========================  =================================================================

The handler gets ``memoryview(frame)[14:]``: no copy, and possibly with Ethernet padding at
the end (IPv4 strips it by its total length, ARP reads only its 28 bytes).

While a handler runs, :attr:`EthernetLayer.rx_link_broadcast` tells whether the frame was sent
to a group address (broadcast or multicast: Linux's ``PACKET_BROADCAST``/``PACKET_MULTICAST``
rather than ``PACKET_HOST``); it is ``False`` at any other time (timers, packets handed over by
NFQUEUE through ``Stack.receive_ip``). The handler signature stays ``(payload, csum_ok)``; layers
above read the flag where RFC 1122 cares, e.g. ICMP never sends an error about such a frame
(RFC 1122 3.2.2).

Send (``send(dst_mac, ethertype, payload)``) prepends a header from a small per-(destination,
EtherType) cache of 14-byte templates and hands the frame to ``stack.transmit``. It does not
pad short frames unless :attr:`EthernetLayer.pad_to` is set (Linux does not pad either: NIC
drivers do; see :mod:`usocket.wire.ethernet`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..wire import MalformedError
from ..wire.ethernet import BROADCAST_MAC, ETH_HLEN, build_header, parse_ethernet
from ..wire.gso import GsoPacket, gso_packet

if TYPE_CHECKING:
    from ..stack import Stack

Payload = bytes | bytearray | memoryview
Handler = Callable[[memoryview, bool], None]


class EthernetLayer:
    """Ethernet II demultiplexer and framer for one interface (our MAC: ``stack.config.mac``)."""

    #: Zero-pad transmitted frames shorter than this (60 = the 802.3 minimum); 0 = never pad.
    pad_to: int = 0
    #: Bound on the header-template cache; it is simply cleared when full.
    header_cache_max: int = 1024
    #: Drop (and count) payloads larger than the configured MTU instead of transmitting them.
    enforce_mtu: bool = True

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.c = stack.counters.layer("ethernet")
        self.handlers: dict[int, Handler] = {}
        #: Group MAC addresses (besides broadcast) whose frames we accept, e.g. for multicast.
        self.multicast: set[bytes] = set()
        self._headers: dict[tuple[bytes, int], bytes] = {}
        self._headers_src: bytes = stack.config.mac
        #: True while the handler of a frame sent to a group MAC address runs (see the module doc).
        self.rx_link_broadcast = False

    # -- registration ----------------------------------------------------------------------
    def register(self, ethertype: int, handler: Handler) -> None:
        """Deliver payloads of frames with ``ethertype`` to ``handler(payload, csum_ok)``."""
        self.handlers[ethertype] = handler

    def unregister(self, ethertype: int) -> None:
        self.handlers.pop(ethertype, None)

    # -- receive ---------------------------------------------------------------------------
    def receive(self, frame: Payload, csum_ok: bool) -> None:
        """One frame from the link: validate, filter and hand the payload to its handler."""
        c = self.c
        c["rx"] += 1
        try:
            dst, src, ethertype = parse_ethernet(frame)
        except MalformedError as e:
            c["drop." + e.reason] += 1
            return
        mac = self.stack.config.mac
        if dst != mac and not self.accept_destination(dst):
            return
        if src[0] & 1:
            c["drop.bad_src"] += 1
            return
        if src == mac:
            c["drop.own_src"] += 1
            return
        handler = self.handlers.get(ethertype)
        if handler is None:
            c["drop.unknown_ethertype"] += 1
            return
        self.rx_link_broadcast = bool(dst[0] & 1)
        try:
            handler(memoryview(frame)[ETH_HLEN:], csum_ok)
        finally:
            self.rx_link_broadcast = False

    def accept_destination(self, dst: bytes) -> bool:
        """Whether a frame for ``dst`` (not our own MAC) is for us; counts the refusals.

        Override for promiscuous tricks or to accept more group addresses.
        """
        if dst[0] & 1:
            if dst == BROADCAST_MAC:
                self.c["rx.broadcast"] += 1
                return True
            if dst in self.multicast:
                self.c["rx.multicast"] += 1
                return True
            self.c["drop.multicast"] += 1
            return False
        self.c["drop.not_for_us"] += 1
        return False

    # -- send ------------------------------------------------------------------------------
    def send(self, dst_mac: bytes, ethertype: int, payload: Payload) -> None:
        """Frame ``payload`` for ``dst_mac`` and queue it on the link via ``stack.transmit``."""
        if type(payload) is GsoPacket:  # a TCP super-segment the link cuts (usocket.wire.gso)
            self.c["tx"] += 1
            self.stack.transmit(gso_packet(self.header(dst_mac, ethertype) + payload, payload.gso_size))
            return
        if self.enforce_mtu and len(payload) > self.stack.config.mtu:
            self.c["drop.tx_oversize"] += 1
            return
        frame = self.header(dst_mac, ethertype) + payload
        if len(frame) < self.pad_to:
            frame += bytes(self.pad_to - len(frame))
        self.c["tx"] += 1
        self.stack.transmit(frame)

    def header(self, dst_mac: bytes, ethertype: int) -> bytes:
        """The 14-byte header template for (``dst_mac``, ``ethertype``) from our MAC (cached)."""
        key = (dst_mac, ethertype)
        hdr = self._headers.get(key)
        if hdr is not None and self._headers_src is self.stack.config.mac:
            return hdr
        src = self.stack.config.mac
        if src != self._headers_src or len(self._headers) >= self.header_cache_max:
            self._headers.clear()  # our MAC changed (or the cache is full): start over
        self._headers_src = src
        hdr = self._headers[key] = build_header(bytes(dst_mac), src, ethertype)
        return hdr
