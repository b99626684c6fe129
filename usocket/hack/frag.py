"""Fragmentation controls for testing tools: a chosen fragment size, order and overlaps.

:func:`send_fragmented` sends one IPv4 datagram of any protocol as the fragments you choose;
:func:`sendto_fragmented` sends a UDP datagram from a ``usocket.socket`` (its port, TTL and
TOS) the same way; :func:`plan` computes the fragments without sending them. The stack's
ordinary sending is untouched (it fragments in order over the path MTU, or over a forced size
with ``ipv4.send(..., frag_size=N)``).

A plan starts from :meth:`usocket.proto.ipv4.IPv4Layer.fragment` (``size`` payload bytes per
fragment, a multiple of 8), then:

- ``order``: ``"forward"`` (default), ``"reverse"``, ``"random"`` (the stack's RNG), or a
  sequence of indexes into the in-order list (repeat one to duplicate it, leave one out to
  lose it);
- ``overlaps``: extra fragments ``(offset, data)`` (``offset`` a multiple of 8), sent after the
  others unless ``overlaps_first``; their MF flag is set unless they reach the datagram's end.

Every fragment carries the datagram's identification (``ident``, default the stack's next
one for ``dst``) and no DF. TTL and TOS default to the stack's (or the socket's). Datagrams to
the stack's own address are refused (``ValueError``): send them to a peer.

Note what a receiver does with overlaps: Linux (since 4.19, and RFC 5722 for IPv6) discards
the whole datagram when fragments overlap with different coverage, and ignores exact
duplicates; older stacks and other systems chose the first or the last copy
(``IPv4Layer.overlap_policy`` reproduces those).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..proto.ipv4 import Fragment
from ..stack import Stack
from ..wire.addr import ip_aton
from ..wire.ethernet import ETHERTYPE_IPV4
from ..wire.ipv4 import IPv4Template
from ..wire.udp import PROTO_UDP, build_udp
from .apps import on_stack_thread


def plan(stack: Stack, payload: bytes, size: int, *, dst: bytes, proto: int,
         order: str | Sequence[int] = "forward", overlaps: Sequence[tuple[int, bytes]] = (),
         overlaps_first: bool = False) -> list[Fragment]:
    """The fragments :func:`send_fragmented` would send, in sending order."""
    if size <= 0 or size % 8:
        raise ValueError("the fragment size is a positive multiple of 8")
    frags = stack.ipv4.fragment(bytes(payload), size, dst=dst, proto=proto)
    if order == "forward":
        ordered = list(frags)
    elif order == "reverse":
        ordered = frags[::-1]
    elif order == "random":
        ordered = list(frags)
        stack.rng.shuffle(ordered)
    elif isinstance(order, str):
        raise ValueError(f"order {order!r}: forward, reverse, random or a list of indexes")
    else:
        ordered = [frags[i] for i in order]
    total = len(payload)
    extra = []
    for offset, data in overlaps:
        if offset % 8 or offset < 0:
            raise ValueError("a fragment offset is a multiple of 8")
        extra.append(Fragment(offset, bytes(data), offset + len(data) < total))
    return extra + ordered if overlaps_first else ordered + extra


def send_fragmented(target: Any, dst: str | bytes, proto: int, payload: bytes, *, size: int = 8,
                    order: str | Sequence[int] = "forward", overlaps: Sequence[tuple[int, bytes]] = (),
                    overlaps_first: bool = False, src: bytes | None = None, ttl: int | None = None,
                    tos: int = 0, ident: int | None = None) -> list[Fragment]:
    """Send ``payload`` (the whole IPv4 payload: a transport header included if the protocol
    has one) to ``dst`` as the fragments of :func:`plan`; returns them. ``target`` is a stack
    or a runtime (the work is then done on its thread)."""
    dst_ip = dst if isinstance(dst, bytes) else ip_aton(dst)

    def go(stack: Stack) -> list[Fragment]:
        ipv4 = stack.ipv4
        if ipv4.is_local(dst_ip) or ipv4.is_martian_destination(dst_ip):
            raise ValueError("fragments go to a peer, not to the stack itself or loopback")
        frags = plan(stack, payload, size, dst=dst_ip, proto=proto, order=order, overlaps=overlaps,
                     overlaps_first=overlaps_first)
        cfg = stack.config
        t = IPv4Template(cfg.address if src is None else src, dst_ip, proto,
                         cfg.default_ttl if ttl is None else ttl, tos)
        i = ipv4.next_ident(dst_ip) if ident is None else ident
        next_hop = ipv4.route(dst_ip)
        for f in frags:
            stack.arp.output(next_hop, ETHERTYPE_IPV4, t.build(f.data, i, mf=f.more, frag_offset=f.offset))
        ipv4.c["tx"] += 1
        ipv4.c["fragments_tx"] += len(frags)
        return frags

    result: list[Fragment] = on_stack_thread(target, go)
    return result


def sendto_fragmented(sock: Any, data: bytes, address: tuple[str, int], *, checksum: bool = True,
                      **kw: Any) -> list[Fragment]:
    """Send one UDP datagram from the userland UDP ``usocket.socket`` ``sock`` (bound to an
    ephemeral port first if needed; its IP_TTL and IP_TOS apply) to ``address`` as the
    fragments of :func:`plan` (``size``, ``order``, ``overlaps``... as for
    :func:`send_fragmented`). Overlap data replaces bytes of the *UDP datagram* (its 8-byte
    header is at offset 0): pass ``checksum=False`` (a UDP checksum of 0, "none", allowed over
    IPv4) for the receiver to accept a datagram whose bytes the overlaps changed."""
    ep = getattr(sock, "connection", None)
    if ep is None or not hasattr(ep, "on_datagram"):
        raise TypeError("sendto_fragmented() needs a userland UDP usocket.socket")
    rt = sock._b.rt
    dst = ip_aton(address[0])

    def go(stack: Stack) -> list[Fragment]:
        stack.udp.autobind(ep)
        src = stack.config.address
        datagram = build_udp(ep.local_port, address[1], data, src, dst, checksum=checksum)
        ttl = ep.ttl if ep.ttl is not None else stack.config.default_ttl
        return send_fragmented(stack, dst, PROTO_UDP, datagram, ttl=ttl, tos=ep.tos, **kw)

    result: list[Fragment] = on_stack_thread(rt, go)
    return result


__all__ = ["plan", "send_fragmented", "sendto_fragmented"]
