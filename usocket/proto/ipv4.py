"""STUB - being replaced by the real IPv4 layer."""
from __future__ import annotations
class IPv4Layer:
    def __init__(self, stack): self.stack = stack; self.protocols = {}
    def register(self, proto, handler): self.protocols[proto] = handler
    def receive(self, packet, csum_ok): pass
    def send(self, dst, proto, payload, **opts): pass
