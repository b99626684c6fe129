"""The stack-thread side of the socket facade: one bridge per userland socket.

Every AF_INET socket of the facade owns a real descriptor: the *application end* of an
``AF_UNIX`` socketpair, which is what ``fileno()`` returns. The *stack end* stays here, watched by
the runtime's epoll, and a bridge moves bytes between it and the stack:

- TCP (``SOCK_STREAM`` pair): bytes the application writes are read from the stack end as the TCP
  send buffer has room (so a full TCP buffer blocks the writer), bytes TCP receives are written to
  the stack end as the pair takes them (so a slow reader closes the TCP window). The peer's FIN is
  a ``shutdown(SHUT_WR)`` of the stack end, so the application reads EOF after the data; the
  application's ``shutdown(SHUT_WR)`` arrives here as EOF and becomes our FIN; its ``close()``
  (or the last descriptor going away) arrives as ``EPOLLHUP`` and becomes ``TcpConnection.close()``
  — with ``ECONNRESET`` on the stack end when it closed with unread data, which becomes an RST as
  Linux's ``tcp_close`` would send.
- UDP (``SOCK_SEQPACKET`` pair): each datagram is one record ``kind, ip, port`` + payload, so the
  descriptor is readable exactly when a datagram (or an error report) is queued; datagrams that do
  not fit the pair's buffer are dropped like a full ``SO_RCVBUF``.

Readiness therefore comes from the kernel and is exact. The one state a socketpair cannot show by
itself is "neither readable nor writable" (a socket that is not connected yet, or a listener):
the application end is created with :data:`FILLER` bytes already written into it and not read
(so its send buffer is beyond the writability threshold); the bridge reads and discards them when
the connection is established (or fails). A listener keeps its filler, and is readable when the
bridge has written one token byte per connection waiting in its accept queue: the bridge makes
each such connection's pair and bridge ahead of ``accept()`` (``StreamBridge.ready``), so that
``accept()`` takes one without a round trip to the stack thread.

Creating a socket and a connect() that waits for its outcome do not wait for the stack thread
either: the new bridge is built in the calling thread and the stack thread's part (watching the
pair, sending the SYN) is posted with ``Runtime.call_soon``, whose queue runs in order.

The stack thread never touches an application descriptor (the application may close it and the
number be reused at any time): everything it does goes through its own end.
"""
from __future__ import annotations

import collections
import errno
import fcntl
import os
import select
import socket as _socket
import struct
import termios
import threading
from select import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP
from typing import Any

from ..proto.tcp.connection import CLOSED, LISTEN, TcpConnection
from ..proto.udp import UdpEndpoint
from ..runtime import Runtime, RuntimeStopped

CHUNK = 256 * 1024  # bytes moved per read/write of a pair end
PULL_LIMIT = 1 << 20  # bytes taken from one application per wakeup (fairness between sockets)
RECORD = struct.Struct("!B4sHx")  # UDP record header: kind, source ip, source port
REC_DATA, REC_ERROR = 0, 1
_DONTWAIT = _socket.MSG_DONTWAIT


def filler_size(sock: _socket.socket) -> int:
    """Bytes to leave unread in ``sock``'s send direction so that it is not writable: Linux's
    ``unix_writable`` wants the queued memory at most a quarter of SO_SNDBUF."""
    return sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF) // 4 + 4096


_zeros: dict[int, bytes] = {}  # filler size -> that many zero bytes (made once, not per socket)


def write_filler(app: _socket.socket) -> int:
    """Make ``app`` (the application end) unwritable; returns the bytes written."""
    n = filler_size(app)
    sent = 0
    chunk = _zeros.get(n)
    if chunk is None:
        chunk = _zeros[n] = b"\0" * n
    while sent < n:
        try:
            sent += app.send(chunk if not sent else memoryview(chunk)[: n - sent], _DONTWAIT)
        except BlockingIOError:
            break
    return sent


# ------------------------------------------------------------------------------- registry
class Registry:
    """Bridges by the inode of their application end, so that ``socket(fileno=fd)`` (``dup``,
    ``ssl``, ``fromfd``) finds the bridge of a descriptor it is given. Any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_ino: dict[int, Bridge] = {}

    def add(self, bridge: Bridge) -> None:
        with self._lock:
            self._by_ino[bridge.ino] = bridge

    def remove(self, bridge: Bridge) -> None:
        with self._lock:
            if self._by_ino.get(bridge.ino) is bridge:
                del self._by_ino[bridge.ino]

    def of(self, rt: Runtime) -> list[Bridge]:
        """The live bridges of ``rt`` (any thread)."""
        with self._lock:
            return [b for b in self._by_ino.values() if b.rt is rt]

    def lookup(self, fd: int) -> Bridge | None:
        try:
            ino = os.fstat(fd).st_ino
        except OSError:
            return None
        with self._lock:
            return self._by_ino.get(ino)

    def __len__(self) -> int:
        return len(self._by_ino)


registry = Registry()
_stop_hooked: set[int] = set()  # ids of the runtimes whose stop releases their bridges


def _close_all(rt: Runtime) -> None:
    """Process exit (stack thread, :meth:`Runtime.finish`): close every socket of ``rt`` the
    application still holds, as the kernel closes a dying process's descriptors: a connection
    sends what was written, then FIN — or RST when received data was left unread."""
    for b in registry.of(rt):
        if isinstance(b, StreamBridge):
            unread = len(b.conn.rcvbuf) > 0
            try:
                unread = unread or fcntl.ioctl(b.fd, termios.TIOCOUTQ, b"\0\0\0\0") != b"\0\0\0\0"
            except OSError:
                pass
            b.app_closed(reset=unread and b.connected and not b.filler)
        else:
            b.on_events(EPOLLHUP)


def _release_all(rt: Runtime) -> None:
    """At stop: release every bridge of ``rt``. Stack.shutdown() reaches only bound endpoints
    and connections in a table; a socket never bound or connected must read EOF too."""
    _stop_hooked.discard(id(rt))
    for b in registry.of(rt):
        b.release()


# ------------------------------------------------------------------------------- bridges
class Bridge:
    """What both kinds share: the stack end, its epoll registration, the clean-up."""

    kind = _socket.SOCK_STREAM

    def __init__(self, rt: Runtime, stack_end: _socket.socket, ino: int) -> None:
        self.rt = rt
        stack = rt.stack
        assert stack is not None
        self.stack = stack
        self.end = stack_end
        self.fd = stack_end.fileno()
        self.ino = ino
        self.mask = -1
        self.gone = False  # stack end closed: the application closed its end or the runtime stopped
        self.error = 0  # an error for the application (SO_ERROR), taken once

    def register(self) -> None:
        """Enter the registry and make sure the runtime's stop releases the bridge (any thread)."""
        registry.add(self)
        rt = self.rt
        if id(rt) not in _stop_hooked:
            _stop_hooked.add(id(rt))
            rt.on_stop(lambda: _release_all(rt))
            rt.on_finish(lambda: _close_all(rt))

    def watch(self) -> None:
        """Start watching the stack end (stack thread)."""
        if self.gone:
            return
        self.mask = self.wanted()
        self.rt.watch(self.fd, self.mask, self.on_events)

    def attach(self) -> None:
        """Start watching the stack end, registered (stack thread)."""
        self.register()
        self.watch()

    def wanted(self) -> int:
        return 0  # EPOLLHUP and EPOLLERR are always reported

    def update(self) -> None:
        if self.gone:
            return
        m = self.wanted()
        if m != self.mask:
            self.mask = m
            self.rt.rewatch(self.fd, m)

    def on_events(self, events: int) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Forget the stack end (stack thread); the application end now reads EOF."""
        if self.gone:
            return
        self.gone = True
        self.rt.unwatch(self.fd)
        registry.remove(self)
        try:
            self.end.close()
        except OSError:
            pass

    def take_error(self) -> int:
        e, self.error = self.error, 0
        return e


_EST, _READ, _WRITE, _ACCEPT, _ENDED = 1, 2, 4, 8, 16


class FacadeConnection(TcpConnection):
    """A TCP connection whose events drive its :class:`StreamBridge`.

    The hooks run in the middle of the connection's own processing (an ACK that frees send
    space arrives with the peer's FIN, ...): they only note what happened and let the bridge do
    its work from a 0-delay stack timer, after the segment is processed, since that work may
    close or reset this very connection."""

    bridge: StreamBridge | None = None
    accepted_ahead = False  # its pair and bridge were made by its listener's bridge

    def _kick(self, what: int) -> None:
        b = self.bridge
        if b is not None:
            b.kick(what)

    def on_established(self) -> None:
        self._kick(_EST)

    def on_readable(self) -> None:
        self._kick(_READ)

    def on_writable(self) -> None:
        self._kick(_WRITE)

    def on_accept_ready(self) -> None:
        self._kick(_ACCEPT)

    def on_closed(self) -> None:
        self._kick(_ENDED)

    def on_error(self) -> None:
        self._kick(_ENDED)

    def on_shutdown(self) -> None:
        if self.bridge is not None:
            self.bridge.release()

    def make_child(self) -> FacadeConnection:
        return type(self)(self.layer)


class StreamBridge(Bridge):
    """A TCP socket: the pair's stack end <-> a :class:`FacadeConnection`."""

    def __init__(self, rt: Runtime, stack_end: _socket.socket, ino: int, conn: FacadeConnection,
                 filler: int) -> None:
        super().__init__(rt, stack_end, ino)
        self.conn = conn
        conn.bridge = self
        self.filler = filler  # application-written bytes still to discard
        self.connected = False  # ever established (what send/recv may assume)
        self.failed = False  # the last connection attempt failed
        self.blocked = False  # the pair was full: wait for EPOLLOUT
        self.rx_done = False  # EOF (or an error) passed to the application
        self.tx_done = False  # EOF read from the application (our FIN is queued)
        self.app_rd_shut = False  # the application did shutdown(SHUT_RD)
        self.tokens = 0  # listener: token bytes written for the accept queue
        self.owed = 0  # listener: ready entries whose token byte the pair has not taken yet
        # listener: accepted-ahead children, (application fd, connection), one token each;
        # children the application took from it, for finish_accept (both: any thread)
        self.ready: collections.deque[tuple[int, FacadeConnection]] = collections.deque()
        self.taken: collections.deque[FacadeConnection] = collections.deque()
        self.todo = 0  # connection events noted by the hooks, handled by service()
        self.kicked = False
        self.connect_unreported = False  # set by socket.connect(), which may read it before any service()

    def kick(self, what: int) -> None:
        self.todo |= what
        if not self.kicked:
            self.kicked = True
            self.stack.call_later(0, self.service)

    def service(self) -> None:
        """The connection's events since the last call (from a 0-delay timer)."""
        self.kicked = False
        todo, self.todo = self.todo, 0
        if self.gone:
            return
        if todo & _EST and not self.connected:
            self.established()
            return
        if todo & _ENDED:
            self.conn_ended()
        if todo & _READ:
            self.push()
        if todo & _WRITE and not self.mask & EPOLLIN:
            # Send space came back while the pair was not watched for input: take what the
            # application wrote meanwhile. (When it is watched, epoll reports waiting bytes
            # by itself: level-triggered; a pull here would cost a recv that finds nothing.)
            self.pull()
        if todo & _ACCEPT:
            self.sync_tokens()
        self.update()
        self.connect_unreported = False  # connected with no connect() call having seen it (Linux SS_CONNECTING)

    def release(self) -> None:
        super().release()
        self.close_ready()

    def close_ready(self) -> None:
        """Close the application ends of a listener's accepted-ahead connections nobody took
        (their bridges see EPOLLHUP and close the connections)."""
        while self.ready:
            try:
                fd, _ = self.ready.popleft()
            except IndexError:
                break
            try:
                os.close(fd)
            except OSError:
                pass

    # -- interest --------------------------------------------------------------------------
    def wanted(self) -> int:
        m = 0
        if self.connected and not self.tx_done:
            if self.conn.send_space > 0 or self.conn.state == CLOSED:
                m |= EPOLLIN | EPOLLRDHUP
        if self.blocked:
            m |= EPOLLOUT
        return m

    def on_events(self, events: int) -> None:
        if self.gone:
            return
        if events & (EPOLLHUP | EPOLLERR):
            self.app_closed()  # takes what the application wrote, then closes (or resets)
            return
        if events & EPOLLOUT:
            self.push()
        if events & (EPOLLIN | EPOLLRDHUP):
            self.pull()
        self.update()

    # -- connection set-up (stack thread, called by the facade) --------------------------------
    def start_connect(self, ip: bytes, port: int, refill: int) -> None:
        self.filler += refill
        self.failed = False
        self.stack.tcp.connect(self.conn, ip, port)  # raises EISCONN, EALREADY, ENETUNREACH...

    def start_connect_soon(self, ip: bytes, port: int) -> None:
        """:meth:`start_connect` posted by a connect() that waits for the outcome anyway (no
        round trip): an error it raises fails the attempt as a refused one does (the socket
        becomes writable, the error is the one connect() then raises)."""
        if self.gone:
            return
        try:
            self.start_connect(ip, port, 0)
        except OSError as e:
            self.failed = True
            self.error = e.errno or errno.EIO
            self.drain_filler()

    def connect_status(self) -> bool | None:
        """True: established; None: in progress; raises the error of a failed attempt."""
        if self.connected:
            return True
        if self.failed:
            code = self.take_error() or self.conn.take_error() or errno.ECONNREFUSED
            raise OSError(code, os.strerror(code))
        return None

    def established(self) -> None:
        self.connected = True
        self.drain_filler()
        self.push()
        self.pull()
        self.update()

    def drain_filler(self) -> None:
        while self.filler > 0:
            try:
                got = self.end.recv(min(self.filler, CHUNK), _DONTWAIT)
            except (BlockingIOError, ConnectionResetError):
                return
            if not got:
                return
            self.filler -= len(got)

    def listen(self, backlog: int) -> None:
        self.stack.tcp.listen(self.conn, backlog)
        self.sync_tokens()

    def sync_tokens(self) -> None:
        """Listener: each connection that enters the accept queue gets its pair and bridge
        here, on the stack thread, ahead of accept(); then ``(application fd, connection)``
        goes to :attr:`ready` and one token byte into the pair, so that the listener is
        readable and ``accept()`` takes a token and a ready entry without a round trip to
        the stack thread (it posts :meth:`finish_accept`). The connection stays in the
        layer's accept queue (backlog, ``ss``, aborted when the listener closes) until then."""
        if self.gone or self.conn.state != LISTEN:
            return
        for child in self.conn.accept_queue:
            if not isinstance(child, FacadeConnection) or child.accepted_ahead:
                continue
            child.accepted_ahead = True
            app, end, ino = _pair(_socket.SOCK_STREAM)
            bridge = StreamBridge(self.rt, end, ino, child, 0)
            bridge.connected = True
            bridge.attach()
            bridge.push()
            bridge.pull()
            if child.state == CLOSED:
                bridge.conn_ended()
            bridge.update()
            self.ready.append((app.detach(), child))
            self.owed += 1
        self.pay_tokens()

    def pay_tokens(self) -> None:
        """The token bytes owed for :attr:`ready` entries (after them: a token read finds its
        entry), in one write; what the pair does not take is retried at the next call."""
        if self.owed and not self.gone:
            try:
                sent = self.end.send(b"\0" * self.owed, _DONTWAIT)
            except OSError:
                return
            self.owed -= sent
            self.tokens += sent

    def finish_accept(self) -> None:
        """The application took connections from :attr:`ready`: out of the accept queue
        (in order: the queue's oldest are the ones taken first)."""
        taken = self.taken
        layer = self.stack.tcp
        while taken:
            child = taken.popleft()
            self.tokens -= 1
            queue = self.conn.accept_queue
            if queue and queue[0] is child and self.conn.state == LISTEN:
                layer.accept(self.conn)
            elif child in queue:
                queue.remove(child)
                child.parent = None
        self.pay_tokens()

    def drop_ready(self) -> None:
        """The listener goes away: accepted-ahead connections nobody took are closed (their
        application ends closed: the bridges see EPOLLHUP and close them)."""
        self.finish_accept()
        self.close_ready()

    def stop_listening(self) -> None:
        """shutdown(SHUT_RD) of a listener: it stops listening, and its descriptor becomes
        readable (EOF) so that a blocked accept() or select() wakes, as Linux's POLLHUP does."""
        self.drop_ready()
        self.stack.tcp.close(self.conn)
        try:
            self.end.shutdown(_socket.SHUT_WR)
        except OSError:
            pass

    # -- data -----------------------------------------------------------------------------
    def push(self) -> None:
        """Received bytes -> the application, as much as the pair takes. The bytes stay in the
        TCP receive buffer until the pair has taken them, so the window is what the application
        has not read (plus the pair's own buffer), and a reader that stops closes it."""
        if self.gone or self.rx_done or not self.connected:
            return
        conn = self.conn
        end = self.end
        while True:
            try:
                data = conn.recv(CHUNK, True)
            except OSError as e:  # ECONNRESET, ETIMEDOUT...: the application reads EOF, then it
                self.error = e.errno or errno.ECONNRESET
                self.end_rx()
                return
            if data is None:
                self.blocked = False
                return
            if not data:
                self.end_rx()
                return
            try:
                n = end.send(data, _DONTWAIT)
            except BlockingIOError:
                n = 0
            except OSError:  # the application shut its reading side or went away: discard
                conn.consume(len(data))
                self.rx_done = True
                return
            if n:
                conn.consume(n)
            if n < len(data):
                if not self.blocked:
                    self.blocked = True
                    self.update()
                return
            if self.blocked:
                self.blocked = False
                self.update()

    def end_rx(self) -> None:
        if self.rx_done:
            return
        self.rx_done = True
        if self.app_rd_shut:
            return
        try:
            self.end.shutdown(_socket.SHUT_WR)
        except OSError:
            pass

    def pull(self) -> None:
        """Bytes the application wrote -> the TCP send buffer."""
        if self.gone or not self.connected or self.tx_done:
            return
        conn = self.conn
        end = self.end
        moved = 0
        while moved < PULL_LIMIT:
            dead = conn.state == CLOSED
            space = conn.send_space
            if space <= 0 and not dead:
                break
            want = CHUNK if dead else min(space, CHUNK)
            try:
                data = end.recv(want, _DONTWAIT)
            except BlockingIOError:
                break
            except OSError:  # ECONNRESET: the application closed with data unread
                self.app_closed(reset=True)
                return
            if not data:
                if self.app_gone():  # a close, not a shutdown(SHUT_WR): maybe an abortive one
                    self.app_closed()
                    return
                self.tx_done = True
                if not dead:
                    try:
                        conn.shutdown(_socket.SHUT_WR)
                    except OSError:
                        pass
                break
            moved += len(data)
            if dead:  # nobody to send to: fail the writer blocked on the pair now (EPIPE, which
                # send/sendall map to the connection's error) rather than discard what it writes
                try:
                    end.shutdown(_socket.SHUT_RD)
                except OSError:
                    pass
                self.tx_done = True
                break
            try:
                conn.send(data)
            except OSError as e:
                self.error = self.error or e.errno or errno.EPIPE
            if len(data) < want:
                break  # the pair is drained (a stream gives all it holds): what comes later, EOF
                # included, is reported by epoll (level-triggered) rather than found by a recv
                # that would fail with EAGAIN
        self.update()

    def conn_ended(self) -> None:
        """The connection failed, was reset or closed."""
        if not self.connected:
            self.failed = True
            self.error = self.error or self.conn.take_error()
            self.drain_filler()  # a failed connect makes the socket writable (SO_ERROR tells)
            return
        self.push()
        self.update()

    def app_gone(self) -> bool:
        """Both directions of the pair are shut: the application closed its end (or shut it
        down both ways, which ends the connection the same way)."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return any(ev & select.POLLHUP for _, ev in p.poll(0))

    def app_closed(self, reset: bool = False) -> None:
        """EPOLLHUP/EPOLLERR: the application closed its end (every descriptor of it), or shut
        both directions: finish sending what it wrote, then close the connection — with an RST
        when it left received data unread (the pair's ECONNRESET) or SO_LINGER is 0."""
        if self.gone:
            return
        conn = self.conn
        if not reset:
            try:
                reset = self.end.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR) == errno.ECONNRESET
            except OSError:
                pass
        reset = reset or conn.linger == 0
        if not reset and self.connected and not self.tx_done and conn.state != CLOSED:
            # take what is left in the pair; the close below queues FIN after it
            while True:
                try:
                    data = self.end.recv(CHUNK, _DONTWAIT)
                except OSError:
                    break
                if not data:
                    break
                try:
                    conn.sndbuf.capacity = max(conn.sndbuf.capacity, len(conn.sndbuf) + len(data))
                    conn.send(data)
                except OSError:
                    break
        conn.bridge = None
        if conn.state == LISTEN:
            self.drop_ready()
        self.release()
        if conn.state == LISTEN or conn.state == CLOSED:
            self.stack.tcp.close(conn)
        elif reset:
            conn.abort()
        else:
            conn.close()


class FacadeEndpoint(UdpEndpoint):
    """A UDP endpoint delivering into its :class:`DatagramBridge`."""

    bridge: DatagramBridge | None = None

    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        b = self.bridge
        if b is None or b.gone:
            return
        try:
            b.end.send(RECORD.pack(REC_DATA, src_ip, src_port) + data, _DONTWAIT)
        except BlockingIOError:
            self.layer.c["drop.rcvbuf"] += 1
        except OSError:
            self.layer.c["drop.closed"] += 1

    def on_error(self, err: Any) -> None:
        super().on_error(err)
        b = self.bridge
        if b is not None and not b.gone:
            try:
                b.end.send(RECORD.pack(REC_ERROR, b"\0\0\0\0", err.errno), _DONTWAIT)
            except OSError:
                pass

    def on_shutdown(self) -> None:
        if self.bridge is not None:
            self.bridge.release()


class DatagramBridge(Bridge):
    kind = _socket.SOCK_DGRAM

    def __init__(self, rt: Runtime, stack_end: _socket.socket, ino: int, ep: FacadeEndpoint) -> None:
        super().__init__(rt, stack_end, ino)
        self.ep = ep
        ep.bridge = self
        self.sndbuf = 212992  # SO_SNDBUF (wmem_default); UDP sends are not buffered here

    def on_events(self, events: int) -> None:
        if events & (EPOLLHUP | EPOLLERR) and not self.gone:
            self.ep.bridge = None
            self.release()
            self.stack.udp.close(self.ep)

    def set_rcvbuf(self, size: int) -> None:
        self.ep.rcvbuf = size
        try:
            self.end.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, max(1, size // 2))
        except OSError:
            pass

    def take_error(self) -> int:
        return self.ep.take_error()


# ------------------------------------------------------------------------------- creation
def _pair(kind: int) -> tuple[_socket.socket, _socket.socket, int]:
    """A socketpair of ``kind``: ``(application end, stack end, the application end's inode)``."""
    app, end = _socket.socketpair(_socket.AF_UNIX, kind)
    end.setblocking(False)
    return app, end, os.fstat(app.fileno()).st_ino


def _open(rt: Runtime, kind: int, build: Any) -> tuple[_socket.socket, Any]:
    """A new socket's pair and its bridge made by ``build(stack, end, ino, filler)`` in the
    calling thread (the objects are new: nothing the stack thread uses yet); the stack thread
    starts watching it when it next runs its queued calls, before any later call for the
    socket (the queue is in order), so creating a socket costs no round trip to the stack
    thread. ``(application end, bridge)``. Any thread."""
    if not rt.running:
        raise RuntimeStopped("usocket runtime is not running")
    app, end, ino = _pair(kind)
    try:
        filler = write_filler(app) if kind == _socket.SOCK_STREAM else 0
        bridge = build(rt, end, ino, filler)
    except BaseException:
        app.close()
        end.close()
        raise
    bridge.register()
    rt.call_soon(bridge.watch)  # dropped if the runtime stops meanwhile: its stop releases the bridge
    return app, bridge


def _build_stream(rt: Runtime, end: _socket.socket, ino: int, filler: int) -> StreamBridge:
    assert rt.stack is not None
    conn = rt.stack.tcp.open(FacadeConnection)
    assert isinstance(conn, FacadeConnection)
    return StreamBridge(rt, end, ino, conn, filler)


def _build_datagram(rt: Runtime, end: _socket.socket, ino: int, filler: int) -> DatagramBridge:
    assert rt.stack is not None
    ep = rt.stack.udp.open(FacadeEndpoint)
    assert isinstance(ep, FacadeEndpoint)
    bridge = DatagramBridge(rt, end, ino, ep)
    bridge.set_rcvbuf(ep.rcvbuf)
    return bridge


def new_stream(rt: Runtime) -> tuple[_socket.socket, StreamBridge]:
    """A TCP socket's pair and bridge (any thread)."""
    return _open(rt, _socket.SOCK_STREAM, _build_stream)


def new_datagram(rt: Runtime) -> tuple[_socket.socket, DatagramBridge]:
    """A UDP socket's pair and bridge (any thread)."""
    return _open(rt, _socket.SOCK_SEQPACKET, _build_datagram)


__all__ = ["Bridge", "StreamBridge", "DatagramBridge", "FacadeConnection", "FacadeEndpoint",
           "registry", "new_stream", "new_datagram", "write_filler", "RECORD", "REC_DATA", "REC_ERROR"]
