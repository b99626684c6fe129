"""``usocket`` command line: ``demo``, ``cleanup``, ``info``, ``ss``.

``python -m usocket demo`` builds the lab (two network namespaces, real kernel-stack servers in the
peer), runs the userland stack in the client namespace with the kernel's own TCP/UDP egress
REJECTed there, and prints what happened.
"""
from __future__ import annotations

import argparse
import logging
import sys


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from .divert.rules import cleanup

    targets: list[str | None] = [args.netns]
    if args.all_namespaces:
        import subprocess

        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        targets = [None] + [line.split()[0] for line in out.splitlines() if line.strip()]
    total: dict[str, int] = {"rules": 0, "sets": 0}
    for ns in targets:
        stats: dict[str, int] = {}
        cleanup(netns=ns, everything=args.all, stats=stats)
        for k in total:
            total[k] += stats.get(k, 0)
        if stats.get("rules") or stats.get("sets"):
            print(f"usocket: removed {stats['rules']} rule(s) and {stats['sets']} ipset(s) in "
                  f"{ns or 'the current namespace'}")
    print(f"usocket: cleanup done, {total['rules']} rule(s) and {total['sets']} ipset(s) removed")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .config import discover
    from .wire.addr import ip_ntoa, mac_ntoa

    cfg = discover(netns=args.netns) if args.netns else discover()
    print(f"interface  {cfg.iface} mac {mac_ntoa(cfg.mac)} mtu {cfg.mtu}")
    print(f"address    {ip_ntoa(cfg.address)}/{cfg.prefix_len} ({cfg.mode} mode)")
    print(f"gateway    {ip_ntoa(cfg.gateway) if cfg.gateway else '-'}")
    r = cfg.resolver
    print(f"resolver   {', '.join(r.nameservers) or '-'} search {' '.join(r.search) or '-'} "
          f"ndots {r.ndots} timeout {r.timeout:g}s attempts {r.attempts}; {len(r.hosts)} hosts entries")
    return 0


def _cmd_ss(args: argparse.Namespace) -> int:
    from .control import ControlError, control_dir, endpoints, query
    from .introspect import SocketRow, format_counters, format_table

    pids = args.pid or endpoints(args.dir)
    if not pids:
        print(f"usocket: no usocket process with a control endpoint in {args.dir or control_dir()}",
              file=sys.stderr)
        return 1
    what = "all" if args.counters else "sockets"
    status = 0
    results = []
    for pid in pids:
        try:
            results.append(query(pid, what, directory=args.dir))
        except ControlError as exc:
            if args.pid:  # asked for by name: say why; a stale file in a listing is skipped
                print(f"usocket: {exc}", file=sys.stderr)
                status = 1
    if args.json:
        import json

        print(json.dumps(results if len(results) != 1 or not args.pid else results[0], indent=1))
        return status
    rows = [SocketRow.from_dict(d) for r in results for d in r.get("sockets", [])]
    if args.listening:
        rows = [r for r in rows if r.state in ("LISTEN", "UNCONN")]
    if not args.all and not args.listening:
        rows = [r for r in rows if r.state not in ("LISTEN", "UNCONN")]
    if args.tcp != args.udp:
        rows = [r for r in rows if r.proto == ("tcp" if args.tcp else "udp")]
    print(format_table(rows, info=args.info))
    for r in results if args.counters else ():
        print(f"\ncounters of pid {r['pid']} ({r['mode']} mode, {r['iface']} {r['address']}):")
        print(format_counters(r.get("counters", {})))
    return status


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(mode=args.mode, pcap=args.pcap, verbose=args.verbose)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="usocket", description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="log what the stack does")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the main job in the built-in lab")
    d.add_argument("--mode", choices=["shared", "own"], default="shared",
                   help="shared: the interface's own IP with kernel diversion (default); own: a separate IP")
    d.add_argument("--pcap", help="write every frame the stack sends or receives to this pcap file")
    d.set_defaults(func=_cmd_demo)
    c = sub.add_parser("cleanup", help="remove diversion rules and ipsets left by dead usocket processes")
    c.add_argument("--netns", help="network namespace to clean (default: the current one)")
    c.add_argument("--all", action="store_true", help="remove every usocket rule and ipset, live owners' too")
    c.add_argument("--all-namespaces", action="store_true",
                   help="the current namespace and every named one (ip netns list)")
    c.set_defaults(func=_cmd_cleanup)
    i = sub.add_parser("info", help="print the configuration discovered from the system")
    i.add_argument("--netns", help="discover inside this network namespace")
    i.set_defaults(func=_cmd_info)
    s = sub.add_parser("ss", help="the sockets of running usocket programs (hijacked ones by default)",
                       description="Show the socket table of running usocket processes, as ss does for "
                       "the kernel, asked through their control endpoint (a Unix socket file in "
                       "/run/usocket; works from any network namespace).")
    s.add_argument("pid", type=int, nargs="*", help="process ids (default: every process with an endpoint)")
    s.add_argument("-a", "--all", action="store_true", help="listening and unconnected sockets too")
    s.add_argument("-l", "--listening", action="store_true", help="only listening and unconnected sockets")
    s.add_argument("-t", "--tcp", action="store_true", help="TCP only")
    s.add_argument("-u", "--udp", action="store_true", help="UDP only")
    s.add_argument("-i", "--info", action="store_true", help="TCP internals (rtt, cwnd, windows...), as ss -i")
    s.add_argument("-c", "--counters", action="store_true", help="the per-layer counters too")
    s.add_argument("--json", action="store_true", help="the raw answers, as JSON")
    s.add_argument("--dir", help="where the control sockets are (default: $USOCKET_CONTROL_DIR or /run/usocket)")
    s.set_defaults(func=_cmd_ss)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
