"""TCP end to end over the simulated network: 10 MiB each way at once, through loss.

Two whole stacks (own mode) on the in-memory network at 100 Mbit/s and 1 ms one-way latency
each way, with seeded loss, duplication, reordering and corruption of every frame in both
directions (data and ACKs alike). :func:`benchmarks.tcp_sim.run_transfer` drives the two
applications; these tests assert on what it measured:

- the bytes: both 10 MiB streams arrive complete, checked by sha256;
- the close: FIN exchange both ways, one side TIME_WAIT and the other CLOSED through LAST_ACK
  (or both TIME_WAIT after a simultaneous close), every connection gone after 2*MSL, no RST
  while the applications were working, no error reported to either;
- the recovery machinery: no retransmission at all at 0 % loss (so no spurious RTO and no
  spurious fast retransmit), retransmissions by both sides when frames are lost, most recoveries
  fast (SACK / duplicate ACKs, RFC 6675) rather than by timeout, and a bounded number of them;
- the speed: near the link rate at 0 % loss, slower with loss;
- both congestion controls at 1 % loss.

The goodput table of the loss sweep is written to ``$USOCKET_RESULTS_DIR/tcp_sim_goodput.md``
(``build/`` by default) and printed. Every run is seeded: the same engine gives the same numbers.
Each transfer is computed once per session and shared by the tests that look at it.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import sys
from typing import Any

import pytest

from usocket.link.memory import MemoryNetwork, Port

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is not installed: take it from the checkout
    sys.path.insert(0, str(ROOT))
from benchmarks.tcp_sim import TransferError, fault_mix, format_table, run_transfer  # noqa: E402

SEED = 1
SIZE = 10 << 20  # each way
LINK_BPS = 100e6
WALL_LIMIT = 150.0  # seconds of real time per transfer, against a livelock
LOSSES = [0.0, 0.01, 0.05, 0.10, 0.20]

_results: dict[tuple[float, str], dict[str, Any]] = {}


def transfer(loss: float, congestion: str = "cubic") -> dict[str, Any]:
    """The sweep's run at ``loss`` (cached for the session; a failed run is kept, not raised)."""
    key = (loss, congestion)
    if key not in _results:
        try:
            _results[key] = run_transfer(seed=SEED, size=SIZE, congestion=congestion, bandwidth=LINK_BPS,
                                         latency=0.001, wall_limit=WALL_LIMIT, **fault_mix(loss))
        except TransferError as exc:
            _results[key] = exc.result
    return _results[key]


def mbit(bytes_per_s: float) -> float:
    return bytes_per_s * 8 / 1e6


def tcp_counter(r: dict[str, Any], side: str, key: str) -> int:
    """A TCP counter of one side; ``key`` also sums its sub-counters (``tx.error.EMSGSIZE``...)."""
    tcp = r["counters"][side].get("tcp", {})
    return sum(int(v) for k, v in tcp.items() if k == key or k.startswith(key + "."))


def assert_delivered_and_closed(r: dict[str, Any], size: int = SIZE) -> None:
    """Both streams intact, a clean FIN close both ways, nothing left behind."""
    assert r["error"] is None, f"{r['error']}; A: {r['a'].get('info')}; B: {r['b'].get('info')}"
    for side in ("a", "b"):
        rep = r[side]
        assert rep["sent"] == size and rep["received"] == size, (side, rep["sent"], rep["received"])
        assert rep["hash_ok"], f"{side}: the received stream differs from what was sent"
        assert rep["error"] is None, (side, rep["error"])
        assert rep["final_state"] == "CLOSED" and rep["conns_left"] == 0, (side, rep["final_state"])
    assert r["a"]["states"][:2] == ["SYN_SENT", "ESTABLISHED"], r["a"]["states"]
    assert r["b"]["states"][0] == "ESTABLISHED", r["b"]["states"]
    # RFC 9293 3.6: the side whose FIN went first waits in TIME_WAIT; the other went through
    # CLOSE_WAIT and LAST_ACK to CLOSED. If the FINs crossed, both wait (simultaneous close).
    done = (r["a"]["state_when_done"], r["b"]["state_when_done"])
    assert done in {("TIME_WAIT", "CLOSED"), ("CLOSED", "TIME_WAIT"), ("TIME_WAIT", "TIME_WAIT")}, done
    for side, state in zip("ab", done, strict=True):
        states = r[side]["states"]
        if state == "CLOSED":
            assert states[-3:] == ["CLOSE_WAIT", "LAST_ACK", "CLOSED"], states
        else:
            assert "FIN_WAIT_1" in states and states[-1] == "TIME_WAIT", states
    assert r["rst_before_done"] == 0, "a RST while the transfer was still running"
    assert r["clean_close"] and r["ok"]



@pytest.mark.parametrize("loss", [
    pytest.param(loss, id=f"loss{loss * 100:g}%")
    for loss in LOSSES])
def test_10mib_each_way_through_loss(loss: float) -> None:
    r = transfer(loss)
    assert_delivered_and_closed(r)
    net = r["net"]
    if loss == 0:
        # A clean path: nothing lost, so nothing may be retransmitted, not even by a timer.
        assert not any(k.startswith("drop.") for k in net), net
        assert r["retransmits"] == 0 and r["rto"] == 0 and r["fast_retransmit"] == 0, r
        assert tcp_counter(r, "A", "tx.error") == 0 and tcp_counter(r, "B", "tx.error") == 0
        # Near the link rate: 1448 of every 1514 bytes on the wire are payload (95.6 Mbit/s).
        assert mbit(r["goodput_ab"]) > 60 and mbit(r["goodput_ba"]) > 60, (r["goodput_ab"], r["goodput_ba"])
        return
    # The faults really happened, both ways.
    for fault in ("drop.loss", "duplicated", "reordered", "corrupted"):
        assert net.get(fault, 0) > 0, (fault, net)
    # Corrupted frames were caught by the checksums (IPv4 header or TCP), never delivered as data.
    caught = sum(v for side in r["counters"].values() for layer in side.values() for k, v in layer.items()
                 if "checksum" in k)
    assert caught > 0
    # Each side lost data and repaired it; most repairs were fast retransmits, not timeouts.
    assert r["a"]["retransmits"] > 0 and r["b"]["retransmits"] > 0
    assert r["fast_retransmit"] > r["rto"], (r["fast_retransmit"], r["rto"])
    # Selective repair: not everything resent. Retransmissions stay within a few per frame the
    # network destroyed (spurious ones come from reordering; there is no D-SACK undo).
    destroyed = net.get("drop.loss", 0) + net.get("corrupted", 0)
    assert r["retransmits"] < 5 * destroyed, (r["retransmits"], destroyed)
    clean = transfer(0.0)
    assert r["goodput_ab"] < clean["goodput_ab"] and r["goodput_ba"] < clean["goodput_ba"]


@pytest.mark.parametrize("congestion", ["reno", "cubic"])
def test_both_congestion_controls_at_1_percent_loss(congestion: str) -> None:
    r = transfer(0.01, congestion)
    assert_delivered_and_closed(r)
    assert r["a"]["info"]["congestion"] == congestion and r["b"]["info"]["congestion"] == congestion
    assert r["fast_retransmit"] > 0 and r["retransmits"] > 0
    other = transfer(0.01, "cubic" if congestion == "reno" else "reno")
    # Same seed, same faults: only the window growth differs, and it must show.
    assert r["virtual_time"] != other["virtual_time"]


def test_tail_drops_at_a_shallow_bottleneck_queue() -> None:
    """No random fault at all, but a 64 KiB queue at the 100 Mbit/s bottleneck: the windows
    outgrow it and the queue drops the tail (how a loss-based congestion control finds the
    link rate). Every drop is repaired without a timeout and the link stays nearly full."""
    try:
        r = run_transfer(0.0, seed=SEED, size=SIZE, bandwidth=LINK_BPS, queue_bytes=64 << 10,
                         wall_limit=WALL_LIMIT)
    except TransferError as exc:
        r = exc.result
    assert tcp_counter(r, "A", "tx.error") == 0 and tcp_counter(r, "B", "tx.error") == 0, \
        "a segment was built too big for the path"
    assert_delivered_and_closed(r)
    assert r["net"].get("drop.queue", 0) > 0 and "drop.loss" not in r["net"]
    assert 0 < r["retransmits"] <= 2 * r["net"]["drop.queue"], (r["retransmits"], r["net"])
    assert r["rto"] == 0
    assert mbit(r["goodput_ab"]) > 60 and mbit(r["goodput_ba"]) > 60, (r["goodput_ab"], r["goodput_ba"])


def test_reordering_alone_costs_at_most_a_retransmission_per_event() -> None:
    """Reordering without loss: every retransmission is spurious. A frame held back may be
    presumed lost once (there is no D-SACK undo here), but a reordering event must never make
    the sender resend a whole flight. 4 MiB each way, 0.5 % of the frames delayed 2-4 ms."""
    try:
        r = run_transfer(0.0, reorder=0.005, seed=2, size=4 << 20, bandwidth=LINK_BPS, wall_limit=WALL_LIMIT)
    except TransferError as exc:
        r = exc.result
    assert_delivered_and_closed(r, size=4 << 20)
    assert tcp_counter(r, "A", "tx.error") == 0 and tcp_counter(r, "B", "tx.error") == 0
    assert r["rto"] == 0
    reordered = r["net"]["reordered"]
    assert r["retransmits"] <= 2 * reordered, (r["retransmits"], reordered)


class SelectiveLoss(MemoryNetwork):
    """A network that drops chosen TCP data frames: ``drop[port name]`` holds the ordinal
    numbers (1 = the first) of the data-carrying frames that port sends which get lost."""

    def __init__(self, *args: Any, drop: dict[str, set[int]], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.drop = drop
        self.data_frames: dict[str, int] = {}

    def schedule(self, src: Port, dst: Port, frame: bytes, now: float) -> None:
        if frame[12:14] == b"\x08\x00" and frame[23] == 6:  # IPv4, TCP
            ihl = (frame[14] & 0x0F) * 4
            payload = int.from_bytes(frame[16:18], "big") - ihl - (frame[14 + ihl + 12] >> 4) * 4
            if payload > 0:
                n = self.data_frames[src.name] = self.data_frames.get(src.name, 0) + 1
                if n in self.drop.get(src.name, ()):
                    self.counters["drop.selected"] += 1
                    return
        super().schedule(src, dst, frame, now)


def test_one_loss_each_way_is_repaired_at_once() -> None:
    """The minimal reproduction of the stall: 64 KiB each way, no random faults, the 3rd data
    frame of each side lost. Each side then holds out-of-order data, so its segments carry SACK
    blocks (RFC 2018 4: in every ACK while the queue has a hole). They must still fit the MTU
    (Linux tcp_current_mss takes the option space from the payload), so both holes are repaired
    by one fast retransmit each, within milliseconds."""
    net_factory = functools.partial(SelectiveLoss, drop={"A": {3}, "B": {3}})
    try:
        r = run_transfer(0.0, seed=SEED, size=64 << 10, timeout=120.0, network=net_factory)
    except TransferError as exc:
        r = exc.result
    assert r["net"].get("drop.selected") == 2
    assert tcp_counter(r, "A", "tx.error") == 0 and tcp_counter(r, "B", "tx.error") == 0, \
        "a segment was built too big for the path"
    assert r["ok"], r["error"]
    assert r["rto"] == 0 and r["virtual_time"] < 0.1, (r["rto"], r["virtual_time"])


def results_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("USOCKET_RESULTS_DIR") or ROOT / "build")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_goodput_table_is_written() -> None:
    """The sweep's goodput table, as Markdown (for people) and JSON (for tools)."""
    rows = [transfer(loss) for loss in LOSSES]
    table = format_table(rows)
    out = results_dir() / "tcp_sim_goodput.md"
    out.write_text(table)
    slim = [{k: v for k, v in r.items() if k not in ("counters", "a", "b")} for r in rows]
    (results_dir() / "tcp_sim_goodput.json").write_text(json.dumps(slim, indent=1, default=str))
    print("\n" + table)
    text = out.read_text()
    assert text.count("\n| cubic |") == len(LOSSES)
    for loss in LOSSES:
        assert f"| cubic | {loss * 100:g} % |" in text
