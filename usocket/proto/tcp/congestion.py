"""Pluggable congestion control: NewReno (RFC 5681/6582 with RFC 3465 byte counting) and CUBIC
(RFC 9438), chosen by name like Linux's ``TCP_CONGESTION`` socket option.

A :class:`CongestionControl` owns ``cwnd`` and ``ssthresh`` (both in **bytes**) and nothing else:
the connection tells it what happened and reads ``cwnd`` back. It is sans-IO; every event
carries ``now`` (seconds) from the caller. The connection calls:

- :meth:`~CongestionControl.on_ack` for new data cumulatively acknowledged outside loss
  recovery (``app_limited``: the sender was not filling its window, so the window must not grow;
  RFC 7661's spirit and RFC 9438 5.8);
- :meth:`~CongestionControl.on_congestion` when it enters fast recovery (dupacks or SACK):
  ``cwnd = ssthresh``, no inflation; during recovery the sender paces by "pipe" (RFC 6675);
- :meth:`~CongestionControl.on_recovery_end` when the recovery point is acknowledged
  (RFC 6582 3.2 step 3, the "set cwnd to ssthresh" choice);
- :meth:`~CongestionControl.on_timeout` on a retransmission timeout: ``cwnd`` = loss window
  (1 MSS). Like RFC 5681 (end of 3.1) and Linux's ``tcp_enter_loss``, ``ssthresh`` is not lowered
  again by further timeouts that come before any new data is acknowledged;
- :meth:`~CongestionControl.on_idle` before sending after an idle period: if it exceeded the
  RTO, ``cwnd`` restarts from ``min(cwnd, IW)`` (RFC 5681 4.1). Like Linux's
  ``tcp_cwnd_restart`` ``ssthresh`` first remembers 3/4 of the old window (RFC 2861), so slow
  start gets back quickly; unlike Linux, which halves per idle RTO, the restart is all at once;
- :meth:`~CongestionControl.set_mss` when the MSS is learned or the path MTU changes.

Common rules: the initial window is RFC 6928's ``min(10*MSS, max(2*MSS, 14600))`` unless one
is given; ``ssthresh`` starts "infinite" (``2**31 - 1``); slow start (``cwnd < ssthresh``) uses
appropriate byte counting (RFC 3465) with L = 2*MSS and stops at ``ssthresh``, the rest of the
acknowledged bytes going to congestion avoidance (as Linux's ``tcp_slow_start``).

Algorithms register by name (:func:`register_congestion_control`, usable as a class
decorator); :func:`get_congestion_control` fails with ``OSError(ENOENT)`` for an unknown name,
which is what Linux's ``setsockopt(TCP_CONGESTION)`` gives. A new algorithm subclasses
:class:`CongestionControl` and implements :meth:`~CongestionControl.ssthresh_on_loss` and
:meth:`~CongestionControl.congestion_avoidance` (and may override any event).
"""
from __future__ import annotations

import errno
import math
import os
from typing import ClassVar

# Linux TCP_INFINITE_SSTHRESH (there in segments, here in bytes).
INFINITE_SSTHRESH = 0x7FFFFFFF
# Linux TCP_CA_NAME_MAX: a name is at most 15 bytes.
CA_NAME_MAX = 16


def rfc6928_initial_window(mss: int) -> int:
    """RFC 6928's initial window in bytes: ``min(10*MSS, max(2*MSS, 14600))``."""
    return min(10 * mss, max(2 * mss, 14600))


class CongestionControl:
    """The interface and the shared machinery (slow start, restart, loss windows).

    ``cwnd``, ``ssthresh`` and ``mss`` are bytes. ``initial_window`` is the configured IW in
    bytes (None: RFC 6928 from the current MSS). ``abc_limit`` is RFC 3465's L in segments.
    """

    __slots__ = ("mss", "cwnd", "ssthresh", "initial_window", "_acc", "_rto_held")

    name: ClassVar[str] = ""
    abc_limit: ClassVar[int] = 2

    def __init__(self, mss: int, now: float, initial_window: int | None = None) -> None:
        if mss <= 0:
            raise ValueError(f"mss must be positive, got {mss}")
        if initial_window is not None and initial_window <= 0:
            raise ValueError(f"initial_window must be positive, got {initial_window}")
        self.mss = mss
        self.initial_window = initial_window
        self.cwnd = self.restart_window(mss)
        self.ssthresh = INFINITE_SSTHRESH
        self._acc = 0  # bytes acknowledged in congestion avoidance not yet turned into growth
        self._rto_held = False  # a timeout set ssthresh and no new data was acknowledged since

    # -- hooks for algorithms ------------------------------------------------------------------
    def ssthresh_on_loss(self, in_flight: int) -> int:
        """``ssthresh`` after a congestion event (called before ``cwnd`` is reduced)."""
        raise NotImplementedError

    def congestion_avoidance(self, acked: int, now: float, rtt: float | None) -> None:
        """Grow ``cwnd`` for ``acked`` bytes acknowledged in congestion avoidance."""
        raise NotImplementedError

    def restart_window(self, mss: int) -> int:
        """The initial (and restart) window in bytes for ``mss``."""
        return self.initial_window if self.initial_window is not None else rfc6928_initial_window(mss)

    # -- events --------------------------------------------------------------------------------
    def set_mss(self, mss: int) -> None:
        """The MSS changed (learned from the peer, or a PMTU update). A window that has not
        moved from the initial window is recomputed for the new MSS (RFC 6928 caps it in
        bytes); otherwise ``cwnd`` and ``ssthresh`` keep their size in segments, as Linux's
        segment-counted windows do, with ``cwnd >= 1 MSS`` and ``ssthresh >= 2 MSS``."""
        if mss <= 0:
            raise ValueError(f"mss must be positive, got {mss}")
        old = self.mss
        if mss == old:
            return
        if self.ssthresh >= INFINITE_SSTHRESH and self.cwnd == self.restart_window(old):
            self.cwnd = self.restart_window(mss)
        else:
            self.cwnd = max(mss, self.cwnd * mss // old)
            if self.ssthresh < INFINITE_SSTHRESH:
                self.ssthresh = min(INFINITE_SSTHRESH, max(2 * mss, self.ssthresh * mss // old))
        self._acc = self._acc * mss // old
        self.mss = mss

    def in_slow_start(self) -> bool:
        """True while ``cwnd < ssthresh``."""
        return self.cwnd < self.ssthresh

    def on_ack(self, acked: int, now: float, rtt: float | None, in_flight: int, app_limited: bool) -> None:
        """``acked`` new bytes were cumulatively acknowledged outside loss recovery. ``rtt`` is
        this ACK's RTT sample if any; ``app_limited``: the window was not the limit, no growth."""
        if acked <= 0:
            return
        self._rto_held = False
        if app_limited:
            return
        cwnd = self.cwnd
        if cwnd < self.ssthresh:  # slow start with ABC, up to ssthresh
            room = self.ssthresh - cwnd
            inc = acked if acked < self.abc_limit * self.mss else self.abc_limit * self.mss
            if inc <= room:
                self.cwnd = cwnd + inc
                return
            self.cwnd = self.ssthresh
            acked -= room
        self.congestion_avoidance(acked, now, rtt)

    def on_congestion(self, now: float, in_flight: int) -> None:
        """Loss detected by dupacks/SACK, entering fast recovery: ``ssthresh`` per the algorithm,
        ``cwnd = ssthresh`` (RFC 5681 3.2 step 2 without inflation, RFC 6675)."""
        self.ssthresh = self.ssthresh_on_loss(in_flight)
        self.cwnd = self.ssthresh
        self._acc = 0

    def on_recovery_end(self, now: float) -> None:
        """The recovery point was acknowledged: ``cwnd = ssthresh`` (RFC 6582 3.2 step 3)."""
        self.cwnd = self.ssthresh
        self._acc = 0

    def on_timeout(self, now: float, in_flight: int) -> None:
        """Retransmission timeout: ``ssthresh`` per the algorithm (unless a timeout already set
        it and nothing new was acknowledged since), ``cwnd`` = 1 MSS (RFC 5681 loss window).
        ``in_flight`` is the flight size when the timer fired."""
        if not self._rto_held:
            self.ssthresh = self.ssthresh_on_loss(in_flight)
            self._rto_held = True
        self.cwnd = self.mss
        self._acc = 0

    def on_idle(self, now: float, idle: float, rto: float) -> None:
        """About to send after ``idle`` seconds without sending: past one RTO, restart from
        ``min(cwnd, IW)`` (RFC 5681 4.1), remembering 3/4 of the old window in ``ssthresh``."""
        if idle <= rto:
            return
        rw = self.restart_window(self.mss)
        if self.cwnd > rw:
            keep = (self.cwnd * 3) // 4
            if keep > self.ssthresh:
                self.ssthresh = keep
            self.cwnd = rw
            self._acc = 0

    def info(self) -> dict[str, float]:
        """State for introspection (like ``ss -i``): cwnd, ssthresh, mss and algorithm state."""
        return {"cwnd": self.cwnd, "ssthresh": self.ssthresh, "mss": self.mss}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} cwnd={self.cwnd} ssthresh={self.ssthresh} mss={self.mss}>"


CONGESTION_CONTROLS: dict[str, type[CongestionControl]] = {}
DEFAULT_CONGESTION_CONTROL = "cubic"


def register_congestion_control(cls: type[CongestionControl]) -> type[CongestionControl]:
    """Make ``cls`` selectable by ``cls.name`` (replacing any algorithm of that name). Usable
    as a class decorator. Names are 1..15 bytes, as Linux's ``TCP_CA_NAME_MAX`` allows."""
    name = cls.name
    if not name or len(name.encode()) >= CA_NAME_MAX:
        raise ValueError(f"congestion control name must be 1..{CA_NAME_MAX - 1} bytes, got {name!r}")
    CONGESTION_CONTROLS[name] = cls
    return cls


def get_congestion_control(name: str) -> type[CongestionControl]:
    """The algorithm registered as ``name``; ``OSError(ENOENT)`` if there is none (Linux's
    ``setsockopt(TCP_CONGESTION)`` answer)."""
    try:
        return CONGESTION_CONTROLS[name]
    except KeyError:
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), name) from None


@register_congestion_control
class NewReno(CongestionControl):
    """RFC 5681 congestion avoidance with RFC 3465 byte counting: ``cwnd`` grows by one MSS for
    every ``cwnd`` bytes acknowledged (an exact byte accumulator, not ``mss*mss/cwnd`` rounded
    per ACK). ``ssthresh = max(FlightSize/2, 2*MSS)`` (RFC 5681 equation 4)."""

    __slots__ = ()
    name = "reno"

    def ssthresh_on_loss(self, in_flight: int) -> int:
        return max(in_flight // 2, 2 * self.mss)

    def congestion_avoidance(self, acked: int, now: float, rtt: float | None) -> None:
        acc = self._acc + acked
        cwnd = self.cwnd
        while acc >= cwnd:  # once per window; a stretch ACK may cover several (growing) windows
            acc -= cwnd
            cwnd += self.mss
        self.cwnd = cwnd
        self._acc = acc


@register_congestion_control
class Cubic(CongestionControl):
    """CUBIC (RFC 9438). Window state (``w_max``, ``w_est``, the curve's origin) is kept in
    segments as floats, ``cwnd`` in bytes.

    - Congestion event (4.6, 4.7): ``cwnd_prior = cwnd``; with fast convergence, if ``cwnd``
      did not reach the previous ``W_max``, ``W_max = cwnd * (1 + beta) / 2``, else
      ``W_max = cwnd``; ``ssthresh = max(cwnd * beta, 2*MSS)`` rounded to the byte (Linux uses
      cwnd, not flight size); the epoch ends.
    - Epoch: starts at the first ACK in congestion avoidance after it ended; ``cwnd_epoch`` is
      ``cwnd`` then and ``K = cbrt((W_max - cwnd_epoch) / C)`` (equation 2; right after a
      reduction this is ``cbrt(W_max * (1 - beta) / C)``). If ``cwnd_epoch >= W_max`` the curve
      starts at ``cwnd`` with ``K = 0`` (as Linux's ``origin_point``).
    - Per ACK (4.2-4.5): ``W_cubic(t) = C*(t-K)**3 + W_max``; ``target = W_cubic(t + RTT)``
      clamped to ``[cwnd, 1.5*cwnd]``; ``cwnd`` grows by ``(target - cwnd)/cwnd`` segments per
      acknowledged segment (an exact fractional-byte accumulator, whole MSS steps). RTT is the
      smallest sample seen (Linux's ``delay_min``).
    - Reno-friendly region (4.3): ``W_est`` starts at ``cwnd_epoch`` and grows by
      ``alpha * segments_acked / cwnd`` with ``alpha = 3(1-beta)/(1+beta)``, switching to 1 once
      ``W_est >= cwnd_prior``; while ``W_cubic(t) < W_est`` the window follows ``W_est`` (in
      whole segments, and never downwards).
    - Timeout (4.8): ``ssthresh`` as on a congestion event, ``cwnd`` = 1 MSS; in the first
      congestion avoidance stage afterwards ``K = 0`` and ``W_max = W_est = cwnd_epoch``.
    - Application-limited ACKs and idle periods up to one RTO move the epoch forward so ``t``
      does not include them (5.8); a restart after idle ends the epoch.

    ``C``, ``beta`` and ``fast_convergence`` are class attributes a subclass may change.
    """

    __slots__ = ("w_max", "w_est", "k", "origin", "epoch_start", "cwnd_prior", "min_rtt", "_alpha", "_grow",
                 "_last_ack", "_after_timeout")
    name = "cubic"
    C: ClassVar[float] = 0.4
    beta: ClassVar[float] = 0.7
    fast_convergence: ClassVar[bool] = True

    def __init__(self, mss: int, now: float, initial_window: int | None = None) -> None:
        super().__init__(mss, now, initial_window)
        self.w_max = 0.0  # segments
        self.w_est = 0.0
        self.k = 0.0
        self.origin = 0.0  # the curve's plateau (W_max, or cwnd_epoch when above it)
        self.epoch_start: float | None = None
        self.cwnd_prior = 0.0
        self.min_rtt: float | None = None
        self._alpha = 1.0
        self._grow = 0.0  # fractional bytes of growth not yet applied
        self._last_ack: float | None = None
        self._after_timeout = False

    @property
    def alpha_cubic(self) -> float:
        """RFC 9438 4.3: ``3 * (1 - beta) / (1 + beta)``."""
        return 3 * (1 - self.beta) / (1 + self.beta)

    def w_cubic(self, t: float) -> float:
        """The cubic curve of the current epoch in segments, ``t`` seconds into the epoch."""
        d = t - self.k
        return self.C * d * d * d + self.origin

    def ssthresh_on_loss(self, in_flight: int) -> int:
        return max(int(self.cwnd * self.beta + 0.5), 2 * self.mss)

    def on_ack(self, acked: int, now: float, rtt: float | None, in_flight: int, app_limited: bool) -> None:
        if acked <= 0:
            return
        if rtt is not None and rtt > 0 and (self.min_rtt is None or rtt < self.min_rtt):
            self.min_rtt = rtt
        last = self._last_ack
        self._last_ack = now
        if app_limited and self.epoch_start is not None and last is not None and now > last:
            self.epoch_start += now - last  # RFC 9438 5.8: t excludes application-limited time
        super().on_ack(acked, now, rtt, in_flight, app_limited)

    def _start_epoch(self, now: float, seg: float) -> float:
        self.epoch_start = now
        self._grow = 0.0
        if self._after_timeout:  # RFC 9438 4.8
            self._after_timeout = False
            self.w_max = seg
        if self.w_max > seg:
            self.k = math.cbrt((self.w_max - seg) / self.C)
            self.origin = self.w_max
        else:
            self.k = 0.0
            self.origin = seg
        self.w_est = seg
        self._alpha = 1.0 if seg >= self.cwnd_prior else self.alpha_cubic
        return now

    def congestion_avoidance(self, acked: int, now: float, rtt: float | None) -> None:
        mss = self.mss
        cwnd = self.cwnd
        seg = cwnd / mss
        start = self.epoch_start
        if start is None:
            start = self._start_epoch(now, seg)
        t = now - start
        # Reno-friendly estimate (4.3).
        w_est = self.w_est + self._alpha * acked / mss / seg
        self.w_est = w_est
        if self._alpha != 1.0 and w_est >= self.cwnd_prior:
            self._alpha = 1.0
        if self.w_cubic(t) < w_est:
            est = int(w_est) * mss  # whole segments, as Linux grows
            if est > cwnd:
                self.cwnd = est
                self._grow = 0.0
            return
        # Concave / convex regions (4.4, 4.5).
        target = self.w_cubic(t + (self.min_rtt or 0.0))
        if target <= seg:
            return
        if target > 1.5 * seg:
            target = 1.5 * seg
        grow = self._grow + acked * (target - seg) / seg
        if grow >= mss:
            n = int(grow // mss)
            self.cwnd = cwnd + n * mss
            grow -= n * mss
        self._grow = grow

    def _reduce(self) -> None:
        seg = self.cwnd / self.mss
        self.cwnd_prior = seg
        if self.fast_convergence and seg < self.w_max:
            self.w_max = seg * (1 + self.beta) / 2
        else:
            self.w_max = seg
        self.epoch_start = None
        self._grow = 0.0

    def on_congestion(self, now: float, in_flight: int) -> None:
        self._reduce()
        self._after_timeout = False
        super().on_congestion(now, in_flight)

    def on_recovery_end(self, now: float) -> None:
        super().on_recovery_end(now)
        self.epoch_start = None
        self._grow = 0.0

    def on_timeout(self, now: float, in_flight: int) -> None:
        if not self._rto_held:
            self._reduce()
        self._after_timeout = True
        self.epoch_start = None
        super().on_timeout(now, in_flight)

    def set_mss(self, mss: int) -> None:
        super().set_mss(mss)
        self._grow = 0.0

    def on_idle(self, now: float, idle: float, rto: float) -> None:
        super().on_idle(now, idle, rto)
        if idle > rto:
            self.epoch_start = None
            self._grow = 0.0
        elif self.epoch_start is not None:
            self.epoch_start += idle
        self._last_ack = now

    def info(self) -> dict[str, float]:
        d = super().info()
        d.update(w_max=self.w_max, k=self.k, origin=self.origin, w_est=self.w_est, cwnd_prior=self.cwnd_prior)
        if self.epoch_start is not None:
            d["epoch_start"] = self.epoch_start
        if self.min_rtt is not None:
            d["min_rtt"] = self.min_rtt
        return d
