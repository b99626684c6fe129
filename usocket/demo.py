"""The main job on an embedded default: the lab, the userland stack, real kernel-stack servers.

Until TCP and the socket API exist, the demo shows what the foundation carries: names resolved by
dnsmasq through the stack's DNS and UDP, and UDP datagrams from 1 byte to 60 KB echoed by a kernel
server (fragmented both ways), with the kernel's own TCP/UDP egress REJECTed in the client
namespace so that only the userland path can work.
"""
from __future__ import annotations

import hashlib
import os
import time


def run_demo(mode: str = "shared", pcap: str | None = None, verbose: bool = False) -> int:
    from .dgram import DatagramSocket
    from .lab import Lab
    from .resolver import Resolver
    from .runtime import Runtime
    from .wire.addr import ip_ntoa

    print("usocket demo: building the lab (two namespaces, veth, kernel-stack servers) ...", flush=True)
    with Lab() as lab:
        lab.block_kernel_egress()
        cfg = lab.stack_config(mode)
        print(f"  client namespace {lab.client_ns}: stack on {cfg.iface} {ip_ntoa(cfg.address)}/{cfg.prefix_len} "
              f"({mode} mode); kernel TCP/UDP egress REJECTed there")
        print(f"  server namespace {lab.server_ns}: {lab.server_ip} (kernel stack: dnsmasq, UDP echo, ...)")
        t0 = time.monotonic()
        with Runtime(cfg, pcap=pcap) as rt:
            stack = rt.stack
            assert stack is not None
            res = Resolver(rt)
            print("\n1. DNS through the stack (dnsmasq in the peer namespace):")
            for name in ("server", f"www.{lab.DOMAIN}"):
                t = time.monotonic()
                addr = res.gethostbyname(name)
                print(f"   {name:<28} -> {addr:<15} in {1000 * (time.monotonic() - t):.1f} ms")
            print("\n2. UDP echo through the stack (kernel UDP echo server, fragmentation both ways):")
            sent = received = 0
            with DatagramSocket(rt) as s:
                s.settimeout(5)
                s.connect((lab.server_ip, lab.ports["udp_echo"]))
                for size in (1, 1400, 8000, 30000, 60000):
                    payload = os.urandom(size)
                    t = time.monotonic()
                    s.send(payload)
                    back = s.recv(65536)
                    ok = hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
                    sent += size
                    received += len(back)
                    print(f"   {size:>6} B -> echoed {len(back):>6} B, sha256 {'match' if ok else 'MISMATCH'}, "
                          f"{1000 * (time.monotonic() - t):.2f} ms")
                    if not ok:
                        return 1
            counters = stack.counters.snapshot()
        elapsed = time.monotonic() - t0
        print(f"\n3. What happened: {sent} B sent, {received} B received in {elapsed:.2f} s; "
              f"the kernel's REJECT rules caught {lab.kernel_egress_rejected()} packet(s).")
        print("   Per-layer counters:")
        for layer in sorted(counters):
            items = " ".join(f"{k}={v}" for k, v in sorted(counters[layer].items()) if v)
            print(f"   {layer:>9}: {items}")
        if pcap:
            print(f"   Every frame is in {pcap} (tshark -r {pcap}).")
        print("\n(The urllib-over-TCP demo arrives with the TCP engine and the socket API.)")
    return 0
