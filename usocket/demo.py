"""The main job on an embedded default: the lab, the hijacker, an unmodified urllib program.

``python -m usocket demo`` builds the lab (two namespaces, real kernel-stack servers in the peer),
REJECTs the kernel's own TCP/UDP egress in the client namespace, and runs an ordinary urllib
program (``usocket/demo_client.py``, which knows nothing about usocket) there under
``python -m usocket_hijack``: names resolve through the stack's DNS (dnsmasq in the peer), the
bytes travel over the stack's TCP. The demo checks every body's sha256 against the served file,
counts what the REJECT rules caught (0), and shows the stack's per-layer counters (``--stats``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_client.py")
SHOWN_LAYERS = ("tcp", "dns", "divert", "ipv4")


def run_demo(mode: str = "shared", pcap: str | None = None, verbose: bool = False) -> int:
    from .lab import Lab
    from .netns import ns_cmd
    from .wire.addr import ip_ntoa

    print("usocket demo: building the lab (two namespaces, veth, kernel-stack servers) ...", flush=True)
    with Lab() as lab:
        lab.block_kernel_egress()
        cfg = lab.stack_config(mode)
        print(f"  client namespace {lab.client_ns}: stack on {cfg.iface} {ip_ntoa(cfg.address)}/{cfg.prefix_len} "
              f"({mode} mode); kernel TCP/UDP egress REJECTed there")
        print(f"  server namespace {lab.server_ns}: {lab.server_ip} (kernel stack: dnsmasq, nginx, http.server)")
        files = [("nginx", "/index.html"), ("http", "/1m.bin"), ("nginx", "/16m.bin")]
        urls = {lab.url(path, server, host=lab.server_name): path for server, path in files}
        opts = ["--stats"] + (["--pcap", os.path.abspath(pcap)] if pcap else [])
        argv = [sys.executable, "-m", "usocket_hijack", *opts, CLIENT, lab.server_name, f"www.{lab.DOMAIN}",
                "--", *urls]
        env = dict(os.environ, **lab.env(mode))
        env.pop("USOCKET_DEFAULT_RUNTIME", None)
        print(f"  running: ip netns exec {lab.client_ns} python -m usocket_hijack {' '.join(opts)} "
              f"usocket/demo_client.py ...\n", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(ns_cmd(lab.client_ns, argv), env=env, capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - t0
        failed = proc.returncode != 0
        total = 0
        for line in proc.stdout.splitlines():
            m = re.match(r"\s+(\S+)\s+(\d+)\s+(\d+) B in .* sha256 ([0-9a-f]{64})$", line)
            if m:
                url, status, size, digest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
                ok = status == 200 and (size, digest) == lab.http_files[urls.get(url, "")]
                failed |= not ok
                total += size
                line = line[:line.rindex(", sha256 ")] + f", sha256 {'match' if ok else 'MISMATCH'}"
            print(line)
        stats = [line for line in proc.stderr.splitlines() if re.match(r"\s+\w+: ", line)]
        other = [line for line in proc.stderr.splitlines() if line not in stats and "usocket stats" not in line]
        if other:
            print("\n   the program's stderr:\n" + "\n".join("   " + line for line in other))
        print(f"\n3. What happened: {total} B fetched in {elapsed:.2f} s (the hijacked program's whole run, "
              f"exit status {proc.returncode}); the kernel's REJECT rules caught {lab.kernel_egress_rejected()} "
              "packet(s).")
        print("   Per-layer counters (--stats):")
        for line in stats:
            layer, _, items = line.strip().partition(": ")
            if verbose or layer in SHOWN_LAYERS:
                print(f"   {layer:>9}: {items}"[:300])
        if pcap:
            print(f"   Every frame is in {pcap} (tshark -r {pcap}).")
    return 1 if failed else 0
