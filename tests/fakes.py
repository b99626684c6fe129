"""Fakes shared by the packet-level tests: a Stack whose ARP records what IPv4 hands it."""
from __future__ import annotations

from typing import Any

from usocket.stack import Stack


class FakeArp:
    """Records what IPv4 hands to ARP (``sent``: next hop, ethertype, packet), resolves nothing."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.sent: list[tuple[bytes, int, bytes]] = []

    def receive(self, payload: Any, csum_ok: bool) -> None:
        pass

    def output(self, next_hop: bytes, ethertype: int, payload: bytes) -> None:
        self.sent.append((next_hop, ethertype, payload))


class NullUdp:
    """No UDP layer: the IP-level tests register their own fake transports."""

    def __init__(self, stack: Stack) -> None:
        pass

    def endpoints(self) -> list[Any]:
        return []

    def owns(self, local_port: int, remote_ip: bytes, remote_port: int) -> bool:
        return False


class RecordingStack(Stack):
    """A real Stack above the link layer whose outgoing IP packets land in ``stack.arp.sent``."""

    arp_class = FakeArp  # type: ignore[assignment]
    udp_class = NullUdp  # type: ignore[assignment]
