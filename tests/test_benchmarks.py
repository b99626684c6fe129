"""``python -m benchmarks.compare --quick``: every phase runs on the kernel and on usocket, in
both modes, and reports sane figures (checked bytes, ratios, no kernel leak, a clean teardown).

Speed is never asserted here: only that each figure was measured and makes sense.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from usocket.lab import Lab

pytestmark = pytest.mark.lab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# phase -> figures that must be positive numbers on every side
FIGURES = {
    "download": ["MB_per_s", "cpu_s", "cpu_s_per_MB", "wall_s"],
    "upload": ["MB_per_s", "cpu_s", "cpu_s_per_MB", "wall_s"],
    "rr": ["p50_us", "p99_us", "cpu_s"],
    "connect": ["per_s", "cpu_s"],
    "concurrent": ["setup_s", "rss_MB", "hwm_MB", "cpu_s"],
    "http_server": ["requests_per_s", "latency_p50_us", "latency_p99_us", "cpu_s"],
}
SIDES = ("kernel", "shared", "own")


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "USOCKET_DEFAULT_RUNTIME"}
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.compare", "--quick", "--json", str(out)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, f"exit {p.returncode}\n{stdout}\n{stderr}"
    assert Lab.leftovers(p.pid) == [], "the benchmark left namespaces or rules"
    results = json.loads(out.read_text())
    results["_stdout"] = stdout
    return results


def test_the_lab_was_torn_down_cleanly(bench):
    assert bench["teardown_problems"] == [] and "lab_error" not in bench
    assert bench["sides"] == list(SIDES) and bench["quick"] is True


@pytest.mark.parametrize("phase", list(FIGURES))
def test_each_phase_measured_every_side(bench, phase):
    by_side = bench["phases"][phase]
    for side in SIDES:
        r = by_side[side]
        assert r["ok"], f"{phase}/{side}: {r.get('error')}"
        for key in FIGURES[phase]:
            assert _positive(r[key]), f"{phase}/{side}: {key} = {r.get(key)!r}"
        if side != "kernel":
            assert r["rejected"] == 0, f"{phase}/{side}: the kernel sent {r['rejected']} packet(s) itself"
            assert not r.get("leftover_rules")
            assert _positive(r["ratio_to_kernel"][FIGURES[phase][0]])
        if "socket_module" in r:  # a client phase: the program ran on the socket it was meant to
            assert r["socket_module"].split(".")[0] == ("socket" if side == "kernel" else "usocket")


def test_bytes_and_connections_are_checked(bench):
    p = bench["phases"]
    size = bench["sizes"]["bulk"]
    for side in SIDES:
        assert p["download"][side]["sha256_ok"] and p["download"][side]["bytes"] == size
        assert p["upload"][side]["sha256_ok"] and p["upload"][side]["bytes"] == size
        assert p["rr"][side]["rounds"] == bench["sizes"]["rounds"]
        assert p["rr"][side]["p99_us"] >= p["rr"][side]["p50_us"]
        assert p["connect"][side]["connections"] == bench["sizes"]["connect"]
        c = p["concurrent"][side]
        assert c["alive"] == c["connections"] == bench["sizes"]["concurrent"]
        assert c["hwm_MB"] >= c["rss_MB"] > 0
        h = p["http_server"][side]
        assert h["sha256_ok"] and h["requests"] > 0 and h["non_2xx"] == 0 and h["socket_errors"] == 0


def test_the_summary_has_ratios_and_targets(bench):
    rows = {(r["phase"], r["key"]): r for r in bench["summary"]}
    for key in [("download", "MB_per_s"), ("upload", "MB_per_s"), ("rr", "p50_us"), ("connect", "per_s"),
                ("concurrent", "rss_MB"), ("http_server", "requests_per_s")]:
        row = rows[key]
        assert all(_positive(row["ratios"][m]) for m in ("shared", "own")), row
        assert row["target"] and all(row["met"][m] in (True, False) for m in ("shared", "own")), row
    assert _positive(rows[("download", "cpu_s_per_MB")]["ratios"]["shared"])
    assert "| download | MB/s |" in bench["_stdout"]
    assert "REJECTed during the usocket runs: 0 packet(s)" in bench["_stdout"]


def test_the_simulated_goodput_table(bench):
    sim = bench["phases"]["sim"]["usocket"]
    assert sim["ok"], sim.get("error")
    assert [r["loss"] for r in sim["rows"]] == bench["sizes"]["sim_rates"]
    assert all(_positive(r["goodput_ab"]) and _positive(r["goodput_ba"]) for r in sim["rows"])
    assert "| cubic |" in sim["table"]
