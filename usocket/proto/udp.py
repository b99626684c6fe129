"""The UDP layer: endpoints, bind/connect rules, demultiplexing, ICMP errors (Linux semantics).

An endpoint (:class:`UdpEndpoint`) is what a UDP socket is inside the stack. Users and the
socket facade subclass it and override :meth:`UdpEndpoint.on_datagram` / ``on_error``; the
default keeps a receive queue bounded in bytes like ``SO_RCVBUF`` and a pending error like
``SO_ERROR``. Endpoints are created with ``stack.udp.open(cls)`` and driven through the
layer: ``bind``, ``connect``, ``disconnect``, ``sendto``, ``send``, ``close``.

Rules, as Linux applies them to IPv4 UDP sockets:

- ``bind`` accepts ``0.0.0.0``, the stack's address or a broadcast address (else
  ``EADDRNOTAVAIL``); port 0 picks an ephemeral port; binding twice is ``EINVAL``. Two
  endpoints conflict on a port when their addresses overlap (equal, or either is the
  wildcard) unless both set ``reuse_addr`` (SO_REUSEADDR) or both set ``reuse_port``
  (SO_REUSEPORT).
- ``connect`` auto-binds, fixes the local address to the stack's, and from then on only
  datagrams from the peer are delivered; ``disconnect`` undoes it (and, like Linux, gives back
  an auto-bound port and an address that bind did not set explicitly).
- Demultiplexing picks the best match: connected to the sender on our exact address, then
  connected on the wildcard, then bound to our address, then the wildcard. Ties go to the most
  recently bound endpoint, or are spread by flow hash within a ``reuse_port`` group.
  Broadcast and multicast datagrams go to every matching endpoint.
- ICMP errors reach only *connected* endpoints whose 4-tuple matches the quoted datagram, and
  only hard errors (port unreachable, ...): Linux without IP_RECVERR ignores the rest. A
  "fragmentation needed" counts as hard (``EMSGSIZE``) unless the endpoint set ``df=False``.
- In own mode a datagram for a port nobody holds is answered with ICMP port unreachable
  (never for broadcast or multicast); in shared mode the host kernel owns that reply.

Ports: the layer asks ``stack.ports`` for ephemeral ports (``allocate``) and explicit ones
(``claim``), and tells ``stack.flows`` once per port when the port starts to be used
(``flow_opened``, may refuse with ``OSError``, which undoes the bind) and when the last endpoint
on it goes away (``flow_closed``), releasing it to ``stack.ports`` then.
"""
from __future__ import annotations

import errno
import struct
from collections import deque
from typing import TYPE_CHECKING, Any

from ..wire.addr import ANY_IP, BROADCAST_IP, ip_ntoa, prefix_mask
from ..wire.checksum import ones_sum, pseudo_header_sum
from ..wire.udp import _HDR, MAX_UDP_PAYLOAD, PROTO_UDP, UDP_HEADER_LEN, build_udp

if TYPE_CHECKING:
    from ..proto.icmp import IcmpError
    from ..stack import Stack
    from ..wire.ipv4 import IPv4Header

# What one queued datagram costs beyond its payload when charged to ``rcvbuf``: it stops a
# flood of empty datagrams from queueing without bound (Linux charges the skb's truesize).
DATAGRAM_OVERHEAD = 256
DEFAULT_RCVBUF = 212992  # Linux net.core.rmem_default
_PORTS = struct.Struct("!HH")


class UdpEndpoint:
    """One UDP "socket" of the stack. Subclass it to change what happens on delivery.

    Attributes users set before use (socket options): ``reuse_addr``, ``reuse_port``,
    ``broadcast``, ``ttl`` (None: the stack default), ``tos``, ``df`` (None: the IPv4
    layer's default, DF set when the datagram fits the path MTU, like Linux), ``rcvbuf`` (bytes).
    Read-only state kept by the layer: ``local_ip``/``local_port`` (``ANY``/0 when unbound),
    ``remote_ip``/``remote_port`` (None/0 when not connected), ``closed``.
    """

    def __init__(self, layer: UdpLayer) -> None:
        self.layer = layer
        self.local_ip: bytes = ANY_IP
        self.local_port = 0
        self.remote_ip: bytes | None = None
        self.remote_port = 0
        self.closed = False
        # socket options
        self.reuse_addr = False
        self.reuse_port = False
        self.broadcast = False
        self.ttl: int | None = None
        self.tos = 0
        self.df: bool | None = None  # None: Linux's IP_PMTUDISC_WANT (DF when it fits)
        self.rcvbuf = DEFAULT_RCVBUF
        # bind bookkeeping (Linux SOCK_BINDADDR_LOCK / SOCK_BINDPORT_LOCK)
        self.addr_locked = False
        self.port_locked = False
        # default delivery state
        self.queue: deque[tuple[bytes, bytes, int]] = deque()
        self.queued_bytes = 0
        self.pending_error: IcmpError | None = None

    @property
    def bound(self) -> bool:
        return self.local_port != 0

    @property
    def connected(self) -> bool:
        return self.remote_ip is not None

    # -- delivery hooks (override these) ----------------------------------------------------
    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        """A datagram for this endpoint. The default queues it unless ``rcvbuf`` is full."""
        cost = len(data) + DATAGRAM_OVERHEAD
        if self.queued_bytes + cost > self.rcvbuf and self.queue:
            self.layer.c["drop.rcvbuf"] += 1
            return
        self.queue.append((data, src_ip, src_port))
        self.queued_bytes += cost

    def on_error(self, err: IcmpError) -> None:
        """An ICMP error for this (connected) endpoint. The default remembers it (SO_ERROR)."""
        self.pending_error = err

    # -- default consumer side ----------------------------------------------------------------
    def pop(self) -> tuple[bytes, bytes, int] | None:
        """The oldest queued ``(data, src_ip, src_port)``, or None when the queue is empty."""
        if not self.queue:
            return None
        item = self.queue.popleft()
        self.queued_bytes -= len(item[0]) + DATAGRAM_OVERHEAD
        return item

    def take_error(self) -> int:
        """The pending error's errno (0 if none), clearing it: ``getsockopt(SO_ERROR)``."""
        err, self.pending_error = self.pending_error, None
        return err.errno if err is not None else 0

    def __repr__(self) -> str:
        peer = f" -> {ip_ntoa(self.remote_ip)}:{self.remote_port}" if self.remote_ip else ""
        state = " closed" if self.closed else ""
        return f"<{type(self).__name__} {ip_ntoa(self.local_ip)}:{self.local_port}{peer}{state}>"


class UdpLayer:
    """UDP over the stack's IPv4 layer. See the module docstring for the rules."""

    endpoint_class = UdpEndpoint

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.c = stack.counters.layer("udp")
        # port -> endpoints using it, most recently bound first
        self.ports: dict[int, list[UdpEndpoint]] = {}
        stack.ipv4.register(PROTO_UDP, self.receive)
        stack.icmp.register_error_handler(PROTO_UDP, self.icmp_error)

    # -- addresses ------------------------------------------------------------------------
    def is_broadcast(self, ip: bytes) -> bool:
        """255.255.255.255 or the directed broadcast of the stack's subnet."""
        if ip == BROADCAST_IP:
            return True
        cfg = self.stack.config
        if cfg.prefix_len >= 31:  # RFC 3021 point-to-point: no directed broadcast
            return False
        mask = prefix_mask(cfg.prefix_len)
        host = ~mask & 0xFFFFFFFF
        a = int.from_bytes(ip, "big")
        return (a & host) == host and (a & mask) == (int.from_bytes(cfg.address, "big") & mask)

    @staticmethod
    def is_multicast(ip: bytes) -> bool:
        return 224 <= ip[0] <= 239

    def local_address_ok(self, ip: bytes) -> bool:
        """Addresses an endpoint may bind: any, ours, broadcast (Linux allows RTN_BROADCAST)."""
        return ip == ANY_IP or ip == self.stack.config.address or self.is_broadcast(ip)

    # -- endpoint lifecycle ---------------------------------------------------------------
    def open(self, cls: type[UdpEndpoint] | None = None, *args: Any, **kw: Any) -> UdpEndpoint:
        """A new, unbound endpoint: ``cls(self, *args, **kw)`` (default :attr:`endpoint_class`)."""
        return (cls or self.endpoint_class)(self, *args, **kw)

    def endpoints(self) -> list[UdpEndpoint]:
        return [ep for bucket in self.ports.values() for ep in bucket]

    def _conflicts(self, ep: UdpEndpoint, ip: bytes, port: int) -> bool:
        for other in self.ports.get(port, ()):
            if other is ep:
                continue
            if ip != ANY_IP and other.local_ip != ANY_IP and ip != other.local_ip:
                continue
            if ep.reuse_addr and other.reuse_addr:
                continue
            if ep.reuse_port and other.reuse_port:
                continue
            return True
        return False

    def _attach(self, ep: UdpEndpoint, ip: bytes, port: int, explicit: bool) -> None:
        """Give ``ep`` the local ``ip:port``: claim/allocate the port, tell the diversion."""
        if port == 0:
            port = self.stack.ports.allocate(PROTO_UDP, lambda p: p in self.ports)
            fresh = True
        else:
            if self._conflicts(ep, ip, port):
                raise OSError(errno.EADDRINUSE, "Address already in use")
            fresh = port not in self.ports
            if fresh and not self.stack.ports.claim(PROTO_UDP, port, explicit=explicit):
                raise OSError(errno.EADDRINUSE, "Address already in use")
        if fresh:
            try:
                self.stack.flows.flow_opened(PROTO_UDP, port, None)
            except BaseException:
                self.stack.ports.release(PROTO_UDP, port)
                raise
        ep.local_ip, ep.local_port = ip, port
        self.ports.setdefault(port, []).insert(0, ep)
        self.c["bind"] += 1

    def _detach(self, ep: UdpEndpoint) -> None:
        port = ep.local_port
        bucket = self.ports.get(port)
        if bucket is not None and ep in bucket:
            bucket.remove(ep)
            if not bucket:
                del self.ports[port]
                self.stack.flows.flow_closed(PROTO_UDP, port, None)
                self.stack.ports.release(PROTO_UDP, port)
        ep.local_port = 0
        ep.local_ip = ANY_IP

    def bind(self, ep: UdpEndpoint, ip: bytes, port: int) -> None:
        """``socket.bind((ip, port))``."""
        self._check_open(ep)
        if not 0 <= port <= 0xFFFF:
            raise OverflowError("bind(): port must be 0-65535.")
        if ep.bound:
            raise OSError(errno.EINVAL, "Invalid argument")
        if not self.local_address_ok(ip):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        self._attach(ep, ip, port, explicit=True)
        ep.addr_locked = ip != ANY_IP
        ep.port_locked = port != 0

    def autobind(self, ep: UdpEndpoint) -> None:
        """Bind an unbound endpoint to the wildcard and an ephemeral port (send/connect)."""
        if not ep.bound:
            self._attach(ep, ANY_IP, 0, explicit=False)

    def connect(self, ep: UdpEndpoint, ip: bytes, port: int) -> None:
        """``socket.connect((ip, port))``: fix the peer; auto-binds; local address becomes ours."""
        self._check_open(ep)
        if not 0 <= port <= 0xFFFF:
            raise OverflowError("connect(): port must be 0-65535.")
        if self.is_broadcast(ip) and not ep.broadcast:
            raise OSError(errno.EACCES, "Permission denied")
        self.autobind(ep)
        if ep.local_ip == ANY_IP and not self.is_broadcast(ip):
            ep.local_ip = self.stack.config.address
        ep.remote_ip, ep.remote_port = ip, port
        ep.pending_error = None

    def disconnect(self, ep: UdpEndpoint) -> None:
        """``connect((AF_UNSPEC, ...))``: forget the peer; undo what connect set implicitly."""
        ep.remote_ip, ep.remote_port = None, 0
        if ep.bound and not ep.port_locked:
            self._detach(ep)
        elif not ep.addr_locked:
            ep.local_ip = ANY_IP

    def close(self, ep: UdpEndpoint) -> None:
        """Release the endpoint's port and drop its queue; idempotent."""
        if ep.closed:
            return
        ep.closed = True
        ep.queue.clear()
        ep.queued_bytes = 0
        if ep.bound:
            self._detach(ep)
        ep.remote_ip, ep.remote_port = None, 0

    @staticmethod
    def _check_open(ep: UdpEndpoint) -> None:
        if ep.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    # -- sending --------------------------------------------------------------------------
    def sendto(self, ep: UdpEndpoint, data: bytes | bytearray | memoryview, ip: bytes, port: int) -> int:
        """``socket.sendto(data, (ip, port))``; returns the payload length sent."""
        self._check_open(ep)
        if not 0 <= port <= 0xFFFF:
            raise OverflowError("sendto(): port must be 0-65535.")
        if port == 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        if len(data) > MAX_UDP_PAYLOAD:
            raise OSError(errno.EMSGSIZE, "Message too long")
        if self.is_broadcast(ip) and not ep.broadcast:
            raise OSError(errno.EACCES, "Permission denied")
        self.autobind(ep)
        src = ep.local_ip
        if src == ANY_IP or self.is_broadcast(src):
            src = self.stack.config.address
        datagram = build_udp(ep.local_port, port, data, src, ip)
        ttl = ep.ttl if ep.ttl is not None else self.stack.config.default_ttl
        self.stack.ipv4.send(ip, PROTO_UDP, datagram, src=src, ttl=ttl, tos=ep.tos, df=ep.df)
        self.c["tx"] += 1
        return len(data)

    def send(self, ep: UdpEndpoint, data: bytes | bytearray | memoryview) -> int:
        """``socket.send(data)`` on a connected endpoint (else ``EDESTADDRREQ``)."""
        self._check_open(ep)
        if ep.remote_ip is None:
            raise OSError(errno.EDESTADDRREQ, "Destination address required")
        if ep.remote_port == 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        return self.sendto(ep, data, ep.remote_ip, ep.remote_port)

    # -- receiving ------------------------------------------------------------------------
    def receive(self, ip_header: IPv4Header, payload: bytes | memoryview, csum_ok: bool) -> None:
        """A UDP datagram from IPv4. Mirrors :func:`usocket.wire.udp.parse_udp`, inlined: this
        path carries every datagram, so it allocates nothing but the payload slice."""
        c = self.c
        c["rx"] += 1
        n = len(payload)
        if n < UDP_HEADER_LEN:
            c["drop.too_short"] += 1
            return
        sport, dport, length, csum = _HDR.unpack_from(payload)
        if length < UDP_HEADER_LEN or length > n:
            c["drop.bad_length"] += 1
            return
        if csum and not csum_ok:
            data = payload if length == n else payload[:length]
            if ones_sum(data, pseudo_header_sum(ip_header.src, ip_header.dst, PROTO_UDP, length)) != 0xFFFF:
                c["drop.bad_checksum"] += 1
                return
        dst = ip_header.dst
        bucket = self.ports.get(dport)
        if bucket is not None:
            if dst == BROADCAST_IP or 224 <= dst[0] <= 239 or (
                    dst != self.stack.config.address and self.is_broadcast(dst)):
                self.deliver_many(bucket, ip_header, payload, sport, length)
                return
            ep = self.lookup(bucket, dst, ip_header.src, sport)
            if ep is not None:
                c["rx.delivered"] += 1
                ep.on_datagram(bytes(payload[UDP_HEADER_LEN:length]), ip_header.src, sport)
                return
        self.no_endpoint(ip_header, payload)

    def lookup(self, bucket: list[UdpEndpoint], dst: bytes, src: bytes, sport: int) -> UdpEndpoint | None:
        """The endpoint of ``bucket`` (one local port) that gets a unicast datagram."""
        best: UdpEndpoint | None = None
        best_score = -1
        tie = False
        for ep in bucket:
            lip = ep.local_ip
            if lip == ANY_IP:
                score = 0
            elif lip == dst:
                score = 1
            else:
                continue
            if ep.remote_ip is not None:
                if ep.remote_ip != src or ep.remote_port != sport:
                    continue
                score += 2
            if score > best_score:
                best, best_score, tie = ep, score, False
            elif score == best_score:
                tie = True
        if tie and best is not None and best.reuse_port:
            group = [ep for ep in bucket if ep.reuse_port and self._score(ep, dst, src, sport) == best_score]
            best = group[(int.from_bytes(src, "big") * 31 + sport) % len(group)]
        return best

    @staticmethod
    def _score(ep: UdpEndpoint, dst: bytes, src: bytes, sport: int) -> int:
        if ep.local_ip != ANY_IP and ep.local_ip != dst:
            return -1
        score = 0 if ep.local_ip == ANY_IP else 1
        if ep.remote_ip is not None:
            if ep.remote_ip != src or ep.remote_port != sport:
                return -1
            score += 2
        return score

    def deliver_many(self, bucket: list[UdpEndpoint], ip_header: IPv4Header, payload: bytes | memoryview,
                     sport: int, length: int) -> None:
        """Broadcast/multicast: a copy to every endpoint bound to the wildcard or to that
        address and, if connected, connected to the sender (Linux ``__udp_is_mcast_sock``)."""
        data = bytes(payload[UDP_HEADER_LEN:length])
        src, dst = ip_header.src, ip_header.dst
        hit = False
        for ep in list(bucket):
            if ep.local_ip != ANY_IP and ep.local_ip != dst:
                continue
            if ep.remote_ip is not None and (ep.remote_ip != src or ep.remote_port != sport):
                continue
            hit = True
            self.c["rx.delivered"] += 1
            ep.on_datagram(data, src, sport)
        if not hit:
            self.c["drop.no_port"] += 1

    def no_endpoint(self, ip_header: IPv4Header, payload: bytes | memoryview) -> None:
        """Nobody takes the datagram: count it; in own mode answer ICMP port unreachable."""
        self.c["drop.no_port"] += 1
        dst = ip_header.dst
        if not self.stack.own_mode or self.is_multicast(dst) or self.is_broadcast(dst):
            return
        self.c["tx.port_unreachable"] += 1
        self.stack.icmp.send_error(3, 3, ip_header.raw + bytes(payload))

    # -- ICMP errors ----------------------------------------------------------------------
    def icmp_error(self, error: IcmpError, offending_ip_header: IPv4Header, offending_l4: bytes) -> None:
        """An ICMP error quoting one of our datagrams: tell the connected endpoint it concerns."""
        self.c["icmp_error"] += 1
        if len(offending_l4) < 4:
            self.c["drop.icmp_short"] += 1
            return
        sport, dport = _PORTS.unpack_from(offending_l4)
        local, remote = offending_ip_header.src, offending_ip_header.dst
        for ep in self.ports.get(sport, ()):
            if ep.remote_ip != remote or ep.remote_port != dport:
                continue
            if ep.local_ip != ANY_IP and ep.local_ip != local:
                continue
            if not self.error_applies(ep, error):
                self.c["icmp_error.ignored"] += 1
                return
            self.c["icmp_error.delivered"] += 1
            ep.on_error(error)
            return
        self.c["icmp_error.no_endpoint"] += 1

    def error_applies(self, ep: UdpEndpoint, error: IcmpError) -> bool:
        """Whether a matching connected endpoint hears about ``error``. Linux without
        IP_RECVERR reports only hard errors (port/protocol unreachable, ...); soft ones (net/host
        unreachable, TTL exceeded) are dropped. "Fragmentation needed" is soft for the ICMP
        layer (a PMTU signal) but ``__udp4_lib_err`` reports it as a hard ``EMSGSIZE`` unless
        PMTU discovery is off (IP_PMTUDISC_DONT, here ``ep.df is False``)."""
        if error.type == 3 and error.code == 4:
            return ep.df is not False
        return error.hard

    # -- diversion ------------------------------------------------------------------------
    def owns(self, local_port: int, remote_ip: bytes, remote_port: int) -> bool:
        """Whether a datagram from ``remote_ip:remote_port`` to ``local_port`` is the stack's."""
        bucket = self.ports.get(local_port)
        if not bucket:
            return False
        for ep in bucket:
            if ep.remote_ip is None or (ep.remote_ip == remote_ip and ep.remote_port == remote_port):
                return True
        return False
