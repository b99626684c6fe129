"""The summary of :mod:`benchmarks.compare`: figures side by side, usocket/kernel ratios, the
issue's targets (met / missed: shown, never asserted) and the readable table.

    .venv/bin/python -m benchmarks.report build/bench-1.json build/bench-2.json ...

prints the ranges (min-max) of each figure over several runs' JSON files, as Markdown.
"""
from __future__ import annotations

import json
import sys
from typing import Any

# (phase, result key, label, target) ; target: None, ("min", x) / ("max", x) on the usocket
# figure itself, or ("ratio_min", x) on usocket/kernel.
METRICS: list[tuple[str, str, str, tuple[str, float] | None]] = [
    ("download", "MB_per_s", "MB/s", ("min", 40.0)),
    ("download", "cpu_s_per_MB", "CPU s/MB", None),
    ("download", "cpu_s", "CPU s", None),
    ("upload", "MB_per_s", "MB/s", ("min", 40.0)),
    ("upload", "cpu_s_per_MB", "CPU s/MB", None),
    ("upload", "cpu_s", "CPU s", None),
    ("rr", "p50_us", "p50 us", ("max", 500.0)),
    ("rr", "p99_us", "p99 us", None),
    ("rr", "cpu_us_per_round", "CPU us/round", None),
    ("rr", "cpu_s", "CPU s", None),
    ("connect", "per_s", "conn/s", ("min", 1000.0)),
    ("connect", "cpu_us_per_connection", "CPU us/conn", None),
    ("connect", "cpu_s", "CPU s", None),
    ("concurrent", "setup_s", "set-up s", None),
    ("concurrent", "rss_MB", "VmRSS MB", ("max", 100.0)),
    ("concurrent", "hwm_MB", "VmHWM MB", None),
    ("concurrent", "rss_per_connection_KB", "KB/conn", None),
    ("concurrent", "cpu_s", "CPU s", None),
    ("http_server", "requests_per_s", "req/s", ("ratio_min", 0.6)),
    ("http_server", "latency_p50_us", "p50 us", None),
    ("http_server", "latency_p99_us", "p99 us", None),
    ("http_server", "cpu_us_per_request", "CPU us/req", None),
    ("http_server", "cpu_s", "CPU s", None),
]


def _target_text(target: tuple[str, float] | None) -> str:
    if target is None:
        return ""
    kind, x = target
    return {"min": f">= {x:g}", "max": f"<= {x:g}", "ratio_min": f">= {x * 100:g} % of kernel"}[kind]


def _met(target: tuple[str, float] | None, value: float | None, ratio: float | None) -> bool | None:
    if target is None or value is None:
        return None
    kind, x = target
    if kind == "min":
        return value >= x
    if kind == "max":
        return value <= x
    return None if ratio is None else ratio >= x


def add_summary(results: dict[str, Any]) -> None:
    """Fill ``results["summary"]``: one row per figure with each side's value, the ratios
    usocket/kernel and, where the issue sets one, the target and whether each mode met it."""
    rows = []
    sides = results["sides"]
    modes = [s for s in sides if s != "kernel"]
    for phase, key, label, target in METRICS:
        by_side = results["phases"].get(phase)
        if by_side is None:
            continue
        values = {s: (by_side.get(s, {}).get(key) if by_side.get(s, {}).get("ok") else None) for s in sides}
        k = values.get("kernel")
        ratios = {m: (values[m] / k if values[m] is not None and k else None) for m in modes}
        marks = {s: "!" if by_side.get(s, {}).get("rejected") else "" for s in sides}
        row: dict[str, Any] = {"phase": phase, "key": key, "label": label, "values": values, "ratios": ratios,
                               "marks": marks}
        if target is not None:
            row["target"] = _target_text(target)
            row["met"] = {m: _met(target, values[m], ratios[m]) for m in modes}
        rows.append(row)
    results["summary"] = rows
    for phase, by_side in results["phases"].items():  # ratios next to each phase's figures too
        k = by_side.get("kernel")
        if not k or not k.get("ok"):
            continue
        for m in modes:
            r = by_side.get(m)
            if r and r.get("ok"):
                r["ratio_to_kernel"] = {key: r[key] / k[key] for _, key, _, _ in
                                        (x for x in METRICS if x[0] == phase)
                                        if isinstance(r.get(key), (int, float)) and k.get(key)}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _met_text(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]


def format_report(results: dict[str, Any]) -> str:
    """The summary as a Markdown table, then failures, REJECT counters, the simulation table."""
    sides = results["sides"]
    modes = [s for s in sides if s != "kernel"]
    head = ["phase", "figure", *sides, *(f"{m}/kernel" for m in modes), "target", *(f"{m}" for m in modes)]
    lines = [f"usocket vs the kernel ({'quick' if results['quick'] else 'full'} run, "
             f"{results['machine']['cpus']} CPUs, load {results['machine']['loadavg_before'][0]:.2f} before)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results.get("summary", []):
        cells = [row["phase"], row["label"], *(_fmt(row["values"][s]) + row["marks"][s] for s in sides),
                 *(_fmt(row["ratios"][m]) for m in modes), row.get("target", "")]
        cells += [_met_text(row["met"][m]) if "met" in row else "" for m in modes]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for phase, by_side in results["phases"].items():
        for side, r in by_side.items():
            if not r.get("ok"):
                notes.append(f"- {phase} / {side}: FAILED: {r.get('error')}")
            elif r.get("sha256_ok") is False:
                notes.append(f"- {phase} / {side}: sha256 MISMATCH")
            if "rejected" in r:
                notes.append(f"- {phase} / {side}: kernel REJECT counter {r['rejected']}"
                             + (f", leftover rules {r['leftover_rules']}" if r.get("leftover_rules") else ""))
            if r.get("socket_errors") or r.get("non_2xx"):
                notes.append(f"- {phase} / {side}: wrk socket errors {r.get('socket_errors')}, "
                             f"non-2xx {r.get('non_2xx')}")
    rejected = [r["rejected"] for by in results["phases"].values() for r in by.values() if "rejected" in r]
    lines += ["", f"Kernel egress REJECTed during the usocket runs: {sum(rejected)} packet(s) in {len(rejected)} run(s)"
              " (a figure marked ! comes from a run where the kernel sent packets: not all went through usocket)."]
    lines += [n for n in notes if "REJECT counter 0" not in n]
    sim = results["phases"].get("sim", {}).get("usocket")
    if sim:
        lines += ["", sim.get("table") or f"simulation FAILED: {sim.get('error')}"]
    if results.get("lab_error"):
        lines.append(f"lab error: {results['lab_error']}")
    if results.get("teardown_problems"):
        lines.append(f"teardown left: {results['teardown_problems']}")
    lines.append(f"elapsed {results['elapsed_s']:.1f} s")
    return "\n".join(lines)


def _range(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    lo, hi = min(got), max(got)
    return _fmt(lo) if _fmt(lo) == _fmt(hi) else f"{_fmt(lo)}-{_fmt(hi)}"


def format_ranges(runs: list[dict[str, Any]]) -> str:
    """Each summary figure's range over ``runs`` (results of :func:`add_summary`), as Markdown."""
    sides = runs[0]["sides"]
    modes = [s for s in sides if s != "kernel"]
    head = ["phase", "figure", *sides, *(f"{m}/kernel" for m in modes), "target", *modes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["summary"]:
            rows.setdefault((row["phase"], row["key"]), []).append(row)
    for same in rows.values():
        first = same[0]
        cells = [first["phase"], first["label"], *(_range([r["values"].get(s) for r in same]) for s in sides),
                 *(_range([r["ratios"].get(m) for r in same]) for m in modes), first.get("target", "")]
        for m in modes:
            met = {r["met"][m] for r in same} if "met" in first else set()
            cells.append("" if not met else "/".join(_met_text(x) for x in sorted(met, key=str)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    runs = []
    for path in argv:
        with open(path) as f:
            runs.append(json.load(f))
    print(f"{len(runs)} run(s): " + ", ".join(f"{r['started']} (load {r['machine']['loadavg_before'][0]:.1f})"
                                            for r in runs) + "\n")
    print(format_ranges(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
