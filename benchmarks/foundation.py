"""Foundation benchmarks (below TCP): UDP request/response latency and receive rate through
the userland stack vs the kernel, in the lab, plus per-packet codec costs.

    sudo .venv/bin/python -m benchmarks.foundation [--rounds 2000] [--json out.json]

Numbers are measured, never asserted; the README quotes them with this command.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import textwrap
import time
import timeit

from usocket.facade.sockets import socket_on
from usocket.lab import Lab
from usocket.runtime import Runtime
from usocket.wire.addr import ip_ntoa

KERNEL_RR = textwrap.dedent("""
    import socket, sys, time, json
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((sys.argv[1], 7))
    lat = []
    for i in range(int(sys.argv[2])):
        t = time.perf_counter(); s.send(b"x" * 100); s.recv(200); lat.append(time.perf_counter() - t)
    print(json.dumps(lat))
""")

BLAST = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n, size, rate = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    payload = b"b" * size
    t0 = time.perf_counter()
    for i in range(n):
        s.sendto(payload, (sys.argv[1], int(sys.argv[2])))
        if rate and i % 100 == 99:  # pace: rate datagrams per second
            while time.perf_counter() - t0 < (i + 1) / rate:
                pass
    s.sendto(b"END", (sys.argv[1], int(sys.argv[2])))
""")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def rr_usocket(rt: Runtime, lab: Lab, rounds: int) -> list[float]:
    lat = []
    with socket_on(rt, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.connect((lab.server_ip, lab.ports["udp_echo"]))
        for _ in range(50):  # warm up ARP and caches
            s.send(b"x" * 100)
            s.recv(200)
        for _ in range(rounds):
            t = time.perf_counter()
            s.send(b"x" * 100)
            s.recv(200)
            lat.append(time.perf_counter() - t)
    return lat


def blast_usocket(rt: Runtime, lab: Lab, n: int, size: int, rate: float) -> dict[str, float]:
    with socket_on(rt, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 0))
        # measure the stack, not the socket buffer: as large as a kernel socket may ask for
        # (Linux caps it at net.core.rmem_max, and so does the facade's socketpair)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        port = s.getsockname()[1]
        s.settimeout(10)
        p = lab.popen(lab.server_ns, [sys.executable, "-c", BLAST, ip_ntoa(rt.config.address), str(port), str(n),
                                      str(size), str(rate)])
        got = 0
        t0 = t_last = time.perf_counter()
        s.settimeout(2)
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break  # the END marker was lost with the rest of the overflow
            if got == 0:
                t0 = time.perf_counter()
            if data == b"END":
                break
            got += 1
            t_last = time.perf_counter()
        elapsed = t_last - t0
        p.wait()
    return {"sent": n, "received": got, "seconds": elapsed, "datagrams_per_s": got / elapsed if elapsed else 0.0,
            "MB_per_s": got * size / elapsed / 1e6 if elapsed else 0.0}


def codec_costs() -> dict[str, float]:
    from usocket.wire.ipv4 import IPv4Template, parse_ipv4
    from usocket.wire.udp import build_udp, parse_udp

    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    payload = random.randbytes(1400)
    udp = build_udp(1000, 2000, payload, src, dst)
    tpl = IPv4Template(src, dst, 17, 64, 0)
    pkt = tpl.build(udp, 1)
    n = 20000
    out = {}
    for name, fn in {
        "build_udp_1400B_us": lambda: build_udp(1000, 2000, payload, src, dst),
        "ipv4_header_template_us": lambda: tpl.build(udp, 1),
        "parse_ipv4_us": lambda: parse_ipv4(pkt),
        "parse_udp_verify_1400B_us": lambda: parse_udp(pkt[20:], src, dst),
    }.items():
        out[name] = min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--blast", type=int, default=20000, help="datagrams in the receive-rate test")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results: dict[str, object] = {"codec": codec_costs()}
    with Lab() as lab:
        out = lab.run(lab.client_ns, [sys.executable, "-c", KERNEL_RR, lab.server_ip, str(args.rounds)]).stdout
        k = json.loads(out)
        results["kernel"] = {"rr_p50_us": pct(k, 50) * 1e6, "rr_p99_us": pct(k, 99) * 1e6}
        for mode in ("shared", "own"):
            with Runtime(lab.stack_config(mode)) as rt:
                lat = rr_usocket(rt, lab, args.rounds)
                r: dict[str, object] = {"rr_p50_us": pct(lat, 50) * 1e6, "rr_p99_us": pct(lat, 99) * 1e6,
                                        "rr_mean_us": statistics.mean(lat) * 1e6}
                r["blast_1400B_unpaced"] = blast_usocket(rt, lab, args.blast, 1400, 0)
                r["blast_1400B_20k_per_s"] = blast_usocket(rt, lab, args.blast, 1400, 20000)
                results[mode] = r
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
