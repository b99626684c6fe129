"""Custom protocols above IPv4 and callback applications above UDP and TCP.

Everything here runs on the stack thread, like the layers. Each function takes a
:class:`~usocket.stack.Stack` (a stack driven by tests or by hand) or a
:class:`~usocket.runtime.Runtime` (then the work is done on its stack thread through
``rt.call`` and the callbacks run there too: keep them short, never block in them).

- :func:`register_protocol`: a protocol number above IPv4 (e.g. 253, RFC 3692's experimental
  number) delivered to ``on_receive(payload, src, dst)``; returns a ``send(dst, payload)``.
- :class:`TcpApplication` (PyStack's ``TCPApplication``): ``on_connect``, ``on_data``,
  ``on_close`` callbacks, ``send`` and ``close`` methods. :func:`listen_tcp` makes one per
  accepted connection; :func:`connect_tcp` opens one actively.
- :class:`UdpApplication`: ``on_datagram(data, addr)`` and ``sendto(data, addr)``;
  :func:`open_udp` binds one.

These sit next to the socket API, on the same stack: a program can serve a port with a
``TcpApplication`` and use ``usocket.socket`` for everything else. Addresses given to and by
callbacks are dotted strings.

Limits: in shared mode the kernel is diverted only for TCP and UDP flows of the stack
(NFQUEUE rules per port), so a custom IP protocol reaches the stack only in own mode (or on
an in-memory network); in shared mode the host kernel answers it (protocol unreachable).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..proto.tcp.connection import CLOSED, TcpConnection
from ..proto.udp import UdpEndpoint
from ..stack import Stack
from ..wire.addr import ANY_IP, ip_aton, ip_ntoa
from ..wire.ipv4 import IPv4Header

Address = tuple[str, int]


def stack_of(target: Any) -> Stack:
    """The stack of a :class:`Stack` or of a started runtime."""
    if isinstance(target, Stack):
        return target
    stack = getattr(target, "stack", None)
    if not isinstance(stack, Stack):
        raise TypeError(f"{target!r} is neither a Stack nor a started Runtime")
    return stack


def on_stack_thread(target: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(stack, *args)`` on the stack's thread: directly for a bare stack, through
    ``rt.call`` for a runtime (its result or exception comes back)."""
    if isinstance(target, Stack):
        return fn(target, *args)
    return target.call(fn, stack_of(target), *args)


def _ip(addr: str | bytes) -> bytes:
    return addr if isinstance(addr, bytes) else ip_aton(addr)


# -- protocols above IPv4 -------------------------------------------------------------------------
class ProtocolHandle:
    """What :func:`register_protocol` returns: ``send(dst, payload, **ipv4_options)`` and
    ``close()`` (unregister). Calls must run on the stack thread (``rt.call(h.send, ...)``)."""

    def __init__(self, stack: Stack, proto: int) -> None:
        self.stack = stack
        self.proto = proto

    def send(self, dst: str | bytes, payload: bytes, **options: Any) -> None:
        """One datagram of this protocol to ``dst``; ``options`` are those of
        :meth:`usocket.proto.ipv4.IPv4Layer.send` (``ttl``, ``tos``, ``df``, ``frag_size``...)."""
        self.stack.ipv4.send(_ip(dst), self.proto, payload, **options)

    __call__ = send

    def close(self) -> None:
        self.stack.ipv4.unregister(self.proto)


def register_protocol(target: Any, proto: int,
                      on_receive: Callable[[bytes, str, str], Any]) -> ProtocolHandle:
    """Deliver IPv4 datagrams of protocol number ``proto`` (after validation and reassembly)
    to ``on_receive(payload, src, dst)``; return a :class:`ProtocolHandle` whose ``send(dst,
    payload)`` sends one. Replaces the stack's own handler if ``proto`` is 1, 6 or 17."""
    if not 0 <= proto <= 255:
        raise ValueError("an IP protocol number is 0-255")

    def handler(hdr: IPv4Header, payload: bytes, csum_ok: bool) -> None:
        on_receive(bytes(payload), ip_ntoa(hdr.src), ip_ntoa(hdr.dst))

    def register(stack: Stack) -> ProtocolHandle:
        stack.ipv4.register(proto, handler)
        return ProtocolHandle(stack, proto)

    handle: ProtocolHandle = on_stack_thread(target, register)
    return handle


# -- TCP applications ---------------------------------------------------------------------------
class TcpApplication:
    """One TCP connection driven by callbacks (PyStack's ``TCPApplication``). Subclass it and
    override what you need; the callbacks run on the stack thread.

    - :meth:`on_connect`: the connection is established (``self.remote`` is set).
    - :meth:`on_data`: bytes arrived (everything available, in order).
    - :meth:`on_close`: the peer finished sending (``reason`` ``"eof"``), or the connection
      ended (``"closed"``) or failed (``"error"``, ``self.error`` holds the errno). Called
      once per reason at most; the default closes our side on ``"eof"``.

    :meth:`send` queues bytes (buffered beyond the TCP send buffer, flushed as it drains),
    :meth:`close` sends FIN after them, :meth:`abort` resets. ``self.conn`` is the
    :class:`~usocket.proto.tcp.connection.TcpConnection`.
    """

    #: The connection class used for this application's connections (a TcpConnection subclass,
    #: e.g. from :mod:`usocket.hack.tcp`: fixed ISN, OS personality...).
    connection_class: type[TcpConnection] = TcpConnection

    conn: AppConnection
    remote: Address | None = None
    error = 0

    def on_connect(self) -> None:
        pass

    def on_data(self, data: bytes) -> None:
        pass

    def on_close(self, reason: str) -> None:
        if reason == "eof":
            self.close()

    # -- actions ------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue ``data`` (all of it: what the send buffer cannot take yet waits here)."""
        self.conn.app_out.append(bytes(data))
        self.conn.flush()

    def close(self) -> None:
        """FIN once everything queued is sent (a half-close: data from the peer still comes to
        :meth:`on_data` until its own FIN; the connection is then finished by the stack)."""
        self.conn.app_closing = True
        self.conn.flush()

    def abort(self) -> None:
        self.conn.abort()


class AppConnection(TcpConnection):
    """The connection behind a :class:`TcpApplication` (mixed with the application's
    ``connection_class`` by :func:`app_connection_class`). Events are handed to the
    application from a 0-delay timer, after the segment that caused them is processed."""

    app: TcpApplication | None = None
    app_factory: Callable[[], TcpApplication] | None = None

    def __init__(self, layer: Any) -> None:
        super().__init__(layer)
        self.app_out: list[bytes] = []
        self.app_closing = False
        self.app_events: set[str] = set()
        self.app_reported: set[str] = set()
        self.app_kicked = False

    def _note(self, what: str) -> None:
        self.app_events.add(what)
        if not self.app_kicked:
            self.app_kicked = True
            self.layer.stack.call_later(0, self._service)

    def on_established(self) -> None:
        self._note("connect")

    def on_readable(self) -> None:
        self._note("data")

    def on_writable(self) -> None:
        self._note("write")

    def on_closed(self) -> None:
        self._note("closed")

    def on_error(self) -> None:
        self._note("error")

    def on_accept_ready(self) -> None:
        self._note("accept")

    def make_child(self) -> TcpConnection:
        child = type(self)(self.layer)
        assert isinstance(child, AppConnection)
        child.app_factory = self.app_factory
        return child

    def _service(self) -> None:
        self.app_kicked = False
        events, self.app_events = self.app_events, set()
        if "accept" in events:
            self._accept_all()
        app = self.app
        if app is None:
            return
        if "connect" in events and "connect" not in self.app_reported:
            self.app_reported.add("connect")
            assert self.remote_ip is not None
            app.remote = (ip_ntoa(self.remote_ip), self.remote_port)
            app.on_connect()
        if events & {"data", "closed", "error"}:
            self._read()
        if events & {"write", "connect"}:
            self.flush()
        if "error" in events or ("closed" in events and self.state == CLOSED):
            reason = "error" if self.reset else "closed"
            if self.error:
                app.error = self.take_error()
            self._report(reason)

    def _report(self, reason: str) -> None:
        if reason not in self.app_reported and self.app is not None:
            self.app_reported.add(reason)
            self.app.on_close(reason)

    def _read(self) -> None:
        while True:
            try:
                data = self.recv(1 << 20)
            except OSError as e:
                if self.app is not None:
                    self.app.error = e.errno or 0
                self._report("error")
                return
            if data is None:
                return
            if not data:
                self._report("eof")
                self._release()
                return
            if self.app is not None:
                self.app.on_data(data)

    def flush(self) -> None:
        """Move queued application bytes into the send buffer; FIN when closing and done."""
        out = self.app_out
        try:
            while out:
                n = self.send(out[0])
                if n == 0:
                    return
                if n < len(out[0]):
                    out[0] = out[0][n:]
                    return
                out.pop(0)
        except OSError:
            out.clear()
            return
        if self.app_closing and self.state != CLOSED and not self.wr_shut:
            self.shutdown(1)  # FIN after the data; reading goes on (half-close)
        self._release()

    def _release(self) -> None:
        """Both directions done (our FIN queued, the peer's read): hand the connection to the
        layer to finish (FIN exchange, TIME_WAIT) as a closed socket would."""
        if self.wr_shut and self.fin_received and not len(self.rcvbuf) and not self.orphan:
            self.close()

    def _accept_all(self) -> None:
        while True:
            child = self.layer.accept(self)
            if child is None:
                return
            assert isinstance(child, AppConnection) and self.app_factory is not None
            app = self.app_factory()
            app.conn = child
            child.app = app
            child._note("connect")
            child._note("data")


_mixed: dict[type[TcpConnection], type[AppConnection]] = {}


def app_connection_class(base: type[TcpConnection]) -> type[AppConnection]:
    """:class:`AppConnection` mixed with a connection class (``base``'s overrides win)."""
    if issubclass(base, AppConnection):
        return base
    if base is TcpConnection:
        return AppConnection
    cls = _mixed.get(base)
    if cls is None:
        cls = _mixed[base] = type(f"App{base.__name__}", (base, AppConnection), {})
    return cls


class TcpListener:
    """What :func:`listen_tcp` returns: ``port``, ``conn`` (the listening connection) and
    ``close()`` (stop listening; established connections live on)."""

    def __init__(self, target: Any, conn: AppConnection) -> None:
        self.target = target
        self.conn = conn
        self.port = conn.local_port

    def close(self) -> None:
        on_stack_thread(self.target, lambda stack: stack.tcp.close(self.conn))


def listen_tcp(target: Any, port: int, factory: Callable[[], TcpApplication], *, ip: str = "0.0.0.0",
               backlog: int = 128, connection_class: type[TcpConnection] | None = None) -> TcpListener:
    """Listen on ``port`` (0: an ephemeral one, see ``listener.port``) and run
    ``factory()`` (a :class:`TcpApplication`) for each accepted connection. The connections'
    class is ``connection_class``, else the application class's ``connection_class`` when
    ``factory`` is a class."""
    cls: type[TcpConnection] = connection_class or getattr(factory, "connection_class", None) or TcpConnection

    def start(stack: Stack) -> AppConnection:
        conn = stack.tcp.open(app_connection_class(cls))
        assert isinstance(conn, AppConnection)
        conn.app_factory = factory
        conn.reuse_addr = True
        stack.tcp.bind(conn, ANY_IP if ip in ("", "0.0.0.0") else _ip(ip), port)
        stack.tcp.listen(conn, backlog)
        return conn

    return TcpListener(target, on_stack_thread(target, start))


def connect_tcp(target: Any, address: Address, app: TcpApplication, *,
                connection_class: type[TcpConnection] | None = None) -> TcpApplication:
    """Open a connection to ``address`` (an IP, a port) run by ``app``: its ``on_connect`` is
    called once established, ``on_close(\"error\")`` if it fails (``app.error``)."""
    cls = connection_class or app.connection_class

    def start(stack: Stack) -> None:
        conn = stack.tcp.open(app_connection_class(cls))
        assert isinstance(conn, AppConnection)
        conn.app = app
        app.conn = conn
        stack.tcp.connect(conn, _ip(address[0]), address[1])

    on_stack_thread(target, start)
    return app


# -- UDP applications ---------------------------------------------------------------------------
class UdpApplication:
    """A UDP port driven by callbacks: override :meth:`on_datagram`; :meth:`sendto` answers.
    ``self.port`` is the bound port; :meth:`close` unbinds."""

    endpoint: AppEndpoint
    port = 0

    def on_datagram(self, data: bytes, addr: Address) -> None:
        pass

    def on_error(self, errno_: int) -> None:
        """An ICMP error (connected endpoints only, as Linux)."""

    def sendto(self, data: bytes, addr: Address, **options: Any) -> int:
        """Send a datagram; ``options`` set the endpoint's ``ttl``/``tos``/``df`` first."""
        ep = self.endpoint
        for name, value in options.items():
            setattr(ep, name, value)
        return ep.layer.sendto(ep, data, _ip(addr[0]), addr[1])

    def close(self) -> None:
        self.endpoint.layer.close(self.endpoint)


class AppEndpoint(UdpEndpoint):
    app: UdpApplication | None = None

    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        if self.app is not None:
            self.app.on_datagram(bytes(data), (ip_ntoa(src_ip), src_port))

    def on_error(self, err: Any) -> None:
        if self.app is not None:
            self.app.on_error(getattr(err, "errno", 0))


def open_udp(target: Any, port: int, app: UdpApplication, *, ip: str = "0.0.0.0") -> UdpApplication:
    """Bind ``app`` to UDP ``port`` (0: ephemeral; ``app.port`` says which)."""

    def start(stack: Stack) -> None:
        if stack.udp is None:
            raise OSError("this stack has no UDP layer")
        ep = stack.udp.open(AppEndpoint)
        assert isinstance(ep, AppEndpoint)
        ep.app = app
        app.endpoint = ep
        stack.udp.bind(ep, ANY_IP if ip in ("", "0.0.0.0") else _ip(ip), port)
        app.port = ep.local_port

    on_stack_thread(target, start)
    return app


__all__ = ["register_protocol", "ProtocolHandle", "TcpApplication", "AppConnection", "TcpListener",
           "listen_tcp", "connect_tcp", "app_connection_class", "UdpApplication", "AppEndpoint",
           "open_udp", "stack_of", "on_stack_thread"]
