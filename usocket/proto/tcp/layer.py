"""The TCP layer: connections and listeners bound to the stack (demultiplexing, ports, RSTs,
ICMP errors, timers, ACK coalescing, the diversion hooks).

Users (and the socket facade) work with :class:`~.connection.TcpConnection` objects:

    conn = stack.tcp.open()                  # CLOSED, unbound; or open(MyConnection)
    stack.tcp.bind(conn, ip, port)           # optional
    stack.tcp.connect(conn, ip, port)        # active open, or:
    stack.tcp.listen(conn, backlog)          # passive open; stack.tcp.accept(conn) -> child
    conn.send(data) / conn.recv(n) / conn.shutdown(how) / conn.close()

Everything runs on the stack thread. The connection reports through its ``on_*`` hooks.

Rules, as Linux applies them:

- ``bind`` accepts ``0.0.0.0`` or the stack's address (else EADDRNOTAVAIL); port 0 picks an
  ephemeral port; two sockets conflict on a port when their addresses overlap unless both set
  SO_REUSEADDR and neither listens, or both set SO_REUSEPORT. Connections in TIME_WAIT block a
  port only for binders without SO_REUSEADDR. Accepted connections hold their listener's port.
- ``listen``: the accept queue holds ``backlog + 1`` established connections (Linux's
  ``sk_acceptq_is_full``); when it is full new SYNs are dropped, and a handshake-completing ACK
  is dropped too (the SYN-ACK is retried, so the client gets in once there is room). The SYN
  queue holds ``max(backlog, 8)`` (at most ``max_syn_backlog``) half-open connections; no
  SYN cookies.
- A segment for no connection or listener is answered with a RST (RFC 9293 3.10.7.1) in own
  mode; in shared mode the host kernel owns that answer.
- A SYN to a connection in TIME_WAIT opens a new connection when its sequence number is above
  the old RCV.NXT or its timestamp is newer (RFC 6191, Linux tcp_timewait_state_process).
- ICMP errors are matched to a connection by the quoted 4-tuple and sequence number, which must
  lie in SND.UNA..SND.NXT (RFC 5927 4.1).

Diversion: each connection with a 4-tuple opens a flow ``(6, port, (ip, port))`` with
``stack.flows`` when it is created (actively) or established (passively), a listener opens
``(6, port, None)``; flows close when the connection is gone (after TIME_WAIT).
"""
from __future__ import annotations

import errno
import hashlib
import os
import struct
from typing import TYPE_CHECKING, Any

from ...wire import MalformedError
from ...wire.addr import ANY_IP
from ...wire.tcp import ACK, FIN, PROTO_TCP, RST, SYN, Segment, TcpTemplate, build_tcp, parse_tcp
from .config import TcpConfig
from .connection import CLOSED, LISTEN, SYN_SENT, TIME_WAIT, TcpConnection, TcpState
from .isn import IsnGenerator
from .seq import seq_diff, to_offset

if TYPE_CHECKING:
    from ...proto.icmp import IcmpError
    from ...stack import Stack
    from ...wire.ipv4 import IPv4Header

_SEQ = struct.Struct("!HHI")


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class TcpLayer:
    """TCP over the stack's IPv4 layer. See the module docstring."""

    connection_class = TcpConnection
    isn_class = IsnGenerator

    def __init__(self, stack: Stack, config: TcpConfig | None = None) -> None:
        self.stack = stack
        self.config = config if config is not None else TcpConfig()
        self.c = stack.counters.layer("tcp")
        self.isn = self.isn_class()
        # (local port, remote ip, remote port) -> connection (SYN_RECEIVED children included)
        self.conns: dict[tuple[int, bytes, int], TcpConnection] = {}
        self.listeners: dict[int, list[TcpConnection]] = {}
        # port -> connections holding it (bind conflicts); port -> users (claim/release)
        self.bound: dict[int, list[TcpConnection]] = {}
        self._acks: list[TcpConnection] = []
        self._ack_timer: Any = None
        self._challenge_window = -1.0
        self._challenge_count = 0
        self._reuseport_key = os.urandom(16)
        # flows of connections that ended, kept diverted for a grace period: key -> flow remote
        self.closed_flows: dict[tuple[int, bytes, int], tuple[bytes, int] | None] = {}
        self.closed_ports: dict[int, int] = {}  # closed listeners' ports in their grace (a count)
        self.last_close = 0.0
        stack.ipv4.register(PROTO_TCP, self.receive)
        stack.icmp.register_error_handler(PROTO_TCP, self.icmp_error)

    # ===================================================================== lifecycle
    def open(self, cls: type[TcpConnection] | None = None, *args: Any, **kw: Any) -> TcpConnection:
        """A new CLOSED connection: ``cls(self, *args, **kw)`` (default :attr:`connection_class`)."""
        return (cls or self.connection_class)(self, *args, **kw)

    def endpoints(self) -> list[TcpConnection]:
        seen: dict[int, TcpConnection] = {}
        for bucket in self.bound.values():
            for conn in bucket:
                seen[id(conn)] = conn
        for conn in self.conns.values():
            seen[id(conn)] = conn
        return list(seen.values())

    def connections(self) -> list[TcpConnection]:
        """Every connection and listener the layer knows (for netstat-like views)."""
        return self.endpoints()

    # -- ports --------------------------------------------------------------------------------
    def _conflicts(self, conn: TcpConnection, ip: bytes, port: int) -> bool:
        for other in self.bound.get(port, ()):
            if other is conn:
                continue
            if ip != ANY_IP and other.local_ip != ANY_IP and ip != other.local_ip:
                continue
            if other.state == TIME_WAIT or (other.orphan and other.state != LISTEN):
                if conn.reuse_addr:
                    continue
                return True
            if conn.reuse_addr and other.reuse_addr and other.state != LISTEN and conn.state != LISTEN:
                continue
            if conn.reuse_port and other.reuse_port:
                continue
            return True
        return False

    def _hold_port(self, conn: TcpConnection, ip: bytes, port: int, explicit: bool) -> None:
        ports = self.stack.ports
        if port == 0:
            port = ports.allocate(PROTO_TCP, lambda p: p in self.bound)
        else:
            if self._conflicts(conn, ip, port):
                raise _err(errno.EADDRINUSE)
            # (reuse_addr only when set: allocators written for the older signature still work)
            held = port in self.bound or (
                ports.claim(PROTO_TCP, port, explicit=explicit, reuse_addr=True) if conn.reuse_addr
                else ports.claim(PROTO_TCP, port, explicit=explicit))
            if not held:
                raise _err(errno.EADDRINUSE)
        conn.local_ip, conn.local_port = ip, port
        self.bound.setdefault(port, []).append(conn)

    def _drop_port(self, conn: TcpConnection) -> None:
        port = conn.local_port
        bucket = self.bound.get(port)
        if bucket is not None and conn in bucket:
            bucket.remove(conn)
            if not bucket:
                del self.bound[port]
                self.stack.ports.release(PROTO_TCP, port)

    def local_address_ok(self, ip: bytes) -> bool:
        return ip == ANY_IP or ip == self.stack.config.address

    def bind(self, conn: TcpConnection, ip: bytes, port: int) -> None:
        """``bind((ip, port))``."""
        if not 0 <= port <= 0xFFFF:
            raise OverflowError("bind(): port must be 0-65535.")
        if conn.local_port or conn.state != CLOSED or conn.remote_ip is not None:
            raise _err(errno.EINVAL)
        if not self.local_address_ok(ip):
            raise _err(errno.EADDRNOTAVAIL)
        self._hold_port(conn, ip, port, explicit=True)
        conn.port_locked = port != 0
        self.c["bind"] += 1

    def connect(self, conn: TcpConnection, ip: bytes, port: int) -> None:
        """Active open: autobind, SYN. Errors arrive later through the connection."""
        state = conn.state
        if state == SYN_SENT:
            raise _err(errno.EALREADY)
        if state != CLOSED:
            raise _err(errno.EISCONN)
        if conn.remote_ip is not None:
            # Linux lets a socket whose attempt failed (refused, timed out) connect again.
            if not conn.reset or conn.fin_received or conn.snd_una > 1:
                raise _err(errno.EISCONN)
            conn.remote_ip, conn.remote_port = None, 0
            conn.reset = False
            conn.rtxq.clear()
            conn.rtx_head = 0
            conn.rtx_retries = 0
            conn.retrans_bytes = conn.lost_bytes = conn.sacked_bytes = 0
        if not 0 <= port <= 0xFFFF:
            raise OverflowError("connect(): port must be 0-65535.")
        if port == 0 or ip == ANY_IP or ip[0] >= 224:
            raise _err(errno.ECONNREFUSED if port == 0 or ip == ANY_IP else errno.ENETUNREACH)
        self.stack.ipv4.route(ip)  # ENETUNREACH now, like connect()
        fresh_port = not conn.local_port
        if fresh_port:
            self._hold_port(conn, ANY_IP, 0, explicit=False)
        key = (conn.local_port, ip, port)
        if key in self.conns:
            if fresh_port:
                self._drop_port(conn)
                conn.local_port = 0
            raise _err(errno.EADDRNOTAVAIL)
        try:
            self.stack.flows.flow_opened(PROTO_TCP, conn.local_port, (ip, port))
        except BaseException:
            if fresh_port:
                self._drop_port(conn)
                conn.local_port = 0
            raise
        conn.flow_open = True
        conn.flow_remote = (ip, port)
        if conn.local_ip == ANY_IP:
            conn.local_ip = self.stack.config.address
        conn.remote_ip, conn.remote_port = ip, port
        conn.template = TcpTemplate(conn.local_ip, ip, conn.local_port, port)
        self.conns[key] = conn
        self.c["active_open"] += 1
        conn.open_active()

    def listen(self, conn: TcpConnection, backlog: int = 128) -> None:
        """Passive open (``listen(backlog)``); calling it again only changes the backlog."""
        backlog = max(0, min(int(backlog), self.config.somaxconn))
        if conn.state == LISTEN:
            conn.backlog = backlog
            return
        if conn.state != CLOSED or conn.remote_ip is not None:
            raise _err(errno.EINVAL)
        if not conn.local_port:
            self._hold_port(conn, ANY_IP, 0, explicit=False)
        elif self._conflicts_listen(conn):
            raise _err(errno.EADDRINUSE)
        self.stack.flows.flow_opened(PROTO_TCP, conn.local_port, None)
        conn.flow_open = True
        conn.state = LISTEN
        conn.backlog = backlog
        self.listeners.setdefault(conn.local_port, []).insert(0, conn)
        self.c["listen"] += 1

    def _conflicts_listen(self, conn: TcpConnection) -> bool:
        """Linux refuses ``listen`` when another socket on the port listens on an overlapping
        address (SO_REUSEADDR does not help; SO_REUSEPORT on both does)."""
        for other in self.listeners.get(conn.local_port, ()):
            if other is conn:
                continue
            if conn.local_ip != ANY_IP and other.local_ip != ANY_IP and conn.local_ip != other.local_ip:
                continue
            if conn.reuse_port and other.reuse_port:
                continue
            return True
        return False

    def accept(self, listener: TcpConnection) -> TcpConnection | None:
        """The oldest established connection of ``listener``'s queue, or None."""
        if listener.state != LISTEN:
            raise _err(errno.EINVAL)
        if not listener.accept_queue:
            return None
        child = listener.accept_queue.popleft()
        child.parent = None
        self.c["accept"] += 1
        return child

    def close(self, conn: TcpConnection) -> None:
        """Close a listener or an unconnected socket; connections use ``conn.close()``. At
        stack shutdown this aborts live connections (RST) and forgets those in TIME_WAIT
        silently (their exchange is over; a RST would only reach a peer that has forgotten them
        or, worse, a new incarnation of the connection)."""
        state = conn.state
        if state == LISTEN:
            bucket = self.listeners.get(conn.local_port)
            if bucket is not None and conn in bucket:
                bucket.remove(conn)
                if not bucket:
                    del self.listeners[conn.local_port]
            conn.state = CLOSED
            if conn.flow_open:
                conn.flow_open = False
                self._close_port_later(conn.local_port)
            for child in list(conn.syn_children) + list(conn.accept_queue):
                child.abort()
            conn.syn_children.clear()
            conn.accept_queue.clear()
            self._drop_port(conn)
            conn.on_closed()
        elif state == CLOSED:
            self._drop_port(conn)
        elif state == TIME_WAIT:
            conn._done()
        else:
            conn.abort()

    def closing(self) -> int:
        """Connections still finishing their close (a FIN of ours not yet acknowledged, the
        peer's FIN not yet received after ours, or an orphan with data to send): what a stop
        should wait for, so that the peer's last segments meet the stack, not the kernel."""
        # a connection that ended a moment ago (often by our RST) may still draw the peer's FIN
        n = 1 if self.closed_flows and self.stack.now - self.last_close < 0.1 else 0
        for conn in self.conns.values():
            st = conn.state
            if st in (LISTEN, TIME_WAIT, CLOSED, SYN_SENT) or conn.parent is not None:
                continue
            if conn.orphan or conn.wr_shut:
                n += 1
        return n

    def connection_closed(self, conn: TcpConnection) -> None:
        """Called by a connection entering CLOSED: forget it, close its flow, free its port."""
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if conn.remote_ip is not None:
            key = (conn.local_port, conn.remote_ip, conn.remote_port)
            if self.conns.get(key) is conn:
                del self.conns[key]
            if conn.flow_open:
                conn.flow_open = False
                self._close_flow_later(key, conn.flow_remote)
        parent = conn.parent
        if parent is not None:
            # A child already in the accept queue stays there even when reset: Linux's accept()
            # returns it, and reading it gives its data, then ECONNRESET.
            parent.syn_children.discard(conn)
        if conn.port_locked and not conn.orphan and conn.parent is None and conn.reset:
            pass  # a failed attempt on an explicitly bound socket keeps its port, like Linux
        else:
            self._drop_port(conn)
            if not conn.port_locked:
                conn.local_port = 0
                conn.local_ip = ANY_IP
        conn.template = None

    # -- children of listeners ----------------------------------------------------------------------
    def syn_backlog(self, listener: TcpConnection) -> int:
        return min(max(listener.backlog, 8), self.config.max_syn_backlog)

    def _listen_input(self, listener: TcpConnection, seg: Segment, ip_header: IPv4Header) -> None:
        flags = seg.flags
        c = self.c
        if flags & RST:
            return
        if flags & ACK:
            c["rx.ack_to_listener"] += 1
            self.send_reset(ip_header.dst, ip_header.src, seg)
            return
        if not flags & SYN or flags & FIN:
            c["drop.listen_bad_flags"] += 1
            return
        if len(listener.accept_queue) > listener.backlog:
            c["listen_overflow"] += 1
            return
        if len(listener.syn_children) >= self.syn_backlog(listener):
            c["syn_queue_full"] += 1
            return
        child = listener.make_child()
        # the socket options a child inherits (one by one: cheaper than a getattr/setattr loop)
        child.reuse_addr, child.reuse_port, child.nodelay = listener.reuse_addr, listener.reuse_port, listener.nodelay
        child.keepalive, child.keepidle = listener.keepalive, listener.keepidle
        child.keepintvl, child.keepcnt = listener.keepintvl, listener.keepcnt
        child.ttl, child.tos, child.linger = listener.ttl, listener.tos, listener.linger
        child.user_mss, child.congestion = listener.user_mss, listener.congestion
        child.rcvbuf_locked, child.rcvbuf_max = listener.rcvbuf_locked, listener.rcvbuf_max
        child.retries2, child.user_timeout = listener.retries2, listener.user_timeout
        child.rcvbuf.capacity = listener.rcvbuf.capacity
        child.sndbuf.capacity = listener.sndbuf.capacity
        child.local_ip, child.local_port = ip_header.dst, seg.dport
        child.remote_ip, child.remote_port = ip_header.src, seg.sport
        child.template = TcpTemplate(ip_header.dst, ip_header.src, seg.dport, seg.sport)
        child.parent = listener
        self.conns[(seg.dport, ip_header.src, seg.sport)] = child
        self.bound.setdefault(seg.dport, []).append(child)
        listener.syn_children.add(child)
        c["passive_open"] += 1
        child.open_passive(seg)

    def child_can_establish(self, child: TcpConnection) -> bool:
        parent = child.parent
        if parent is None or parent.state != LISTEN:
            return True
        if len(parent.accept_queue) > parent.backlog:
            self.c["listen_overflow"] += 1
            return False
        return True

    def child_established(self, child: TcpConnection) -> None:
        parent = child.parent
        assert parent is not None and child.remote_ip is not None
        parent.syn_children.discard(child)
        try:
            # The listener's flow (its port, any peer) already diverts the child's segments: the
            # child holds a reference to it (refcounted, no rule change), so accepting costs
            # no iptables call and the port stays diverted while a child lives on.
            self.stack.flows.flow_opened(PROTO_TCP, child.local_port, None)
        except OSError:
            self.c["abort.flow"] += 1
            child.abort()
            return
        child.flow_open = True
        child.flow_remote = None
        parent.accept_queue.append(child)
        parent.on_accept_ready()

    # ===================================================================== input
    def receive(self, ip_header: IPv4Header, payload: Any, csum_ok: bool) -> None:
        c = self.c
        c["rx"] += 1
        try:
            seg = parse_tcp(payload, ip_header.src, ip_header.dst, verify=not csum_ok)
        except MalformedError as exc:
            c["drop." + exc.reason] += 1
            return
        if ip_header.dst != self.stack.config.address:
            c["drop.not_unicast"] += 1  # TCP never answers broadcast/multicast (RFC 1122 4.2.3.10)
            return
        conn = self.conns.get((seg.dport, ip_header.src, seg.sport))
        if conn is not None:
            if conn.state == TIME_WAIT and seg.flags & (SYN | ACK | RST) == SYN:
                if self._time_wait_reopen(conn, seg):
                    conn._done()
                    conn = None
            if conn is not None:
                conn.segment_arrives(seg)
                return
        listener = self.find_listener(seg.dport, ip_header.dst, ip_header.src, seg.sport)
        if listener is not None:
            self._listen_input(listener, seg, ip_header)
            return
        self.no_connection(ip_header, seg)

    def _time_wait_reopen(self, conn: TcpConnection, seg: Segment) -> bool:
        if seq_diff(seg.seq, (conn.irs + conn.rcv_nxt) & 0xFFFFFFFF) > 0:
            return True
        return bool(conn.ts_ok and seg.ts_val is not None and seq_diff(seg.ts_val, conn.ts_recent) > 0)

    def find_listener(self, port: int, dst: bytes, src: bytes, sport: int) -> TcpConnection | None:
        bucket = self.listeners.get(port)
        if not bucket:
            return None
        exact = [lst for lst in bucket if lst.local_ip == dst]
        group = exact or [lst for lst in bucket if lst.local_ip == ANY_IP]
        if not group:
            return None
        if len(group) > 1 and group[0].reuse_port:
            # Linux hashes the 4-tuple (inet_ehashfn, keyed): clients' ports are all even or all
            # odd for connect(), so a hash that is linear in the port alone would pick one listener
            key = src + dst + sport.to_bytes(2, "big") + port.to_bytes(2, "big")
            h = int.from_bytes(hashlib.blake2s(key, digest_size=4, key=self._reuseport_key).digest(), "big")
            return group[h % len(group)]
        return group[0]

    def _close_flow_later(self, key: tuple[int, bytes, int], remote: tuple[bytes, int] | None) -> None:
        """A connection ended: keep its diversion flow for ``config.closed_flow_grace`` seconds,
        so that the peer's late segments (its FIN or data racing our RST, a retransmission)
        still reach the stack, which answers them with a RST as Linux would, instead of the
        host's kernel (which would also reset them, but from outside the stack)."""
        self.closed_flows[key] = remote
        self.last_close = self.stack.now
        self.stack.call_later(self.config.closed_flow_grace, self._flow_grace_over, key, remote)

    def _flow_grace_over(self, key: tuple[int, bytes, int], remote: tuple[bytes, int] | None) -> None:
        if self.closed_flows.get(key, False) is remote:
            del self.closed_flows[key]
        self.stack.flows.flow_closed(PROTO_TCP, key[0], remote)

    def _close_port_later(self, port: int) -> None:
        """A listener closed: keep its port's diversion for ``config.closed_listener_grace``
        seconds, so that SYNs and segments already queued for it (a loaded stack reads its queue
        late) get the stack's RST, as a closed Linux listener's would, not the host kernel's."""
        self.closed_ports[port] = self.closed_ports.get(port, 0) + 1
        self.last_close = self.stack.now
        self.stack.call_later(self.config.closed_listener_grace, self._port_grace_over, port)

    def _port_grace_over(self, port: int) -> None:
        left = self.closed_ports.get(port, 0) - 1
        if left > 0:
            self.closed_ports[port] = left
        else:
            self.closed_ports.pop(port, None)
        self.stack.flows.flow_closed(PROTO_TCP, port, None)

    def no_connection(self, ip_header: IPv4Header, seg: Segment) -> None:
        """RFC 9293 3.10.7.1: a segment for no connection draws a RST: in own mode always, in
        shared mode for connections that ended moments ago (the kernel answers the rest)."""
        self.c["drop.no_connection"] += 1
        if seg.flags & RST:
            return
        if not self.stack.own_mode and (seg.dport, ip_header.src, seg.sport) not in self.closed_flows \
                and seg.dport not in self.closed_ports:
            return
        self.send_reset(ip_header.dst, ip_header.src, seg)

    def send_reset(self, src: bytes, dst: bytes, seg: Segment) -> None:
        """The RST answering ``seg``: <SEQ=SEG.ACK><CTL=RST> if it had an ACK, else
        <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            rst = build_tcp(src, dst, seg.dport, seg.sport, seg.ack, 0, RST, 0)
        else:
            seg_len = len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
            rst = build_tcp(src, dst, seg.dport, seg.sport, 0, (seg.seq + seg_len) & 0xFFFFFFFF, RST | ACK, 0)
        self.c["tx.rst"] += 1
        try:
            self.stack.ipv4.send(dst, PROTO_TCP, rst, src=src)
        except OSError:
            self.c["tx.error"] += 1

    def send_reset_for(self, conn: TcpConnection, seg: Segment) -> None:
        assert conn.remote_ip is not None
        self.send_reset(conn.local_ip, conn.remote_ip, seg)

    # ===================================================================== output and timers
    def output(self, conn: TcpConnection, segment: bytes, gso_size: int = 0) -> None:
        """Send one segment of ``conn``; ``gso_size`` > 0: a super-segment (checksum partial)
        for the link to cut into pieces of that many data bytes (see :meth:`gso_limit`)."""
        assert conn.remote_ip is not None
        try:
            self.stack.ipv4.send(conn.remote_ip, PROTO_TCP, segment, src=conn.local_ip, ttl=conn.ttl,
                                 tos=conn.tos, df=True, gso_size=gso_size)
        except OSError as exc:
            # EMSGSIZE here would be an engine bug (segments are sized to the path MTU).
            self.c["tx.error." + errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
            conn.soft_error = exc.errno or 0
        else:
            self.c["tx"] += 1

    def gso_limit(self) -> int:
        """The most data bytes one super-segment may carry (0: segmentation offload off): what
        fits the link's ``gso_max_size`` after the IPv4 and the largest TCP header."""
        if not self.config.tso:
            return 0
        return max(0, getattr(self.stack, "gso_max_size", 0) - 20 - 60)

    def reschedule(self, conn: TcpConnection) -> None:
        """Keep one stack timer per connection at (or before) its earliest deadline."""
        d = conn.next_deadline()
        t = conn.timer
        if d is None:
            if t is not None:
                t.cancel()
                conn.timer = None
            return
        if t is not None and not t.cancelled and t.when <= d:
            return  # fires early and re-arms: cheaper than moving it on every ACK
        if t is not None:
            t.cancel()
        conn.timer = self.stack.timers.call_at(d, self._fire, conn)

    def _fire(self, conn: TcpConnection) -> None:
        conn.timer = None
        if conn.state == CLOSED:
            return
        conn.on_timer()
        if conn.state != CLOSED:
            self.reschedule(conn)

    def ack_soon(self, conn: TcpConnection) -> None:
        self._acks.append(conn)
        if self._ack_timer is None:
            self._ack_timer = self.stack.call_later(0.0, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_timer = None
        acks, self._acks = self._acks, []
        for conn in acks:
            if conn.ack_pending and conn.state != CLOSED and conn.template is not None:
                conn.send_ack()
                self.reschedule(conn)
            conn.ack_pending = False

    def allow_challenge_ack(self) -> bool:
        now = self.stack.now
        if now - self._challenge_window >= 1.0:
            self._challenge_window = now
            self._challenge_count = 0
        self._challenge_count += 1
        return self._challenge_count <= self.config.challenge_ack_limit

    # ===================================================================== ICMP and diversion
    def icmp_error(self, error: IcmpError, offending: IPv4Header, l4: bytes) -> None:
        c = self.c
        c["icmp_error"] += 1
        if len(l4) < 8:
            c["drop.icmp_short"] += 1
            return
        sport, dport, seq = _SEQ.unpack_from(l4)
        conn = self.conns.get((sport, offending.dst, dport))
        if conn is None or conn.state in (CLOSED, LISTEN, TIME_WAIT):
            c["icmp_error.no_connection"] += 1
            return
        u = to_offset(seq, conn.snd_una, conn.iss)
        if not conn.snd_una <= u < max(conn.snd_nxt, conn.snd_una + 1):
            c["icmp_error.out_of_window"] += 1
            return
        c["icmp_error.delivered"] += 1
        conn.icmp_error(error, seq)
        if conn.state != CLOSED:
            self.reschedule(conn)

    def owns(self, local_port: int, remote_ip: bytes, remote_port: int) -> bool:
        """Whether a segment from ``remote_ip:remote_port`` to ``local_port`` is the stack's."""
        key = (local_port, remote_ip, remote_port)
        return key in self.conns or local_port in self.listeners or key in self.closed_flows \
            or local_port in self.closed_ports

    def __repr__(self) -> str:
        states: dict[str, int] = {}
        for conn in self.conns.values():
            states[conn.state.name] = states.get(conn.state.name, 0) + 1
        return f"<TcpLayer listeners={sum(map(len, self.listeners.values()))} {states}>"


__all__ = ["TcpLayer", "TcpConnection", "TcpState", "TcpConfig"]
