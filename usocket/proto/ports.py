"""Ephemeral and explicit port allocation (policy object, replaceable).

The protocol layers track which ports *they* use; the allocator decides which ports are
allowed and can veto ports used by someone else (shared mode reserves them in the kernel,
see :mod:`usocket.divert.ports`).
"""
from __future__ import annotations

import errno
import random
from collections.abc import Callable


class PortAllocator:
    def __init__(self, port_range: tuple[int, int] = (49152, 65535),
                 rng: random.Random | None = None) -> None:
        lo, hi = port_range
        if not (1 <= lo <= hi <= 65535):
            raise ValueError(f"bad port range {port_range}")
        self.lo, self.hi = lo, hi
        self.rng = rng if rng is not None else random.SystemRandom()

    def allocate(self, proto: int, in_use: Callable[[int], bool]) -> int:
        """Pick a free ephemeral port: random start, then linear probe (RFC 6056 alg. 1-ish)."""
        span = self.hi - self.lo + 1
        start = self.rng.randrange(span)
        for i in range(span):
            port = self.lo + (start + i) % span
            if in_use(port):
                continue
            if self.claim(proto, port, explicit=False):
                return port
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    def claim(self, proto: int, port: int, explicit: bool, reuse_addr: bool = False) -> bool:
        """Take ``port`` from the outside world. Return False (ephemeral) or raise
        ``OSError(EADDRINUSE)`` (explicit) when someone else holds it. ``reuse_addr``: the
        claiming socket has SO_REUSEADDR (the outside world's TIME_WAIT connections on the
        port do not count)."""
        return True

    def release(self, proto: int, port: int) -> None:
        """Give a port back once the layer no longer uses it."""

    def close(self) -> None:
        """Give back everything taken from the outside world (the stack is shutting down)."""
