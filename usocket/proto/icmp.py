"""STUB - being replaced by the real ICMP layer. IcmpError is fixed (other layers use it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error (received, or generated locally e.g. for an unresolvable next hop),
    as handed to the transport layer that owns the offending datagram."""

    type: int
    code: int
    errno: int  # the errno a socket reports (RFC 1122 / Linux icmp_err_convert mapping)
    hard: bool  # hard errors abort a connection attempt; soft ones are only remembered
    origin: bytes  # 4-byte address of the host/router that reported it
    mtu: int | None = None  # next-hop MTU for "fragmentation needed"


class IcmpLayer:
    def __init__(self, stack): self.stack = stack; self.error_handlers = {}
    def register_error_handler(self, proto, fn): self.error_handlers[proto] = fn
    def receive(self, ip_header, payload, csum_ok): pass
    def send_error(self, type_, code, ip_packet): pass
