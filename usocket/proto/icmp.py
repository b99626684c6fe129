"""STUB - being replaced by the real ICMP layer."""
from __future__ import annotations
class IcmpLayer:
    def __init__(self, stack): self.stack = stack; self.error_handlers = {}
    def register_error_handler(self, proto, fn): self.error_handlers[proto] = fn
    def receive(self, ip_header, payload, csum_ok): pass
    def send_error(self, type_, code, ip_packet): pass
