"""Per-connection TCP behaviour: connection classes for a socket or a listener.

A TCP connection's policy lives in overridable methods of
:class:`~usocket.proto.tcp.connection.TcpConnection` (``choose_isn``, ``syn_options``,
``choose_wscale``, ``initial_window``, ``advertised_window``, the ``on_*`` hooks...). This
module chooses the class per socket and ships example classes:

- :func:`set_connection_class` ``(sock, cls)``: the connection of a ``usocket.socket`` (not
  yet connected, or listening) takes ``cls``'s behaviour; connections a listener accepts get
  it too. :func:`get_connection_class` tells which one is in use.
- :class:`FixedIsnConnection` / :func:`fixed_isn`: a fixed initial sequence number (PyStack's
  SYN-ACK example).
- :class:`SynProfileConnection` with an :class:`OsProfile`: the SYN / SYN-ACK of another
  operating system (TTL, window, MSS, window scale, SACK, timestamps, option order);
  :data:`PROFILES` has Linux, Windows and macOS-like ones; :func:`personality` makes a class.

Classes used this way are constructed with the layer only. Per-connection state they need
belongs in :meth:`HackConnection.setup`, which runs for new connections and when an existing
socket's connection is switched (its ``__init__`` has run already then). Hooks such as
``on_established`` must call ``super()``: the socket facade's own class comes after them.

Congestion control per socket is the ordinary option:
``sock.setsockopt(IPPROTO_TCP, TCP_CONGESTION, b"reno")`` (``b"cubic"``, ``b"newreno"``...).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ..proto.tcp.connection import CLOSED, LISTEN, TcpConnection
from ..wire.tcp import OPT_EOL, OPT_MSS, OPT_NOP, OPT_SACK_PERM, OPT_TIMESTAMPS, OPT_WSCALE


class HackConnection(TcpConnection):
    """Base of the example classes: calls :meth:`setup` at construction."""

    def __init__(self, layer: Any) -> None:
        super().__init__(layer)
        self.setup()

    def setup(self) -> None:
        """Per-connection state and socket-option defaults of this behaviour (e.g. ``self.ttl``).
        Also called by :func:`set_connection_class` on the connection it switches."""


class FixedIsnConnection(HackConnection):
    """Every SYN / SYN-ACK of this connection carries ``isn`` as its sequence number.

    Predictable ISNs are what RFC 6528 exists to prevent: for experiments only."""

    isn = 0x12345678

    def choose_isn(self) -> int:
        return self.isn & 0xFFFFFFFF


def fixed_isn(isn: int) -> type[FixedIsnConnection]:
    """A :class:`FixedIsnConnection` subclass with ``isn``."""
    return type(f"FixedIsn_{isn & 0xFFFFFFFF:08x}", (FixedIsnConnection,), {"isn": isn & 0xFFFFFFFF})


@dataclass(frozen=True)
class OsProfile:
    """What a SYN or SYN-ACK looks like on some operating system.

    ``layout`` is the option order, items among ``"mss"``, ``"ws"``, ``"sok"`` (SACK
    permitted), ``"ts"``, ``"nop"``, ``"eol"`` (p0f's notation); ``ws``/``sok``/``ts`` appear in
    a SYN-ACK only when the peer's SYN offered them (RFC 7323, RFC 2018: an option one side did
    not offer is not used, and the connection then runs without it). ``window`` is the window
    field of the SYN / SYN-ACK (never more than the stack can receive), or ``window_mss`` times
    the MSS we announce when that is set (Linux's ``mss*20``); ``mss`` None announces the
    path MTU's (a profile's MSS above it is lowered to it); ``wscale`` is the shift we announce.
    ``ttl`` is the IP TTL of every segment of the connection. The IP ``DF`` bit is always set
    (as all three systems below do) and the IP identification is the stack's.
    """

    name: str
    ttl: int
    window: int
    layout: tuple[str, ...]
    wscale: int = 7
    mss: int | None = None
    window_mss: int = 0

    @property
    def timestamps(self) -> bool:
        return "ts" in self.layout

    @property
    def sack(self) -> bool:
        return "sok" in self.layout

    @property
    def window_scaling(self) -> bool:
        return "ws" in self.layout


#: Profiles after the SYNs these systems send (and p0f 3's signatures of them).
PROFILES: dict[str, OsProfile] = {
    # Linux 3.11 to 4.18: window mss*20, "mss,sok,ts,nop,ws", wscale 7 (p0f: "Linux 3.11 and newer";
    # Linux 4.19+ offers 64240 = mss*44, which p0f 3.09b does not know)
    "linux": OsProfile("linux", ttl=64, window=29200, window_mss=20, layout=("mss", "sok", "ts", "nop", "ws"),
                       wscale=7),
    # Windows 7/8/10 (p0f: "Windows 7 or 8"): 8192, "mss,nop,ws,nop,nop,sok", wscale 8, no timestamps
    "windows": OsProfile("windows", ttl=128, window=8192, layout=("mss", "nop", "ws", "nop", "nop", "sok"),
                         wscale=8),
    # macOS 10.9+: 65535, "mss,nop,ws,nop,nop,ts,sok,eol+1", wscale 4 (p0f: "MacOS X 10.9 or newer")
    "macos": OsProfile("macos", ttl=64, window=65535,
                       layout=("mss", "nop", "ws", "nop", "nop", "ts", "sok", "eol"), wscale=4),
}

_MSS = struct.Struct("!BBH")
_TS = struct.Struct("!BBII")


def build_options(layout: tuple[str, ...] | list[str], *, mss: int, wscale: int | None,
                  ts: tuple[int, int] | None) -> bytes:
    """TCP option bytes in ``layout`` order (see :class:`OsProfile`); an option whose value
    is None (``wscale``, ``ts``) is left out, and so is ``"sok"`` when ``"sok"`` is not wanted
    (pass a layout without it). Padded with EOL to a multiple of 4 bytes."""
    out = bytearray()
    for item in layout:
        if item == "mss":
            out += _MSS.pack(OPT_MSS, 4, mss)
        elif item == "ws":
            if wscale is not None:
                out += bytes((OPT_WSCALE, 3, wscale))
        elif item == "sok":
            out += bytes((OPT_SACK_PERM, 2))
        elif item == "ts":
            if ts is not None:
                out += _TS.pack(OPT_TIMESTAMPS, 10, ts[0], ts[1])
        elif item == "nop":
            out.append(OPT_NOP)
        elif item == "eol":
            out.append(OPT_EOL)
        else:
            raise ValueError(f"unknown option {item!r} in layout")
    out += bytes(-len(out) % 4)
    if len(out) > 40:
        raise ValueError("TCP options are at most 40 bytes")
    return bytes(out)


class SynProfileConnection(HackConnection):
    """A connection whose SYN / SYN-ACK follows :attr:`profile` (an :class:`OsProfile`), and
    whose segments carry its TTL. Use :func:`personality` for a class per profile."""

    profile: OsProfile = PROFILES["linux"]

    def setup(self) -> None:
        self.ttl = self.profile.ttl

    def choose_wscale(self) -> int:
        return self.profile.wscale if self.profile.window_scaling else 0

    def advertised_mss(self) -> int:
        mss = super().advertised_mss()
        return mss if self.profile.mss is None else min(mss, self.profile.mss)

    def syn_options(self, synack: bool) -> bytes:
        p = self.profile
        layout = list(p.layout)
        if synack:
            # Only what both sides offered is used: turn off what the profile does not send.
            if not p.timestamps:
                self.ts_ok = False
            if not p.sack:
                self.sack_ok = False
            if not p.window_scaling:
                self.ws_ok = False
                self.snd_wscale = self.rcv_wscale = 0
            ws = self.rcv_wscale if self.ws_ok else None
            ts = (self.ts_now(), self.ts_recent) if self.ts_ok else None
            if not self.sack_ok:
                layout = [x for x in layout if x != "sok"]
        else:
            ws = self.rcv_wscale if p.window_scaling else None
            ts = (self.ts_now(), 0) if p.timestamps else None
        return build_options(layout, mss=self.advertised_mss(), wscale=ws, ts=ts)

    def _window_field(self, syn: bool = False) -> int:
        w = super()._window_field(syn)
        if not syn:
            return w
        p = self.profile
        return min(w, p.window_mss * self.advertised_mss() if p.window_mss else p.window)


def personality(profile: OsProfile | str) -> type[SynProfileConnection]:
    """A :class:`SynProfileConnection` subclass for ``profile`` (or a name in :data:`PROFILES`)."""
    p = PROFILES[profile] if isinstance(profile, str) else profile
    return type(f"Personality_{p.name}", (SynProfileConnection,), {"profile": p})


# -- choosing the class of a socket's connection ------------------------------------------------
_mixed: dict[tuple[type, type], type] = {}


def mix(cls: type[TcpConnection], base: type[TcpConnection]) -> type[TcpConnection]:
    """``cls``'s behaviour on top of ``base`` (e.g. the socket facade's connection class):
    a class deriving from both, ``cls`` first. Cached."""
    if not (isinstance(cls, type) and issubclass(cls, TcpConnection)):
        raise TypeError(f"{cls!r} is not a TcpConnection subclass")
    if issubclass(cls, base):
        return cls
    if cls is TcpConnection:
        return base
    key = (cls, base)
    out = _mixed.get(key)
    if out is None:
        out = _mixed[key] = type(f"{cls.__name__}+{base.__name__}", (cls, base), {})
    return out


def _root_class(conn: TcpConnection) -> type[TcpConnection]:
    """The class the connection had before any :func:`set_connection_class`."""
    return getattr(type(conn), "_hack_root", type(conn))


def switch_class(conn: TcpConnection, cls: type[TcpConnection]) -> None:
    """On the stack thread: give ``conn`` (CLOSED or LISTEN) the behaviour of ``cls``."""
    if conn.state not in (CLOSED, LISTEN):
        raise ValueError("a connection's class is chosen before connect() or at listen(); "
                         f"this one is {conn.state.name}")
    root = _root_class(conn)
    new = mix(cls, root)
    if new is not root and "_hack_root" not in new.__dict__:
        new._hack_root = root  # type: ignore[attr-defined]
    conn.__class__ = new
    setup = getattr(conn, "setup", None)
    if setup is not None:
        setup()


def set_connection_class(sock: Any, cls: type[TcpConnection]) -> None:
    """Choose the TCP connection class of a ``usocket.socket`` (TCP, userland, before
    ``connect()``, or a listener: then the connections it accepts from now on get it).
    ``TcpConnection`` itself restores the default behaviour. ``TypeError`` for a kernel or UDP
    socket, ``ValueError`` for a connection already under way."""
    conn = getattr(sock, "connection", None)
    if not isinstance(conn, TcpConnection):
        raise TypeError("set_connection_class() needs a userland TCP usocket.socket")
    sock._call(switch_class, conn, cls)


def get_connection_class(sock: Any) -> type[TcpConnection]:
    """The class chosen with :func:`set_connection_class` (``TcpConnection`` when none)."""
    conn = getattr(sock, "connection", None)
    if not isinstance(conn, TcpConnection):
        raise TypeError("get_connection_class() needs a userland TCP usocket.socket")
    t = type(conn)
    if t is _root_class(conn):
        return TcpConnection
    return t.__mro__[1]


__all__ = ["HackConnection", "FixedIsnConnection", "fixed_isn", "OsProfile", "PROFILES", "build_options",
           "SynProfileConnection", "personality", "set_connection_class", "get_connection_class", "mix",
           "switch_class"]
