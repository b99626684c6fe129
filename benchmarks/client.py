"""The plain-socket client program of :mod:`benchmarks.compare`.

It uses nothing but the stdlib: ``import socket``. The harness runs it twice per phase in the
lab's client namespace, as ``python benchmarks/client.py PHASE ...`` (the kernel's TCP) and as
``python -m usocket_hijack --mode M benchmarks/client.py PHASE ...`` (usocket's), so both sides
pay the same Python costs and only the socket underneath differs.

    client.py download HOST PORT BYTES     # the bulk source: ask for BYTES, read them all
    client.py upload   HOST PORT BYTES     # the bulk sink: send BYTES, read its count + sha256
    client.py rr       HOST PORT ROUNDS    # 100-byte request/response on the TCP echo server
    client.py connect  HOST PORT COUNT     # sequential connect + close
    client.py concurrent HOST PORT COUNT   # COUNT connections open at once, RSS with all open

Each phase first makes one warm-up connection (so ARP and, under the hijacker, the stack's
start are not measured), then prints one JSON line on stdout: the phase's figures, ``cpu_s``
(user + system seconds of the whole process, every thread, during the measured part: under
the hijacker that includes the stack's thread) and ``wall_s``.

Profiling (``BENCH_PROFILE=PATH``): when the socket module is usocket's, cProfile is enabled
on the stack's thread (through ``Runtime.call``, which runs a function there) for the measured
part only and dumped to ``PATH``; the program's own (main) thread is profiled into
``PATH.main``. ``BENCH_PROFILE_CLOCK=wall`` (the default) times functions by the wall clock (blocking waits
count), ``cpu`` by the CPU time of their thread (``time.thread_time``: preemption by other
processes and waits do not count, but each profiler event then costs a system call, charged to
the function: small, often-called functions look far more expensive than they are). The
profiler slows everything down: profiled runs are never the measured ones.
"""
from __future__ import annotations

import array
import hashlib
import json
import os
import resource
import socket
import struct
import sys
import time
from typing import Any

LENGTH = struct.Struct(">Q")
SINK_REPLY = struct.Struct(">Q32s")
RR_SIZE = 100
READ_CHUNK = 1 << 18


def bulk_pattern(length: int) -> bytes:
    """The lab bulk source's stream: 8-byte big-endian counters 0, 1, 2 ... cut to ``length``."""
    words = array.array("Q", range((length + 7) // 8))
    if sys.byteorder == "little":
        words.byteswap()
    return words.tobytes()[:length]


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Profiler:
    """cProfile on the stack thread and the main thread, when ``BENCH_PROFILE`` asks for it."""

    def __init__(self) -> None:
        self.path = os.environ.get("BENCH_PROFILE", "")
        self.stack: Any = None
        self.main: Any = None
        self.rt: Any = None

    def start(self) -> None:
        if not self.path:
            return
        import cProfile

        def profiler() -> Any:
            if os.environ.get("BENCH_PROFILE_CLOCK", "wall") == "cpu":
                return cProfile.Profile(time.thread_time)  # the CPU of the thread that runs it
            return cProfile.Profile()  # wall clock: waits count too

        if "usocket" in socket.socket.__module__:
            try:
                from usocket.runtime import get_runtime
                self.rt = get_runtime()
                self.stack = profiler()
                self.rt.call(self.stack.enable)
            except Exception as exc:  # noqa: BLE001 - profiling is best effort
                print(f"client: stack profiling unavailable: {exc!r}", file=sys.stderr)
                self.stack = None
        self.main = profiler()
        self.main.enable()

    def stop(self) -> None:
        if self.main is not None:
            self.main.disable()
            self.main.dump_stats(self.path + ".main")
        if self.stack is not None:
            self.rt.call(self.stack.disable)
            self.stack.dump_stats(self.path)


class Measure:
    """CPU and wall time of the measured part (and the profiler around it)."""

    def __init__(self) -> None:
        self.profiler = Profiler()
        self.cpu_s = self.wall_s = 0.0

    def __enter__(self) -> Measure:
        self.profiler.start()
        self._cpu, self._t = cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t
        self.cpu_s = cpu() - self._cpu
        self.profiler.stop()


def warm_up(host: str, port: int) -> None:
    """One connection and one byte each way through the TCP echo server (port ``port``)."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"w")
        if s.recv(1) != b"w":
            raise RuntimeError("warm-up: the echo server did not echo")


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def download(host: str, port: int, size: int, echo: int) -> dict[str, Any]:
    warm_up(host, echo)
    buf = bytearray(size + READ_CHUNK)
    view = memoryview(buf)
    got = 0
    with socket.create_connection((host, port), timeout=30) as s:
        with Measure() as m:
            s.sendall(LENGTH.pack(size))
            while True:
                n = s.recv_into(view[got:got + READ_CHUNK])
                if not n:
                    break
                got += n
    ok = got == size and hashlib.sha256(view[:got]).hexdigest() == hashlib.sha256(bulk_pattern(size)).hexdigest()
    return {"bytes": got, "sha256_ok": ok, "MB_per_s": got / m.wall_s / 1e6, "cpu_s": m.cpu_s,
            "wall_s": m.wall_s, "cpu_s_per_MB": m.cpu_s / (got / 1e6) if got else None}


def upload(host: str, port: int, size: int, echo: int) -> dict[str, Any]:
    warm_up(host, echo)
    data = bulk_pattern(size)
    want = hashlib.sha256(data).hexdigest()
    view = memoryview(data)
    with socket.create_connection((host, port), timeout=30) as s:
        with Measure() as m:
            for off in range(0, size, READ_CHUNK):
                s.sendall(view[off:off + READ_CHUNK])
            s.shutdown(socket.SHUT_WR)
            count, digest = SINK_REPLY.unpack(recv_exactly(s, SINK_REPLY.size))
    return {"bytes": count, "sha256_ok": count == size and digest.hex() == want,
            "MB_per_s": size / m.wall_s / 1e6, "cpu_s": m.cpu_s, "wall_s": m.wall_s,
            "cpu_s_per_MB": m.cpu_s / (size / 1e6)}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def rr(host: str, port: int, rounds: int) -> dict[str, Any]:
    warm_up(host, port)
    msg = b"r" * RR_SIZE
    lat = []
    with socket.create_connection((host, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(20):
            s.sendall(msg)
            recv_exactly(s, RR_SIZE)
        with Measure() as m:
            for _ in range(rounds):
                t = time.perf_counter()
                s.sendall(msg)
                if recv_exactly(s, RR_SIZE) != msg:
                    raise RuntimeError("the echo server answered other bytes")
                lat.append(time.perf_counter() - t)
    return {"rounds": rounds, "p50_us": pct(lat, 50) * 1e6, "p99_us": pct(lat, 99) * 1e6,
            "mean_us": sum(lat) / len(lat) * 1e6, "cpu_s": m.cpu_s, "wall_s": m.wall_s,
            "cpu_us_per_round": m.cpu_s / rounds * 1e6}


def connect(host: str, port: int, count: int) -> dict[str, Any]:
    warm_up(host, port)
    with Measure() as m:
        for _ in range(count):
            s = socket.create_connection((host, port), timeout=10)
            s.close()
    return {"connections": count, "per_s": count / m.wall_s, "cpu_s": m.cpu_s, "wall_s": m.wall_s,
            "cpu_us_per_connection": m.cpu_s / count * 1e6}


def memory() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1])
    return out


def concurrent(host: str, port: int, count: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * count + 64))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    warm_up(host, port)
    before = memory()
    socks = []
    with Measure() as m:
        for _ in range(count):
            socks.append(socket.create_connection((host, port), timeout=10))
    mem = memory()
    for s in socks:  # every connection is alive: one byte each way on each
        s.sendall(b"x")
    alive = sum(1 for s in socks if recv_exactly(s, 1) == b"x")
    for s in socks:
        s.close()
    return {"connections": count, "alive": alive, "setup_s": m.wall_s, "per_s": count / m.wall_s,
            "cpu_s": m.cpu_s, "rss_before_MB": before["VmRSS"] / 1024, "rss_MB": mem["VmRSS"] / 1024,
            "hwm_MB": mem["VmHWM"] / 1024, "rss_delta_MB": (mem["VmRSS"] - before["VmRSS"]) / 1024,
            "rss_per_connection_KB": (mem["VmRSS"] - before["VmRSS"]) / count}


def main(argv: list[str]) -> int:
    phase, host, port, n = argv[0], argv[1], int(argv[2]), int(argv[3])
    echo = int(os.environ.get("BENCH_ECHO_PORT", "7"))
    if phase == "download":
        result = download(host, port, n, echo)
    elif phase == "upload":
        result = upload(host, port, n, echo)
    elif phase == "rr":
        result = rr(host, port, n)
    elif phase == "connect":
        result = connect(host, port, n)
    elif phase == "concurrent":
        result = concurrent(host, port, n)
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    result["socket_module"] = socket.socket.__module__
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
