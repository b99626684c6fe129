"""The profiles written by ``python -m benchmarks.compare --profile DIR``, as Markdown.

    .venv/bin/python -m benchmarks.profiles DIR [--top 15] [--sort tottime]

prints, for each ``DIR/<phase>-<mode>.pstats`` (the stack's thread) and its ``.main`` companion
(the program's own thread), the figure the profiled run measured and the top functions.
With ``--profile-clock wall`` (the default) the ``tottime`` of a blocking call (``epoll.poll``,
a lock's ``acquire``, ``select.poll`` inside ``subprocess``) is time spent waiting; with ``cpu``
every time is the CPU time of the profiled thread.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import pstats
import sys
from typing import Any


def _where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":
        return name
    parts = path.split(os.sep)
    short = "/".join(parts[parts.index("usocket"):]) if "usocket" in parts else os.path.basename(path)
    return f"{short}:{line}({name})"


def top_table(path: str, top: int = 15, sort: str = "tottime", clock: str = "wall") -> str:
    """The ``top`` functions of one pstats file, by ``sort``, as a Markdown table."""
    stats = pstats.Stats(path, stream=io.StringIO())
    stats.sort_stats(sort)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    thread = "the stack's thread" if not path.endswith(".main") else "the program's main thread"
    what = "CPU seconds" if clock == "cpu" else "wall-clock seconds"
    lines = [f"{thread}: {stats.total_calls} calls, {total:.3f} {what} profiled", "",  # type: ignore[attr-defined]
             "| function | ncalls | tottime s | tottime/call us | cumtime s |", "|---|---|---|---|---|"]
    for func in stats.fcn_list[:top]:  # type: ignore[attr-defined]
        cc, nc, tt, ct, _ = raw[func]
        lines.append(f"| `{_where(func)}` | {nc} | {tt:.3f} | {tt / nc * 1e6:.1f} | {ct:.3f} |")
    return "\n".join(lines) + "\n"


def describe(result: dict[str, Any]) -> str:
    figs = [f"{k}={result[k]:.4g}" for k in ("MB_per_s", "per_s", "cpu_s", "wall_s", "bytes", "connections")
            if isinstance(result.get(k), (int, float))]
    return ", ".join(figs)


def render(directory: str, top: int = 15, sort: str = "tottime") -> str:
    results: dict[str, Any] = {}
    summary = os.path.join(directory, "profiles.json")
    if os.path.exists(summary):
        with open(summary) as f:
            results = json.load(f)
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "*.pstats"))):
        name = os.path.basename(path).removesuffix(".pstats")
        out.append(f"### {name}\n")
        res = results.get(name, {}).get("result")
        clock = results.get(name, {}).get("clock", "wall")
        if res:
            out.append(f"Profiled run: {describe(res)} (slowed by the profiler).\n")
        out.append(top_table(path, top, sort, clock))
        if os.path.exists(path + ".main"):
            out.append(top_table(path + ".main", min(top, 8), sort, clock))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profiles", description=__doc__.split("\n")[0])
    ap.add_argument("directory")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--sort", default="tottime")
    args = ap.parse_args(argv)
    print(render(args.directory, args.top, args.sort))
    return 0


if __name__ == "__main__":
    sys.exit(main())
