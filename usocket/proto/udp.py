"""STUB - being replaced by the real UDP layer."""
from __future__ import annotations
class UdpLayer:
    def __init__(self, stack): self.stack = stack
    def receive(self, ip_header, payload, csum_ok): pass
    def owns(self, local_port, remote_ip, remote_port): return False
