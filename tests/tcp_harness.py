"""A packet-level harness for the TCP engine, in the style of smoltcp's and lwIP's socket tests.

One real :class:`~usocket.stack.Stack` in own mode (10.0.0.1/24) whose outgoing IPv4 packets are
captured before ARP (:class:`fakes.RecordingStack`), a virtual clock, and scripted remote ends:

- :class:`Net` owns the stack and the clock. ``net.advance(dt)`` moves time forward one timer
  deadline at a time (so each timer fires at its own instant, and re-armed timers are computed
  from the right ``now``); ``net.flush()`` runs what is due now, such as the 0-delay timer that
  sends the ACKs coalesced during a batch of input. Every emitted packet is parsed (IPv4, then
  TCP with its checksum verified) into a :class:`~usocket.wire.tcp.Segment` and kept in
  ``net.log``; ``net.raw(seg)`` gives the packet back (for ICMP quotes). ``Net(gso_max_size=N)``
  plays a link with segmentation offload: TCP super-segments are kept in ``net.gso_sent`` and
  cut (:func:`usocket.wire.gso.segment`) into the segments the peer sees.
- :class:`Peer` is the other end of one 4-tuple. It reads what the stack sent to it
  (``peer.expect(flags=ACK, ack=...)``, ``peer.take()``, ``peer.expect_none()``), learns the
  stack's ISN, options, window scale and timestamps from it, and writes segments relative to
  that state: ``peer.send(flags=ACK, payload=b"x" * 100)`` uses the peer's next sequence
  number, acknowledges everything the stack has sent so far, and carries the negotiated
  options (timestamps echoing the stack's latest TSval, the window scaled by the peer's shift).
  Every field can be overridden for the malicious cases (``seq=``, ``ack=``, ``window=``,
  ``ts=``, ``options=``...). Injection goes through ``stack.ipv4.receive(packet, csum_ok=False)``,
  so the TCP checksum is verified on the way in, and is followed by ``net.flush()``.

Offsets make assertions readable: ``peer.u(seg.seq)`` is the position in the stack's sequence
space (the SYN is 0, the first data byte 1), ``peer.r(seg.ack)`` the position in the peer's.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from fakes import RecordingStack

from usocket.config import OWN, StackConfig
from usocket.proto.tcp.connection import TcpConnection
from usocket.proto.tcp.isn import IsnGenerator
from usocket.wire.addr import ip_aton
from usocket.wire.gso import GsoPacket
from usocket.wire.gso import segment as gso_segment
from usocket.wire.icmp import build_error
from usocket.wire.ipv4 import IPv4Header, build_ipv4, parse_ipv4
from usocket.wire.tcp import ACK, FIN, PSH, RST, SYN, Segment, build_tcp, data_options, parse_tcp, syn_options

ME = ip_aton("10.0.0.1")
PEER_IP = ip_aton("10.0.0.2")
ROUTER = ip_aton("10.0.0.254")
MASK = 0xFFFFFFFF
PEER_PORT = 40000
SERVER_PORT = 80
PEER_ISN = 0x10000000
PEER_TS_BASE = 500_000

__all__ = ["ACK", "FIN", "PSH", "RST", "SYN", "ME", "PEER_IP", "ROUTER", "MASK", "Net", "Peer", "seg_len",
           "flag_names"]


def seg_len(seg: Segment) -> int:
    """SEG.LEN: payload bytes plus one for SYN and one for FIN."""
    return len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)


def flag_names(flags: int) -> str:
    return "".join(n for bit, n in ((SYN, "S"), (ACK, "A"), (FIN, "F"), (RST, "R"), (PSH, "P")) if flags & bit)


class Net:
    """The stack under test, its virtual clock and everything it emitted.

    ``config`` keyword arguments set fields of ``stack.tcp.config`` (``msl=1.0``, ...).
    """

    def __init__(self, *, mtu: int = 1500, seed: int = 7, gso_max_size: int = 0, **config: Any) -> None:
        self.stack = RecordingStack(StackConfig(address=ME, prefix_len=24, gateway=ROUTER, mtu=mtu, mode=OWN),
                                    rng=random.Random(seed))
        self.stack.gso_max_size = gso_max_size  # a link with segmentation offload (link.base)
        self.gso_sent: list[GsoPacket] = []  # the super-segments, before they were cut
        self.tcp = self.stack.tcp
        self.tcp.isn = IsnGenerator(secret=bytes(16))  # deterministic ISNs
        for key, value in config.items():
            if not hasattr(self.tcp.config, key):
                raise AttributeError(f"TcpConfig has no {key!r}")
            setattr(self.tcp.config, key, value)
        self.log: list[tuple[IPv4Header, Segment, bytes]] = []  # everything the stack sent, in order
        self.pending: list[tuple[IPv4Header, Segment]] = []  # not yet taken by a peer
        self.other: list[bytes] = []  # non-TCP packets (ICMP errors, ...)
        self._raw: dict[int, bytes] = {}

    # -- time -------------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.stack.now

    def flush(self) -> None:
        """Run what is due now (the coalesced-ACK timer, expired deadlines)."""
        self.stack.poll(self.stack.now)

    def advance(self, dt: float) -> None:
        """Move the clock forward by ``dt``, firing each timer at its own deadline."""
        self.run_until(self.stack.now + dt)

    def run_until(self, t: float) -> None:
        stack = self.stack
        for _ in range(1_000_000):
            d = stack.poll_at()
            if d is None or d > t:
                break
            stack.poll(max(d, stack.now))
        else:
            raise AssertionError("timers keep firing: a timer loop?")
        stack.poll(max(t, stack.now))

    def next_deadline(self) -> float | None:
        return self.stack.poll_at()

    # -- output ----------------------------------------------------------------------------------
    def collect(self) -> None:
        """Parse what the stack handed to ARP since the last call."""
        sent = self.stack.arp.sent  # type: ignore[attr-defined]
        if not sent:
            return
        self.stack.arp.sent = []  # type: ignore[attr-defined]
        packets: list[bytes] = []
        for _, _, packet in sent:
            if type(packet) is GsoPacket:  # cut as the link would (checksums completed)
                self.gso_sent.append(packet)
                packets.extend(gso_segment(packet, l2_len=0))
            else:
                packets.append(packet)
        for packet in packets:
            hdr, payload = parse_ipv4(packet)
            if hdr.proto != 6:
                self.other.append(packet)
                continue
            seg = parse_tcp(bytes(payload), hdr.src, hdr.dst, verify=True)  # our checksums must be right
            self.log.append((hdr, seg, packet))
            self._raw[id(seg)] = packet
            self.pending.append((hdr, seg))

    def raw(self, seg: Segment) -> bytes:
        """The IPv4 packet a segment taken from the log was parsed from."""
        return self._raw[id(seg)]

    def take_for(self, ip: bytes, port: int) -> list[tuple[IPv4Header, Segment]]:
        self.collect()
        mine = [(h, s) for h, s in self.pending if h.dst == ip and s.dport == port]
        self.pending = [(h, s) for h, s in self.pending if not (h.dst == ip and s.dport == port)]
        return mine

    def assert_quiet(self) -> None:
        """Nothing was emitted to anyone since the last take."""
        self.collect()
        assert not self.pending, f"unexpected output: {[s for _, s in self.pending]}"

    # -- input -----------------------------------------------------------------------------------
    def inject(self, packet: bytes) -> None:
        """Hand one IPv4 packet to the stack, then run the ACK flush."""
        self.stack.ipv4.receive(packet, False)
        self.flush()

    def icmp(self, type_: int, code: int, about: Segment, *, mtu: int = 0, src: bytes = ROUTER) -> None:
        """An ICMP error quoting the packet ``about`` was sent in."""
        rest = mtu & 0xFFFF if type_ == 3 and code == 4 else 0
        self.inject(build_ipv4(src, ME, 1, build_error(type_, code, self.raw(about), rest=rest)))

    # -- counters --------------------------------------------------------------------------------
    def count(self, key: str, layer: str = "tcp") -> int:
        return self.stack.counters.get(layer, key)

    # -- endpoints -------------------------------------------------------------------------------
    def connect(self, port: int = SERVER_PORT, cls: type[TcpConnection] | None = None, *, local_port: int = 0,
                ip: bytes = PEER_IP, setup: Any = None) -> TcpConnection:
        """An active open to ``ip:port`` (the SYN is sent; nothing is answered yet). ``setup``
        is called on the connection before ``connect`` (to set socket options)."""
        conn = self.tcp.open(cls)
        if setup is not None:
            setup(conn)
        if local_port:
            self.tcp.bind(conn, ME, local_port)
        self.tcp.connect(conn, ip, port)
        self.flush()
        return conn

    def listen(self, port: int = SERVER_PORT, backlog: int = 128, cls: type[TcpConnection] | None = None,
               setup: Any = None) -> TcpConnection:
        conn = self.tcp.open(cls)
        if setup is not None:
            setup(conn)
        self.tcp.bind(conn, ME, port)
        self.tcp.listen(conn, backlog)
        return conn

    def peer_of(self, conn: TcpConnection, **kw: Any) -> Peer:
        """The peer at the other end of an actively opened ``conn``."""
        assert conn.remote_ip is not None
        return Peer(self, ip=conn.remote_ip, port=conn.remote_port, stack_port=conn.local_port, **kw)

    def established(self, cls: type[TcpConnection] | None = None, setup: Any = None,
                    **peer_kw: Any) -> tuple[TcpConnection, Peer]:
        """An active open completed by a scripted SYN-ACK (peer options from ``peer_kw``)."""
        conn = self.connect(cls=cls, setup=setup)
        peer = self.peer_of(conn, **peer_kw)
        peer.expect(flags=SYN)
        peer.send(flags=SYN | ACK)
        peer.expect(flags=ACK, ack=(peer.iss + 1) & MASK, length=0)
        assert conn.state.name == "ESTABLISHED"
        return conn, peer

    def accepted(self, port: int = SERVER_PORT, backlog: int = 128, cls: type[TcpConnection] | None = None,
                 setup: Any = None, **peer_kw: Any) -> tuple[TcpConnection, TcpConnection, Peer]:
        """A passive open: listener on ``port``, the peer's handshake, the accepted child."""
        listener = self.listen(port, backlog, cls=cls, setup=setup)
        peer = Peer(self, stack_port=port, **peer_kw)
        peer.send(flags=SYN)
        peer.expect(flags=SYN | ACK, ack=(peer.iss + 1) & MASK)
        peer.send(flags=ACK)
        child = self.tcp.accept(listener)
        assert child is not None, "the handshake did not complete"
        peer.expect_none()
        return listener, child, peer


class Peer:
    """The scripted remote end of one connection (see the module docstring).

    Options it offers in its SYN or SYN-ACK: ``mss`` (None: no MSS option), ``wscale`` (None: no
    window scale), ``sack``, ``ts``. ``window`` is its receive window in bytes (scaled by its own
    shift on the wire once window scaling is negotiated).
    """

    def __init__(self, net: Net, *, stack_port: int, ip: bytes = PEER_IP, port: int = PEER_PORT,
                 isn: int = PEER_ISN, mss: int | None = 1460, wscale: int | None = 7, sack: bool = True,
                 ts: bool = True, window: int = 65535 * 4, ts_base: int = PEER_TS_BASE) -> None:
        self.net = net
        self.ip = ip
        self.port = port
        self.stack_port = stack_port
        self.iss = isn & MASK
        self.seq = self.iss  # next sequence number the peer sends
        self.offer_mss, self.offer_wscale, self.offer_sack, self.offer_ts = mss, wscale, sack, ts
        self.window = window
        self.ts_base = ts_base
        # Learned from the stack's segments.
        self.irs: int | None = None  # the stack's ISN
        self.rcv_nxt: int | None = None  # just past the highest sequence the stack sent
        self.stack_mss: int | None = None
        self.stack_wscale: int | None = None
        self.stack_sack = False
        self.stack_ts = False
        self.ts_recent = 0  # the stack's latest TSval (echoed in TSecr)
        self.inbox: list[Segment] = []
        self.got: list[Segment] = []  # everything received, in order

    # -- negotiated state ---------------------------------------------------------------------
    @property
    def ws_ok(self) -> bool:
        return self.offer_wscale is not None and self.stack_wscale is not None

    @property
    def ts_ok(self) -> bool:
        return self.offer_ts and self.stack_ts

    @property
    def sack_ok(self) -> bool:
        return self.offer_sack and self.stack_sack

    @property
    def shift(self) -> int:
        """The shift the peer applies to the windows it advertises."""
        return self.offer_wscale if self.ws_ok and self.offer_wscale is not None else 0

    @property
    def stack_shift(self) -> int:
        """The shift to apply to the stack's window fields."""
        return self.stack_wscale if self.ws_ok and self.stack_wscale is not None else 0

    def ts_val(self) -> int:
        """The peer's timestamp clock: milliseconds of virtual time from ``ts_base``."""
        return (self.ts_base + int(self.net.now * 1000)) & MASK

    # -- offsets -------------------------------------------------------------------------------
    def u(self, seq: int) -> int:
        """Offset of a stack sequence number from the stack's ISN (SYN = 0, data from 1)."""
        assert self.irs is not None, "no SYN seen from the stack yet"
        return (seq - self.irs) & MASK

    def r(self, seq: int) -> int:
        """Offset of a peer sequence number (or of the stack's ACK) from the peer's ISN."""
        return (seq - self.iss) & MASK

    def stack_seq(self, u: int) -> int:
        assert self.irs is not None
        return (self.irs + u) & MASK

    def peer_seq(self, r: int) -> int:
        return (self.iss + r) & MASK

    def window_of(self, seg: Segment) -> int:
        """The stack's window in bytes (the field scaled, except on SYNs)."""
        return seg.window if seg.flags & SYN else seg.window << self.stack_shift

    # -- reading what the stack sent -------------------------------------------------------------
    def _observe(self, seg: Segment) -> None:
        if seg.flags & SYN:
            self.irs = seg.seq
            self.stack_mss = seg.mss
            self.stack_wscale = seg.wscale
            self.stack_sack = seg.sack_perm
            self.stack_ts = seg.ts_val is not None
        if seg.ts_val is not None:
            self.ts_recent = seg.ts_val
        if seg.flags & RST:
            return
        end = (seg.seq + seg_len(seg)) & MASK
        if self.rcv_nxt is None or ((end - self.rcv_nxt + 0x80000000) & MASK) - 0x80000000 > 0:
            self.rcv_nxt = end

    def _pull(self) -> None:
        for _, seg in self.net.take_for(self.ip, self.port):
            self._observe(seg)
            self.inbox.append(seg)
            self.got.append(seg)

    def take(self, n: int | None = None) -> list[Segment]:
        """Every segment the stack sent to this peer and not yet taken (exactly ``n`` if given)."""
        self._pull()
        out, self.inbox = self.inbox, []
        if n is not None:
            assert len(out) == n, f"expected {n} segments, got {len(out)}: {out}"
        return out

    def expect_none(self) -> None:
        self._pull()
        assert not self.inbox, f"expected no segment, got {self.inbox}"

    def expect(self, **fields: Any) -> Segment:
        """Exactly one segment is pending; check its fields (see :meth:`check`) and return it."""
        segs = self.take()
        assert len(segs) == 1, f"expected one segment, got {len(segs)}: {segs}"
        return self.check(segs[0], **fields)

    def pop(self, **fields: Any) -> Segment:
        """The oldest pending segment (others stay pending), checked like :meth:`expect`."""
        self._pull()
        assert self.inbox, "expected a segment, got none"
        return self.check(self.inbox.pop(0), **fields)

    def check(self, seg: Segment, *, flags: int | None = None, seq: int | None = None, ack: int | None = None,
              u: int | None = None, window: int | None = None, payload: bytes | None = None,
              length: int | None = None, ts: bool | None = None, ts_ecr: int | None = None,
              sack: Iterable[tuple[int, int]] | None = None, **opts: Any) -> Segment:
        """Assert fields of ``seg``. ``flags`` compares exactly, except that PSH is ignored
        unless asked for; ``u`` is the sequence offset from the stack's ISN; ``window`` the raw
        field; ``ts`` whether a timestamp option is present; ``sack`` the blocks as wire edges;
        ``mss``/``wscale``/``sack_perm`` the SYN options."""
        if flags is not None:
            got = seg.flags if flags & PSH else seg.flags & ~PSH
            assert got == flags, f"flags {flag_names(seg.flags)} != {flag_names(flags)}: {seg}"
        if seq is not None:
            assert seg.seq == seq & MASK, f"seq {seg.seq} != {seq & MASK}: {seg}"
        if u is not None:
            assert self.u(seg.seq) == u, f"seq offset {self.u(seg.seq)} != {u}: {seg}"
        if ack is not None:
            assert seg.ack == ack & MASK, f"ack {seg.ack} (r={self.r(seg.ack)}) != {ack & MASK}: {seg}"
        if window is not None:
            assert seg.window == window, f"window field {seg.window} != {window}: {seg}"
        if payload is not None:
            assert bytes(seg.payload) == payload, f"payload differs: {seg}"
        if length is not None:
            assert len(seg.payload) == length, f"payload length {len(seg.payload)} != {length}: {seg}"
        if ts is not None:
            assert (seg.ts_val is not None) == ts, f"timestamp option {'missing' if ts else 'present'}: {seg}"
        if ts_ecr is not None:
            assert seg.ts_ecr == ts_ecr, f"TSecr {seg.ts_ecr} != {ts_ecr}: {seg}"
        if sack is not None:
            want = tuple((a & MASK, b & MASK) for a, b in sack)
            assert seg.sack == want, f"SACK {seg.sack} != {want}: {seg}"
        for key, value in opts.items():
            assert getattr(seg, key) == value, f"{key} {getattr(seg, key)!r} != {value!r}: {seg}"
        return seg

    # -- writing -----------------------------------------------------------------------------------
    def syn_option_bytes(self, ts_ecr: int = 0) -> bytes:
        """The options of the peer's SYN or SYN-ACK (Linux layout), from what it offers."""
        ts = (self.ts_val(), ts_ecr) if self.offer_ts else None
        opts = syn_options(self.offer_mss or 536, self.offer_wscale, self.offer_sack, ts)
        return opts if self.offer_mss else opts[4:]  # the MSS option is the first word

    def segment(self, flags: int = ACK, payload: bytes = b"", *, seq: int | None = None, ack: int | None = None,
                window: int | None = None, raw_window: int | None = None, ts: tuple[int, int] | None | bool = True,
                sack: Iterable[tuple[int, int]] = (), options: bytes | None = None) -> bytes:
        """One IPv4 packet from the peer. Defaults: the peer's next ``seq``; ``ack`` = all the
        stack sent (when ACK is set); the window in bytes scaled by the peer's shift (the raw
        field with ``raw_window``); SYN options on SYNs; otherwise timestamps when negotiated
        (``ts=False`` leaves them out, ``ts=(val, ecr)`` forces them) and ``sack`` blocks."""
        if seq is None:
            seq = self.seq
        if ack is None:
            ack = (self.rcv_nxt or 0) if flags & ACK else 0
        if raw_window is None:
            wnd = self.window if window is None else window
            raw_window = min(wnd if flags & SYN else wnd >> self.shift, 0xFFFF)
        if options is None:
            if flags & SYN:
                options = self.syn_option_bytes(self.ts_recent if flags & ACK else 0)
            else:
                if ts is True:
                    tsopt = (self.ts_val(), self.ts_recent) if self.ts_ok else None
                elif ts is False or ts is None:
                    tsopt = None
                else:
                    tsopt = ts
                options = data_options(tsopt, [(a & MASK, b & MASK) for a, b in sack])
        tcp = build_tcp(self.ip, ME, self.port, self.stack_port, seq & MASK, ack & MASK, flags, raw_window, options,
                        payload)
        return build_ipv4(self.ip, ME, 6, tcp)

    def send(self, flags: int = ACK, payload: bytes = b"", *, seq: int | None = None, **kw: Any) -> None:
        """Build (see :meth:`segment`) and inject one segment, then let the stack flush its ACKs.
        The peer's sequence number advances only when ``seq`` was not given."""
        packet = self.segment(flags, payload, seq=seq, **kw)
        if seq is None:
            self.seq = (self.seq + len(payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & MASK
        self.net.inject(packet)

    def send_raw_tcp(self, tcp: bytes) -> None:
        """Inject an already built TCP segment (a malformed one, say) inside a valid IPv4 packet."""
        self.net.inject(build_ipv4(self.ip, ME, 6, tcp))

    def ack_all(self, **kw: Any) -> None:
        """A pure ACK of everything the stack sent."""
        self.send(ACK, **kw)

    def __repr__(self) -> str:
        return f"<Peer {self.ip.hex()}:{self.port} seq={self.seq} rcv_nxt={self.rcv_nxt}>"
