"""The sans-IO stack: layers wired together, driven by frames and timestamps.

A :class:`Stack` never touches a socket, a thread or a clock. Its edges are:

- ``receive_frame(frame, now, csum_ok=False)``: an Ethernet frame from a link.
- ``receive_ip(packet, now, csum_ok=False)``: an IPv4 packet taken from the kernel (NFQUEUE,
  shared mode); ``csum_ok`` as for frames (the queue marks partial checksums).
- ``poll(now)``: fire due timers; ``poll_at()`` says when to call it next.
- ``take_output()``: Ethernet frames to transmit, in order.

The runtime (:mod:`usocket.runtime`) calls these from the one stack thread; tests call them
directly with a virtual clock. Every layer is reachable as an attribute (``stack.arp``,
``stack.ipv4`` ...) and its class is a class attribute, so a subclass of ``Stack`` can swap
any layer (PyStack's spirit). Layers talk to each other only through the stack's attributes.

Layer contracts (all run in the stack thread; ``csum_ok=True`` means the L4 checksum is known
good or not computed yet, e.g. a locally generated packet with checksum offload):

- ``ethernet.receive(frame, csum_ok)``; ``ethernet.send(dst_mac, ethertype, payload)``;
  ``ethernet.register(ethertype, handler)`` with ``handler(payload, csum_ok)``. While a handler
  runs, ``ethernet.rx_link_broadcast`` tells whether the frame was link-layer broadcast or
  multicast (ICMP never answers those, RFC 1122 3.2.2).
- ``arp.receive(payload, csum_ok)``; ``arp.output(next_hop_ip, ethertype, payload)`` resolves
  the next hop's MAC (queueing while unresolved) and sends through ``ethernet``.
- ``ipv4.receive(packet, csum_ok)``; ``ipv4.register(proto, handler)`` with
  ``handler(ip_header, payload, csum_ok)``; ``ipv4.send(dst, proto, payload, **opts)``.
- ``icmp.receive(ip_header, payload, csum_ok)``; ``icmp.send_error(type, code, ip_packet)``;
  ``icmp.register_error_handler(proto, fn)`` with ``fn(error, ip_header_of_offending,
  offending_l4_bytes)`` where ``error`` is an :class:`usocket.proto.icmp.IcmpError`.
- ``udp.receive(ip_header, payload, csum_ok)``; endpoints via ``udp.open()``.
- ``tcp.receive(ip_header, payload, csum_ok)``; connections via ``tcp.open()`` (see
  :mod:`usocket.proto.tcp.layer`).
- ``dns.resolve(name, callback)`` / ``dns.resolve_ptr(ip, callback)``: the stub resolver, over UDP.
"""
from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

from .config import OWN, StackConfig
from .core.counters import Counters
from .core.timers import Timer, Timers
from .proto.arp import ArpLayer
from .proto.dns import Resolver
from .proto.ethernet import EthernetLayer
from .proto.icmp import IcmpLayer
from .proto.ipv4 import IPv4Layer
from .proto.ports import PortAllocator
from .proto.tcp.layer import TcpLayer
from .proto.udp import UdpLayer


class FlowObserver:
    """Told when the stack starts and stops owning a flow, so the kernel can be diverted.

    ``proto`` is 6 or 17; ``remote`` is ``(ip_bytes, port)`` or ``None`` for any remote.
    The default does nothing (own mode, in-memory links). :mod:`usocket.divert` implements it.
    ``flow_opened`` may raise ``OSError``; the opening operation then fails with it.
    """

    def flow_opened(self, proto: int, local_port: int, remote: tuple[bytes, int] | None) -> None:
        pass

    def flow_closed(self, proto: int, local_port: int, remote: tuple[bytes, int] | None) -> None:
        pass


class Stack:
    ethernet_class = EthernetLayer
    arp_class = ArpLayer
    ipv4_class = IPv4Layer
    icmp_class = IcmpLayer
    udp_class = UdpLayer
    tcp_class = TcpLayer
    dns_class = Resolver

    def __init__(self, config: StackConfig, *, rng: random.Random | None = None,
                 ports: PortAllocator | None = None, flows: FlowObserver | None = None,
                 now: float = 0.0) -> None:
        self.config = config
        self.now = now
        self.rng = rng if rng is not None else random.SystemRandom()
        self.timers = Timers()
        self.counters = Counters()
        self.ports = ports if ports is not None else PortAllocator(config.ephemeral_ports, self.rng)
        self.flows = flows if flows is not None else FlowObserver()
        self._out: list[bytes] = []
        self.ethernet = self.ethernet_class(self)
        self.arp = self.arp_class(self)
        self.ipv4 = self.ipv4_class(self)
        self.icmp = self.icmp_class(self)
        self.udp = self.udp_class(self)
        self.tcp = self.tcp_class(self)
        self.dns = self.dns_class(self)
        # Transport layers by IP protocol number, asked (``owns()``) by the diversion who owns a
        # packet and by ICMP whether a quoted flow is ours before it lowers a path MTU.
        self.transports: dict[int, Any] = {17: self.udp, 6: self.tcp}
        self._post_init()

    def _post_init(self) -> None:
        """Hook for subclasses adding layers (e.g. TCP) after the base ones exist."""

    # -- properties every layer uses ---------------------------------------------------------
    @property
    def own_mode(self) -> bool:
        """True when the stack owns its IP (answers ARP/ICMP itself)."""
        return self.config.mode == OWN

    # -- edges ---------------------------------------------------------------------------------
    def receive_frame(self, frame: bytes | memoryview, now: float, csum_ok: bool = False) -> None:
        self.now = now
        self.ethernet.receive(frame, csum_ok)

    def receive_ip(self, packet: bytes | memoryview, now: float, csum_ok: bool = False) -> None:
        self.now = now
        self.ipv4.receive(packet, csum_ok)

    def owns_ip_packet(self, packet: bytes | memoryview) -> bool:
        """Whether an IPv4 packet handed over by the kernel (NFQUEUE, shared mode) belongs to
        one of the stack's flows. Cheap: only the protocol and ports are looked at."""
        if len(packet) < 20:
            return False
        ihl = (packet[0] & 0x0F) * 4
        if len(packet) < ihl + 4 or ihl < 20:
            return False
        layer = self.transports.get(packet[9])
        if layer is None:
            return False
        sport, dport = struct.unpack_from("!HH", packet, ihl)
        return bool(layer.owns(dport, bytes(packet[12:16]), sport))

    def poll(self, now: float) -> int:
        self.now = now
        return self.timers.run(now)

    def poll_at(self) -> float | None:
        return self.timers.next_deadline()

    def transmit(self, frame: bytes) -> None:
        """Called by the Ethernet layer: queue one frame for the link."""
        self._out.append(frame)

    def take_output(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def shutdown(self) -> None:
        """Release everything the stack holds in the outside world: every endpoint is closed
        (its port given back, its diversion flow closed, waiters woken through the endpoint's
        ``on_shutdown()`` if it has one), lookups in flight abandoned, port reservations freed.
        The runtime calls this on the stack thread when it stops."""
        self.dns.close()
        for layer in self.transports.values():
            for ep in list(layer.endpoints()):
                layer.close(ep)
                hook = getattr(ep, "on_shutdown", None)
                if hook is not None:
                    hook()
        self.ports.close()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.timers.call_at(self.now + delay, callback, *args)
