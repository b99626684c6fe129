"""RTO estimation (RFC 6298 with Linux's formula) and congestion control (NewReno, CUBIC).

Everything runs on virtual time: the estimator and the algorithms never read a clock. CUBIC's
window is checked against the RFC 9438 curve computed here independently.
"""
from __future__ import annotations

import errno
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usocket.proto.tcp.congestion import (
    CONGESTION_CONTROLS,
    DEFAULT_CONGESTION_CONTROL,
    INFINITE_SSTHRESH,
    CongestionControl,
    Cubic,
    NewReno,
    get_congestion_control,
    register_congestion_control,
)
from usocket.proto.tcp.rtt import RttEstimator

MSS = 1000


# -- RTO -----------------------------------------------------------------------------------------
def test_rto_before_any_sample_is_initial() -> None:
    est = RttEstimator()
    assert est.srtt is None and est.rto == est.base_rto == 1.0 and est.backoffs == 0
    assert RttEstimator(initial_rto=2.5).rto == 2.5


def test_first_sample_sets_srtt_and_half_rttvar() -> None:
    est = RttEstimator()
    est.sample(0.5)
    assert est.srtt == 0.5 and est.rttvar == 0.25
    assert est.rto == pytest.approx(0.5 + 4 * 0.25)


def test_later_samples_update_rttvar_with_the_old_srtt() -> None:
    est = RttEstimator()
    est.sample(0.5)
    est.sample(0.3)
    # RTTVAR = 3/4 * 0.25 + 1/4 * |0.5 - 0.3| (old SRTT); SRTT = 7/8 * 0.5 + 1/8 * 0.3
    assert est.rttvar == pytest.approx(0.2375)
    assert est.srtt == pytest.approx(0.475)
    assert est.rto == pytest.approx(0.475 + 4 * 0.2375)


def test_sample_sequence_matches_rfc6298_reference() -> None:
    samples = [0.120, 0.180, 0.095, 0.400, 0.110, 0.105, 0.300, 0.090, 0.250, 0.130] * 3
    est = RttEstimator()
    srtt = rttvar = 0.0
    for i, r in enumerate(samples):
        est.sample(r)
        if i == 0:
            srtt, rttvar = r, r / 2
        else:
            rttvar = (1 - 1 / 4) * rttvar + 1 / 4 * abs(srtt - r)
            srtt = (1 - 1 / 8) * srtt + 1 / 8 * r
        assert est.srtt == pytest.approx(srtt, abs=1e-12)
        assert est.rttvar == pytest.approx(rttvar, abs=1e-12)
        assert est.rto == pytest.approx(min(120.0, srtt + max(4 * rttvar, 0.2)), abs=1e-12)


def test_linux_floor_is_on_the_variance_term_not_the_total() -> None:
    est = RttEstimator()
    for _ in range(200):  # a steady 10 ms path: RTTVAR decays to ~0
        est.sample(0.010)
    assert est.rttvar < 1e-6
    # Linux: SRTT + 200 ms. RFC 6298 would say 1 s; a floor on the total would say 200 ms.
    assert est.rto == pytest.approx(0.210, abs=1e-6)
    est = RttEstimator(min_rto=0.05)
    for _ in range(200):
        est.sample(0.010)
    assert est.rto == pytest.approx(0.060, abs=1e-6)


def test_rto_clamped_to_max() -> None:
    est = RttEstimator(max_rto=60.0)
    est.sample(50.0)  # 50 + 4*25 = 150
    assert est.rto == est.base_rto == 60.0


def test_absurd_samples_are_ignored() -> None:
    est = RttEstimator()
    est.sample(0.1)
    before = (est.srtt, est.rttvar, est.rto)
    for bad in (-0.001, float("nan"), float("inf"), 121.0):
        est.sample(bad)
        assert (est.srtt, est.rttvar, est.rto) == before
    fresh = RttEstimator()
    fresh.sample(-1.0)
    assert fresh.srtt is None and fresh.rto == 1.0


def test_zero_sample_counts_as_granularity() -> None:
    est = RttEstimator(granularity=0.001)
    est.sample(0.0)
    assert est.srtt == 0.001 and est.rttvar == 0.0005


def test_backoff_doubles_caps_and_resets() -> None:
    est = RttEstimator(max_rto=10.0)
    est.sample(0.5)  # base 1.5
    assert est.backoff() == 3.0 and est.rto == 3.0 and est.backoffs == 1
    assert est.backoff() == 6.0
    assert est.backoff() == 10.0  # capped
    assert est.backoff() == 10.0 and est.backoffs == 4
    assert est.base_rto == pytest.approx(1.5)
    est.reset_backoff()
    assert est.rto == pytest.approx(1.5) and est.backoffs == 0
    est.backoff()
    est.sample(0.5)  # a new sample recomputes and clears the backoff
    assert est.backoffs == 0 and est.rto == est.base_rto < 1.5


def test_backoff_from_initial_rto() -> None:
    est = RttEstimator()
    assert [est.backoff() for _ in range(8)] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 120.0, 120.0]
    est.reset_backoff()
    assert est.rto == 1.0


def test_syn_timeout_fallback_only_without_sample() -> None:
    est = RttEstimator()
    est.backoff()
    est.backoff()
    est.syn_timeout_fallback()
    assert est.rto == est.base_rto == 3.0 and est.backoffs == 0
    est.backoff()
    est.reset_backoff()
    assert est.rto == 3.0  # the fallback is the base until a sample arrives
    est.sample(0.1)
    assert est.rto == pytest.approx(0.1 + 0.2)
    est.syn_timeout_fallback()
    assert est.rto == pytest.approx(0.3)


def test_estimator_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        RttEstimator(min_rto=2.0, max_rto=1.0)
    with pytest.raises(ValueError):
        RttEstimator(min_rto=0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(min_value=-1, max_value=200), st.just(math.nan),
                          st.just("backoff"), st.just("reset")), max_size=60))
def test_rto_always_within_bounds(events: list[float | str]) -> None:
    est = RttEstimator()
    for ev in events:
        if ev == "backoff":
            est.backoff()
        elif ev == "reset":
            est.reset_backoff()
        else:
            assert isinstance(ev, float)
            est.sample(ev)
        assert 0.2 <= est.base_rto <= est.rto <= 120.0
        if est.srtt is not None:
            assert est.base_rto >= min(120.0, est.srtt + 0.2) - 1e-9


# -- NewReno -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mss", "iw"), [(1460, 14600), (536, 5360), (9000, 18000), (4000, 14600), (100, 1000)])
def test_rfc6928_initial_window(mss: int, iw: int) -> None:
    cc = NewReno(mss, 0.0)
    assert cc.cwnd == iw and cc.ssthresh == INFINITE_SSTHRESH == 2**31 - 1 and cc.in_slow_start()
    assert NewReno(mss, 0.0, initial_window=3 * mss).cwnd == 3 * mss


def test_slow_start_uses_abc_with_l_2() -> None:
    cc = NewReno(MSS, 0.0)
    cc.on_ack(MSS, 0.1, 0.1, 5 * MSS, False)
    assert cc.cwnd == 11 * MSS
    cc.on_ack(10 * MSS, 0.2, 0.1, 5 * MSS, False)  # stretch ACK: at most 2*MSS
    assert cc.cwnd == 13 * MSS
    cc.on_ack(300, 0.3, 0.1, 5 * MSS, False)  # byte counting, not ACK counting
    assert cc.cwnd == 13 * MSS + 300
    cc.on_ack(0, 0.4, 0.1, 5 * MSS, False)
    assert cc.cwnd == 13 * MSS + 300


def test_slow_start_stops_at_ssthresh_and_carries_over() -> None:
    cc = NewReno(MSS, 0.0)
    cc.ssthresh = 11 * MSS
    cc.cwnd = 10 * MSS + 500
    cc.on_ack(2 * MSS, 0.1, None, 0, False)  # 500 bytes fill slow start, 1500 go to avoidance
    assert cc.cwnd == 11 * MSS and not cc.in_slow_start()
    cc.on_ack(11 * MSS - 1500, 0.2, None, 0, False)
    assert cc.cwnd == 12 * MSS


@pytest.mark.parametrize("ack_size", [MSS, 700, 7, 2 * MSS + 13, 25 * MSS])
def test_congestion_avoidance_adds_one_mss_per_window_acked(ack_size: int) -> None:
    cc = NewReno(MSS, 0.0)
    cc.cwnd = cc.ssthresh = 10 * MSS
    # Independently: the window reaches 10+k MSS once 10+11+...+(10+k-1) MSS have been acked.
    thresholds = []
    total = 0
    for w in range(10, 30):
        total += w * MSS
        thresholds.append(total)
    acked = 0
    i = 0
    while acked + ack_size <= thresholds[-1]:
        i += 1
        cc.on_ack(ack_size, i * 0.001, None, cc.cwnd, False)
        acked += ack_size
        k = sum(1 for t in thresholds if t <= acked)
        assert cc.cwnd == (10 + k) * MSS, (i, acked)
    assert cc.cwnd >= 29 * MSS


def test_loss_halves_flight_with_2mss_floor() -> None:
    cc = NewReno(MSS, 0.0)
    cc.cwnd = 40 * MSS
    cc.on_congestion(1.0, 30 * MSS)  # flight size, not cwnd
    assert cc.ssthresh == cc.cwnd == 15 * MSS and not cc.in_slow_start()
    cc.on_congestion(2.0, 3 * MSS)
    assert cc.ssthresh == cc.cwnd == 2 * MSS
    cc.on_recovery_end(2.5)
    assert cc.cwnd == cc.ssthresh == 2 * MSS


def test_congestion_discards_avoidance_credit() -> None:
    cc = NewReno(MSS, 0.0)
    cc.cwnd = cc.ssthresh = 10 * MSS
    cc.on_ack(9 * MSS, 0.1, None, 0, False)
    cc.on_congestion(0.2, 20 * MSS)
    cc.on_ack(9 * MSS, 0.3, None, 0, False)
    assert cc.cwnd == 10 * MSS  # the 9 MSS from before the loss do not count


def test_timeout_gives_loss_window_and_holds_ssthresh_on_repeats() -> None:
    cc = NewReno(MSS, 0.0)
    cc.cwnd = 40 * MSS
    cc.on_timeout(1.0, 40 * MSS)
    assert cc.cwnd == MSS and cc.ssthresh == 20 * MSS and cc.in_slow_start()
    cc.on_timeout(3.0, MSS)  # the same segment timed out again: ssthresh kept
    assert cc.cwnd == MSS and cc.ssthresh == 20 * MSS
    cc.on_ack(MSS, 3.5, None, 0, False)  # new data acked: the next timeout is a new event
    assert cc.cwnd == 2 * MSS
    cc.on_timeout(5.0, 6 * MSS)
    assert cc.cwnd == MSS and cc.ssthresh == 3 * MSS


def test_app_limited_freezes_growth() -> None:
    cc = NewReno(MSS, 0.0)
    for i in range(50):
        cc.on_ack(MSS, i * 0.01, 0.01, 2 * MSS, True)
    assert cc.cwnd == 10 * MSS
    cc.cwnd = cc.ssthresh = 10 * MSS
    cc.on_ack(9 * MSS, 1.0, None, 0, False)
    for i in range(50):
        cc.on_ack(MSS, 1.1 + i * 0.01, None, 2 * MSS, True)
    assert cc.cwnd == 10 * MSS
    cc.on_ack(MSS, 2.0, None, 0, False)  # the credit from before is intact
    assert cc.cwnd == 11 * MSS


def test_idle_restart() -> None:
    cc = NewReno(MSS, 0.0)
    cc.cwnd, cc.ssthresh = 50 * MSS, 30 * MSS
    cc.on_idle(10.0, 0.5, 1.0)  # shorter than the RTO
    assert cc.cwnd == 50 * MSS
    cc.on_idle(10.0, 1.5, 1.0)
    assert cc.cwnd == 10 * MSS  # RW = min(IW, cwnd)
    assert cc.ssthresh == 37 * MSS + 500  # 3/4 of the old window remembered (RFC 2861, Linux)
    assert cc.in_slow_start()
    cc.cwnd, cc.ssthresh = 4 * MSS, 4 * MSS
    cc.on_idle(20.0, 5.0, 1.0)
    assert cc.cwnd == 4 * MSS and cc.ssthresh == 4 * MSS  # already below IW


def test_set_mss() -> None:
    cc = NewReno(1460, 0.0)
    cc.set_mss(9000)  # untouched initial window: RFC 6928 for the new MSS, not 10 jumbo frames
    assert cc.cwnd == 18000 and cc.mss == 9000
    cc = NewReno(536, 0.0)
    cc.set_mss(1460)
    assert cc.cwnd == 14600
    cc.cwnd, cc.ssthresh = 40 * 1460, 20 * 1460
    cc.set_mss(1200)  # PMTU drop: same number of segments
    assert cc.cwnd == 40 * 1200 and cc.ssthresh == 20 * 1200
    cc.cwnd, cc.ssthresh = 1200, 2 * 1200
    cc.set_mss(1000)
    assert cc.cwnd == 1000 and cc.ssthresh == 2000
    with pytest.raises(ValueError):
        cc.set_mss(0)


# -- CUBIC ---------------------------------------------------------------------------------------
C, BETA = 0.4, 0.7


def cubic_after_loss(w_max_segments: int) -> Cubic:
    cc = Cubic(MSS, 0.0, initial_window=w_max_segments * MSS)
    cc.on_congestion(0.0, w_max_segments * MSS)
    return cc


def ack_rounds(cc: CongestionControl, start: float, rounds: int, rtt: float,
               record: list[tuple[float, float]] | None = None, app_limited: bool = False) -> float:
    """One RTT per round, a full window acked one MSS at a time, spread over the round."""
    t = start
    for _ in range(rounds):
        if record is not None:
            record.append((t, cc.cwnd / MSS))
        n = max(1, cc.cwnd // MSS)
        for i in range(n):
            cc.on_ack(MSS, t + i * rtt / n, rtt, cc.cwnd, app_limited)
        t += rtt
    return t


def test_cubic_is_default_and_registered() -> None:
    assert DEFAULT_CONGESTION_CONTROL == "cubic"
    assert CONGESTION_CONTROLS["cubic"] is Cubic and CONGESTION_CONTROLS["reno"] is NewReno
    assert get_congestion_control(DEFAULT_CONGESTION_CONTROL) is Cubic


def test_cubic_loss_reduces_to_beta_wmax() -> None:
    cc = cubic_after_loss(100)
    assert cc.cwnd == cc.ssthresh == 70 * MSS
    info = cc.info()
    assert info["w_max"] == 100 and info["cwnd"] == 70 * MSS and info["ssthresh"] == 70 * MSS
    small = Cubic(MSS, 0.0, initial_window=2 * MSS)
    small.on_congestion(0.0, 2 * MSS)
    assert small.cwnd == small.ssthresh == 2 * MSS  # floor


def test_cubic_window_follows_the_cubic_curve() -> None:
    w_max, rtt = 200, 0.2
    cc = cubic_after_loss(w_max)
    k = math.cbrt(w_max * (1 - BETA) / C)

    def w_cubic(t: float) -> float:
        return C * (t - k) ** 3 + w_max

    record: list[tuple[float, float]] = []
    ack_rounds(cc, 0.0, int(2 * k / rtt), rtt, record)
    assert cc.info()["k"] == pytest.approx(k)
    for t, seg in record[1:]:
        # cwnd at t tracks W_cubic: at least W(t) (less whole-MSS rounding), at most W(t + RTT)
        assert w_cubic(t) - 1.5 <= seg <= w_cubic(t + rtt) + 1, (t, seg, w_cubic(t))
    # concave, then the plateau at W_max around K, then convex
    at = dict(record)

    def seg_at(t: float) -> float:
        return min(at.items(), key=lambda kv: abs(kv[0] - t))[1]

    grow_early = seg_at(1.0) - seg_at(0.0)
    grow_mid = seg_at(k + 0.5) - seg_at(k - 0.5)
    grow_late = seg_at(2 * k - 0.2) - seg_at(2 * k - 1.2)
    assert grow_early > 3 * grow_mid and grow_late > 3 * grow_mid
    assert abs(seg_at(k) - w_max) <= 1.5
    assert max(seg for t, seg in record if t < k - 2 * rtt) <= w_max


def test_cubic_fast_convergence() -> None:
    cc = cubic_after_loss(100)
    cc.cwnd = 90 * MSS  # the window did not get back to W_max = 100
    cc.on_congestion(10.0, 90 * MSS)
    assert cc.w_max == pytest.approx(90 * (1 + BETA) / 2)
    assert cc.cwnd == cc.ssthresh == 63 * MSS
    cc.on_ack(MSS, 10.1, 0.1, cc.cwnd, False)  # the epoch starts: K from W_max and cwnd_epoch
    assert cc.k == pytest.approx(math.cbrt((90 * (1 + BETA) / 2 - 63) / C))
    cc.cwnd = 110 * MSS  # beyond W_max: no fast convergence
    cc.on_congestion(20.0, 110 * MSS)
    assert cc.w_max == 110

    class Slow(Cubic):
        fast_convergence = False

    slow = Slow(MSS, 0.0, initial_window=100 * MSS)
    slow.on_congestion(0.0, 0)
    slow.cwnd = 90 * MSS
    slow.on_congestion(1.0, 0)
    assert slow.w_max == 90


def test_cubic_reno_friendly_region_at_small_rtt() -> None:
    w_max, rtt = 20, 0.01
    cc = cubic_after_loss(w_max)
    k = math.cbrt(w_max * (1 - BETA) / C)
    alpha = 3 * (1 - BETA) / (1 + BETA)
    n = 8
    end = ack_rounds(cc, 0.0, n, rtt)
    seg = cc.cwnd / MSS
    # W_est grew by about alpha per RTT; the cubic curve has barely moved in 80 ms.
    assert 14 + alpha * n - 1 <= seg <= 14 + alpha * n + 0.5
    assert C * (end + rtt - k) ** 3 + w_max < seg - 2.5
    # once W_est reaches cwnd_prior (20), alpha becomes 1: Reno's one MSS per RTT
    end = ack_rounds(cc, end, 10, rtt)
    before = cc.cwnd / MSS
    ack_rounds(cc, end, 20, rtt)
    assert 20 - 1.5 <= cc.cwnd / MSS - before <= 20 + 0.5
    assert cc.cwnd / MSS > w_max + 10  # way above what the cubic curve allows this early


def test_cubic_target_clamped_to_one_and_a_half_cwnd() -> None:
    cc = cubic_after_loss(100)
    cc.on_ack(1, 0.0, 0.1, cc.cwnd, False)  # starts the epoch
    assert cc.cwnd == 70 * MSS
    cc.on_ack(70 * MSS, 100.0, 0.1, cc.cwnd, False)  # W_cubic(100 s) is enormous
    assert cc.cwnd == 105 * MSS


def test_cubic_timeout() -> None:
    cc = Cubic(MSS, 0.0, initial_window=100 * MSS)
    cc.on_timeout(1.0, 100 * MSS)
    assert cc.cwnd == MSS and cc.ssthresh == 70 * MSS
    cc.on_timeout(3.0, MSS)  # repeated timeout: ssthresh held
    assert cc.cwnd == MSS and cc.ssthresh == 70 * MSS
    t = 3.0
    while cc.in_slow_start():
        t += 0.01
        cc.on_ack(MSS, t, 0.1, cc.cwnd, False)
    assert cc.cwnd == 70 * MSS
    cc.on_ack(MSS, t + 0.01, 0.1, cc.cwnd, False)
    # RFC 9438 4.8: first avoidance stage after a timeout has K = 0, W_max = W_est = cwnd_epoch
    assert cc.k == 0 and cc.w_max == 70 and cc.w_est == pytest.approx(70 + 3 * (1 - BETA) / (1 + BETA) / 70, abs=1e-9)
    start = t + 0.01
    record: list[tuple[float, float]] = []
    ack_rounds(cc, start + 0.1, 20, 0.1, record)
    for when, seg in record:  # convex from the start: C*t^3 + 70 (Reno-friendly is slower here)
        tt = when - start
        assert C * tt**3 + 70 - 1.5 <= max(seg, 0) <= max(C * (tt + 0.1) ** 3 + 70, 70 + tt / 0.1) + 1


def test_cubic_app_limited_time_is_not_counted() -> None:
    rtt = 0.1
    a, b = cubic_after_loss(100), cubic_after_loss(100)
    for cc in (a, b):
        cc.on_ack(MSS, 0.0, rtt, cc.cwnd, False)
    start = a.cwnd
    # a: ten seconds application-limited; b: nothing happens
    t = ack_rounds(a, rtt, 100, rtt, app_limited=True)
    assert a.cwnd == start and a.epoch_start == pytest.approx(t - rtt / (start // MSS))
    ra: list[tuple[float, float]] = []
    rb: list[tuple[float, float]] = []
    shift = a.epoch_start
    assert shift is not None and shift > 9.9
    ack_rounds(a, shift + rtt, 30, rtt, ra)
    ack_rounds(b, rtt, 30, rtt, rb)
    assert [s for _, s in ra] == pytest.approx([s for _, s in rb], abs=1e-9)
    assert ra[-1][1] > 85  # and it did grow once it had data to send


def test_cubic_idle() -> None:
    cc = Cubic(MSS, 0.0)  # IW 10 MSS
    cc.cwnd = 100 * MSS
    cc.on_congestion(0.0, 100 * MSS)
    cc.on_ack(MSS, 1.0, 0.1, cc.cwnd, False)
    assert cc.epoch_start == 1.0
    cc.on_idle(3.0, 0.5, 1.0)  # shorter than the RTO: the epoch moves, the window stays
    assert cc.epoch_start == 1.5 and cc.cwnd == 70 * MSS
    cc.on_idle(10.0, 5.0, 1.0)  # restart: window back to IW, epoch over
    assert cc.epoch_start is None and "epoch_start" not in cc.info()
    assert cc.cwnd == 10 * MSS and cc.ssthresh == 70 * MSS  # 3/4 * 70 < 70: ssthresh stays
    t = 10.0
    while cc.in_slow_start():
        t += 0.01
        cc.on_ack(MSS, t, 0.1, cc.cwnd, False)
    cc.on_ack(MSS, t + 0.01, 0.1, cc.cwnd, False)
    # a new epoch from the restarted window, towards the old W_max
    assert cc.epoch_start == t + 0.01 and cc.k == pytest.approx(math.cbrt((100 - 70) / C))


def test_cubic_set_mss_keeps_segments() -> None:
    cc = cubic_after_loss(100)
    cc.set_mss(500)
    assert cc.cwnd == 70 * 500 and cc.ssthresh == 70 * 500 and cc.w_max == 100


# -- registry ------------------------------------------------------------------------------------
def test_user_registered_algorithm() -> None:
    @register_congestion_control
    class Fixed(CongestionControl):
        name = "fixed-test"

        def ssthresh_on_loss(self, in_flight: int) -> int:
            return self.cwnd

        def congestion_avoidance(self, acked: int, now: float, rtt: float | None) -> None:
            pass

    try:
        assert get_congestion_control("fixed-test") is Fixed
        cc = get_congestion_control("fixed-test")(MSS, 0.0, initial_window=20 * MSS)
        cc.on_congestion(1.0, 20 * MSS)
        cc.on_ack(40 * MSS, 2.0, 0.1, 0, False)
        assert cc.cwnd == cc.ssthresh == 20 * MSS
        cc.on_timeout(3.0, 0)
        assert cc.cwnd == MSS  # the shared machinery still applies
    finally:
        CONGESTION_CONTROLS.pop("fixed-test", None)
    with pytest.raises(OSError) as exc:
        get_congestion_control("fixed-test")
    assert exc.value.errno == errno.ENOENT


@pytest.mark.parametrize("name", ["", "x" * 16])
def test_register_rejects_bad_names(name: str) -> None:
    bad = type("Bad", (NewReno,), {"name": name})
    with pytest.raises(ValueError):
        register_congestion_control(bad)
    assert name not in CONGESTION_CONTROLS


def test_unknown_algorithm_is_enoent() -> None:
    with pytest.raises(OSError) as exc:
        get_congestion_control("bbr")
    assert exc.value.errno == errno.ENOENT


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([NewReno, Cubic]),
       st.lists(st.tuples(st.sampled_from(["ack", "ack_al", "loss", "rto", "end", "idle"]),
                          st.integers(min_value=0, max_value=50 * MSS)), max_size=80))
def test_window_invariants(cls: type[CongestionControl], events: list[tuple[str, int]]) -> None:
    cc = cls(MSS, 0.0)
    now = 0.0
    for kind, n in events:
        now += 0.05
        before = cc.cwnd
        if kind == "ack":
            cc.on_ack(n, now, 0.05, n, False)
            assert cc.cwnd >= before
        elif kind == "ack_al":
            cc.on_ack(n, now, 0.05, n, True)
            assert cc.cwnd == before
        elif kind == "loss":
            cc.on_congestion(now, n)
            assert cc.cwnd == cc.ssthresh >= 2 * MSS
        elif kind == "rto":
            cc.on_timeout(now, n)
            assert cc.cwnd == MSS and cc.ssthresh >= 2 * MSS
        elif kind == "end":
            cc.on_recovery_end(now)
            assert cc.cwnd == cc.ssthresh
        else:
            cc.on_idle(now, n / MSS, 1.0)
            assert cc.cwnd <= before
        assert cc.cwnd >= MSS and cc.ssthresh >= 2 * MSS
