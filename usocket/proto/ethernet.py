"""STUB - being replaced by the real Ethernet layer."""
from __future__ import annotations
class EthernetLayer:
    def __init__(self, stack): self.stack = stack; self.handlers = {}
    def register(self, ethertype, handler): self.handlers[ethertype] = handler
    def receive(self, frame, csum_ok): pass
    def send(self, dst_mac, ethertype, payload): pass
