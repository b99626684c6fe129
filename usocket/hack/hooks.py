"""Packet hooks at each layer boundary, both directions: observe, modify, drop, inject.

Boundaries (``where``) and what a hook sees there:

=============================  ===============================================================
``"link"``                     whole Ethernet frames between the link and the Ethernet layer
                               (``"in"``: as received, before any check; ``"out"``: as sent)
``"ipv4"``                     IPv4 datagrams between Ethernet and IPv4 (``"in"``: before
                               validation and reassembly, NFQUEUE input included; ``"out"``:
                               each datagram or fragment IPv4 hands to ARP for sending)
``"arp"``                      ARP packets between Ethernet and ARP, both directions
``"icmp"``, ``"udp"``,         the transport payload (ICMP message, UDP datagram, TCP segment,
``"tcp"`` or a protocol        header included) between IPv4 and the transport (``"in"``:
number                         after reassembly; ``"out"``: before fragmentation)
=============================  ===============================================================

A hook is ``fn(data, ctx) -> bytes | None``: return the bytes to pass on (``data`` itself
to observe, new bytes to modify) or None to drop. ``ctx`` (:class:`HookContext`) has
``where``, ``direction``, ``stack`` and, at the transport boundary, ``src``/``dst`` (bytes),
``proto`` and (out) ``options`` (the IPv4 send options); ``ctx.inject(data)`` sends other bytes
across the same boundary in the same direction, past the hooks. :meth:`Hooks.inject` does
the same from outside a hook. Hooks run on the stack thread, in the order added.

A hook declared with :func:`scapy_view` (or added with ``scapy=True``) gets a scapy packet
(``Ether``, ``IP``, ``ARP``, ``TCP``/``UDP``/``ICMP`` or ``Raw``) and may return one (or
bytes, or None). Scapy is imported and used only for such hooks. At the transport boundary a
returned packet is turned into bytes under an IP header of the ctx's addresses, so deleting
its checksum (``del pkt[TCP].chksum``) has scapy compute the right one. Modified input is
always re-verified by the layer above (checksums included): a hook that changes a segment
must fix its checksum.

Cost: nothing is in the path until a hook is added. Adding the first hook of a boundary and
direction swaps one dispatch point for a wrapper: an ``ethernet.handlers`` or
``ipv4.protocols`` entry (frames and datagrams going up), or one method of the layer's class
(``Stack.transmit``, ``ethernet.receive``, ``arp.output``, ``ethernet.send``, ``ipv4.send``,
``ipv4.receive`` for NFQUEUE input) for a dispatcher that sends the hooked stack's calls to the
hooks and other stacks' calls straight on. Removing the last hook puts the original back. The
layer objects themselves are never given instance attributes (that would slow CPython's
attribute access on them for good). The layers' per-packet code is unchanged.
Transport-boundary input hooks wrap the protocol's handler as registered when the hook is
added: register custom protocols first.

Segmentation offload: while any output hook is registered at ``link``, ``ipv4`` or ``tcp``, the
stack's TCP builds no super-segments (``stack.gso_max_size`` is 0 until the last such hook is
removed), so output hooks see every segment as it goes on the wire, at most one MSS of data.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from ..stack import Stack
from ..wire import MalformedError
from ..wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4
from ..wire.ipv4 import IPv4Template, parse_ipv4

IN, OUT = "in", "out"
PROTO_NAMES = {"icmp": 1, "tcp": 6, "udp": 17}
Hook = Callable[[Any, "HookContext"], Any]


def scapy_view(fn: Hook) -> Hook:
    """Decorator: the hook gets (and may return) scapy packets instead of bytes."""
    fn.scapy = True  # type: ignore[attr-defined]
    return fn


class HookContext:
    """What a hook knows about the packet in hand (see the module docstring)."""

    __slots__ = ("hooks", "where", "direction", "src", "dst", "proto", "options")

    def __init__(self, hooks: Hooks, where: str | int, direction: str, src: bytes | None = None,
                 dst: bytes | None = None, proto: int | None = None, options: dict[str, Any] | None = None) -> None:
        self.hooks = hooks
        self.where = where
        self.direction = direction
        self.src = src
        self.dst = dst
        self.proto = proto
        self.options = options

    @property
    def stack(self) -> Stack:
        return self.hooks.stack

    def inject(self, data: Any) -> None:
        """Send ``data`` (bytes or a scapy packet) across this boundary, past the hooks."""
        self.hooks.inject(self.where, self.direction, _to_bytes(data, self), src=self.src, dst=self.dst)


def _scapy_class(where: str | int) -> Any:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import Raw

    return {"link": Ether, "ipv4": IP, "arp": ARP, 1: ICMP, 6: TCP, 17: UDP}.get(where, Raw)


def _to_bytes(value: Any, ctx: HookContext) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(ctx.where, int) and ctx.src is not None and ctx.dst is not None:
        from scapy.layers.inet import IP
        from scapy.utils import inet_ntoa

        wrapped = IP(src=inet_ntoa(ctx.src), dst=inet_ntoa(ctx.dst), proto=ctx.where) / value
        return bytes(wrapped)[20:]  # the transport bytes, checksums computed when deleted
    return bytes(value)


def _nothing() -> None:
    pass


class Hooks:
    """The hooks of one stack: ``Hooks.of(stack)`` (or :func:`hooks`) finds or makes it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.chains: dict[tuple[str | int, str], list[Hook]] = {}
        self._saved: dict[tuple[str | int, str], Callable[[], None]] = {}  # undo of each swap
        self._l4_handlers: dict[int, Any] = {}  # transport handlers wrapped by input hooks
        self._originals: dict[tuple[int, str], Callable[..., Any]] = {}  # methods as they were
        self._l4_out_undo: Callable[[], None] = _nothing
        self._gso_saved: int | None = None  # the stack's gso_max_size while output hooks exist

    @classmethod
    def of(cls, stack: Stack) -> Hooks:
        h = _BY_STACK.get(stack)
        if h is None:
            h = _BY_STACK[stack] = cls(stack)
        return h

    # -- registration ---------------------------------------------------------------------------
    @staticmethod
    def _key(where: str | int, direction: str) -> tuple[str | int, str]:
        if direction not in (IN, OUT):
            raise ValueError("direction is 'in' or 'out'")
        if isinstance(where, str) and where in PROTO_NAMES:
            where = PROTO_NAMES[where]
        if isinstance(where, int):
            if not 0 <= where <= 255:
                raise ValueError("a protocol number is 0-255")
        elif where not in ("link", "ipv4", "arp"):
            raise ValueError(f"unknown boundary {where!r}: link, ipv4, arp, icmp, udp, tcp or a protocol number")
        return where, direction

    def add(self, where: str | int, direction: str, fn: Hook, *, scapy: bool | None = None) -> Callable[[], None]:
        """Add ``fn`` at ``where`` for ``direction`` (``"in"``/``"out"``); returns a function
        that removes it. ``scapy=True`` (or :func:`scapy_view` on ``fn``) gives it scapy packets.
        Call on the stack thread (``rt.call(...)``) when a runtime runs the stack."""
        key = self._key(where, direction)
        if scapy is None:
            scapy = bool(getattr(fn, "scapy", False))
        hook = _scapy_adapter(fn, key[0]) if scapy else fn
        chain = self.chains.get(key)
        if chain:
            chain.append(hook)
        else:
            self.chains[key] = [hook]
            try:
                self._install(key)
            except BaseException:
                del self.chains[key]
                raise
        self._offload()

        def remove() -> None:
            self.remove(key[0], key[1], hook)

        return remove

    def remove(self, where: str | int, direction: str, fn: Hook) -> None:
        key = self._key(where, direction)
        chain = self.chains.get(key, [])
        for i, h in enumerate(chain):
            if h is fn or getattr(h, "__wrapped__", None) is fn:
                del chain[i]
                break
        if not chain and key in self._saved:
            self.chains.pop(key, None)
            self._saved.pop(key)()
        self._offload()

    def clear(self) -> None:
        """Remove every hook: the stack is as it was."""
        for key in list(self._saved):
            self.chains.pop(key, None)
            self._saved.pop(key)()
        self._offload()

    def _offload(self) -> None:
        """TCP super-segments off while an output hook would see them (see the module doc)."""
        hooked = any(self.chains.get((w, OUT)) for w in ("link", "ipv4", 6))
        stack: Any = self.stack
        if hooked and self._gso_saved is None:
            self._gso_saved = getattr(stack, "gso_max_size", 0)
            stack.gso_max_size = 0
        elif not hooked and self._gso_saved is not None:
            stack.gso_max_size, self._gso_saved = self._gso_saved, None

    def __call__(self, where: str | int, direction: str, *, scapy: bool | None = None) -> Callable[[Hook], Hook]:
        """Decorator form: ``@hooks("tcp", "out")``."""
        def deco(fn: Hook) -> Hook:
            self.add(where, direction, fn, scapy=scapy)
            return fn
        return deco

    # -- running a chain --------------------------------------------------------------------------
    def run(self, key: tuple[str | int, str], data: bytes, ctx: HookContext) -> bytes | None:
        for hook in self.chains.get(key, ()):
            out = hook(data, ctx)
            if out is None:
                self.stack.counters.layer("hooks")[f"drop.{key[0]}.{key[1]}"] += 1
                return None
            data = out if type(out) is bytes else _to_bytes(out, ctx)
        return data

    # -- the swap points --------------------------------------------------------------------------
    def _install(self, key: tuple[str | int, str]) -> None:
        st = self.stack
        where, direction = key
        if where == "link" and direction == IN:
            def link_in(eth_receive: Callable[..., None]) -> Callable[..., None]:
                def hooked(frame: Any, csum_ok: bool) -> None:
                    data = bytes(frame)
                    out = self.run(key, data, HookContext(self, where, direction))
                    if out is not None:
                        eth_receive(out, csum_ok and out == data)
                return hooked

            self._saved[key] = self._patch(st.ethernet, "receive", link_in)
        elif where == "link":
            def link_out(transmit: Callable[[bytes], None]) -> Callable[[bytes], None]:
                def hooked(frame: bytes) -> None:
                    out = self.run(key, bytes(frame), HookContext(self, where, direction))
                    if out is not None:
                        transmit(out)
                return hooked

            self._saved[key] = self._patch(st, "transmit", link_out)
        elif where in ("ipv4", "arp") and direction == IN:
            ethertype = ETHERTYPE_IPV4 if where == "ipv4" else ETHERTYPE_ARP
            layer = st.ipv4 if where == "ipv4" else st.arp
            handlers = st.ethernet.handlers
            registered: Any = handlers.get(ethertype, layer.receive)

            def l3_in(original: Callable[..., None]) -> Callable[..., None]:
                def hooked(payload: Any, csum_ok: bool) -> None:
                    data = bytes(payload)
                    out = self.run(key, data, HookContext(self, where, direction))
                    if out is not None:
                        original(out, csum_ok and out == data)
                return hooked

            handlers[ethertype] = l3_in(registered)  # frames from the link
            undo_layer = self._patch(layer, "receive", l3_in)  # packets from NFQUEUE (receive_ip)

            def undo_l3_in() -> None:
                handlers[ethertype] = registered
                undo_layer()

            self._saved[key] = undo_l3_in
        elif where in ("ipv4", "arp"):  # out: IPv4 hands packets to ARP, ARP its own to Ethernet
            ethertype = ETHERTYPE_IPV4 if where == "ipv4" else ETHERTYPE_ARP

            def l3_out(send: Callable[..., None]) -> Callable[..., None]:
                def hooked(dst: bytes, kind: int, payload: Any) -> None:
                    if kind != ethertype:
                        send(dst, kind, payload)
                        return
                    out = self.run(key, bytes(payload), HookContext(self, where, direction))
                    if out is not None:
                        send(dst, kind, out)
                return hooked

            if where == "ipv4":
                self._saved[key] = self._patch(st.arp, "output", l3_out)
            else:
                self._saved[key] = self._patch(st.ethernet, "send", l3_out)
        elif direction == IN:
            assert isinstance(where, int)
            protocols = st.ipv4.protocols
            handler = protocols.get(where)
            if handler is None:
                raise ValueError(f"no handler for IP protocol {where}: register it before hooking it")

            def l4_in(hdr: Any, payload: Any, csum_ok: bool) -> None:
                data = bytes(payload)
                ctx = HookContext(self, where, direction, hdr.src, hdr.dst, where)
                out = self.run(key, data, ctx)
                if out is not None:
                    handler(hdr, out, csum_ok and out == data)

            protocols[where] = l4_in
            self._l4_handlers[where] = handler

            def undo_l4_in() -> None:
                self._l4_handlers.pop(where, None)
                if protocols.get(where) is l4_in:
                    protocols[where] = handler

            self._saved[key] = undo_l4_in
        else:
            if not any(isinstance(k[0], int) and k[1] == OUT for k in self._saved):
                self._l4_out_undo = self._patch(st.ipv4, "send", self._l4_out)
            self._saved[key] = self._l4_out_unpatch(key)

    def _l4_out(self, send: Callable[..., None]) -> Callable[..., None]:
        """One wrapper of ``ipv4.send`` serves every protocol with output hooks."""
        chains = self.chains

        def hooked(dst: bytes, proto: int, payload: Any, **options: Any) -> None:
            key = (proto, OUT)
            if key not in chains:
                send(dst, proto, payload, **options)
                return
            src = options.get("src") or self.stack.config.address
            out = self.run(key, bytes(payload), HookContext(self, proto, OUT, src, dst, proto, options))
            if out is not None:
                send(dst, proto, out, **options)
        return hooked

    def _l4_out_unpatch(self, key: tuple[str | int, str]) -> Callable[[], None]:
        def undo() -> None:
            if not any(isinstance(k[0], int) and k[1] == OUT and k != key for k in self._saved):
                self._l4_out_undo()
        return undo

    def _patch(self, obj: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
               ) -> Callable[[], None]:
        """Route ``obj.name(...)`` to ``make(original bound method)``; return the undo.

        The method is replaced on the object's *class* by a dispatcher that looks the object up
        in a table (objects of that class in other stacks go straight to the original), never on
        the object itself: giving an object an instance attribute, even briefly, makes CPython
        keep its attributes in a real dict from then on, which slows every attribute access of
        that layer (about 1 us per packet measured). The class attribute is restored when the
        last hooked object of that class is unhooked."""
        original = _ClassPatch.function(type(obj), name).__get__(obj)
        self._originals[(id(obj), name)] = original
        undo = _ClassPatch.add(type(obj), name, obj, make(original))

        def undo_all() -> None:
            self._originals.pop((id(obj), name), None)
            undo()
        return undo_all

    def _original(self, obj: Any, name: str) -> Callable[..., Any]:
        """``obj.name`` as it is without hooks."""
        found = self._originals.get((id(obj), name))
        return found if found is not None else getattr(obj, name)  # type: ignore[no-any-return]

    # -- injection --------------------------------------------------------------------------------
    def inject(self, where: str | int, direction: str, data: Any, *, src: bytes | None = None,
               dst: bytes | None = None, dst_mac: bytes | None = None, **options: Any) -> None:
        """Send ``data`` across a boundary, past its hooks (on the stack thread).

        ``link``: a frame to the wire (out) or into the stack (in). ``ipv4``: a whole datagram,
        routed by its destination (out) or received (in). ``arp``: an ARP packet, broadcast
        unless ``dst_mac`` (out), or received (in). Transport boundary: the transport bytes,
        sent to ``dst`` by IPv4 with ``options`` (out), or delivered to the protocol's handler as
        if from ``src`` to ``dst`` (in; default: our own address)."""
        where, direction = self._key(where, direction)
        data = bytes(data)
        st = self.stack
        if where == "link":
            if direction == OUT:
                self._original(st, "transmit")(data)
            else:
                self._original(st.ethernet, "receive")(data, False)
        elif where == "ipv4":
            if direction == OUT:
                hdr, _ = parse_ipv4(data)
                self._original(st.arp, "output")(st.ipv4.route(hdr.dst), ETHERTYPE_IPV4, data)
            else:
                self._original(st.ipv4, "receive")(data, False)
        elif where == "arp":
            if direction == OUT:
                self._original(st.ethernet, "send")(dst_mac or b"\xff" * 6, ETHERTYPE_ARP, data)
            else:
                self._original(st.arp, "receive")(data, False)
        else:
            assert isinstance(where, int)
            if direction == OUT:
                if dst is None:
                    raise ValueError("inject at the transport boundary, out: dst= is needed")
                self._original(st.ipv4, "send")(dst, where, data, **options)
            else:
                src = src or st.config.address
                packet = IPv4Template(src, dst or st.config.address, where).build(data, 0)
                try:
                    hdr, payload = parse_ipv4(packet)
                except MalformedError as e:
                    raise ValueError(f"cannot deliver: {e}") from None
                handler = self._l4_handlers.get(where) or st.ipv4.protocols.get(where)
                if handler is not None:
                    handler(hdr, bytes(payload), False)


class _ClassPatch:
    """Class-level method patches shared by every :class:`Hooks` (see :meth:`Hooks._patch`)."""

    active: dict[tuple[type, str], tuple[bool, Any, dict[int, Callable[..., Any]], Any]] = {}

    @classmethod
    def function(cls, klass: type, name: str) -> Any:
        """The method's function as it is without any patch."""
        entry = cls.active.get((klass, name))
        return entry[3] if entry is not None else getattr(klass, name)

    @classmethod
    def add(cls, klass: type, name: str, obj: Any, hooked: Callable[..., Any]) -> Callable[[], None]:
        key = (klass, name)
        entry = cls.active.get(key)
        if entry is None:
            own = name in klass.__dict__
            saved = klass.__dict__.get(name)
            function = getattr(klass, name)
            table: dict[int, Callable[..., Any]] = {}

            def dispatch(self: Any, *args: Any, **kw: Any) -> Any:
                fn = table.get(id(self))
                if fn is None:
                    return function(self, *args, **kw)
                return fn(*args, **kw)

            dispatch.__name__ = dispatch.__qualname__ = name
            setattr(klass, name, dispatch)
            entry = cls.active[key] = (own, saved, table, function)
        table = entry[2]
        table[id(obj)] = hooked

        def undo() -> None:
            if table.pop(id(obj), None) is None or table:
                return
            own, saved, _, _ = cls.active.pop(key)
            if own:
                setattr(klass, name, saved)
            else:
                delattr(klass, name)

        return undo


def _scapy_adapter(fn: Hook, where: str | int) -> Hook:
    """Wrap a scapy hook: bytes -> scapy packet -> fn -> bytes (see the module docstring)."""
    def adapter(data: bytes, ctx: HookContext) -> Any:
        pkt = _scapy_class(where)(data)
        out = fn(pkt, ctx)
        if out is None:
            return None
        return _to_bytes(out, ctx)

    adapter.__wrapped__ = fn  # type: ignore[attr-defined]
    return adapter


_BY_STACK: weakref.WeakKeyDictionary[Stack, Hooks] = weakref.WeakKeyDictionary()


def hooks(target: Any) -> Hooks:
    """The :class:`Hooks` of a stack (or of a runtime's stack)."""
    from .apps import stack_of

    return Hooks.of(stack_of(target))


__all__ = ["Hooks", "HookContext", "hooks", "scapy_view", "IN", "OUT"]
