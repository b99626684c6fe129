"""``python -m usocket.lab up|run|cleanup|leftovers``: a lab by hand, a program in it, housekeeping.

- ``up [--loss P] [--mtu N] [--no-servers]``: build a lab, print its addresses and how to use
  it, wait until Ctrl-C or SIGTERM, then tear it down.
- ``run [--mode shared|own] [--peer CMD] [--hijack-opt OPT ...] -- PROGRAM [ARGS]``: build a lab
  and run an unmodified Python program in it under ``usocket_hijack`` (see :mod:`usocket.lab.run`).
- ``cleanup``: remove labs (namespaces, /etc/netns dirs, temp dirs) whose creating process died.
- ``leftovers``: list usl-* namespaces and usocket/NFQUEUE rules and usocket ipsets in the root namespace.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .netlab import Lab


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the with-block, which tears the lab down


def describe(lab: Lab) -> str:
    """Human-readable summary of a lab: namespaces, addresses, ports, names, how to get in."""
    lines = [
        f"lab {lab.tag} is up (Ctrl-C to tear it down)",
        f"  client ns {lab.client_ns}: {lab.client_if} {lab.client_ip}/{lab.prefix_len} {lab.client_mac}"
        f"  (own-mode address {lab.own_ip})",
        f"  server ns {lab.server_ns}: {lab.server_if} {lab.server_ip}/{lab.prefix_len} {lab.server_mac}",
        f"  mtu {lab.mtu}, loss {lab.loss}",
        "  ports: " + ", ".join(f"{k}={v}" for k, v in lab.ports.items()),
    ]
    if lab.servers:
        lines += [f"  http: {lab.url('/')}  nginx: {lab.url('/', 'nginx')}",
                  f"  files: {', '.join(lab.http_files)} (docroot {lab.docroot})",
                  f"  dns: {lab.server_ip} domain {lab.DOMAIN}, log {lab.dns_log}",
                  "  names: " + ", ".join(sorted(lab.dns_records))]
    lines += [f"  shell: ip netns exec {lab.client_ns} bash",
              "  stack env: " + " ".join(f"{k}={v}" for k, v in lab.env().items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # its own parser: the program after ``--`` keeps its options
        from .run import main as run_main

        return run_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m usocket.lab", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a lab and wait until Ctrl-C")
    up.add_argument("--loss", type=float, default=0.0)
    up.add_argument("--mtu", type=int, default=1500)
    up.add_argument("--no-servers", action="store_true")
    sub.add_parser("run", help="run a Python program in a lab under usocket_hijack (run -h: its options)",
                   add_help=False)
    sub.add_parser("cleanup", help="remove labs of dead processes")
    sub.add_parser("leftovers", help="list usl-* namespaces and usocket rules and ipsets in the root ns")
    args = p.parse_args(argv)
    if args.cmd == "cleanup":
        print(f"removed {Lab.cleanup_stale()} stale namespace(s)")
        return 0
    if args.cmd == "leftovers":
        left = Lab.leftovers()
        print("\n".join(left) if left else "nothing left")
        return 1 if left else 0
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (`&`)
    try:
        with Lab(loss=args.loss, mtu=args.mtu, servers=not args.no_servers) as lab:
            print(describe(lab), flush=True)
            threading.Event().wait()  # until Ctrl-C / SIGTERM
    except (KeyboardInterrupt, SystemExit):
        pass
    print("lab torn down", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
