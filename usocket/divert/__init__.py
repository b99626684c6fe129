"""Kernel diversion for shared mode: the stack uses the host's IP, the kernel stays out of its flows.

- :mod:`.rules`: iptables NFQUEUE rules in the ``USOCKET`` chain (one per listener, one per
  owner for its ipset of connected flows); ``cleanup``.
- :mod:`.ipset`: the ipset netlink client that adds and deletes set members without a process.
- :mod:`.nfqueue`: :class:`Diverter`, the stack's FlowObserver and the queue reader.
- :mod:`.netlink`: the nfnetlink_queue messages it sends and reads (built and parsed from bytes).
- :mod:`.ports`: :class:`KernelPortAllocator`, ports reserved with kernel sockets.

Typical runtime use::

    div = Diverter(local_ip="198.18.1.1", netns=None).start()
    stack = Stack(cfg, flows=div, ports=KernelPortAllocator(netns=None, local_ip="198.18.1.1"))
    # select() on div.fileno(), then div.read(handler); handler(packet, csum_ok) -> ours; finally div.close()
"""
from __future__ import annotations

from .nfqueue import Diverter, install_sigterm_handler
from .ports import KernelPortAllocator, read_local_port_range
from .rules import CHAIN, FlowRules, Iptables, IptablesError, cleanup, owner_alive, owner_tag

__all__ = ["CHAIN", "Diverter", "FlowRules", "Iptables", "IptablesError", "KernelPortAllocator", "cleanup",
           "install_sigterm_handler", "owner_alive", "owner_tag", "read_local_port_range"]
