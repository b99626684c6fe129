"""Look like another operating system to a fingerprinting tool (p0f), per socket.

    python -m usocket.lab run -- examples/hack_personality.py windows
    python -m usocket.lab run -- examples/hack_personality.py linux macos windows

For each profile (`usocket.hack.PROFILES`: linux, windows, macos) a `usocket.socket` gets
`hack.set_connection_class(sock, hack.personality(name))` and connects to the lab's TCP echo
server; its SYN carries the profile's TTL, window, MSS, window scale and option order. p0f
(Debian's `p0f`, run on the stack's interface while the program runs) says which OS it sees:

    windows: p0f says os=Windows 7 or 8 raw_sig=4:128+0:0:1460:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0

Without p0f installed (or with `--no-p0f`), the SYN as the stack sent it (an IPv4-output hook)
is printed instead.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import usocket as socket
from usocket import hack
from usocket.runtime import get_runtime


def start_p0f(iface: str, log: str) -> subprocess.Popen[str] | None:
    if shutil.which("p0f") is None:
        return None
    p = subprocess.Popen(["p0f", "-i", iface, "-o", log], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    assert p.stdout is not None
    for line in p.stdout:  # ready once it captures
        if "Entered main event loop" in line:
            return p
    raise SystemExit(f"p0f did not start (exit status {p.wait()})")


def p0f_verdict(log: str, port: int, timeout: float = 5.0) -> str:
    """The os= and raw_sig= p0f logged for the SYN from our ``port``."""
    pattern = re.compile(rf"mod=syn\|cli=[\d.]+/{port}\|.*\|os=([^|]*)\|.*raw_sig=([^|\n]*)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log) as f:
            m = pattern.search(f.read())
        if m:
            return f"os={m.group(1)} raw_sig={m.group(2)}"
        time.sleep(0.05)  # p0f writes its log asynchronously
    return "no p0f verdict"


def main() -> int:
    args = sys.argv[1:]
    use_p0f = "--no-p0f" not in args
    names = [a for a in args if a != "--no-p0f"] or ["windows"]
    server = (os.environ.get("LAB_SERVER_IP", "198.18.1.2"), int(os.environ.get("LAB_TCP_ECHO_PORT", "7")))
    iface = os.environ.get("USOCKET_IFACE") or get_runtime().config.iface
    log = tempfile.mktemp(prefix="p0f-", suffix=".log")
    p0f = start_p0f(iface, log) if use_p0f else None
    syns: list[bytes] = []
    rt = get_runtime()
    if p0f is None:  # no p0f: record our own SYNs at the IPv4/Ethernet boundary
        def observe(data: bytes, ctx: hack.HookContext) -> bytes:
            if data[9] == 6 and data[20 + 13] & 0x12 == 0x02:
                syns.append(data)
            return data
        rt.call(hack.hooks(rt).add, "ipv4", "out", observe)
    try:
        for name in names:
            s = socket.socket()
            hack.set_connection_class(s, hack.personality(name))
            s.settimeout(10)
            s.connect(server)
            s.sendall(b"hello from " + name.encode())
            reply = s.recv(100)
            port = s.getsockname()[1]
            s.close()
            if p0f is not None:
                verdict = "p0f says " + p0f_verdict(log, port)
            else:
                syn = syns[-1]
                verdict = f"SYN ttl={syn[8]} window={int.from_bytes(syn[34:36], 'big')} (no p0f)"
            print(f"{name}: {verdict} (echo {'ok' if reply.startswith(b'hello') else 'BAD'})", flush=True)
    finally:
        if p0f is not None:
            p0f.terminate()
            p0f.wait()
            os.unlink(log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
