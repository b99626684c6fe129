"""usocket against the kernel, side by side, in the lab: the benchmark of issue 6.

    sudo .venv/bin/python -m benchmarks.compare [--quick] [--json FILE] [--only NAMES]
        [--modes shared,own] [--profile DIR [--profile-clock wall|cpu]] [--timeout S]

One lab (:class:`usocket.lab.Lab`: kernel servers in the peer namespace) serves every phase.
Each client phase runs the same plain-socket program, :mod:`benchmarks.client`, in the client
namespace twice or more: ``python benchmarks/client.py ...`` on the kernel, and ``python -m
usocket_hijack --mode M benchmarks/client.py ...`` on usocket for each mode M. During the usocket
runs the client namespace's kernel TCP/UDP egress is REJECTed (:meth:`Lab.block_kernel_egress`):
nothing can leak to the kernel unseen, and the REJECT counter is reported per run (it must be 0).

Phases (``--only`` takes these names, comma-separated):

- ``download``/``upload``: 64 MiB from the bulk source / to the bulk sink (MB/s, sha256 checked).
- ``rr``: 100-byte request/response on the TCP echo server with TCP_NODELAY (p50/p99 latency).
- ``connect``: sequential connect + close to the TCP echo server (connections/s).
- ``concurrent``: 1000 connections open at once: set-up time, the process's VmRSS/VmHWM.
- ``http_server``: ``python -m http.server`` (ThreadingHTTPServer) in the client namespace,
  on the kernel and under the hijacker, loaded by ``wrk`` from the peer namespace (requests/s,
  latency); the server process's CPU is read from ``/proc/<pid>/stat``.
- ``sim``: the simulated-network goodput table across loss rates (:mod:`benchmarks.tcp_sim`;
  usocket against itself, no kernel).

For each figure: CPU seconds of the client process (every thread: under the hijacker that
includes the stack's thread), CPU seconds per MB for bulk, and usocket/kernel ratios. The
issue's targets are shown next to the figures (met / missed); nothing is asserted. A phase
that fails or times out is reported as failed with its error and the run goes on. The lab is
torn down on every path and audited (no namespace, no rule left). The exit status is 1 when a
phase failed, a usocket run's packets reached the kernel's REJECT rules, a hash did not match or
the teardown left something behind.

``--quick`` shrinks every phase (4 MiB, 200 rounds, 100 connections, 2 s of wrk, a reduced
simulation) to finish in well under a minute. ``--profile DIR`` adds, after the measured runs,
one profiled usocket run of download, upload and connect per mode: cProfile on the stack's
thread (and on the program's main thread) during the measured part, written to
``DIR/<phase>-<mode>.pstats`` (``.pstats.main``) with the top functions as text next to them
(``python -m benchmarks.profiles DIR`` renders them as Markdown). ``--profile-clock wall`` (the
default) times each function by the wall clock, ``cpu`` by its thread's CPU time (which charges
a system call per profiler event to each function: use it to compare, not for small functions).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pstats
import re
import selectors
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from usocket.lab import Lab
from usocket.netns import ns_cmd

from . import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(ROOT, "benchmarks", "client.py")
PHASES = ("download", "upload", "rr", "connect", "concurrent", "http_server", "sim")
PROFILED = ("download", "upload", "connect")
HTTP_PORT = 8080  # + 0 kernel, + 1 shared, + 2 own: no run meets an earlier one's TIME_WAIT
SETTLE = 0.3  # after a usocket run, how long late packets get to show up on the REJECT counter
HTTP_PATH = "/1k.bin"

# wrk_conns stays below http.server's listen backlog (socketserver's request_queue_size, 5): with
# more concurrent connects the accept queue overflows and 1 s SYN retransmits set the rate.
FULL = {"bulk": 64 << 20, "rounds": 2000, "connect": 500, "concurrent": 1000, "wrk_s": 10,
        "wrk_conns": 4, "sim_size": 10 << 20, "sim_rates": (0.0, 0.01, 0.05, 0.10, 0.20)}
QUICK = {"bulk": 4 << 20, "rounds": 200, "connect": 100, "concurrent": 100, "wrk_s": 2,
         "wrk_conns": 4, "sim_size": 256 << 10, "sim_rates": (0.0, 0.05)}


class PhaseError(RuntimeError):
    """A run of a phase failed (its message says how)."""


# -- the environment of a run ---------------------------------------------------------------------
def run_env(lab: Lab, side: str, **extra: str) -> dict[str, str]:
    """The environment of a client run: the caller's, without the test suite's
    ``USOCKET_DEFAULT_RUNTIME``, ``USOCKET_HIJACK*`` and ``BENCH_*``, plus the lab's stack
    settings (interface, mode, own address) but not ``USOCKET_NETNS``."""
    env = {k: v for k, v in os.environ.items()
           if k != "USOCKET_DEFAULT_RUNTIME" and not k.startswith(("USOCKET_HIJACK", "BENCH_"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["BENCH_ECHO_PORT"] = str(lab.ports["tcp_echo"])
    if side != "kernel":
        env.update(lab.env(side))
        # The program already runs inside the client namespace (ip netns exec), as a user's
        # program would: naming the namespace too would make the stack enter it again for every
        # port reservation (a thread + setns) and diversion change (``ip netns exec``), ~1.5 ms
        # per connection that a program started in its namespace never pays.
        env.pop("USOCKET_NETNS", None)
    env.update(extra)
    return env


def python_argv(side: str, program: list[str]) -> list[str]:
    """``python PROGRAM`` (kernel) or ``python -m usocket_hijack --mode M PROGRAM``."""
    if side == "kernel":
        return [sys.executable, *program]
    return [sys.executable, "-m", "usocket_hijack", "--mode", side, *program]


class Egress:
    """The client namespace's kernel egress: open for kernel runs, REJECTed for usocket runs."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @contextlib.contextmanager
    def side(self, side: str, result: dict[str, Any]) -> Iterator[None]:
        """Around one run on ``side``; a usocket run's REJECT count goes to ``result``."""
        if side == "kernel":
            self.lab.unblock_kernel_egress()
            try:
                yield
            finally:
                self.settle()
            return
        self.settle()  # the kernel's connections of an earlier run finish before the block
        self.lab.block_kernel_egress()
        before = self.lab.kernel_egress_rejected()
        try:
            yield
        finally:
            time.sleep(SETTLE)  # a late packet of this run's flows would draw a kernel answer now
            result["rejected"] = self.lab.kernel_egress_rejected() - before
            left = self.lab.foreign_rules(self.lab.client_ns)
            if left:
                result["leftover_rules"] = left

    def busy_kernel_sockets(self) -> list[str]:
        """The client namespace kernel's TCP sockets that still exchange packets."""
        out = self.lab.run(self.lab.client_ns, ["ss", "-Htan"], check=False).stdout
        return [line for line in out.splitlines() if line.split()[:1] not in (["LISTEN"], ["TIME-WAIT"])]

    def settle(self, limit: float = 5.0) -> None:
        """Until no kernel TCP socket of the client namespace is busy (bounded by ``limit``)."""
        end = time.monotonic() + limit
        while self.busy_kernel_sockets() and time.monotonic() < end:
            time.sleep(0.05)


# -- client phases --------------------------------------------------------------------------------
def run_client(lab: Lab, side: str, phase: str, port: int, count: int, timeout: float,
               profile: str | None = None, clock: str = "wall") -> dict[str, Any]:
    """One run of :mod:`benchmarks.client`; its JSON line, or :class:`PhaseError`."""
    extra = {"BENCH_PROFILE": profile, "BENCH_PROFILE_CLOCK": clock} if profile else {}
    argv = ns_cmd(lab.client_ns, python_argv(side, [CLIENT, phase, lab.server_ip, str(port), str(count)]))
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, env=run_env(lab, side, **extra), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise PhaseError(f"timed out after {timeout:g} s; stderr: {_tail(e.stderr)}") from None
    if p.returncode != 0:
        raise PhaseError(f"exit status {p.returncode}; stderr: {_tail(p.stderr)}")
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise PhaseError(f"no result line; stdout: {_tail(p.stdout)} stderr: {_tail(p.stderr)}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_s"] = time.monotonic() - t0
    want = "socket" if side == "kernel" else "usocket"
    if result.get("socket_module", "").split(".")[0] != want:
        raise PhaseError(f"the program ran on {result.get('socket_module')!r}, not {want}")
    return result


def _tail(text: str | bytes | None, n: int = 600) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]


def client_phase(phase: str, port_name: str, count_key: str) -> Callable[..., dict[str, Any]]:
    def run(lab: Lab, side: str, sizes: dict[str, Any], timeout: float) -> dict[str, Any]:
        return run_client(lab, side, phase, lab.ports[port_name], sizes[count_key], timeout)
    return run


# -- the server phase -----------------------------------------------------------------------------
def _proc_cpu(pid: int) -> float:
    """User + system seconds of ``pid`` (every thread) from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_line(proc: subprocess.Popen[str], pattern: str, deadline: float) -> None:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = ""
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            raise PhaseError(f"the server exited ({proc.wait()}) before it listened: {_tail(seen)}")
        seen += line
        if re.search(pattern, line):
            return
    raise PhaseError(f"the server did not listen in time: {_tail(seen)}")


def _rule_for(lab: Lab, port: int) -> bool:
    out = lab.run(lab.client_ns, ["iptables", "-w", "-S", "USOCKET"], check=False).stdout
    return any(re.search(rf"-p tcp .*--dport {port}\b", line) for line in out.splitlines())


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests/s, latency and errors from ``wrk --latency`` output."""
    def num(unit_value: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s|m)?$", unit_value)
        if not m:
            raise PhaseError(f"cannot read {unit_value!r} from wrk")
        return float(m.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 6e7, None: 1.0}[m.group(2)]

    r: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise PhaseError(f"no Requests/sec in wrk's output: {_tail(out)}")
    r["requests_per_s"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["latency_avg_us"], r["latency_max_us"] = num(m.group(1)), num(m.group(3))
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", out, re.MULTILINE)
        if m:
            r[f"latency_p{p}_us"] = num(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non_2xx"] = int(m.group(1)) if m else 0
    return r


def http_server(lab: Lab, side: str, sizes: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``python -m http.server`` in the client namespace, ``wrk`` against it from the peer."""
    ip = lab.client_ip if side != "own" else lab.own_ip
    port = HTTP_PORT + ["kernel", "shared", "own"].index(side)
    program = ["-m", "http.server", str(port), "--bind", ip, "--directory", lab.docroot]
    # stderr (a log line per request) goes to a file: a pipe nobody reads would fill and block it
    log_path = os.path.join(lab.tmpdir, f"http-server-{side}.log")
    with open(log_path, "w") as log:
        proc = lab.popen(lab.client_ns, python_argv(side, program), env=run_env(lab, side),
                         stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        deadline = time.monotonic() + min(timeout, 30.0)
        _wait_line(proc, r"Serving HTTP on", deadline)
        while side == "shared" and not _rule_for(lab, port):  # the kernel must not see the first SYN
            if time.monotonic() > deadline:
                raise PhaseError("no diversion rule for the server's port")
            time.sleep(0.01)
        url = f"http://{ip}:{port}{HTTP_PATH}"
        fetched = subprocess.run(ns_cmd(lab.server_ns, ["curl", "-sS", "--max-time", "10", url]),
                                 capture_output=True, timeout=20)
        size, digest = lab.http_files[HTTP_PATH]
        if fetched.returncode != 0 or hashlib.sha256(fetched.stdout).hexdigest() != digest:
            raise PhaseError(f"curl {url}: status {fetched.returncode}, {len(fetched.stdout)} of {size} B, "
                             f"{_tail(fetched.stderr)}")
        cpu0 = _proc_cpu(proc.pid)
        wrk = ["wrk", "-t1", f"-c{sizes['wrk_conns']}", f"-d{sizes['wrk_s']}s", "--timeout", "5s", "--latency", url]
        try:
            w = subprocess.run(ns_cmd(lab.server_ns, wrk), capture_output=True, text=True,
                               timeout=sizes["wrk_s"] + 30)
        except subprocess.TimeoutExpired:
            raise PhaseError("wrk did not finish") from None
        cpu_s = _proc_cpu(proc.pid) - cpu0
        if w.returncode != 0:
            raise PhaseError(f"wrk exit status {w.returncode}: {_tail(w.stderr or w.stdout)}")
        result = parse_wrk(w.stdout)
        result.update(cpu_s=cpu_s, seconds=sizes["wrk_s"], connections=sizes["wrk_conns"], sha256_ok=True,
                      cpu_us_per_request=cpu_s / result["requests"] * 1e6 if result["requests"] else None)
        if proc.poll() is not None:
            raise PhaseError(f"the server died under load ({proc.returncode}): {_tail(_read(log_path))}")
        return result
    except PhaseError as e:
        raise PhaseError(f"{e}; server log: {_tail(_read(log_path))}") from None
    finally:
        _stop(proc)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGINT (as Ctrl-C), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


# -- the simulation -------------------------------------------------------------------------------
SIM_CODE = """
import json, sys
from benchmarks.tcp_sim import sweep, _jsonable, format_table
rows = sweep(int(sys.argv[1]), rates=tuple(float(x) for x in sys.argv[2].split(",")))
for r in rows:
    r.pop("counters", None)
print(json.dumps({"rows": _jsonable(rows), "table": format_table(rows)}))
"""


def simulation(sizes: dict[str, Any], timeout: float) -> dict[str, Any]:
    rates = ",".join(str(r) for r in sizes["sim_rates"])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        p = subprocess.run([sys.executable, "-c", SIM_CODE, str(sizes["sim_size"]), rates], env=env,
                           capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise PhaseError(f"timed out after {timeout:g} s") from None
    if p.returncode != 0:
        raise PhaseError(f"exit status {p.returncode}: {_tail(p.stderr)}")
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    rows = []
    for r in out["rows"]:
        rows.append({k: r.get(k) for k in ("loss", "reorder", "duplicate", "corrupt", "ok", "error",
                                           "virtual_time", "goodput_ab", "goodput_ba", "retransmits",
                                           "fast_retransmit", "rto", "wall_time", "size", "bandwidth", "latency")})
    return {"rows": rows, "table": out["table"], "ok": all(r["ok"] for r in rows)}


# -- profiles -------------------------------------------------------------------------------------
def profile_runs(lab: Lab, egress: Egress, modes: list[str], sizes: dict[str, Any], outdir: str,
                 timeout: float, clock: str = "wall") -> dict[str, Any]:
    """One profiled usocket run of each of :data:`PROFILED` per mode; pstats + top-15 text."""
    os.makedirs(outdir, exist_ok=True)
    done: dict[str, Any] = {}
    ports = {"download": ("bulk_source", "bulk"), "upload": ("bulk_sink", "bulk"), "connect": ("tcp_echo", "connect")}
    for phase in PROFILED:
        port, key = ports[phase]
        for mode in modes:
            name = f"{phase}-{mode}"
            path = os.path.join(os.path.abspath(outdir), f"{name}.pstats")
            entry: dict[str, Any] = {"pstats": path, "clock": clock}
            try:
                with egress.side(mode, entry):
                    entry["result"] = run_client(lab, mode, phase, lab.ports[port], sizes[key], timeout, profile=path,
                                                 clock=clock)
                for suffix in ("", ".main"):
                    with open(path.removesuffix(".pstats") + suffix + ".txt", "w") as f:
                        stats = pstats.Stats(path + suffix if suffix else path, stream=f)
                        stats.strip_dirs().sort_stats("tottime").print_stats(25)
            except (PhaseError, OSError) as e:
                entry["error"] = str(e)
            done[name] = entry
            print(f"  profiled {name}: {entry.get('error') or path}", file=sys.stderr, flush=True)
    with open(os.path.join(outdir, "profiles.json"), "w") as f:
        json.dump(done, f, indent=1)
    return done


# -- the run --------------------------------------------------------------------------------------
CLIENT_PHASES: dict[str, Callable[..., dict[str, Any]]] = {
    "download": client_phase("download", "bulk_source", "bulk"),
    "upload": client_phase("upload", "bulk_sink", "bulk"),
    "rr": client_phase("rr", "tcp_echo", "rounds"),
    "connect": client_phase("connect", "tcp_echo", "connect"),
    "concurrent": client_phase("concurrent", "tcp_echo", "concurrent"),
    "http_server": http_server,
}


def run_phase(lab: Lab, egress: Egress, phase: str, sides: list[str], sizes: dict[str, Any],
              timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in sides:
        entry: dict[str, Any] = {}
        t0 = time.monotonic()
        try:
            with egress.side(side, entry):
                entry.update(CLIENT_PHASES[phase](lab, side, sizes, timeout))
            entry["ok"] = True
        except PhaseError as e:
            entry.update(ok=False, error=str(e))
        except Exception as e:  # noqa: BLE001 - one phase's surprise must not stop the others
            entry.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        out[side] = entry
        leak = f", {entry['rejected']} packet(s) REJECTed" if entry.get("rejected") else ""
        print(f"  {phase:<12} {side:<7} {'ok' if entry['ok'] else 'FAILED: ' + entry['error'][:200]}{leak} "
              f"({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: finishes in well under a minute")
    ap.add_argument("--json", default=os.path.join(ROOT, "build", "bench.json"), help="where the results go")
    ap.add_argument("--only", default="", help=f"comma-separated phases ({','.join(PHASES)})")
    ap.add_argument("--modes", default="shared,own", help="usocket modes to run (shared, own)")
    ap.add_argument("--profile", metavar="DIR", help="also write cProfile results of usocket runs here")
    ap.add_argument("--profile-clock", choices=("wall", "cpu"), default="wall",
                    help="profile by the wall clock (default) or by each thread's CPU time")
    ap.add_argument("--timeout", type=float, default=0.0, help="per run, seconds (default 60 quick, 300 full)")
    args = ap.parse_args(argv)
    args.phases = [p for p in (args.only.split(",") if args.only else PHASES) if p]
    args.mode_list = [m for m in args.modes.split(",") if m]
    bad = [p for p in args.phases if p not in PHASES] + [m for m in args.mode_list if m not in ("shared", "own")]
    if bad:
        ap.error(f"unknown phase or mode: {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    timeout = args.timeout or (60.0 if args.quick else 300.0)
    sides = ["kernel", *args.mode_list]
    results: dict[str, Any] = {
        "quick": args.quick, "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "sides": sides, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}, "phases": {},
    }
    t0 = time.monotonic()
    lab_phases = [p for p in args.phases if p != "sim"]
    if lab_phases or args.profile:
        lab = Lab()
        try:
            lab.build()
            egress = Egress(lab)
            for phase in lab_phases:
                results["phases"][phase] = run_phase(lab, egress, phase, sides, sizes, timeout)
            if args.profile:
                results["profiles"] = profile_runs(lab, egress, args.mode_list, sizes, args.profile, timeout,
                                                   args.profile_clock)
        except Exception as e:  # noqa: BLE001 - the lab itself failed: report it, still tear down
            results["lab_error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            results["teardown_problems"] = lab.close_and_audit()
    if "sim" in args.phases:
        entry: dict[str, Any]
        try:
            entry = {"usocket": simulation(sizes, timeout * 4)}
        except PhaseError as e:
            entry = {"usocket": {"ok": False, "error": str(e)}}
        results["phases"]["sim"] = entry
        print(f"  {'sim':<12} {'usocket':<7} {'ok' if entry['usocket']['ok'] else 'FAILED'}", file=sys.stderr)
    results["elapsed_s"] = time.monotonic() - t0
    results["machine"]["loadavg_after"] = os.getloadavg()
    report.add_summary(results)
    print(report.format_report(results))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
        print(f"results: {args.json}")
    failed = [f"{phase}/{side}" for phase, by_side in results["phases"].items() for side, r in by_side.items()
              if not r.get("ok") or r.get("rejected") or r.get("sha256_ok") is False]
    return 0 if not failed and not results.get("lab_error") and not results.get("teardown_problems") else 1


if __name__ == "__main__":
    sys.exit(main())
