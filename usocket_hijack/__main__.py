"""usage: python -m usocket_hijack [options] (script.py | -m module | -c command) [args ...]

Run a Python program exactly as ``python`` would, with its sockets on usocket's userland stack
(and its Python child processes too, unless --no-children).

stack options (environment equivalents in brackets; default: discovered from the system):
  -i, --iface IFACE     interface the stack uses                 [USOCKET_IFACE]
  --mode shared|own     shared: the interface's IP, the kernel diverted (default);
                        own: an address of the stack's own       [USOCKET_MODE]
  --address A.B.C.D/N   the stack's address (own mode)           [USOCKET_ADDR]
  --gateway IP|none     default gateway                          [USOCKET_GATEWAY]
  --netns NAME          run the stack's link inside this network namespace [USOCKET_NETNS]

hijack options:
  --log-level LEVEL     log the stack at LEVEL (DEBUG, INFO...) to stderr [USOCKET_LOG_LEVEL]
  --pcap FILE           write every frame the stack sends or receives to FILE (a child
                        process writes FILE.<pid>; "{pid}" in FILE is replaced) [USOCKET_PCAP]
  --stats               print per-layer counters to stderr at exit [USOCKET_STATS=1]
  --grace SECONDS       at exit, how long closing connections may take (default 2) [USOCKET_STOP_GRACE]
  --no-children         do not hijack Python child processes      [USOCKET_HIJACK=0 in a child]
  --cleanup             remove diversion rules left by dead usocket processes and exit
  --ss PID              show the sockets and counters of the running hijacked program PID
                        (python -m usocket ss -h: more choices) and exit
  --version             print the version and exit
  -h, --help            this help
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

VALUE_OPTS = {"-i", "--iface", "--mode", "--address", "--gateway", "--netns", "--log-level", "--pcap", "--grace",
              "--ss"}
ENV = {"iface": "USOCKET_IFACE", "mode": "USOCKET_MODE", "address": "USOCKET_ADDR",
       "gateway": "USOCKET_GATEWAY", "netns": "USOCKET_NETNS"}


def _usage_error(msg: str) -> SystemExit:
    sys.stderr.write(__doc__.splitlines()[0] + "\n" + f"usocket-hijack: error: {msg}\n")
    return SystemExit(2)


def split_argv(argv: list[str]) -> tuple[list[str], tuple[str, str] | None, list[str]]:
    """(our options, (kind, target) or None, the target's arguments)."""
    opts: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-m", "-c"):
            if i + 1 >= len(argv):
                raise _usage_error(f"argument expected for the {a} option")
            return opts, (a, argv[i + 1]), argv[i + 2:]
        if a.startswith("-m") and len(a) > 2:  # python accepts -mmodule
            return opts, ("-m", a[2:]), argv[i + 1:]
        if a.startswith("-c") and len(a) > 2:
            return opts, ("-c", a[2:]), argv[i + 1:]
        if a == "--":
            if i + 1 >= len(argv):
                raise _usage_error("a script is expected after --")
            return opts, ("script", argv[i + 1]), argv[i + 2:]
        if a == "-" or not a.startswith("-"):
            return opts, ("script", a), argv[i + 1:]
        opts.append(a)
        if a in VALUE_OPTS:
            if i + 1 >= len(argv):
                raise _usage_error(f"argument expected for {a}")
            opts.append(argv[i + 1])
            i += 1
        i += 1
    return opts, None, []


def parse_options(opts: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="usocket-hijack", add_help=False)
    ap.add_argument("-h", "--help", action="store_true")
    ap.add_argument("--version", action="store_true")
    ap.add_argument("-i", "--iface")
    ap.add_argument("--mode", choices=["shared", "own"])
    ap.add_argument("--address")
    ap.add_argument("--gateway")
    ap.add_argument("--netns")
    ap.add_argument("--log-level")
    ap.add_argument("--pcap")
    ap.add_argument("--stats", action="store_true")
    ap.add_argument("--grace", type=float)
    ap.add_argument("--no-children", action="store_true")
    ap.add_argument("--cleanup", action="store_true")
    ap.add_argument("--ss", type=int)
    return ap.parse_args(opts)


def _cleanup(netns: str | None) -> int:
    from usocket.divert.rules import cleanup

    stats: dict[str, int] = {}
    n = cleanup(netns=netns, stats=stats)
    print(f"usocket-hijack: removed {n} stale rule(s) and {stats.get('sets', 0)} ipset(s)"
          + (f" in {netns}" if netns else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, target, args = split_argv(argv)
    ns = parse_options(own)
    if ns.help:
        sys.stdout.write(__doc__)
        return 0
    if ns.version:
        from usocket import __version__

        print(f"usocket-hijack {__version__}")
        return 0
    if ns.cleanup:
        return _cleanup(ns.netns)
    if ns.ss is not None:
        from usocket.cli import main as usocket_main

        return usocket_main(["ss", "--all", "--info", "--counters", str(ns.ss)])
    if target is None:
        raise _usage_error("a script, -m module or -c command is required")
    if ns.log_level:
        import logging

        if not isinstance(logging.getLevelName(ns.log_level.upper()), int):
            raise _usage_error(f"unknown log level {ns.log_level!r}")
    for key, var in ENV.items():
        value = getattr(ns, key)
        if value:
            os.environ[var] = value

    import usocket_hijack as hj
    from usocket_hijack import runner

    pcap = os.path.abspath(ns.pcap) if ns.pcap else os.environ.get("USOCKET_PCAP") or None
    opts = hj.HijackOptions(log_level=ns.log_level or os.environ.get("USOCKET_LOG_LEVEL") or None,
                            pcap=pcap, stats=ns.stats or os.environ.get("USOCKET_STATS", "") not in ("", "0"),
                            grace=ns.grace)
    env = hj.child_environment(children=not ns.no_children, options=opts)
    for k in [k for k in os.environ if k not in env]:
        del os.environ[k]
    os.environ.update(env)
    hj.install(opts)

    kind, what = target
    try:
        if kind == "-m":
            runner.run_module(what, args)
        elif kind == "-c":
            runner.run_command(what, args)
        else:
            runner.run_script(what, args)
    except SystemExit:
        raise
    except KeyboardInterrupt as exc:
        runner.report_uncaught(exc)
        hj._state.exit_signal = signal.SIGINT  # the exit handler dies of SIGINT, as python
        raise SystemExit(128 + signal.SIGINT) from None
    except BaseException as exc:  # noqa: BLE001 - printed as python prints it
        runner.report_uncaught(exc)
        raise SystemExit(1) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
