"""What packet hooks cost (usocket.hack, issue 7): per-packet time of the stack's receive and send
paths with no hook, after a hook was added and removed, and with observing hooks.

    .venv/bin/python -m benchmarks.hack_hooks [--number 20000] [--repeat 7]

No root, no network: one sans-IO stack fed a fixed UDP frame (to a port with an endpoint that
drops it) and sending 100-byte datagrams, timed with ``timeit`` (best of ``--repeat``, CPU time
of this process). ``--baseline`` measures only the paths with no hook, which also runs on a tree
without ``usocket.hack`` (``PYTHONPATH=/path/to/other/tree``) for a before/after comparison.
Numbers are measured, never asserted.
"""
from __future__ import annotations

import argparse
import random
import time
import timeit
from typing import Any

from usocket.config import OWN, StackConfig
from usocket.proto.udp import UdpEndpoint
from usocket.stack import Stack
from usocket.wire.addr import ip_aton, mac_aton
from usocket.wire.ethernet import build_header
from usocket.wire.ipv4 import build_ipv4
from usocket.wire.udp import build_udp

A, B = ip_aton("10.9.0.1"), ip_aton("10.9.0.2")
MAC_A, MAC_B = mac_aton("02:00:00:00:01:01"), mac_aton("02:00:00:00:02:01")


class Sink(UdpEndpoint):
    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        pass


def make_stack() -> tuple[Stack, bytes, UdpEndpoint]:
    st = Stack(StackConfig(iface="b0", mac=MAC_B, address=B, mode=OWN), rng=random.Random(1))
    sink = st.udp.open(Sink)
    st.udp.bind(sink, b"\0\0\0\0", 9)
    frame = build_header(MAC_B, MAC_A, 0x0800) + build_ipv4(A, B, 17, build_udp(5000, 9, b"x" * 100, A, B),
                                                             ident=1, ttl=64)
    st.arp._learn(A, MAC_A)  # a resolved neighbour: sends go straight out
    sender = st.udp.open()
    st.udp.bind(sender, b"\0\0\0\0", 5000)
    return st, frame, sender


def per_packet(fn: Any, number: int, repeat: int) -> float:
    """Best per-call CPU time in microseconds."""
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)) / number * 1e6


def measure(st: Stack, frame: bytes, sender: UdpEndpoint, number: int, repeat: int) -> tuple[float, float]:
    payload = b"y" * 100

    def rx() -> None:
        st.receive_frame(frame, 1.0)

    def tx() -> None:
        st.udp.sendto(sender, payload, A, 5000)
        st._out.clear()

    return per_packet(rx, number, repeat), per_packet(tx, number, repeat)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--number", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--baseline", action="store_true", help="only the paths with no hook")
    args = p.parse_args()
    st, frame, sender = make_stack()
    rows = [("no hook", *measure(st, frame, sender, args.number, args.repeat))]
    if not args.baseline:
        from usocket import hack

        h = hack.hooks(st)
        everywhere = [(w, d) for w in ("link", "ipv4", "arp", "icmp", "udp", "tcp") for d in ("in", "out")]
        removers = [h.add(w, d, lambda data, ctx: data) for w, d in everywhere]
        for r in removers:
            r()
        rows.append(("after hooks were added and removed", *measure(st, frame, sender, args.number, args.repeat)))
        for where in ("link", "ipv4", "udp"):
            rm = [h.add(where, d, lambda data, ctx: data) for d in ("in", "out")]
            rows.append((f"one observing hook at {where}, both ways", *measure(st, frame, sender, args.number,
                                                                               args.repeat)))
            for r in rm:
                r()
        rm = [h.add("udp", d, lambda pkt, ctx: pkt, scapy=True) for d in ("in", "out")]
        rows.append(("one scapy hook at udp, both ways",
                     *measure(st, frame, sender, max(args.number // 50, 100), args.repeat)))
        for r in rm:
            r()
    print(f"{'':45} {'receive_frame us':>17} {'udp.sendto us':>14}")
    for name, rx, tx in rows:
        print(f"{name:45} {rx:17.2f} {tx:14.2f}")


if __name__ == "__main__":
    main()
