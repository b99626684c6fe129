"""Port reservation in the kernel for a stack sharing the host's IP address (shared mode).

The stack and the kernel's own programs draw local ports from the same address. To keep them
apart, :class:`KernelPortAllocator` reserves each port the stack uses by binding a kernel
socket of the same type to it, inside the stack's namespace, kept open until ``release``:

- a kernel program can no longer bind (or be auto-assigned) that port;
- an explicit bind by the stack to a port a kernel program holds fails with EADDRINUSE;
- a reserved TCP port is bound but not listening, so a SYN that reaches the kernel anyway
  gets RST; a reserved UDP socket has a minimal receive buffer and is never read.

Ephemeral ports come from *above* the kernel's ``net.ipv4.ip_local_port_range`` (read inside
the namespace): 61000-65535 with Debian's default 32768-60999, where the kernel never picks
its own ephemeral ports. When that range is exhausted (or empty because the kernel's range
ends at 65535) the allocator falls back to the kernel's range itself: the reservation socket
keeps the kernel from handing those ports out while the stack has them. (Those ~12 bits are too
little entropy for DNS source ports: the stub resolver binds explicit random ports of 1024-65535
instead, see ``Resolver.source_ports``, and the explicit claim reserves them the same way.)

Cost: one file descriptor per reserved (protocol, port), plus a few spare ones. The constructor
raises the soft RLIMIT_NOFILE to the hard limit (``raise_nofile=False`` to skip). A socket
belongs to the namespace it was created in, while ``bind`` works from any thread; so with a
``netns`` the allocator creates unbound sockets there :attr:`~KernelPortAllocator.pool_size` at a
time (one short thread that enters the namespace, ~1-2.5 ms on the reference machine) and binds
them from the calling thread: a reservation costs ~20 us, not a thread each. A socket whose bind
failed is still unbound and goes back to the pool.

A datagram the stack declines (NFQUEUE ACCEPT) for a reserved UDP port lands in the reservation
socket (tiny buffer, never read), so the kernel answers it with no ICMP port unreachable.
"""
from __future__ import annotations

import errno
import random
import resource
from collections.abc import Callable

from .. import _stdsocket as socket  # the kernel's module even after the hijacker swaps sys.modules["socket"]
from ..netns import run_in_netns
from ..proto.ports import PortAllocator

SOCK_TYPES = {6: socket.SOCK_STREAM, 17: socket.SOCK_DGRAM}
PORT_RANGE_SYSCTL = "/proc/sys/net/ipv4/ip_local_port_range"


def read_local_port_range(netns: str | None = None) -> tuple[int, int]:
    """The kernel's ``ip_local_port_range`` as seen inside ``netns``."""

    def read() -> str:
        with open(PORT_RANGE_SYSCTL) as f:  # /proc/sys/net follows the reading thread's netns
            return f.read()

    lo, hi = (int(x) for x in run_in_netns(netns, read).split())
    return lo, hi


def ephemeral_range(kernel_range: tuple[int, int]) -> tuple[int, int] | None:
    """The ports above the kernel's ephemeral range, None if there are none."""
    lo = kernel_range[1] + 1
    return (lo, 65535) if lo <= 65535 else None


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except OSError:
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


class KernelPortAllocator(PortAllocator):
    """A :class:`PortAllocator` whose ports are also held by kernel sockets in ``netns``.

    ``local_ip`` is the address reservations bind to (the stack's); None binds the wildcard,
    which also blocks kernel programs on other local addresses. Claims are reference counted
    per (protocol, port). Call :meth:`close` to release everything.
    """

    def __init__(self, netns: str | None = None, local_ip: str | bytes | None = None,
                 rng: random.Random | None = None, port_range: tuple[int, int] | None = None,
                 raise_nofile: bool = True) -> None:
        self.netns = netns
        if isinstance(local_ip, bytes):
            local_ip = socket.inet_ntoa(local_ip)
        self.local_ip = local_ip or "0.0.0.0"
        self.kernel_range = read_local_port_range(netns)
        primary = port_range or ephemeral_range(self.kernel_range) or self.kernel_range
        super().__init__(primary, rng)
        self.fallback_range: tuple[int, int] | None = (
            self.kernel_range if primary != self.kernel_range else None)
        self.held: dict[tuple[int, int], list] = {}  # (proto, port) -> [socket, refcount]
        self.spare: dict[int, list[socket.socket]] = {}  # proto -> unbound sockets made in netns
        if raise_nofile:
            raise_nofile_limit()

    # -- PortAllocator ----------------------------------------------------------------------------
    def allocate(self, proto: int, in_use: Callable[[int], bool]) -> int:
        """A free ephemeral port from the primary range, else from the fallback range."""
        try:
            return super().allocate(proto, in_use)
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL or self.fallback_range is None:
                raise
        lo, hi = self.fallback_range
        span = hi - lo + 1
        start = self.rng.randrange(span)
        for i in range(span):
            port = lo + (start + i) % span
            if not in_use(port) and self.claim(proto, port, explicit=False):
                return port
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    def claim(self, proto: int, port: int, explicit: bool, reuse_addr: bool = False) -> bool:
        """Reserve ``port`` with a kernel socket. False (ephemeral) or EADDRINUSE (explicit)
        when a kernel program holds it; other bind errors propagate for explicit claims.
        ``reuse_addr``: the stack's socket has SO_REUSEADDR, so connections the kernel holds in
        TIME_WAIT on the port do not block it (the kernel's own bind check)."""
        key = (proto, port)
        entry = self.held.get(key)
        if entry is not None:
            entry[1] += 1
            return True
        if proto not in SOCK_TYPES:
            return True  # nothing to reserve for other protocols
        try:
            sock = self.reserve(proto, port, reuse_addr)
        except OSError as exc:
            if not explicit:
                return False
            if exc.errno == errno.EADDRINUSE:
                raise OSError(errno.EADDRINUSE, "Address already in use") from None
            raise
        self.held[key] = [sock, 1]
        return True

    def release(self, proto: int, port: int) -> None:
        key = (proto, port)
        entry = self.held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self.held[key]
            entry[0].close()

    # -- reservation ------------------------------------------------------------------------------
    pool_size = 64

    def new_socket(self, proto: int) -> socket.socket:
        """An unbound kernel socket of ``proto``'s type in ``netns`` (from the pool)."""
        pool = self.spare.setdefault(proto, [])
        if not pool:
            kind, n = SOCK_TYPES[proto], self.pool_size if self.netns is not None else 1

            def make() -> list[socket.socket]:
                return [socket.socket(socket.AF_INET, kind) for _ in range(n)]

            pool.extend(run_in_netns(self.netns, make))
        return pool.pop()

    def reserve(self, proto: int, port: int, reuse_addr: bool = False) -> socket.socket:
        """Bind a reservation socket to ``port`` (override to tune). With ``reuse_addr`` the bind
        has SO_REUSEADDR (TIME_WAIT connections of the kernel's do not block it), which is
        turned off again once bound, so that kernel programs still cannot bind the port."""
        sock = self.new_socket(proto)
        try:
            if proto == 17:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # kernel minimum
            if reuse_addr:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.local_ip, port))
            finally:
                if reuse_addr:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        except OSError:
            self.spare[proto].append(sock)  # still unbound: reusable
            raise
        except BaseException:
            sock.close()
            raise
        return sock

    def is_held(self, proto: int, port: int) -> bool:
        return (proto, port) in self.held

    def close(self) -> None:
        """Release every reservation."""
        for sock, _ in self.held.values():
            sock.close()
        self.held.clear()
        for pool in self.spare.values():
            for sock in pool:
                sock.close()
        self.spare.clear()
