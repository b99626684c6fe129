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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .config import OWN, StackConfig
from .core.counters import Counters
from .core.timers import Timer, Timers
from .introspect import SocketRow
from .introspect import sockets as netstat_sockets
from .proto.arp import ArpLayer
from .proto.dns import Resolver
from .proto.ethernet import EthernetLayer
from .proto.icmp import IcmpLayer
from .proto.ipv4 import IPv4Layer
from .proto.ports import PortAllocator
from .proto.tcp.layer import TcpLayer
from .proto.udp import UdpLayer

_PORTS = struct.Struct("!HH")  # source and destination port of TCP/UDP


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


#: The layers of a stack, in the order they are built (each may use those before it).
LAYER_NAMES = ("ethernet", "arp", "ipv4", "icmp", "udp", "tcp", "dns")
#: Layers a stack cannot work without; the others may be left out of a hand-built stack.
REQUIRED_LAYERS = ("ethernet", "arp", "ipv4", "icmp")
#: A layer factory: a layer class, or any callable taking the stack and returning the layer.
LayerFactory = Callable[["Stack"], Any]


class Stack:
    """The layers wired together (see the module docstring).

    The default stack builds one layer of each kind from the ``*_class`` attributes. A stack
    can also be built by hand from layer factories (:meth:`build`, or ``layers=``), leaving out
    the optional ones (``udp``, ``tcp``, ``dns``; ``dns`` needs ``udp``): a left-out layer's
    attribute is None.
    """

    ethernet_class = EthernetLayer
    arp_class = ArpLayer
    ipv4_class = IPv4Layer
    icmp_class = IcmpLayer
    udp_class = UdpLayer
    tcp_class = TcpLayer
    dns_class = Resolver

    #: The largest IPv4 packet the link accepts as one TCP super-segment to cut into wire
    #: segments (its ``gso_max_size``; see :mod:`usocket.link.base`); 0 (the default): none.
    #: The runtime copies it from its link; TCP then sends new data in super-segments.
    gso_max_size = 0

    def __init__(self, config: StackConfig, *, rng: random.Random | None = None,
                 ports: PortAllocator | None = None, flows: FlowObserver | None = None,
                 now: float = 0.0, layers: Mapping[str, LayerFactory] | None = None) -> None:
        self.config = config
        self.now = now
        self.rng = rng if rng is not None else random.SystemRandom()
        self.timers = Timers()
        self.counters = Counters()
        self.ports = ports if ports is not None else PortAllocator(config.ephemeral_ports, self.rng)
        self.flows = flows if flows is not None else FlowObserver()
        self._out: list[bytes] = []
        # Transport layers by IP protocol number, asked (``owns()``) by the diversion who owns a
        # packet and by ICMP whether a quoted flow is ours before it lowers a path MTU.
        self.transports: dict[int, Any] = {}
        if layers is None:
            self.ethernet = self.ethernet_class(self)
            self.arp = self.arp_class(self)
            self.ipv4 = self.ipv4_class(self)
            self.icmp = self.icmp_class(self)
            self.udp = self.udp_class(self)
            self.tcp = self.tcp_class(self)
            self.dns = self.dns_class(self)
            self.transports.update({17: self.udp, 6: self.tcp})
        else:
            self._build_layers(layers)
        self._post_init()

    # -- hand-built stacks ---------------------------------------------------------------------
    @classmethod
    def build(cls, config: StackConfig, layers: Iterable[LayerFactory | tuple[str, LayerFactory]],
              **kw: Any) -> Stack:
        """A stack built from explicit layer factories, as PyStack's users assembled theirs::

            stack = Stack.build(config, [EthernetLayer, ArpLayer, MyIPv4, IcmpLayer, UdpLayer])

        Each item is a layer class (its kind found from the base classes of the default layers:
        a subclass of ``IPv4Layer`` is the ``ipv4`` layer), or a ``(name, factory)`` pair for
        any callable ``factory(stack) -> layer``. Layers are built in the order of
        :data:`LAYER_NAMES` whatever the order given, since each registers with those below it.
        ``ethernet``, ``arp``, ``ipv4`` and ``icmp`` are required; a left-out ``udp``, ``tcp``
        or ``dns`` is None. ``kw`` goes to the constructor (``rng``, ``ports``, ``flows``, ``now``).
        """
        named: dict[str, LayerFactory] = {}
        for item in layers:
            if isinstance(item, tuple):
                name, factory = item
            else:
                name, factory = cls.layer_name(item), item
            if name in named:
                raise ValueError(f"two {name} layers")
            named[name] = factory
        return cls(config, layers=named, **kw)

    @classmethod
    def layer_name(cls, layer_class: Any) -> str:
        """The kind (``"ipv4"``...) of a layer class: the default layer class it derives from,
        else its ``layer_name`` attribute."""
        for name in LAYER_NAMES:
            base = getattr(Stack, name + "_class")
            if isinstance(layer_class, type) and issubclass(layer_class, base):
                return name
        kind = getattr(layer_class, "layer_name", None)
        if kind not in LAYER_NAMES:
            raise ValueError(f"{layer_class!r}: not a layer class of a known kind; pass (name, factory)")
        return str(kind)

    def _build_layers(self, layers: Mapping[str, LayerFactory]) -> None:
        unknown = set(layers) - set(LAYER_NAMES)
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}; layers are {LAYER_NAMES}")
        missing = [name for name in REQUIRED_LAYERS if name not in layers]
        if missing:
            raise ValueError(f"a stack needs the layers {missing}")
        if "dns" in layers and "udp" not in layers:
            raise ValueError("the dns layer needs a udp layer")
        for name in LAYER_NAMES:
            factory = layers.get(name)
            setattr(self, name, None if factory is None else factory(self))
        for proto, name in ((17, "udp"), (6, "tcp")):
            layer = getattr(self, name)
            if layer is not None:
                self.transports[proto] = layer

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
        sport, dport = _PORTS.unpack_from(packet, ihl)
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
        if self.dns is not None:
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

    # -- introspection (read only) ---------------------------------------------------------------
    def sockets(self) -> list[SocketRow]:
        """A netstat-like table: one :class:`usocket.introspect.SocketRow` per TCP connection or
        listener and UDP endpoint (stack thread; from elsewhere use ``Runtime.sockets()``)."""
        return netstat_sockets(self)
