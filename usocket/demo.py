"""The main job on an embedded default: the lab, the userland stack, real kernel-stack servers.

An unmodified ``urllib.request`` client fetches files from nginx and Python's http.server in the
peer namespace, with every byte carried by the userland stack: names resolved through the
stack's DNS (dnsmasq in the peer), TCP by the stack's engine. The kernel's own TCP/UDP egress is
REJECTed in the client namespace, so only the userland path can work; the demo counts what those
REJECT rules caught (0). The only change to the standard library is the one the hijacker
(``python -m usocket_hijack``) makes for a whole program: ``http.client`` sees ``usocket`` as its
``socket`` module, for the duration of the demo.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any


def run_demo(mode: str = "shared", pcap: str | None = None, verbose: bool = False) -> int:
    import http.client
    import urllib.request

    import usocket

    from .lab import Lab
    from .runtime import Runtime, set_runtime
    from .wire.addr import ip_ntoa

    print("usocket demo: building the lab (two namespaces, veth, kernel-stack servers) ...", flush=True)
    with Lab() as lab:
        lab.block_kernel_egress()
        cfg = lab.stack_config(mode)
        print(f"  client namespace {lab.client_ns}: stack on {cfg.iface} {ip_ntoa(cfg.address)}/{cfg.prefix_len} "
              f"({mode} mode); kernel TCP/UDP egress REJECTed there")
        print(f"  server namespace {lab.server_ns}: {lab.server_ip} (kernel stack: dnsmasq, nginx, http.server)")
        t0 = time.monotonic()
        failed = 0
        with Runtime(cfg, pcap=pcap) as rt:
            stack = rt.stack
            assert stack is not None
            prev = set_runtime(rt)
            client: Any = http.client
            saved = client.socket
            client.socket = usocket  # what the hijacker does
            try:
                print("\n1. Names through the stack's DNS (dnsmasq in the peer namespace):")
                for name in (lab.server_name, f"www.{lab.DOMAIN}"):
                    t = time.monotonic()
                    addr = usocket.gethostbyname(name)  # type: ignore[attr-defined]
                    print(f"   {name:<28} -> {addr:<15} in {1000 * (time.monotonic() - t):.1f} ms")
                print("\n2. urllib.request.urlopen(), unmodified, over the stack's TCP:")
                total = 0
                for server, path in (("nginx", "/index.html"), ("http", "/1m.bin"), ("nginx", "/16m.bin")):
                    url = lab.url(path, server, host=lab.server_name)
                    t = time.monotonic()
                    with urllib.request.urlopen(url, timeout=30) as resp:
                        body = resp.read()
                        status = resp.status
                    dt = time.monotonic() - t
                    size, digest = lab.http_files[path]
                    ok = status == 200 and len(body) == size and hashlib.sha256(body).hexdigest() == digest
                    failed += not ok
                    total += len(body)
                    print(f"   {url:<48} {status} {len(body):>9} B in {1000 * dt:7.1f} ms "
                          f"({len(body) / dt / 1e6:5.1f} MB/s), sha256 {'match' if ok else 'MISMATCH'}")
            finally:
                client.socket = saved
                set_runtime(prev)
            counters = stack.counters.snapshot()
        elapsed = time.monotonic() - t0
        print(f"\n3. What happened: {total} B fetched in {elapsed:.2f} s; "
              f"the kernel's REJECT rules caught {lab.kernel_egress_rejected()} packet(s).")
        print("   Per-layer counters:")
        for layer in sorted(counters):
            items = " ".join(f"{k}={v}" for k, v in sorted(counters[layer].items()) if v)
            if verbose or layer in ("tcp", "dns", "divert", "ipv4"):
                print(f"   {layer:>9}: {items[:300]}")
        if pcap:
            print(f"   Every frame is in {pcap} (tshark -r {pcap}).")
    return 1 if failed else 0
