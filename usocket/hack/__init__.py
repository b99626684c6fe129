"""The hackable stack: PyStack's promise of control, as a documented public API.

- **Stack crafting** (:mod:`usocket.stack`): ``Stack.build(config, [EthernetLayer, ArpLayer,
  MyIPv4, IcmpLayer, UdpLayer, TcpLayer])`` builds a stack from layer classes or factories;
  :func:`stack_factory` makes a ``stack_class`` for :class:`usocket.runtime.Runtime` so the
  runtime runs a hand-built stack; a ``Stack`` subclass with ``ipv4_class = MyIPv4`` (etc.)
  replaces one layer.
- **Custom protocols and applications** (:mod:`.apps`): :func:`register_protocol` (a protocol
  number above IPv4), :class:`TcpApplication` with :func:`listen_tcp` / :func:`connect_tcp`,
  :class:`UdpApplication` with :func:`open_udp`.
- **Per-connection behaviour** (:mod:`.tcp`): :func:`set_connection_class` for a socket or a
  listener; :class:`FixedIsnConnection`, :func:`fixed_isn`, :class:`OsProfile`,
  :data:`PROFILES`, :func:`personality`; congestion control per socket with ``TCP_CONGESTION``.
- **Packet hooks** (:mod:`.hooks`): :func:`hooks` ``(stack).add(where, direction, fn)`` at the
  link, IPv4, ARP and transport boundaries; :func:`scapy_view`.
- **Fragmentation controls** (:mod:`.frag`): :func:`send_fragmented`,
  :func:`sendto_fragmented`, :func:`fragment_plan`.

The guide with examples is ``docs/hacking.md``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from ..stack import LAYER_NAMES, Stack
from .apps import (
    ProtocolHandle,
    TcpApplication,
    TcpListener,
    UdpApplication,
    connect_tcp,
    listen_tcp,
    on_stack_thread,
    open_udp,
    register_protocol,
    stack_of,
)
from .frag import plan as fragment_plan
from .frag import send_fragmented, sendto_fragmented
from .hooks import HookContext, Hooks, hooks, scapy_view
from .tcp import (
    PROFILES,
    FixedIsnConnection,
    HackConnection,
    OsProfile,
    SynProfileConnection,
    build_options,
    fixed_isn,
    get_connection_class,
    personality,
    set_connection_class,
)


def stack_factory(layers: Iterable[Any], stack_class: type[Stack] = Stack) -> Callable[..., Stack]:
    """A ``stack_class`` for :class:`usocket.runtime.Runtime` that builds its stack with
    ``stack_class.build(config, layers, ...)``: ``Runtime(config, stack_class=stack_factory([...]))``."""
    return functools.partial(stack_class.build, layers=list(layers))


__all__ = [
    "LAYER_NAMES", "Stack", "stack_factory",
    "register_protocol", "ProtocolHandle", "TcpApplication", "TcpListener", "listen_tcp", "connect_tcp",
    "UdpApplication", "open_udp", "stack_of", "on_stack_thread",
    "set_connection_class", "get_connection_class", "HackConnection", "FixedIsnConnection", "fixed_isn",
    "OsProfile", "PROFILES", "SynProfileConnection", "personality", "build_options",
    "Hooks", "HookContext", "hooks", "scapy_view",
    "send_fragmented", "sendto_fragmented", "fragment_plan",
]
