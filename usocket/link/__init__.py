"""Links: where Ethernet frames enter and leave the sans-IO stack.

- :class:`~usocket.link.base.Link`: the contract (non-blocking ``recv_batch``/``send``, ``fileno``).
- :class:`~usocket.link.packet.PacketLink`: AF_PACKET on a real or veth interface, with optional
  classic-BPF filters from :mod:`usocket.link.bpf`.
- :class:`~usocket.link.tap.TapLink`: a TAP device; the kernel is on the other end of the cable.
- :mod:`usocket.link.memory`: :class:`MemoryNetwork` (virtual time, seeded faults) for tests, and
  :func:`link_pair` (two real links over a socketpair).
- :mod:`usocket.link.pcap`: :class:`PcapWriter` and :class:`PcapLink` (records any link).

scapy is imported only when a ``PacketLink`` is opened.
"""
from __future__ import annotations

from .base import MAX_FRAME, Link
from .memory import Faults, MemoryNetwork, PairLink, Port, VirtualClock, link_pair
from .packet import PacketLink
from .pcap import PcapLink, PcapWriter, read_pcap
from .tap import TapLink

__all__ = ["MAX_FRAME", "Link", "Faults", "MemoryNetwork", "PairLink", "Port", "VirtualClock", "link_pair",
           "PcapLink", "PcapWriter", "read_pcap", "PacketLink", "TapLink"]
