"""TCP (RFC 9293) for the userland stack: a sans-IO engine and its binding to the stack.

Modules, bottom up:

- :mod:`.seq` — 32-bit sequence arithmetic; inside the engine every position is an unbounded
  offset from the initial sequence number, and only the wire edge converts (so a wrap of
  2**32 is handled in one place).
- :mod:`.buffers` — send buffer, receive buffer, out-of-order queue with SACK blocks.
- :mod:`.rtt` — RFC 6298 RTO estimation; :mod:`.congestion` — pluggable congestion control
  (NewReno, CUBIC) with a registry.
- :mod:`.config` — :class:`TcpConfig`, the layer's tunables (Linux defaults).
- :mod:`.isn` — RFC 6528 initial sequence numbers.
- :mod:`.connection` — :class:`TcpConnection`, one connection's state machine. Subclass it to
  change per-connection behaviour (ISN, SYN-ACK, options, window, ...).
- :mod:`.layer` — :class:`TcpLayer`: demultiplexing, ports, listeners, RSTs for unknown
  segments, ICMP errors, timers, the diversion hooks.
"""
