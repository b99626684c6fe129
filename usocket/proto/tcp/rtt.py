"""Retransmission timeout estimation (RFC 6298), with the RTO formula Linux uses.

:class:`RttEstimator` keeps the smoothed RTT and its variation from the samples the connection
takes (the caller applies Karn's rule, RFC 6298 3: no sample from a retransmitted segment unless
the timestamp option tells which transmission was acknowledged). It is sans-IO: samples are
plain durations in seconds, and the estimator never reads a clock.

Rules implemented:

- Before the first sample the RTO is ``initial_rto`` (RFC 6298 2.1; 1 s, Linux TCP_TIMEOUT_INIT).
- First sample R (2.2): ``SRTT = R``, ``RTTVAR = R/2``. Later samples (2.3), with alpha = 1/8
  and beta = 1/4, RTTVAR first (it uses the old SRTT)::

      RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|
      SRTT   = 7/8 SRTT   + 1/8 R

  Samples below the clock ``granularity`` count as the granularity (Linux counts a 0 us sample
  as 1 us); negative, non-finite and absurd (larger than ``max_rto``) samples are ignored.
- The base RTO is **Linux's** (``tcp_set_rto``/``__tcp_set_rto``, with ``rttvar_us`` floored at
  ``tcp_rto_min`` in ``tcp_rtt_estimator``)::

      RTO = SRTT + max(4*RTTVAR, min_rto)     then clamped to [min_rto, max_rto]

  RFC 6298 2.3/2.4 instead say ``SRTT + max(G, 4*RTTVAR)`` and "round up to 1 s". Linux floors
  the *variance term* at 200 ms and has no 1 s floor, so on a LAN its RTO is about
  ``SRTT + 200 ms`` -- not 1 s, and never the bare ``SRTT`` that a floor on the total would
  allow when RTTVAR collapses on a steady path. The stack talks to Linux peers and is compared
  with the kernel stack in the lab, so it retransmits on the kernel's schedule. (Linux also
  tracks the largest deviation over the last RTT and weights shrinking samples by 1/32; the
  plain RFC update above is kept for the variance itself, as in RFC 6298.)
- A timeout doubles the RTO (5.5), up to ``max_rto``; ``backoffs`` counts consecutive doublings.
  A new sample recomputes the RTO and clears the backoff. When new data is acknowledged without
  a usable sample (Karn's rule), :meth:`RttEstimator.reset_backoff` brings the RTO back to the
  base value, as Linux does on any forward progress (``tcp_ack`` -> ``icsk_backoff = 0``).
- 5.7: if the SYN (or SYN-ACK) had to be retransmitted and no sample was taken, the RTO once the
  connection is established is 3 s (:meth:`RttEstimator.syn_timeout_fallback`, Linux
  TCP_TIMEOUT_FALLBACK).
"""
from __future__ import annotations

# RFC 6298 5.7 / Linux TCP_TIMEOUT_FALLBACK.
SYN_FALLBACK_RTO = 3.0


class RttEstimator:
    """SRTT/RTTVAR/RTO for one connection. All times are seconds (floats).

    Attributes: ``srtt`` (None before the first sample), ``rttvar``, ``rto`` (the timeout in
    force, backoff included), ``backoffs`` (consecutive doublings since the last sample or
    reset), and the bounds ``initial_rto``, ``min_rto``, ``max_rto``, ``granularity``.
    """

    __slots__ = ("initial_rto", "min_rto", "max_rto", "granularity", "srtt", "rttvar", "rto", "backoffs",
                 "_base")

    def __init__(self, *, initial_rto: float = 1.0, min_rto: float = 0.2, max_rto: float = 120.0,
                 granularity: float = 0.001) -> None:
        if not 0 < min_rto <= max_rto:
            raise ValueError(f"need 0 < min_rto <= max_rto, got {min_rto}, {max_rto}")
        if initial_rto <= 0 or granularity < 0:
            raise ValueError("initial_rto must be positive and granularity non-negative")
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._base = min(initial_rto, max_rto)
        self.rto = self._base
        self.backoffs = 0

    @property
    def base_rto(self) -> float:
        """The RTO without exponential backoff."""
        return self._base

    def sample(self, rtt: float) -> None:
        """Take one RTT measurement (seconds): update SRTT/RTTVAR (RFC 6298 2.2/2.3), recompute
        the RTO and clear the backoff. Negative, NaN/infinite or > ``max_rto`` samples are
        ignored."""
        if not 0.0 <= rtt <= self.max_rto:  # also rejects NaN
            return
        if rtt < self.granularity:
            rtt = self.granularity
        srtt = self.srtt
        if srtt is None:
            srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(srtt - rtt)
            srtt = 0.875 * srtt + 0.125 * rtt
        self.srtt = srtt
        base = srtt + max(4 * self.rttvar, self.min_rto, self.granularity)
        if base > self.max_rto:
            base = self.max_rto
        self._base = base  # >= min_rto by construction of the variance floor
        self.rto = base
        self.backoffs = 0

    def backoff(self) -> float:
        """The retransmission timer expired: double the RTO (RFC 6298 5.5), capped at
        ``max_rto``. Returns the new RTO."""
        self.backoffs += 1
        rto = self.rto * 2
        self.rto = rto if rto < self.max_rto else self.max_rto
        return self.rto

    def reset_backoff(self) -> None:
        """New data was acknowledged: back to the base RTO (Linux clears ``icsk_backoff``)."""
        self.backoffs = 0
        self.rto = self._base

    def syn_timeout_fallback(self) -> None:
        """RFC 6298 5.7: the SYN or SYN-ACK was retransmitted and no RTT sample was taken, so
        the established connection starts with a 3 s RTO (clamped to ``max_rto``), no backoff.
        Does nothing once a sample exists."""
        if self.srtt is not None:
            return
        self._base = min(max(SYN_FALLBACK_RTO, self.min_rto), self.max_rto)
        self.rto = self._base
        self.backoffs = 0

    def __repr__(self) -> str:
        srtt = "-" if self.srtt is None else f"{self.srtt * 1000:.3f}ms"
        return (f"<RttEstimator srtt={srtt} rttvar={self.rttvar * 1000:.3f}ms rto={self.rto:.3f}s"
                f" backoffs={self.backoffs}>")

