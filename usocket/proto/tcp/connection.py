"""One TCP connection: the RFC 9293 state machine with modern loss recovery (sans-IO).

A :class:`TcpConnection` is driven by its :class:`~usocket.proto.tcp.layer.TcpLayer`:
segments arrive through :meth:`segment_arrives`, timers fire through :meth:`on_timer`, the
application calls :meth:`send`, :meth:`recv`, :meth:`shutdown`, :meth:`close`. Output goes back
through the layer (``layer.output``), which owns addressing, timers and the IP layer. Time is
``layer.stack.now``: nothing here reads a clock, so tests run it on a virtual one.

Positions are unbounded offsets from the ISNs: ``u`` counts our sequence space from ``iss``
(the SYN is at u=0, data byte k at u=k+1), ``r`` counts the peer's from ``irs``. Wire values are
converted in :func:`~usocket.proto.tcp.seq.to_offset` relative to ``snd_una``/``rcv_nxt``, so
the 2**32 wrap is handled once, at the edge.

What is implemented, with the RFC rule it follows:

- All eleven states, simultaneous open and close, half-close both ways (RFC 9293 3.5, 3.6).
- Acceptability test and RST handling with RFC 5961 protections: a RST is honoured only at
  exactly RCV.NXT, an in-window RST or any SYN on a synchronized connection draws a challenge
  ACK (rate-limited layer-wide), ACKs below SND.UNA - MAX.SND.WND are challenged (RFC 5961 5.2).
- Options: MSS, window scale, timestamps with PAWS and RTTM (RFC 7323), SACK (RFC 2018) both
  ways. Options are only used when both SYNs carried them.
- Retransmission with RFC 6298 RTO (Linux's 200 ms floor), Karn's rule (timestamps make
  retransmitted segments measurable, RFC 7323 4.1), exponential backoff, retry limits.
- Loss recovery: fast retransmit after three duplicate ACKs or when RFC 6675's IsLost says so;
  SACK-based recovery paced by "pipe" (RFC 6675); NewReno partial ACKs for peers without SACK
  (RFC 6582, with Linux's duplicate-ACK "SACK emulation" for pipe); RTO marks everything
  unacknowledged lost and slow-starts (RFC 5681 3.1 / Linux's loss state).
- Congestion control is pluggable (:mod:`.congestion`; ``congestion`` attribute per connection).
- Flow control: the advertised window is the free receive buffer (grown towards
  ``rcvbuf_max`` while the application keeps up), never shrinks its right edge (RFC 9293
  3.8.6.2.2), receiver SWS avoidance; sender SWS avoidance and Nagle (RFC 896, TCP_NODELAY);
  zero-window probes with backoff (persist timer, RFC 9293 3.8.6.1).
- Delayed ACKs: quick ACKs at the start, then an ACK for every second full segment or after
  ``delack`` seconds; immediate ACKs for out-of-order data, filled holes, FINs and window updates.
- Segmentation offload (Linux TSO): when the link cuts super-segments (``stack.gso_max_size``,
  TcpConfig ``tso``), consecutive new segments that cwnd and the peer's window allow leave as
  one segment of up to ~64 KB with a partial checksum; the retransmission queue still holds one
  record per MSS, so SACK, RACK, loss marking and every retransmission work in MSS units.
- Keepalive (RFC 1122 4.2.3.6), TIME_WAIT for 2*MSL, FIN_WAIT_2 timeout for orphans, RST on
  close with unread data (RFC 2525 2.17) or SO_LINGER 0.
- Errors as Linux reports them: ECONNREFUSED (RST to our SYN), ECONNRESET (RST), EPIPE
  (writing after shutdown or reset in CLOSE_WAIT), ETIMEDOUT (retries exhausted; a soft ICMP
  error seen meanwhile is reported instead), ICMP errors per :meth:`icmp_error`.

Not implemented: urgent data (URG is ignored, the data delivered inline), TCP Fast Open, ECN,
D-SACK, RACK-TLP, undo of spurious retransmissions, SYN cookies, MD5/AO signatures.

Subclass to change behaviour: :meth:`choose_isn`, :meth:`syn_options`, :meth:`initial_window`,
:meth:`advertised_window`, the ``on_*`` event hooks, or anything else.
"""
from __future__ import annotations

import errno
import os
from bisect import bisect_left
from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from ...wire.addr import ANY_IP, ip_ntoa
from ...wire.tcp import ACK, FIN, PSH, RST, SYN, Segment, TcpTemplate, data_options, syn_options, ts_option
from .buffers import OutOfOrderQueue, ReceiveBuffer, SendBuffer
from .congestion import CongestionControl, get_congestion_control
from .rtt import RttEstimator
from .seq import MASK, seq_diff, to_offset

if TYPE_CHECKING:
    from ...proto.icmp import IcmpError
    from .layer import TcpLayer


class TcpState(IntEnum):
    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10


CLOSED = TcpState.CLOSED
LISTEN = TcpState.LISTEN
SYN_SENT = TcpState.SYN_SENT
SYN_RECEIVED = TcpState.SYN_RECEIVED
ESTABLISHED = TcpState.ESTABLISHED
FIN_WAIT_1 = TcpState.FIN_WAIT_1
FIN_WAIT_2 = TcpState.FIN_WAIT_2
CLOSE_WAIT = TcpState.CLOSE_WAIT
CLOSING = TcpState.CLOSING
LAST_ACK = TcpState.LAST_ACK
TIME_WAIT = TcpState.TIME_WAIT

# States in which data may be sent / received.
_SEND_STATES = frozenset((ESTABLISHED, CLOSE_WAIT))
_RECV_STATES = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))
# States in which our FIN has been queued.
_FIN_STATES = frozenset((FIN_WAIT_1, FIN_WAIT_2, CLOSING, LAST_ACK, TIME_WAIT))
_TLP_STATES = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK))
SYNCHRONIZED = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT))

NO_RECOVERY, FAST_RECOVERY, LOSS_RECOVERY = 0, 1, 2
DUPTHRESH = 3
PAWS_IDLE = 24 * 86400.0  # RFC 7323 5.5: ts_recent is invalid after 24 days idle
MAX_WSCALE = 14
TCP_HEADER = 20
IP_HEADER = 20


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Sent:
    """One transmitted segment in the retransmission queue (``start``/``end`` are u offsets)."""

    __slots__ = ("start", "end", "flags", "time", "retrans", "sacked", "lost")

    def __init__(self, start: int, end: int, flags: int, time: float) -> None:
        self.start = start
        self.end = end
        self.flags = flags
        self.time = time
        self.retrans = False
        self.sacked = False
        self.lost = False

    def __repr__(self) -> str:
        marks = "".join(c for c, on in (("R", self.retrans), ("S", self.sacked), ("L", self.lost)) if on)
        return f"<Sent {self.start}-{self.end} {marks}>"


def _start_of(rec: Sent) -> int:
    return rec.start


class TcpConnection:
    """One TCP connection (or listener). See the module docstring."""

    def __init__(self, layer: TcpLayer) -> None:
        self.layer = layer
        cfg = layer.config
        self.state = CLOSED
        self.local_ip: bytes = ANY_IP
        self.local_port = 0
        self.remote_ip: bytes | None = None
        self.remote_port = 0
        self.template: TcpTemplate | None = None
        # -- socket options -------------------------------------------------------------------
        self.reuse_addr = False
        self.reuse_port = False
        self.port_locked = False  # bound explicitly to a port (Linux SOCK_BINDPORT_LOCK)
        self.nodelay = False
        self.keepalive = False
        self.keepidle = cfg.keepalive_time
        self.keepintvl = cfg.keepalive_intvl
        self.keepcnt = cfg.keepalive_probes
        self.ttl: int | None = None
        self.tos = 0
        self.linger: float | None = None  # SO_LINGER: None off; 0 = abortive close
        self.user_mss = 0  # TCP_MAXSEG (0: none)
        self.congestion = cfg.congestion
        self.rcvbuf_locked = False
        self.rcvbuf_max = cfg.rcvbuf_max
        self.syn_retries = cfg.syn_retries
        self.retries2 = cfg.retries2
        self.user_timeout = 0.0  # TCP_USER_TIMEOUT (0: retries decide)
        # -- listener --------------------------------------------------------------------------
        self.backlog = 0
        self.accept_queue: deque[TcpConnection] = deque()
        self.syn_children: set[TcpConnection] = set()
        self.parent: TcpConnection | None = None
        self.child_class: type[TcpConnection] | None = None
        self.flow_open = False  # the layer told stack.flows about this connection/listener
        self.flow_remote: tuple[bytes, int] | None = None  # the flow's remote end (None: any)
        # -- sequence space --------------------------------------------------------------------
        self.iss = 0
        self.irs = 0
        self.snd_una = 0
        self.snd_nxt = 0
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0  # right edge of the window we advertised (r offset)
        self.rcv_wup = 0  # rcv_nxt when we last sent an ACK
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self.ws_ok = False
        self.ts_ok = False
        self.sack_ok = False
        self.peer_mss = cfg.default_mss
        self.mss = cfg.default_mss  # effective send MSS (data bytes per segment)
        self.rcv_mss = cfg.default_mss  # estimate of the peer's segment size (delayed ACKs)
        self.ts_recent = 0
        self.ts_recent_time = 0.0
        self.ts_offset = layer.stack.rng.getrandbits(32)
        # -- buffers ---------------------------------------------------------------------------
        self.sndbuf = SendBuffer(cfg.sndbuf)
        self.rcvbuf = ReceiveBuffer(cfg.rcvbuf)
        self.ooo = OutOfOrderQueue(cfg.rcvbuf, cfg.ooo_max_ranges)
        self.fin_queued = False  # the application shut down writing: a FIN follows the data
        self.fin_u: int | None = None  # where our FIN sits once sent
        self.rcv_fin_r: int | None = None  # the peer's FIN seen out of order
        self.fin_received = False
        self.rd_shut = False
        self.wr_shut = False
        self.orphan = False  # closed by the application; the stack finishes it alone
        self.error = 0  # pending error (SO_ERROR), reported once
        self.soft_error = 0  # last soft ICMP error (reported instead of ETIMEDOUT)
        self.reset = False  # ended by a RST (sent or received)
        # -- retransmission queue and scoreboard -------------------------------------------------
        self.rtxq: list[Sent] = []
        self.rtx_head = 0
        self.sacked_bytes = 0
        self.lost_bytes = 0
        self.retrans_bytes = 0
        self.highest_sacked = 0
        self.lost_upto = 0  # every unsacked record ending at or below this is marked lost
        self.rtx_next = 0  # lowest u where a lost, not yet retransmitted record may be
        self.recovery = NO_RECOVERY
        self.recovery_point = 0
        self.rack_time = 0.0  # latest send time of a segment known delivered (RFC 8985's RACK.xmit_ts)
        self.rtx_order: deque[Sent] = deque()  # retransmitted records, oldest retransmission first
        self.tlp_deadline: float | None = None
        self.tlp_high: int | None = None  # snd_nxt when a tail loss probe went out, until ACKed
        self.dupacks = 0
        self.rtt = RttEstimator(initial_rto=cfg.rto_initial, min_rto=cfg.rto_min, max_rto=cfg.rto_max)
        self.cc: CongestionControl | None = None
        self.min_rtt = 0.0
        # -- timers (absolute deadlines, None when off) ----------------------------------------
        self.rtx_deadline: float | None = None
        self.rtx_retries = 0  # consecutive RTO expiries (or zero-window probes)
        self.persist = False  # rtx_deadline is the persist timer
        self.delack_deadline: float | None = None
        self.ka_deadline: float | None = None
        self.tw_deadline: float | None = None
        self.fin2_deadline: float | None = None
        self.timer: Any = None  # the layer's scheduled stack timer
        self.first_rtx_time = 0.0
        self.ka_probes = 0
        self.quickack = cfg.quickacks
        self.unacked_bytes = 0  # in-order bytes received since our last ACK
        self.ack_pending = False  # queued with the layer to ACK at the end of this batch
        self.last_rx = 0.0
        self.last_tx = 0.0
        self.rcv_space_time = 0.0  # receive buffer autotuning: start of the measurement
        self.rcv_rtt = 0.0  # the receiver's RTT estimate (timestamps echoed on data, Linux rcv_rtt_est)
        self.rcv_copied = 0
        # -- statistics (introspection) ---------------------------------------------------------
        self.segs_in = 0
        self.segs_out = 0
        self.retransmits = 0
        self.bytes_acked = 0
        self.bytes_received = 0

    # ===================================================================== overridable policy
    def choose_isn(self) -> int:
        """The initial sequence number (RFC 6528 by default). Override for a fixed ISN."""
        assert self.remote_ip is not None
        return self.layer.isn(self.local_ip, self.local_port, self.remote_ip, self.remote_port, self.now)

    def advertised_mss(self) -> int:
        """The MSS we announce: the path MTU's, or TCP_MAXSEG when set lower."""
        assert self.remote_ip is not None
        mss = self.layer.stack.ipv4.path_mtu(self.remote_ip) - IP_HEADER - TCP_HEADER
        if self.user_mss:
            mss = min(mss, self.user_mss)
        return max(mss, 88)

    def syn_options(self, synack: bool) -> bytes:
        """The options of our SYN (``synack=False``) or SYN-ACK. In a SYN-ACK only what the
        peer offered is echoed (RFC 7323, RFC 2018)."""
        cfg = self.layer.config
        if synack:
            ws = self.rcv_wscale if self.ws_ok else None
            ts = (self.ts_now(), self.ts_recent) if self.ts_ok else None
            return syn_options(self.advertised_mss(), ws, self.sack_ok, ts)
        ws = self.rcv_wscale if cfg.window_scaling else None
        ts = (self.ts_now(), 0) if cfg.timestamps else None
        return syn_options(self.advertised_mss(), ws, cfg.sack, ts)

    def choose_wscale(self) -> int:
        """Our window scale: the smallest shift that lets the largest receive buffer be
        advertised (Linux picks it from tcp_rmem[2] the same way)."""
        space = max(self.rcvbuf_max, self.rcvbuf.capacity)
        shift = 0
        while (space >> shift) > 0xFFFF and shift < MAX_WSCALE:
            shift += 1
        return shift

    def make_child(self) -> TcpConnection:
        """The connection object for a passive open of this listener: ``child_class`` if set,
        else the listener's own class, constructed with the layer only. Override for classes
        that need more arguments."""
        return (self.child_class or type(self))(self.layer)

    def initial_window(self) -> int | None:
        """Initial congestion window in bytes; None for the algorithm's default (RFC 6928)."""
        return None

    def advertised_window(self) -> int:
        """Receive window to offer, in bytes, before scaling: the free buffer space, minus
        what the out-of-order queue holds."""
        return max(0, self.rcvbuf.capacity - len(self.rcvbuf) - self.ooo.bytes)

    # ===================================================================== event hooks
    def wake(self) -> None:
        """Called after every event below by default: the socket facade overrides this one."""

    def on_established(self) -> None:
        self.wake()

    def on_readable(self) -> None:
        self.wake()

    def on_writable(self) -> None:
        self.wake()

    def on_accept_ready(self) -> None:
        self.wake()

    def on_closed(self) -> None:
        self.wake()

    def on_error(self) -> None:
        self.wake()

    # ===================================================================== small helpers
    @property
    def now(self) -> float:
        return self.layer.stack.now

    def ts_now(self) -> int:
        return (int(self.layer.stack.now * 1000) + self.ts_offset) & MASK

    @property
    def in_flight(self) -> int:
        """RFC 6675 "pipe": bytes believed to be in the network."""
        out = self.snd_nxt - self.snd_una
        if self.sack_ok:
            sacked = self.sacked_bytes
        else:
            sacked = min(self.dupacks * self.mss, max(0, out - self.lost_bytes))
        return out - sacked - self.lost_bytes + self.retrans_bytes

    @property
    def established(self) -> bool:
        return self.state in SYNCHRONIZED

    def _cc(self) -> CongestionControl:
        cc = self.cc
        if cc is None:
            cc = self.cc = get_congestion_control(self.congestion)(self.mss, self.now, self.initial_window())
        return cc

    def set_congestion(self, name: str) -> None:
        """TCP_CONGESTION: switch algorithm (OSError ENOENT for an unknown name)."""
        cls = get_congestion_control(name)
        self.congestion = name
        if self.cc is not None:
            old = self.cc
            self.cc = cls(self.mss, self.now, self.initial_window())
            self.cc.cwnd, self.cc.ssthresh = old.cwnd, old.ssthresh

    def set_keepalive(self, on: bool) -> None:
        """SO_KEEPALIVE (also re-arms the timer after TCP_KEEPIDLE changes)."""
        self.keepalive = on
        self._arm_keepalive()
        self._changed()

    def set_nodelay(self, on: bool) -> None:
        """TCP_NODELAY: turning it on pushes data Nagle was holding, as Linux does."""
        self.nodelay = on
        if on and self.state in SYNCHRONIZED:
            self._output()
            self._changed()

    def _changed(self) -> None:
        self.layer.reschedule(self)

    def next_deadline(self) -> float | None:
        best: float | None = None
        for d in (self.rtx_deadline, self.delack_deadline, self.ka_deadline, self.tw_deadline,
                  self.fin2_deadline, self.tlp_deadline):
            if d is not None and (best is None or d < best):
                best = d
        return best

    # ===================================================================== output
    def _window_field(self, syn: bool = False) -> int:
        """The window field of an outgoing segment; updates ``rcv_adv`` (never moves left)."""
        rcv_nxt = self.rcv_nxt
        free = self.advertised_window()
        if syn:
            w = min(free, 0xFFFF)
            self.rcv_adv = max(self.rcv_adv, max(rcv_nxt, 1) + w)  # from the byte after the peer's SYN
            return w
        adv = self.rcv_adv
        right = rcv_nxt + free
        if right <= adv:
            right = adv  # never shrink the window (RFC 9293 3.8.6.2.2)
        elif right - adv < min(self.rcvbuf.capacity // 2, self.rcv_mss):
            right = adv  # receiver SWS avoidance: no small increments
        wnd = right - rcv_nxt
        shift = self.rcv_wscale
        field = wnd >> shift
        if field > 0xFFFF:
            field = 0xFFFF
        elif (field << shift) < adv - rcv_nxt:
            field += 1  # rounding down would retract an edge already offered
        self.rcv_adv = max(adv, rcv_nxt + (field << shift))
        return field

    def _emit(self, seq_u: int, flags: int, payload: bytes = b"", options: bytes | None = None,
              gso_size: int = 0) -> None:
        """Build and hand one segment to the layer. ACK-bearing segments carry our ACK,
        timestamps and SACK blocks, and end any pending delayed ACK. ``gso_size`` > 0: a
        super-segment the link cuts into pieces of that many data bytes, all with the same
        options (its checksum is left partial for the link to complete)."""
        tpl = self.template
        if tpl is None:  # closed meanwhile, e.g. by an on_* hook run earlier in this segment
            return
        syn = bool(flags & SYN)
        if flags & ACK:
            ack = (self.irs + self.rcv_nxt) & MASK
            self.rcv_wup = self.rcv_nxt
            self.unacked_bytes = 0
            self.delack_deadline = None
            self.ack_pending = False
        else:
            ack = 0
        if options is None:
            if syn:
                options = b""
            elif self.ts_ok and not (self.sack_ok and self.ooo.bytes):
                options = ts_option(self.ts_now(), self.ts_recent)
            else:
                ts = (self.ts_now(), self.ts_recent) if self.ts_ok else None
                sack: list[tuple[int, int]] = []
                if self.sack_ok and self.ooo.bytes:
                    irs = self.irs
                    # The blocks that fit (RFC 2018 3): a retransmitted full-size segment may
                    # carry none; new data was cut to leave room for them (_send_mss).
                    room = (self.mss + (12 if self.ts_ok else 0) - (gso_size or len(payload))
                            - (12 if ts else 0) - 4) // 8
                    if room > 0:
                        blocks = self.ooo.sack_blocks(min(room, 4))
                        sack = [((irs + s) & MASK, (irs + e) & MASK) for s, e in blocks]
                options = data_options(ts, sack) if ts or sack else b""
        window = self._window_field(syn)
        if gso_size:
            seg = tpl.build_partial((self.iss + seq_u) & MASK, ack, flags, window, options, payload)
            self.segs_out += -(-len(payload) // gso_size)
        else:
            seg = tpl.build((self.iss + seq_u) & MASK, ack, flags, window, options, payload)
            self.segs_out += 1
        self.last_tx = self.layer.stack.now
        self.layer.output(self, seg, gso_size)

    def send_ack(self) -> None:
        """A pure ACK now (with the current window, timestamps and SACK blocks)."""
        self._emit(self.snd_nxt, ACK)

    def ack_soon(self) -> None:
        """ACK before this batch of input ends (coalesces several segments into one ACK)."""
        if not self.ack_pending:
            self.ack_pending = True
            self.layer.ack_soon(self)

    def _challenge_ack(self) -> None:
        """RFC 5961 challenge ACK, within the layer's global rate limit."""
        if self.layer.allow_challenge_ack():
            self.layer.c["challenge_ack"] += 1
            self.send_ack()
        else:
            self.layer.c["challenge_ack.limited"] += 1

    def send_rst(self) -> None:
        """Abortive reset of a synchronized connection (<SEQ=SND.NXT><CTL=RST,ACK>)."""
        self._emit(self.snd_nxt, RST | ACK, options=b"")
        self.layer.c["tx.rst"] += 1

    def _send_syn(self) -> None:
        flags = SYN | ACK if self.state == SYN_RECEIVED else SYN
        self._emit(0, flags, options=self.syn_options(synack=bool(flags & ACK)))

    # ===================================================================== opening
    def open_active(self) -> None:
        """Called by the layer once addresses and port are set: send our SYN."""
        self.iss = self.choose_isn()
        self.rcv_wscale = self.choose_wscale() if self.layer.config.window_scaling else 0
        self.state = SYN_SENT
        self.snd_una = 0
        self.snd_nxt = 1
        self.rtxq.append(Sent(0, 1, SYN, self.now))
        self._send_syn()
        self._arm_rtx()
        self.first_rtx_time = self.now
        self._changed()

    def open_passive(self, seg: Segment) -> None:
        """A child of a listener answering ``seg`` (a SYN): negotiate options, send SYN-ACK."""
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_wup = 1
        self._negotiate(seg)
        self.iss = self.choose_isn()
        self.state = SYN_RECEIVED
        self.snd_una = 0
        self.snd_nxt = 1
        self.snd_wnd = seg.window  # never scaled in a SYN
        self.max_snd_wnd = self.snd_wnd
        self.rtxq.append(Sent(0, 1, SYN, self.now))
        self.last_rx = self.now
        self._send_syn()
        self._arm_rtx()
        self.first_rtx_time = self.now
        self._changed()

    def _negotiate(self, seg: Segment) -> None:
        """Options of the peer's SYN (or SYN-ACK): each one is on only if both sides sent it."""
        cfg = self.layer.config
        synack = self.state == SYN_SENT
        self.peer_mss = seg.mss if seg.mss else cfg.default_mss
        if seg.wscale is not None and (cfg.window_scaling if not synack else self.rcv_wscale or cfg.window_scaling):
            self.ws_ok = True
            self.snd_wscale = min(seg.wscale, MAX_WSCALE)
            if not synack:
                self.rcv_wscale = self.choose_wscale()
        else:
            self.ws_ok = False
            self.snd_wscale = self.rcv_wscale = 0
        self.ts_ok = seg.ts_val is not None and cfg.timestamps
        if self.ts_ok:
            assert seg.ts_val is not None
            self.ts_recent = seg.ts_val
            self.ts_recent_time = self.now
        self.sack_ok = seg.sack_perm and cfg.sack
        self._set_mss()

    def _set_mss(self) -> None:
        """The effective send MSS: the peer's MSS, our path MTU, TCP_MAXSEG, minus the options
        every data segment carries (timestamps: 12 bytes)."""
        assert self.remote_ip is not None
        mss = min(self.peer_mss, self.layer.stack.ipv4.path_mtu(self.remote_ip) - IP_HEADER - TCP_HEADER)
        if self.user_mss:
            mss = min(mss, self.user_mss)
        if self.ts_ok:
            mss -= 12
        self.mss = max(mss, 64)
        self.rcv_mss = min(self.rcv_mss, self.mss) if self.segs_in == 0 else self.rcv_mss
        if self.cc is not None:
            self.cc.set_mss(self.mss)

    def _become_established(self) -> None:
        self.state = ESTABLISHED
        if self.rtt.srtt is None and self.retransmits:
            self.rtt.syn_timeout_fallback()  # RFC 6298 5.7 (Linux tcp_init_transfer)
        self._cc()
        self.rcv_space_time = self.now
        self._arm_keepalive()

    # ===================================================================== input
    def segment_arrives(self, seg: Segment) -> None:
        """One segment for this connection (already demultiplexed and checksummed)."""
        self.segs_in += 1
        state = self.state
        if state == SYN_SENT:
            self._rx_syn_sent(seg)
        elif state != CLOSED and state != LISTEN:
            self._rx_synchronized(seg)
        self._changed()

    def _rx_syn_sent(self, seg: Segment) -> None:
        """RFC 9293 3.10.7.3."""
        flags = seg.flags
        now = self.now
        if flags & ACK:
            ack_u = to_offset(seg.ack, self.snd_una, self.iss)
            if ack_u <= 0 or ack_u > self.snd_nxt:
                if not flags & RST:
                    self.layer.send_reset_for(self, seg)
                return
            if flags & RST:
                self.layer.c["rx.rst_refused"] += 1
                self._abort(errno.ECONNREFUSED)
                return
        elif flags & RST:
            return
        if not flags & SYN:
            return
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_wup = 1
        self._negotiate(seg)
        self.last_rx = now
        if flags & ACK:
            self.snd_wnd = seg.window  # never scaled in a SYN-ACK (RFC 7323 2.2)
            self.max_snd_wnd = self.snd_wnd
            self.snd_wl1, self.snd_wl2 = 0, 1
            self._ack_advanced(1, seg)
            self._become_established()
            self.send_ack()
            self.on_established()
            self._output()
        else:
            # Simultaneous open: SYN_RECEIVED, our SYN becomes a SYN-ACK (same ISN).
            self.state = SYN_RECEIVED
            self.snd_wnd = seg.window
            self.max_snd_wnd = self.snd_wnd
            self._send_syn()

    def _rx_synchronized(self, seg: Segment) -> None:
        """RFC 9293 3.10.7.4 for SYN_RECEIVED and the synchronized states."""
        flags = seg.flags
        now = self.now
        payload = seg.payload
        plen = len(payload)
        seq_r = to_offset(seg.seq, self.rcv_nxt, self.irs)
        seg_len = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        c = self.layer.c
        # PAWS (RFC 7323 5.3)
        if self.ts_ok and seg.ts_val is not None and not flags & RST:
            # Linux tolerates one tick (TCP_PAWS_WINDOW) and lets a reordered duplicate ACK
            # through (tcp_disordered_ack): it carries nothing PAWS protects against.
            if (seq_diff(self.ts_recent, seg.ts_val) > 1 and now - self.ts_recent_time < PAWS_IDLE
                    and not (not plen and not flags & (SYN | FIN) and seq_r == self.rcv_nxt
                             and to_offset(seg.ack, self.snd_una, self.iss) == self.snd_una)):
                c["drop.paws"] += 1
                self.send_ack()
                return
        # Acceptability (Linux tcp_sequence: end >= RCV.WUP and start <= RCV.NXT + RCV.WND).
        wnd = self.rcv_adv - self.rcv_nxt
        if wnd < 0:
            wnd = 0
        if seq_r + seg_len < self.rcv_wup or seq_r > self.rcv_nxt + wnd:
            c["drop.out_of_window"] += 1
            if not flags & RST:
                if self.state == TIME_WAIT and flags & SYN:
                    return  # the layer decides about SYNs to TIME_WAIT before we get here
                self.send_ack()
            return
        # RST (RFC 5961 3.2): exact match resets, in-window draws a challenge ACK.
        if flags & RST:
            if seq_r == self.rcv_nxt:
                c["rx.rst"] += 1
                self._reset_received()
            else:
                c["rx.rst_challenged"] += 1
                self._challenge_ack()
            return
        # SYN on a synchronized connection (RFC 5961 4.2): challenge ACK.
        if flags & SYN:
            if self.state == SYN_RECEIVED and seq_r == 0 and self.parent is not None:
                self._send_syn()  # the peer retransmitted its SYN: our SYN-ACK was lost
                return
            if not (self.state == SYN_RECEIVED and self.parent is None and flags & ACK and seq_r == 0
                    and to_offset(seg.ack, self.snd_una, self.iss) == self.snd_nxt):
                c["rx.syn_challenged"] += 1
                self._challenge_ack()
                return
            # Simultaneous open: the peer's SYN-ACK completes it (Linux tcp_validate_incoming).
        if not flags & ACK:
            c["drop.no_ack"] += 1
            return
        self.last_rx = now
        self.ka_probes = 0
        if self.keepalive:
            self._arm_keepalive()
        state = self.state
        if state == SYN_RECEIVED:
            ack_u = to_offset(seg.ack, self.snd_una, self.iss)
            if not self.snd_una < ack_u <= self.snd_nxt:
                self.layer.send_reset_for(self, seg)
                return
            parent = self.parent
            if parent is not None and not self.layer.child_can_establish(self):
                return  # accept queue full: drop the ACK like Linux; our SYN-ACK will be retried
            self.snd_wnd = seg.window << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1, self.snd_wl2 = seq_r, ack_u
            self._become_established()
            if parent is not None:
                self.layer.child_established(self)
                if self.state == CLOSED:
                    return
            else:
                self.on_established()
            state = ESTABLISHED
        if not self._process_ack(seg, seq_r, plen):
            return
        # Our FIN acknowledged?
        fin_u = self.fin_u
        if fin_u is not None and self.snd_una > fin_u:
            if state == FIN_WAIT_1:
                self.state = state = FIN_WAIT_2
                if self.orphan:
                    self.fin2_deadline = now + self.layer.config.fin_timeout
            elif state == CLOSING:
                self._enter_time_wait()
                state = TIME_WAIT
            elif state == LAST_ACK:
                self._done()
                return
        # RFC 7323 4.3: remember the timestamp of the segment at the left edge.
        if self.ts_ok and seg.ts_val is not None and seq_r <= self.rcv_wup:
            if seq_diff(seg.ts_val, self.ts_recent) >= 0:
                self.ts_recent = seg.ts_val
                self.ts_recent_time = now
        if plen:
            if self.ts_ok and seg.ts_ecr:
                sample = ((self.ts_now() - seg.ts_ecr) & MASK) / 1000.0
                if sample < 60.0:
                    self.rcv_rtt = sample if not self.rcv_rtt else self.rcv_rtt + (sample - self.rcv_rtt) / 8
            if state in _RECV_STATES:
                if self.orphan and seq_r + plen > self.rcv_nxt:
                    c["abort.data_after_close"] += 1  # Linux TCPAbortOnData: nobody will read it
                    self.send_rst()
                    self._abort(0)
                    return
                self._data(payload, seq_r)
            elif state in (CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT):
                if seq_r + plen > self.rcv_nxt:
                    c["drop.data_after_fin"] += 1
                self.ack_soon()
        if flags & FIN:
            self._fin_arrives(seq_r + plen)
        if self.state in _SEND_STATES or self.state in (FIN_WAIT_1, CLOSING, LAST_ACK):
            self._output()

    def _process_ack(self, seg: Segment, seq_r: int, plen: int) -> bool:
        """The ACK field of an acceptable segment (RFC 9293 fifth check, RFC 5961 5.2):
        window update, newly acknowledged data, SACK, duplicate ACKs, loss detection."""
        ack_u = to_offset(seg.ack, self.snd_una, self.iss)
        c = self.layer.c
        if ack_u > self.snd_nxt:
            c["drop.ack_unsent"] += 1
            self.send_ack()
            return False
        if ack_u < self.snd_una - self.max_snd_wnd:
            c["drop.ack_too_old"] += 1
            self._challenge_ack()
            return False
        win = seg.window << self.snd_wscale
        window_changed = False
        if self.snd_wl1 < seq_r or (self.snd_wl1 == seq_r and self.snd_wl2 <= ack_u):
            if win != self.snd_wnd:
                window_changed = True
            self.snd_wnd = win
            self.snd_wl1, self.snd_wl2 = seq_r, ack_u
            if win > self.max_snd_wnd:
                self.max_snd_wnd = win
        sack_new = False
        if self.sack_ok and seg.sack and self.snd_nxt > self.snd_una:
            sack_new = self._sack(seg.sack)
        if ack_u > self.snd_una:
            self._ack_advanced(ack_u, seg)
        elif (ack_u == self.snd_una and not plen and not seg.flags & (SYN | FIN) and not window_changed
              and self.snd_nxt > self.snd_una):
            self.dupacks += 1
            c["rx.dupack"] += 1
            if self.recovery == NO_RECOVERY:
                rack = sack_new and self._rack_detect()
                if self.dupacks >= DUPTHRESH or (sack_new and self._head_lost()) or rack:
                    self._enter_recovery()
            elif sack_new:
                self._mark_lost()
                self._rack_detect()
        elif sack_new:
            if self.recovery == NO_RECOVERY and (self._rack_detect() | self._head_lost()):
                self._enter_recovery()
            elif self.recovery:
                self._mark_lost()
                self._rack_detect()
        if window_changed and self.rtx_deadline is not None and self.persist and self.snd_wnd:
            self.rtx_deadline = None
            self.persist = False
            self.rtx_retries = 0
        return True

    # -- acknowledgements ----------------------------------------------------------------------
    def _ack_advanced(self, ack_u: int, seg: Segment) -> None:
        now = self.now
        q = self.rtxq
        head = self.rtx_head
        n = len(q)
        sample_time: float | None = None
        while head < n:
            rec = q[head]
            if rec.end > ack_u:
                if rec.start < ack_u:  # partly acknowledged: trim it
                    cut = ack_u - rec.start
                    if rec.sacked:
                        self.sacked_bytes -= cut
                    elif rec.lost:
                        self.lost_bytes -= cut
                    if rec.retrans and not rec.sacked:
                        self.retrans_bytes -= cut
                    rec.start = ack_u
                    if not rec.retrans and not rec.sacked and (sample_time is None or rec.time > sample_time):
                        sample_time = rec.time
                break
            size = rec.end - rec.start
            if rec.sacked:
                self.sacked_bytes -= size  # its RTT was sampled when it was SACKed
            else:
                if rec.lost:
                    self.lost_bytes -= size
                if rec.retrans:
                    self.retrans_bytes -= size
                elif sample_time is None or rec.time > sample_time:
                    sample_time = rec.time
                if rec.time > self.rack_time and (not rec.retrans or self._acks_retransmission(rec, seg)):
                    self.rack_time = rec.time
            head += 1
        if head > 256 and head * 2 > n:
            del q[:head]
            head = 0
        self.rtx_head = head
        acked = ack_u - self.snd_una
        self.snd_una = ack_u
        if ack_u > 1:
            self.bytes_acked += self.sndbuf.ack(ack_u - 1)
        if self.lost_upto < ack_u:
            self.lost_upto = ack_u
        if self.rtx_next < ack_u:
            self.rtx_next = ack_u
        # RTT: a segment sent once gives a sample (Karn); otherwise the timestamp echo does.
        rtt: float | None = None
        if sample_time is not None:
            rtt = now - sample_time
        elif self.ts_ok and seg.ts_ecr:
            rtt = ((self.ts_now() - seg.ts_ecr) & MASK) / 1000.0
            if rtt > 120.0:
                rtt = None
        if rtt is not None:
            self._rtt_sample(rtt)
        self.rtx_retries = 0
        self.rtt.reset_backoff()
        cc = self.cc
        recovery = self.recovery
        prev_dupacks = self.dupacks
        self.dupacks = 0
        if self.tlp_high is not None and ack_u >= self.tlp_high:
            self.tlp_high = None
        if recovery:
            if ack_u >= self.recovery_point:
                self.recovery = NO_RECOVERY
                if recovery == FAST_RECOVERY and cc is not None:
                    cc.on_recovery_end(now)
            else:
                if recovery == LOSS_RECOVERY and cc is not None:
                    cc.on_ack(acked, now, rtt, self.in_flight, False)  # RFC 5681 3.1: slow start
                # Partial ACK (RFC 6582): the next hole is lost too. With SACK the scoreboard
                # decides; without, the new head is presumed lost (one retransmission per ACK).
                if self.sack_ok:
                    self._mark_lost()
                    self._rack_detect()
                else:
                    self.dupacks = max(0, prev_dupacks - acked // max(self.mss, 1))
                    self._mark_head_lost()
        elif cc is not None and self.state != SYN_SENT:
            cc.on_ack(acked, now, rtt, self.in_flight, self._app_limited())
        # RTO timer (RFC 6298 5.2/5.3)
        if self.snd_nxt > self.snd_una:
            self.rtx_deadline = now + self.rtt.rto
            self.persist = False
        else:
            self.rtx_deadline = None
            self.persist = False
        self._arm_tlp()
        if self.state in _SEND_STATES and self.sndbuf.free:
            self.on_writable()

    def _app_limited(self) -> bool:
        cc = self.cc
        return cc is None or self.in_flight + self.mss < cc.cwnd and self.snd_nxt - 1 >= self.sndbuf.end

    def _index(self, u: int) -> int:
        """Index of the first record at or after u (records are ordered by start)."""
        return bisect_left(self.rtxq, u, lo=self.rtx_head, key=_start_of)

    def _sack(self, blocks: tuple[tuple[int, int], ...]) -> bool:
        """Mark records covered by the SACK blocks; True when something new was SACKed."""
        q = self.rtxq
        new = False
        sampled: float | None = None
        una, nxt, iss = self.snd_una, self.snd_nxt, self.iss
        for left, right in blocks:
            lo = to_offset(left, una, iss)
            hi = to_offset(right, una, iss)
            if hi <= una or hi > nxt or lo >= hi:
                self.layer.c["rx.sack_ignored"] += 1  # D-SACK or bogus
                continue
            i = self._index(lo)
            n = len(q)
            while i < n:
                rec = q[i]
                if rec.end > hi:
                    break
                if not rec.sacked:
                    size = rec.end - rec.start
                    rec.sacked = True
                    self.sacked_bytes += size
                    if rec.lost:
                        self.lost_bytes -= size
                    if rec.retrans:
                        self.retrans_bytes -= size
                    if rec.end > self.highest_sacked:
                        self.highest_sacked = rec.end
                    if not rec.retrans and (sampled is None or rec.time > sampled):
                        sampled = rec.time
                    if rec.time > self.rack_time:
                        self.rack_time = rec.time
                    new = True
                i += 1
        if sampled is not None:  # RTT of a segment SACKed for the first time (Linux sack_rtt)
            self._rtt_sample(self.now - sampled)
        return new

    def _rack_detect(self) -> bool:
        """Time-based loss detection (RACK, RFC 8985 6.2, without its reordering timer): a
        segment is lost when one sent after it, by more than the reordering window (min_rtt/4),
        has been delivered. This finds lost retransmissions, which RFC 6675 alone leaves to the
        RTO, and tail losses after a probe. Both scans are amortised O(1): original segments
        are examined in send order above ``lost_upto``, retransmissions in ``rtx_order``."""
        if not self.layer.config.rack or not self.rack_time:
            return False
        limit = self.rack_time - self.min_rtt / 4
        marked = False
        q = self.rtxq
        i = self._index(self.lost_upto)
        n = len(q)
        while i < n:
            rec = q[i]
            if rec.time >= limit:
                break
            if not rec.sacked and not rec.lost and not rec.retrans:
                rec.lost = True
                self.lost_bytes += rec.end - rec.start
                if rec.start < self.rtx_next:
                    self.rtx_next = rec.start
                marked = True
            i += 1
        upto = q[i].start if i < n else self.snd_nxt
        if upto > self.lost_upto:
            self.lost_upto = upto
        rq = self.rtx_order
        una = self.snd_una
        while rq and rq[0].time < limit:
            rec = rq.popleft()
            if rec.retrans and not rec.sacked and rec.end > una:
                rec.retrans = False
                self.retrans_bytes -= rec.end - rec.start
                if not rec.lost:
                    rec.lost = True
                    self.lost_bytes += rec.end - rec.start
                if rec.start < self.rtx_next:
                    self.rtx_next = rec.start
                self.layer.c["lost_retransmit"] += 1
                marked = True
        if marked:
            self.layer.c["rack_lost"] += 1
        return marked

    def _acks_retransmission(self, rec: Sent, seg: Segment) -> bool:
        """RFC 8985 6.2 step 2: whether the cumulative ACK ``seg`` of the retransmitted ``rec``
        can be for the retransmission rather than a delayed original. Not if it came sooner
        than min_rtt after the retransmission, nor if its timestamp echo is older than the
        retransmission (the original filled the hole and its TSval became TS.Recent)."""
        if self.now - rec.time < self.min_rtt:
            return False
        if self.ts_ok and seg.ts_ecr:
            return seq_diff(seg.ts_ecr, (int(rec.time * 1000) + self.ts_offset) & MASK) >= 0
        return True

    def _rtt_sample(self, rtt: float) -> None:
        if rtt >= 0:
            self.rtt.sample(rtt)
            if not self.min_rtt or rtt < self.min_rtt:
                self.min_rtt = rtt

    def _loss_threshold(self) -> int:
        """RFC 6675 IsLost as a position: records ending at or below it have DupThresh SACKed
        segments, or more than (DupThresh-1)*MSS SACKed bytes, above them."""
        if not self.sacked_bytes:
            return self.snd_una
        q = self.rtxq
        i = self._index(self.highest_sacked) - 1
        count = 0
        nbytes = 0
        limit = (DUPTHRESH - 1) * self.mss
        head = self.rtx_head
        while i >= head:
            rec = q[i]
            if rec.sacked:
                count += 1
                nbytes += rec.end - rec.start
                if count >= DUPTHRESH or nbytes > limit:
                    return rec.start
            i -= 1
        return self.snd_una

    def _head_lost(self) -> bool:
        return self._loss_threshold() > self.snd_una

    def _mark_lost(self) -> None:
        """Mark every unSACKed record below the IsLost threshold lost (RFC 6675 4 / 5 step 4)."""
        threshold = self._loss_threshold()
        if threshold <= self.lost_upto:
            return
        q = self.rtxq
        i = self._index(self.lost_upto)
        n = len(q)
        first = None
        while i < n:
            rec = q[i]
            if rec.end > threshold:
                break
            if not rec.sacked and not rec.lost:
                rec.lost = True
                self.lost_bytes += rec.end - rec.start
                if first is None:
                    first = rec.start
            i += 1
        self.lost_upto = threshold
        if first is not None and first < self.rtx_next:
            self.rtx_next = first

    def _mark_head_lost(self) -> None:
        q = self.rtxq
        if self.rtx_head < len(q):
            rec = q[self.rtx_head]
            if not rec.sacked:
                if not rec.lost:
                    rec.lost = True
                    self.lost_bytes += rec.end - rec.start
                if rec.retrans:  # retransmit it again (NewReno: one per partial ACK)
                    rec.retrans = False
                    self.retrans_bytes -= rec.end - rec.start
                self.rtx_next = min(self.rtx_next, rec.start)

    def _enter_recovery(self) -> None:
        """Fast retransmit / fast recovery (RFC 5681 3.2, RFC 6675 5, RFC 6582)."""
        self.layer.c["fast_retransmit"] += 1
        self.recovery = FAST_RECOVERY
        self.recovery_point = self.snd_nxt
        self._cc().on_congestion(self.now, self.in_flight)
        if self.sack_ok:
            self._mark_lost()
        self._mark_head_lost()
        self._output(force_retransmit=True)

    # -- data and FIN ----------------------------------------------------------------------------
    def _data(self, payload: Any, seq_r: int) -> None:
        c = self.layer.c
        rcv_nxt = self.rcv_nxt
        end = seq_r + len(payload)
        if seq_r < rcv_nxt:
            if end <= rcv_nxt:
                c["rx.duplicate"] += 1
                self.ack_soon()  # RFC 5681 4.2: ACK duplicates at once
                return
            payload = payload[rcv_nxt - seq_r:]
            seq_r = rcv_nxt
        right = max(self.rcv_adv, rcv_nxt)
        if end > right:
            if seq_r >= right:
                c["drop.beyond_window"] += 1
                self.ack_soon()
                return
            payload = payload[:right - seq_r]
            end = right
        n = len(payload)
        if n > self.rcv_mss:
            self.rcv_mss = min(n, self.mss + 12 if self.ts_ok else self.mss) if n <= 65535 else self.rcv_mss
        if seq_r == rcv_nxt:
            self.rcvbuf.push(payload)
            rcv_nxt = end
            self.bytes_received += n
            filled = False
            ooo = self.ooo
            if ooo.bytes:
                while True:
                    more = ooo.pop(rcv_nxt)
                    if more is None:
                        break
                    self.rcvbuf.push(more)
                    rcv_nxt += len(more)
                    self.bytes_received += len(more)
                    filled = True
            self.rcv_nxt = rcv_nxt
            fin_now = self.rcv_fin_r is not None and self.rcv_fin_r == rcv_nxt
            # ACK policy
            self.unacked_bytes += n
            if filled or ooo.bytes:
                self.ack_soon()
            elif self.quickack > 0:
                self.quickack -= 1
                self.ack_soon()
            elif self.unacked_bytes >= 2 * self.rcv_mss:
                self.ack_soon()
            elif self.delack_deadline is None:
                self.delack_deadline = self.now + self.layer.config.delack
            if fin_now:
                self._fin_arrives(rcv_nxt)  # ACKs at once, which answers the ACK queued above too
            self.on_readable()
        else:
            self.ooo.max_bytes = self.rcvbuf.capacity
            if not self.ooo.add(seq_r, payload):
                c["rx.ooo_dropped"] += 1
            else:
                c["rx.ooo"] += 1
            self.ack_soon()  # RFC 5681 4.2: out-of-order data is ACKed at once (with SACK)

    def _fin_arrives(self, fin_r: int) -> None:
        if fin_r > self.rcv_nxt:
            self.rcv_fin_r = fin_r  # out of order: taken when the data before it arrives
            return
        if fin_r < self.rcv_nxt or self.fin_received:
            self.ack_soon()  # a retransmitted FIN: ACK it again
            if self.state == TIME_WAIT:
                self.tw_deadline = self.now + self.layer.config.time_wait
            return
        self.rcv_nxt += 1
        self.fin_received = True
        self.rcv_fin_r = None
        state = self.state
        if state in (SYN_RECEIVED, ESTABLISHED):
            self.state = CLOSE_WAIT
        elif state == FIN_WAIT_1:
            if self.fin_u is not None and self.snd_una > self.fin_u:
                self._enter_time_wait()
            else:
                self.state = CLOSING
        elif state == FIN_WAIT_2:
            self._enter_time_wait()
        self.send_ack()
        self.on_readable()

    def _enter_time_wait(self) -> None:
        self.state = TIME_WAIT
        self.tw_deadline = self.now + self.layer.config.time_wait
        self.rtx_deadline = self.delack_deadline = self.ka_deadline = self.fin2_deadline = None
        self.persist = False
        self.layer.c["time_wait"] += 1
        self.on_closed()

    def _reset_received(self) -> None:
        """RFC 9293 3.10.7.4 / Linux tcp_reset: the errno depends on the state."""
        state = self.state
        if state == SYN_RECEIVED and self.parent is not None:
            self._done()  # a passive open that was reset: the listener never reports it
            return
        if state == CLOSE_WAIT:
            code = errno.EPIPE
        elif state in (TIME_WAIT, LAST_ACK, CLOSING):
            code = 0
        else:
            code = errno.ECONNRESET
        self._abort(code)

    # ===================================================================== transmission
    def _output(self, force_retransmit: bool = False, probe: bool = False) -> None:
        """Send what the windows allow: lost segments first, then new data, then the FIN."""
        state = self.state
        if state not in _SEND_STATES and state not in (FIN_WAIT_1, CLOSING, LAST_ACK):
            return
        cc = self._cc()
        now = self.now
        if self.snd_nxt == self.snd_una and now - self.last_tx > self.rtt.rto and self.last_tx:
            cc.on_idle(now, now - self.last_tx, self.rtt.rto)
        if self.lost_bytes and self.retrans_bytes < self.lost_bytes + self.sacked_bytes + 1:
            self._retransmit_lost(force_retransmit)
        sndbuf = self.sndbuf
        data_end = sndbuf.end + 1  # u just past the last byte written
        if self.snd_nxt >= data_end and (self.fin_u is not None or not self.fin_queued):
            # Nothing new to send (the common case after a pure ACK or a small request): only
            # the tail loss probe below the loop can still apply; no persist (no data waiting).
            if self.tlp_deadline is None:
                self._arm_tlp()
            return
        mss = self._send_mss()
        # With segmentation offload, consecutive segments decided below are sent as one
        # super-segment (a "run" from run_start to snd_nxt) of at most gso_max bytes; the
        # retransmission queue still gets one record per MSS (Linux tcp_write_xmit + TSO).
        gso_max = self.layer.gso_limit() // mss * mss if mss > 0 else 0
        run_start = self.snd_nxt
        run_flags = 0
        cwnd = cc.cwnd
        wnd_edge = self.snd_una + self.snd_wnd
        # "pipe" grows by exactly what is sent here, unless duplicate ACKs without SACK make
        # its estimate depend on the amount outstanding (in_flight): then it is recomputed.
        pipe = self.in_flight
        exact_pipe = self.sack_ok or not self.dupacks
        rtxq = self.rtxq
        while True:
            nxt = self.snd_nxt
            avail = data_end - nxt
            if avail <= 0:
                break
            wnd_room = wnd_edge - nxt
            n = mss if avail > mss else avail
            if wnd_room < n:
                if wnd_room <= 0 or (wnd_room < mss and wnd_room < self.max_snd_wnd // 2 and avail > wnd_room):
                    break  # sender SWS avoidance (RFC 9293 3.8.6.2.1): wait for a useful window
                n = wnd_room
            if (pipe if exact_pipe else self.in_flight) >= cwnd and not probe:
                break
            if n < mss and not self.nodelay and not probe and nxt > self.snd_una and not self.fin_queued:
                break  # Nagle (RFC 896): one small segment in flight at a time
            flags = ACK
            end = nxt + n
            if end == data_end:
                flags |= PSH
                if self.fin_queued and self.fin_u is None:
                    flags |= FIN
            if gso_max > mss and not flags & FIN:
                if end - run_start > gso_max:
                    self._emit_run(run_start, nxt, run_flags, mss)
                    run_start = nxt
                run_flags = flags
            else:
                if run_start < nxt:
                    self._emit_run(run_start, nxt, run_flags, mss)
                self._emit(nxt, flags, sndbuf.read(nxt - 1, n))
                run_start = end + (1 if flags & FIN else 0)
            if flags & FIN:
                self.fin_u = end
                end += 1
            rtxq.append(Sent(nxt, end, flags & (FIN | SYN), now))
            self.snd_nxt = end
            pipe += end - nxt
            if self.rtx_deadline is None or self.persist:
                self._arm_rtx()
            if probe:
                break
        if run_start < self.snd_nxt:
            self._emit_run(run_start, self.snd_nxt, run_flags, mss)
        if self.fin_queued and self.fin_u is None and self.snd_nxt == data_end and self.in_flight < cc.cwnd + mss:
            nxt = self.snd_nxt
            self._emit(nxt, ACK | FIN)
            self.fin_u = nxt
            self.rtxq.append(Sent(nxt, nxt + 1, FIN, now))
            self.snd_nxt = nxt + 1
            if self.rtx_deadline is None or self.persist:
                self._arm_rtx()
        if self.tlp_deadline is None:
            self._arm_tlp()
        # Zero window with data waiting and nothing in flight: the persist timer probes.
        if self.snd_nxt == self.snd_una and data_end > self.snd_nxt and self.rtx_deadline is None:
            self.persist = True
            self.rtx_deadline = now + min(self.rtt.rto * (1 << min(self.rtx_retries, 16)),
                                          self.layer.config.rto_max)

    def _emit_run(self, start: int, end: int, flags: int, mss: int) -> None:
        """Send the new data ``start``..``end`` (already queued for retransmission as MSS
        records) in one segment: a super-segment for the link to cut when it is over ``mss``.
        ``flags`` are the last piece's (PSH); the link keeps them on the last piece only."""
        payload = self.sndbuf.read(start - 1, end - start)
        self._emit(start, flags, payload, gso_size=mss if end - start > mss else 0)

    def _retransmit_lost(self, force: bool) -> None:
        q = self.rtxq
        i = self._index(self.rtx_next)
        cc = self._cc()
        n = len(q)
        while i < n:
            rec = q[i]
            if rec.lost and not rec.retrans and not rec.sacked:
                if not force and self.in_flight >= cc.cwnd:
                    self.rtx_next = rec.start
                    return
                force = False
                self._retransmit(rec)
            elif not rec.lost and rec.start >= self.lost_upto and self.recovery != LOSS_RECOVERY:
                break
            i += 1
        self.rtx_next = self.snd_nxt if i >= n else q[i].start if i < n else self.snd_nxt

    def _send_mss(self) -> int:
        """The data a new segment may carry: the MSS less the SACK option it will carry while
        out-of-order data is held (Linux tcp_current_mss), so that it still fits the path MTU."""
        if self.sack_ok and self.ooo.bytes:
            return self.mss - 4 - 8 * min(len(self.ooo), 3 if self.ts_ok else 4)
        return self.mss

    def _retransmit(self, rec: Sent) -> None:
        """Send a record again (split to the current MSS if it has grown too large for it)."""
        size = rec.end - rec.start
        data_len = size - (1 if rec.flags & (SYN | FIN) else 0)
        if rec.flags & SYN:
            self._send_syn()
        else:
            mss = self.mss  # a full-size retransmission goes without SACK blocks (_emit)
            if data_len > mss:
                self._split(rec, mss)
                size = rec.end - rec.start
                data_len = size - (1 if rec.flags & FIN else 0)
            payload = self.sndbuf.read(rec.start - 1, data_len) if data_len else b""
            flags = ACK | rec.flags
            if payload:
                flags |= PSH
            self._emit(rec.start, flags, payload)
        rec.retrans = True
        rec.time = self.now
        self.rtx_order.append(rec)
        self.retrans_bytes += size
        self.retransmits += 1
        self.layer.c["tx.retransmit"] += 1
        if self.rtx_deadline is None or self.persist:
            self._arm_rtx()

    def _split(self, rec: Sent, mss: int) -> None:
        """Cut ``rec`` so its data fits ``mss`` (after a path MTU drop); the tail becomes new
        records right after it, marked lost so they are retransmitted too."""
        q = self.rtxq
        i = q.index(rec, self.rtx_head)
        pieces = []
        start = rec.start + mss
        data_end = rec.end - (1 if rec.flags & FIN else 0)
        while start < data_end:
            end = min(start + mss, data_end)
            p = Sent(start, end, 0, rec.time)
            p.lost = True
            pieces.append(p)
            start = end
        if rec.flags & FIN:
            if pieces:
                pieces[-1].end += 1
                pieces[-1].flags = FIN
            rec.flags &= ~FIN
        rec.end = rec.start + mss
        q[i + 1:i + 1] = pieces

    def _arm_tlp(self) -> None:
        """Schedule a tail loss probe (RFC 8985 7.2): PTO = 2*SRTT (+ the worst-case delayed
        ACK when one segment is in flight), only when it would fire before the RTO."""
        self.tlp_deadline = None
        if (not self.layer.config.tlp or not self.sack_ok or self.recovery or self.tlp_high is not None
                or self.snd_nxt == self.snd_una or self.rtt.srtt is None or self.persist
                or self.state not in _TLP_STATES):
            return
        pto = 2 * self.rtt.srtt
        if self.snd_nxt - self.snd_una <= self.mss:
            pto += 0.2
        when = self.now + max(pto, 0.01)
        if self.rtx_deadline is not None and when >= self.rtx_deadline:
            return
        self.tlp_deadline = when

    def _tail_loss_probe(self) -> None:
        """RFC 8985 7.3: send one new segment if there is one and the peer's window allows,
        else retransmit the last segment; either way the ACK it draws lets SACK/RACK find a
        tail loss without waiting for the RTO."""
        if self.recovery or self.snd_nxt == self.snd_una or self.state not in _TLP_STATES:
            return
        self.layer.c["tlp"] += 1
        nxt = self.snd_nxt
        data_end = self.sndbuf.end + 1
        if data_end > nxt and self.snd_una + self.snd_wnd > nxt:
            self._output(probe=True)
        else:
            q = self.rtxq
            if self.rtx_head < len(q) and not q[-1].sacked:
                self._retransmit(q[-1])
        self.tlp_high = self.snd_nxt
        self._arm_rtx()

    def _arm_rtx(self) -> None:
        self.persist = False
        self.rtx_deadline = self.now + self.rtt.rto

    def _arm_keepalive(self) -> None:
        if self.keepalive and self.state in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2):
            base = self.last_rx if self.last_rx else self.now
            self.ka_deadline = base + (self.keepidle if not self.ka_probes else self.keepintvl)
        else:
            self.ka_deadline = None

    # ===================================================================== timers
    def on_timer(self) -> None:
        """Run whatever deadline is due (the layer calls this from its stack timer)."""
        now = self.now
        if self.tw_deadline is not None and self.tw_deadline <= now:
            self.tw_deadline = None
            self._done()
            return
        if self.fin2_deadline is not None and self.fin2_deadline <= now:
            self.fin2_deadline = None
            if self.state == FIN_WAIT_2:
                self.layer.c["fin_wait_2_timeout"] += 1
                self._done()
                return
        if self.rtx_deadline is not None and self.rtx_deadline <= now:
            self.rtx_deadline = None
            if self.persist:
                self._persist_timeout()
            else:
                self._rto()
            if self.state == CLOSED:
                return
        if self.tlp_deadline is not None and self.tlp_deadline <= now:
            self.tlp_deadline = None
            self._tail_loss_probe()
        if self.delack_deadline is not None and self.delack_deadline <= now:
            self.delack_deadline = None
            if self.state in SYNCHRONIZED:
                self.send_ack()
        if self.ka_deadline is not None and self.ka_deadline <= now:
            self.ka_deadline = None
            self._keepalive_timeout()
        self._changed()

    def _retries_exhausted(self, limit: int) -> bool:
        if self.user_timeout:
            return self.now - self.first_rtx_time >= self.user_timeout
        return self.rtx_retries >= limit

    def _rto(self) -> None:
        """RFC 6298 5.4-5.7 and RFC 5681 3.1: back off, retransmit the earliest segment."""
        state = self.state
        c = self.layer.c
        if self.snd_nxt == self.snd_una:
            return
        if self.rtx_retries == 0:
            self.first_rtx_time = self.now
        if state == SYN_SENT:
            limit = self.syn_retries
        elif state == SYN_RECEIVED:
            limit = self.layer.config.synack_retries
        else:
            limit = self.retries2
        if self._retries_exhausted(limit):
            c["abort.timeout"] += 1
            if state == SYN_RECEIVED and self.parent is not None:
                self._done()
                return
            # No RST on a timeout abort: the peer is unreachable anyway (Linux tcp_write_err).
            self._abort(self.soft_error or errno.ETIMEDOUT)
            return
        self.rtx_retries += 1
        c["rto"] += 1
        self.rtt.backoff()
        if state in (SYN_SENT, SYN_RECEIVED):
            syn = self.rtxq[self.rtx_head]
            if not syn.retrans:
                syn.retrans = True  # Karn: no RTT sample from it; counted in pipe like any retransmission
                self.retrans_bytes += 1
            self.retransmits += 1
            self._send_syn()
            self._arm_rtx()
            return
        cc = self._cc()
        cc.on_timeout(self.now, self.in_flight)
        # Everything not SACKed is presumed lost and retransmitted in order (go-back-N under
        # the slow-starting window); SACKed segments are kept (Linux's loss state).
        q = self.rtxq
        lost = 0
        for i in range(self.rtx_head, len(q)):
            rec = q[i]
            rec.retrans = False
            if not rec.sacked:
                rec.lost = True
                lost += rec.end - rec.start
        self.lost_bytes = lost
        self.retrans_bytes = 0
        self.rtx_order.clear()
        self.tlp_high = None
        self.tlp_deadline = None
        self.lost_upto = self.snd_nxt
        self.rtx_next = self.snd_una
        self.recovery = LOSS_RECOVERY
        self.recovery_point = self.snd_nxt
        self.dupacks = 0
        self._output(force_retransmit=True)
        self._arm_rtx()

    def _persist_timeout(self) -> None:
        """Zero-window probe: a segment below SND.UNA forces the peer to answer with its
        window (what Linux sends, tcp_xmit_probe_skb); backoff like the RTO."""
        if self.state not in _SEND_STATES and self.state not in (FIN_WAIT_1, CLOSING, LAST_ACK):
            return
        if self.rtx_retries == 0:
            self.first_rtx_time = self.now
        if self._retries_exhausted(self.retries2) and self.now - self.last_rx > self.rtt.rto:
            self.layer.c["abort.persist"] += 1
            self._abort(errno.ETIMEDOUT)
            return
        self.rtx_retries += 1
        nxt = self.snd_nxt
        room = self.snd_una + self.snd_wnd - nxt
        avail = self.sndbuf.end + 1 - nxt
        if room > 0 and avail > 0:
            # A usable window below the sender SWS threshold: send what fits when the timer fires
            # (RFC 9293 3.8.6.2.1 override timeout; Linux tcp_write_wakeup).
            n = min(room, avail, self.mss)
            self._emit(nxt, ACK | PSH, self.sndbuf.read(nxt - 1, n))
            self.rtxq.append(Sent(nxt, nxt + n, 0, self.now))
            self.snd_nxt = nxt + n
            self._arm_rtx()
            return
        self.layer.c["tx.window_probe"] += 1
        self._emit(self.snd_una - 1, ACK)
        self.persist = True
        self.rtx_deadline = self.now + min(self.rtt.rto * (1 << min(self.rtx_retries, 16)),
                                           self.layer.config.rto_max)

    def _keepalive_timeout(self) -> None:
        if not self.keepalive or self.state not in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2):
            return
        now = self.now
        if now - self.last_rx < (self.keepidle if not self.ka_probes else self.keepintvl) - 1e-9:
            self._arm_keepalive()
            return
        if self.snd_nxt != self.snd_una or len(self.sndbuf) > self.snd_nxt - self.snd_una:
            self.ka_deadline = now + self.keepintvl  # data in flight: the RTO watches the peer
            return
        if self.ka_probes >= self.keepcnt:
            self.layer.c["abort.keepalive"] += 1
            self.send_rst()
            self._abort(self.soft_error or errno.ETIMEDOUT)
            return
        self.ka_probes += 1
        self.layer.c["tx.keepalive"] += 1
        self._emit(self.snd_una - 1, ACK)
        self.ka_deadline = now + self.keepintvl

    # ===================================================================== ICMP
    def icmp_error(self, error: IcmpError, seq: int) -> None:
        """An ICMP error quoting our segment with sequence ``seq`` (RFC 5927: checked to lie in
        SND.UNA..SND.NXT by the layer). Linux semantics (tcp_v4_err): a PMTU drop shrinks the
        MSS and retransmits what no longer fits; during the handshake any unreachable aborts
        the attempt with its errno; afterwards errors are soft, remembered for ETIMEDOUT."""
        c = self.layer.c
        if error.type == 3 and error.code == 4:
            if error.mtu:
                old = self.mss
                self._set_mss()
                if self.mss < old:
                    c["pmtu_mss_reduced"] += 1
                    self._mtu_reduced()
            return
        if self.state in (SYN_SENT, SYN_RECEIVED):
            if self.state == SYN_RECEIVED and self.parent is not None:
                if error.hard:
                    self._done()
                return
            c["abort.icmp"] += 1
            self._abort(error.errno)
            return
        self.soft_error = error.errno

    def _mtu_reduced(self) -> None:
        """Linux tcp_simple_retransmit: segments larger than the new MSS are lost."""
        q = self.rtxq
        mss = self.mss
        for i in range(self.rtx_head, len(q)):
            rec = q[i]
            data = rec.end - rec.start - (1 if rec.flags & (SYN | FIN) else 0)
            if data > mss and not rec.sacked:
                if rec.retrans:
                    rec.retrans = False
                    self.retrans_bytes -= rec.end - rec.start
                if not rec.lost:
                    rec.lost = True
                    self.lost_bytes += rec.end - rec.start
                self.rtx_next = min(self.rtx_next, rec.start)
        self._output(force_retransmit=True)
        self._changed()

    # ===================================================================== application side
    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue up to the free send buffer; returns the count taken (0: buffer full or not yet
        connected — wait for ``on_writable``/``on_established``). Raises what ``send()`` raises."""
        if self.error:
            raise _err(self.take_error())
        state = self.state
        if self.wr_shut or state in _FIN_STATES:
            raise _err(errno.EPIPE)
        if state in (SYN_SENT, SYN_RECEIVED):
            return 0
        if state not in _SEND_STATES:
            raise _err(errno.EPIPE)  # Linux sk_stream_wait_connect: EPIPE unless connecting
        if not len(data):
            return 0
        n = self.sndbuf.write(data)
        if n:
            self._output()
            self._changed()
        return n

    @property
    def send_space(self) -> int:
        return self.sndbuf.free

    @property
    def readable(self) -> int:
        """Bytes the application can read now."""
        return len(self.rcvbuf)

    @property
    def at_eof(self) -> bool:
        """No more data will come: FIN received (and everything read), reset, or SHUT_RD."""
        return not len(self.rcvbuf) and (self.fin_received or self.rd_shut or self.state == CLOSED)

    def recv(self, n: int, peek: bool = False) -> bytes | None:
        """Up to ``n`` bytes; ``b""`` at end of stream; None when nothing is there yet.
        Raises a pending error (ECONNRESET, ...) once, like ``recv()``."""
        if len(self.rcvbuf):
            data = self.rcvbuf.read(n, peek)
            if not peek:
                self._consumed(len(data))
            return data
        if self.fin_received:  # Linux tcp_recvmsg checks SOCK_DONE before sk_err: a FIN that came
            return b""         # before a reset is an EOF (the error stays for send()/SO_ERROR)
        if self.error:
            raise _err(self.take_error())
        if self.state == LISTEN or (self.state == CLOSED and self.remote_ip is None):
            raise _err(errno.ENOTCONN)  # Linux tcp_recvmsg: never connected
        if self.at_eof:
            return b""
        return None

    def consume(self, n: int) -> int:
        """Drop ``n`` bytes the application already has (read earlier with ``peek``)."""
        got = self.rcvbuf.discard(n)
        self._consumed(got)
        return got

    def recv_into(self, buf: memoryview, peek: bool = False) -> int | None:
        if len(self.rcvbuf):
            got = self.rcvbuf.read_into(buf, peek)
            if not peek:
                self._consumed(got)
            return got
        data = self.recv(len(buf), peek)
        return None if data is None else 0

    def _consumed(self, n: int) -> None:
        """The application read ``n`` bytes: grow the buffer if it keeps up (receive buffer
        autotuning, Linux tcp_rcv_space_adjust in spirit) and send a window update when the
        window opened enough (Linux tcp_cleanup_rbuf)."""
        if not n:
            return
        now = self.now
        self.rcv_copied += n
        rtt = self.rcv_rtt or self.rtt.srtt or 0.01
        if now - self.rcv_space_time >= max(rtt, 0.001):
            cap = self.rcvbuf.capacity
            if not self.rcvbuf_locked and self.rcv_copied * 2 > cap and cap < self.rcvbuf_max:
                self.rcvbuf.capacity = min(self.rcvbuf_max, max(cap * 2, self.rcv_copied * 2))
                self.ooo.max_bytes = self.rcvbuf.capacity
            self.rcv_copied = 0
            self.rcv_space_time = now
        if self.state in _RECV_STATES or self.state == SYN_RECEIVED:
            cur = self.rcv_adv - self.rcv_nxt
            new = self.advertised_window()
            if new >= 2 * max(cur, 1) and new - cur >= self.rcv_mss or (cur < self.rcv_mss <= new):
                self.send_ack()
                self._changed()

    def take_error(self) -> int:
        """The pending error (SO_ERROR), cleared; 0 when none."""
        e, self.error = self.error, 0
        return e

    def shutdown(self, how: int) -> None:
        """0 = SHUT_RD, 1 = SHUT_WR, 2 = SHUT_RDWR, as Linux inet_shutdown: ENOTCONN when
        CLOSED; a listener stops listening on SHUT_RD/RDWR and ignores SHUT_WR; a connection
        attempt in SYN_SENT is abandoned."""
        state = self.state
        if state == CLOSED:
            raise _err(errno.ENOTCONN)
        if state == LISTEN:
            if how in (0, 2):
                self.layer.close(self)
            return
        if state == SYN_SENT:
            self._done()
            return
        if how in (0, 2):
            self.rd_shut = True
            self.on_readable()
        if how in (1, 2):
            self._shutdown_write()
        self._changed()

    def _shutdown_write(self) -> None:
        if self.wr_shut:
            return
        self.wr_shut = True
        state = self.state
        if state == SYN_SENT:
            self._done()
            return
        if state in (SYN_RECEIVED, ESTABLISHED):
            self.state = FIN_WAIT_1
        elif state == CLOSE_WAIT:
            self.state = LAST_ACK
        else:
            return
        self.fin_queued = True
        self._output()

    def close(self) -> None:
        """``close()``: RST if unread data remains or SO_LINGER is 0 (RFC 2525 2.17, Linux
        tcp_close); otherwise FIN after the queued data and the connection lives on as an
        orphan until the exchange ends (TIME_WAIT included)."""
        state = self.state
        if state == LISTEN or state == CLOSED:
            self.layer.close(self)
            return
        self.orphan = True
        self.rd_shut = True
        if state == SYN_SENT:
            self._done()
            return
        if len(self.rcvbuf) or (self.linger == 0):
            self.layer.c["abort.on_close"] += 1
            if state in SYNCHRONIZED or state == SYN_RECEIVED:
                self.send_rst()
            self._abort(0)
            return
        self._shutdown_write()
        if self.state == FIN_WAIT_2:
            self.fin2_deadline = self.now + self.layer.config.fin_timeout
        self._changed()

    def abort(self) -> None:
        """Reset the connection now (RST to the peer when synchronized)."""
        if self.state in SYNCHRONIZED or self.state == SYN_RECEIVED:
            self.send_rst()
        self._abort(0)

    # ===================================================================== the end
    def _abort(self, code: int) -> None:
        """Enter CLOSED with ``code`` as the pending error (0: none)."""
        if code:
            self.error = code
        self.reset = True
        self._done()
        if code:
            self.on_error()

    def _done(self) -> None:
        """CLOSED: drop the queues, stop the timers, leave the layer's tables."""
        if self.state == CLOSED and self.template is None:
            return
        self.state = CLOSED
        self.rtx_deadline = self.delack_deadline = self.ka_deadline = self.tw_deadline = None
        self.fin2_deadline = None
        self.persist = False
        self.rtxq.clear()
        self.rtx_head = 0
        self.ooo.clear()
        self.sacked_bytes = self.lost_bytes = self.retrans_bytes = 0
        self.layer.connection_closed(self)
        self.on_closed()

    # ===================================================================== introspection
    def info(self) -> dict[str, Any]:
        """A netstat/ss-like snapshot: state, queues, windows, RTT, congestion window."""
        cc = self.cc
        return {
            "state": self.state.name,
            "local": f"{ip_ntoa(self.local_ip)}:{self.local_port}",
            "remote": f"{ip_ntoa(self.remote_ip)}:{self.remote_port}" if self.remote_ip else None,
            "recv_q": len(self.rcvbuf) if self.state != LISTEN else len(self.accept_queue),
            "send_q": len(self.sndbuf) if self.state != LISTEN else self.backlog,
            "snd_wnd": self.snd_wnd,
            "rcv_wnd": max(0, self.rcv_adv - self.rcv_nxt),
            "mss": self.mss,
            "srtt": self.rtt.srtt,
            "rto": self.rtt.rto,
            "cwnd": cc.cwnd if cc else None,
            "ssthresh": cc.ssthresh if cc else None,
            "congestion": self.congestion,
            "in_flight": self.in_flight,
            "retransmits": self.retransmits,
            "segs_in": self.segs_in,
            "segs_out": self.segs_out,
            "bytes_acked": self.bytes_acked,
            "bytes_received": self.bytes_received,
            "options": [o for o, on in (("ts", self.ts_ok), ("sack", self.sack_ok), ("wscale", self.ws_ok)) if on],
        }

    def __repr__(self) -> str:
        peer = f" -> {ip_ntoa(self.remote_ip)}:{self.remote_port}" if self.remote_ip else ""
        return f"<{type(self).__name__} {ip_ntoa(self.local_ip)}:{self.local_port}{peer} {self.state.name}>"
