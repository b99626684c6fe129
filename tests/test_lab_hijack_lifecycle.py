"""Hijacked servers and the hijacker's lifecycle, in the lab (``python -m usocket_hijack``).

Each test runs a real program under ``python -m usocket_hijack`` in the lab's client namespace:
the stdlib's ``http.server`` serving curl, a program whose Python children (``subprocess``,
``multiprocessing`` spawn) do network I/O on stacks of their own, clients killed by SIGTERM,
SIGINT and SIGKILL in the middle of a download, programs that exit without closing their sockets,
and the ``--pcap``/``--stats`` options. The client namespace's kernel TCP/UDP egress is REJECTed
in every test, so a transfer that succeeds went through a userland stack (for a server there,
the kernel's own answers would be REJECTed too), and the counter must stay 0 wherever no stack
was killed. A hijacked process must never leave a diversion rule behind, except after SIGKILL,
where the next hijacked run (or ``--cleanup``) removes it: each test checks that.

Readiness and progress come from the programs' own output lines (read from a pipe with a
deadline), never from sleeps.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hijack_helpers import hijack_env, popen_hijacked, run_hijacked, sha256_hex, usocket_rules, write_script
from lab_runtime import stack_ip

from usocket.lab import Lab
from usocket.wire.tcp import ACK, FIN, RST, SYN

pytestmark = pytest.mark.lab

TIMEOUT = 20.0  # every blocking step of a test is bounded by this
SERVER_PORT = 8080  # the hijacked servers' port (nothing of the lab's listens there)


# -- helpers ----------------------------------------------------------------------------------------
def _read_until(proc: subprocess.Popen[Any], marker: bytes, timeout: float = TIMEOUT) -> bytes:
    """Read the binary stdout pipe of ``proc`` until ``marker`` appears (bounded); what was read."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} from the program in {timeout} s; got {buf!r}")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the program exited ({proc.wait(TIMEOUT)}) before {marker!r}; got {buf!r}")
            buf += chunk
    return buf


def _popen(lab: Lab, mode: str, args: list[str], stderr: Path, opts: list[str] | None = None) -> subprocess.Popen[Any]:
    """A hijacked program with unbuffered binary stdout on a pipe and stderr to a file (a pipe
    nobody reads could fill up and block it)."""
    return popen_hijacked(lab, mode, args, opts=opts, env=hijack_env(lab, mode, PYTHONUNBUFFERED="1"),
                          stdout=subprocess.PIPE, stderr=stderr.open("wb"), text=False)


def _wait(proc: subprocess.Popen[Any]) -> tuple[int, str]:
    """Exit status and the rest of stdout."""
    out, _ = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out.decode(errors="replace")


def _tshark_tcp(pcap: str) -> list[dict[str, Any]]:
    """Every TCP packet of ``pcap`` (read with ``tshark -r``): addresses, ports, flags, payload
    length and the HTTP request line, when there is one."""
    fields = ["ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.len",
              "http.request.method", "http.request.uri"]
    argv = ["tshark", "-r", pcap, "-n", "-Y", "tcp", "-T", "fields"] + [a for f in fields for a in ("-e", f)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"tshark -r {pcap} failed: {p.stderr}"
    rows = []
    for line in p.stdout.splitlines():
        values = line.split("\t")
        row: dict[str, Any] = dict(zip(fields, values + [""] * (len(fields) - len(values)), strict=True))
        row["flags"] = int(row.pop("tcp.flags"), 16)
        rows.append(row)
    assert rows, f"{pcap} holds no TCP packet"
    return rows



SLOW_CLIENT = """
    import hashlib, signal, sys, time, urllib.request

    stopping = []
    if sys.argv[2] == "exit5":  # the program's own SIGTERM handler exits with 5
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(5))
    elif sys.argv[2] == "graceful":  # the program's own SIGTERM handler lets the download finish
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    response = urllib.request.urlopen(sys.argv[1], timeout=3)  # a stalled read fails in 3 s
    h = hashlib.sha256(response.read(16384))
    print("started 16384", flush=True)
    n = 16384
    while chunk := response.read(16384):
        h.update(chunk)
        n += len(chunk)
        if not stopping:
            time.sleep(0.01)  # slow reader: the transfer lasts far longer than the test waits
    print("finished", n, h.hexdigest(), "after SIGTERM" if stopping else "", flush=True)
"""


def _start_slow_download(lab: Lab, mode: str, tmp_path: Path, variant: str = "plain") -> subprocess.Popen[Any]:
    """A hijacked client in the middle of downloading /16m.bin (its "started" line was read)."""
    script = write_script(tmp_path, "slow.py", SLOW_CLIENT)
    proc = _popen(lab, mode, [script, lab.url("/16m.bin", "nginx"), variant], tmp_path / f"slow-{variant}.err")
    _read_until(proc, b"started 16384")
    return proc


def _owner_rules(lab: Lab, pid: int) -> list[str]:
    """The ``-A`` diversion rules tagged with owner ``pid``."""
    return [r for r in usocket_rules(lab) if r.startswith("-A ") and f"pid={pid}:" in r]


# -- 1. a hijacked http.server ---------------------------------------------------------------------
def test_http_server_serves_curl_sequential_and_parallel(lab: Lab, mode: str, tmp_path: Path) -> None:
    """``-m http.server`` on the stack serves files to curl one at a time and 20 at once, all
    intact, then stops on SIGINT exactly as under python (message, exit 0) and leaves no rule."""
    lab.block_kernel_egress()
    www = tmp_path / "www"
    www.mkdir()
    files: dict[str, str] = {}
    for name, size in (("empty.txt", 0), ("small.txt", 1), ("odd.bin", 65537), ("big.bin", (3 << 20) + 5)):
        data = os.urandom(size)
        (www / name).write_bytes(data)
        files[name] = sha256_hex(data)
    proc = _popen(lab, mode, ["-m", "http.server", str(SERVER_PORT), "--directory", str(www)],
                  tmp_path / "server.err")
    banner = _read_until(proc, b"Serving HTTP").decode()
    assert f"port {SERVER_PORT}" in banner
    base = f"http://{stack_ip(lab, mode)}:{SERVER_PORT}"
    got = tmp_path / "got"
    got.mkdir()
    for name, sha in files.items():  # one at a time
        lab.run(lab.server_ns, ["curl", "-sS", "--fail", "--max-time", str(TIMEOUT), "-o", str(got / name),
                                f"{base}/{name}"])
        assert sha256_hex((got / name).read_bytes()) == sha, name
    names = sorted(files)
    argv = ["curl", "-sS", "--fail", "--max-time", str(TIMEOUT), "--parallel", "--parallel-immediate",
            "--parallel-max", "20"]
    wanted = {}
    for i in range(20):
        name = names[i % len(names)]
        wanted[f"p{i}-{name}"] = files[name]
        argv += ["-o", str(got / f"p{i}-{name}"), f"{base}/{name}"]
    lab.run(lab.server_ns, argv, timeout=2 * TIMEOUT)
    assert {n: sha256_hex((got / n).read_bytes()) for n in wanted} == wanted
    if mode == "shared":
        assert _owner_rules(lab, proc.pid) != []  # the listener's port is diverted while it runs
    proc.send_signal(signal.SIGINT)
    code, out = _wait(proc)
    assert "Keyboard interrupt received, exiting." in out
    assert code == 0
    log = (tmp_path / "server.err").read_text()
    assert log.count('" 200 -') == len(files) + 20, log[-2000:]
    assert usocket_rules(lab) == []
    assert lab.kernel_egress_rejected() == 0


# -- 2. children ------------------------------------------------------------------------------------
PARENT = """
    import hashlib, multiprocessing, os, socket, subprocess, sys, urllib.request


    def fetch(url):
        data = urllib.request.urlopen(url, timeout=30).read()
        return "%d %s %d %s" % (os.getpid(), socket.__name__, len(data), hashlib.sha256(data).hexdigest())


    def worker(url, queue):
        queue.put(fetch(url))


    if __name__ == "__main__":
        parent_url, child_url, worker_url, child_script = sys.argv[1:]
        print("parent", fetch(parent_url), flush=True)
        subprocess.run([sys.executable, child_script, child_url], check=True)
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=worker, args=(worker_url, queue))
        proc.start()
        result = queue.get(timeout=30)
        proc.join(30)
        print("worker", result, proc.exitcode, flush=True)
"""

CHILD = """
    import hashlib, os, socket, sys, urllib.request

    data = urllib.request.urlopen(sys.argv[1], timeout=30).read()
    print("child %d %s %d %s" % (os.getpid(), socket.__name__, len(data), hashlib.sha256(data).hexdigest()),
          flush=True)
"""


OWN_MODE_CHILDREN = (
    "own mode: a hijacked child starts a second stack on the parent's own address (same USOCKET_ADDR); "
    "each stack sees every frame to that address, and the parent's answers the child's SYN-ACK with a "
    "RST (tcp drop.no_connection, tx.rst) and its DNS reply with a port unreachable")


@pytest.mark.parametrize("mode", ["shared", pytest.param("own", marks=pytest.mark.xfail(
    strict=True, reason=OWN_MODE_CHILDREN))])
def test_python_children_use_stacks_of_their_own(lab: Lab, mode: str, tmp_path: Path) -> None:
    """The parent, its ``subprocess`` child (fetching by DNS name) and a ``multiprocessing``
    spawn worker each fetch a file on a stack of its own: right hashes, three processes that
    each printed stack counters with an active open, the name resolved by the child's stack."""
    lab.block_kernel_egress()
    parent = write_script(tmp_path, "parent.py", PARENT)
    child = write_script(tmp_path, "child.py", CHILD)
    urls = [lab.url("/1m.bin", "nginx"), lab.url("/index.html", "http", host=lab.server_name),
            lab.url("/1k.bin", "http")]
    p = run_hijacked(lab, mode, [parent, *urls, child], opts=["--stats"])
    assert p.returncode == 0, p.stderr
    lines = {line.split()[0]: line.split() for line in p.stdout.splitlines()}
    assert set(lines) == {"parent", "child", "worker"}, p.stdout
    pids = set()
    for who, path in (("parent", "/1m.bin"), ("child", "/index.html"), ("worker", "/1k.bin")):
        _, pid, module, size, sha = lines[who][:5]
        size_ok, sha_ok = lab.http_files[path]
        assert (module, int(size), sha) == ("usocket", size_ok, sha_ok), who
        pids.add(int(pid))
    assert lines["worker"][5] == "0"  # the worker's exit code
    assert len(pids) == 3
    # Every process printed its own stack's counters at exit, each with one active open.
    stats = re.findall(r"usocket stats \(pid (\d+), (\w+) mode.*?\n((?:  .*\n)*)", p.stderr)
    opened = {int(pid) for pid, m, body in stats if m == mode and re.search(r"tcp: .*active_open=1\b", body)}
    assert opened == pids, p.stderr
    assert ("A", lab.server_name, stack_ip(lab, mode)) in lab.dns_queries()
    assert lab.kernel_egress_rejected() == 0
    assert usocket_rules(lab) == []


# -- 3. signals mid-transfer ------------------------------------------------------------------------
def test_sigterm_mid_transfer(lab: Lab, mode: str, tmp_path: Path) -> None:
    """SIGTERM in the middle of a download: the process dies of SIGTERM as under python, and its
    stack removed its diversion rules first."""
    lab.block_kernel_egress()
    proc = _start_slow_download(lab, mode, tmp_path)
    if mode == "shared":
        assert _owner_rules(lab, proc.pid) != []
    proc.send_signal(signal.SIGTERM)
    code, out = _wait(proc)
    assert code == -signal.SIGTERM
    assert "finished" not in out
    assert lab.kernel_egress_rejected() == 0  # the rules went after the stack stopped its flow
    assert usocket_rules(lab) == []


def test_sigint_mid_transfer(lab: Lab, mode: str, tmp_path: Path) -> None:
    """SIGINT in the middle of a download: an uncaught KeyboardInterrupt, printed as python does,
    and the process dies of SIGINT (status -2, as python's), with no rule left."""
    lab.block_kernel_egress()
    proc = _start_slow_download(lab, mode, tmp_path)
    proc.send_signal(signal.SIGINT)
    code, out = _wait(proc)
    assert code == -signal.SIGINT
    assert "finished" not in out
    assert lab.kernel_egress_rejected() == 0  # the rules went after the stack stopped its flow
    err = (tmp_path / "slow-plain.err").read_text()
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("KeyboardInterrupt"), err
    assert "usocket_hijack" not in err  # the runner's frames are not shown
    assert usocket_rules(lab) == []


def test_own_sigterm_handler_exit_code(lab: Lab, tmp_path: Path) -> None:
    """A program whose SIGTERM handler calls ``sys.exit(5)`` exits with 5 under the hijack too,
    and its rules are gone (shared mode: the mode with rules)."""
    lab.block_kernel_egress()
    proc = _start_slow_download(lab, "shared", tmp_path, "exit5")
    assert _owner_rules(lab, proc.pid) != []
    proc.send_signal(signal.SIGTERM)
    code, out = _wait(proc)
    assert code == 5
    assert "finished" not in out
    # (no kernel REJECT check: the rules go before the connection closes, see the next test)
    assert usocket_rules(lab) == []


def test_own_graceful_sigterm_handler_finishes_transfer(lab: Lab, tmp_path: Path) -> None:
    """A program whose SIGTERM handler only sets a flag (finish the work, then exit) completes its
    download after SIGTERM and exits 0, as under python; the host kernel never sees the flow."""
    lab.block_kernel_egress()
    proc = _start_slow_download(lab, "shared", tmp_path, "graceful")
    proc.send_signal(signal.SIGTERM)
    code, out = _wait(proc)
    size, sha = lab.http_files["/16m.bin"]
    assert (code, out.split()) == (0, ["finished", str(size), sha, "after", "SIGTERM"])
    assert lab.kernel_egress_rejected() == 0
    assert usocket_rules(lab) == []


# -- 4. SIGKILL -------------------------------------------------------------------------------------
OPEN_AND_LIST = """
    import socket, subprocess, sys

    dead = sys.argv[1]
    s = socket.create_connection((sys.argv[2], 80), timeout=10)  # the stack starts: stale rules go
    s.close()
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    print("stale" if "pid=%s:" % dead in rules else "clean", socket.__name__, flush=True)
"""


def test_sigkill_leaves_rules_next_run_clears_them(lab: Lab, tmp_path: Path) -> None:
    """SIGKILL gives the stack no chance: its rules stay (shared mode). The next hijacked
    program removes them when its stack starts, before it does anything else, and leaves none."""
    lab.block_kernel_egress()
    proc = _start_slow_download(lab, "shared", tmp_path)
    before = _owner_rules(lab, proc.pid)
    assert before != []
    proc.kill()
    assert proc.wait(TIMEOUT) == -signal.SIGKILL
    assert _owner_rules(lab, proc.pid) == before  # left behind
    script = write_script(tmp_path, "open.py", OPEN_AND_LIST)
    p = run_hijacked(lab, "shared", [script, str(proc.pid), lab.server_ip])
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["clean", "usocket"]  # gone while the second program ran
    assert usocket_rules(lab) == []


def test_sigkill_then_cleanup_option(lab: Lab, tmp_path: Path) -> None:
    """``python -m usocket_hijack --cleanup`` removes what a SIGKILLed program left, says how
    many rules it removed, and exits 0; nothing is left."""
    lab.block_kernel_egress()
    proc = _start_slow_download(lab, "shared", tmp_path)
    left = _owner_rules(lab, proc.pid)
    assert left != []
    proc.kill()
    assert proc.wait(TIMEOUT) == -signal.SIGKILL
    p = run_hijacked(lab, "shared", ["--cleanup"])
    assert p.returncode == 0, p.stderr
    assert re.search(rf"removed {len(left)} stale rule\(s\)", p.stdout), p.stdout
    assert usocket_rules(lab) == []


# -- 5. exit without close --------------------------------------------------------------------------

# Only the control segments: a full capture of a 1 MiB transfer at veth speed drops packets.
CONTROL = "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"

QUIET_SINK = """
    import hashlib, socket, sys

    listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    conn, addr = listener.accept()
    h, n = hashlib.sha256(), 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    print(n, h.hexdigest(), addr[0], flush=True)
    conn.close()
"""

EXIT_WITHOUT_CLOSE_CLIENT = """
    import socket, sys

    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(bytes(range(256)) * 4096)  # 1 MiB; most of it is still queued when the program ends
    print("sent", socket.__name__, flush=True)
    # exits without closing s
"""

EXIT_WITHOUT_CLOSE_SERVER = """
    import socket, sys

    listener = socket.create_server(("", int(sys.argv[1])))
    print("listening", socket.__name__, flush=True)
    conn, addr = listener.accept()
    request = b""
    while not request.endswith(b"\\n"):
        request += conn.recv(100)
    conn.sendall(bytes(range(256)) * 4096)
    print("answered", flush=True)
    # exits without closing conn or listener
"""

READ_TO_EOF = """
    import hashlib, socket, sys

    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(b"GET\\n")
    h, n = hashlib.sha256(), 0
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    print(n, h.hexdigest(), flush=True)
"""
ONE_MIB = bytes(range(256)) * 4096


def _client_exits_without_close(lab: Lab, mode: str, tmp_path: Path) -> tuple[str, list[dict[str, Any]]]:
    """Run the client that exits without closing against a quiet sink in the server namespace
    (it reads to EOF, prints count, hash and the client's address, closes, and never writes, so
    nothing arrives after the stack's FIN but the peer's FIN); (sink output, control segments)."""
    sink_code = write_script(tmp_path, "sink.py", QUIET_SINK)
    client = write_script(tmp_path, "client.py", EXIT_WITHOUT_CLOSE_CLIENT)
    with lab.capture(lab.server_ns, lab.server_if, CONTROL) as pcap:
        sink = lab.popen(lab.server_ns, [sys.executable, "-u", sink_code, lab.server_ip, str(SERVER_PORT)],
                         stdout=subprocess.PIPE)
        _read_until(sink, b"ready")
        p = run_hijacked(lab, mode, [client, lab.server_ip, str(SERVER_PORT)])
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["sent", "usocket"]
        code, out = _wait(sink)
    assert code == 0, "the sink failed (connection reset?)"
    return out, _tshark_tcp(pcap)


def _check_close(rows: list[dict[str, Any]], ip: str, lab: Lab) -> None:
    """The stack at ``ip`` ended the connection with a FIN, the peer's FIN came back, and no RST
    came from ``ip`` (a connection in TIME_WAIT at exit is forgotten silently, as the kernel's);
    nothing at all from the host kernel (its REJECT counter is checked by the callers)."""
    mine = [r for r in rows if r["ip.src"] == ip]
    fins = [r for r in mine if r["flags"] & FIN]
    assert len(fins) == 1, rows
    peer_fins = [r for r in rows if r["ip.dst"] == ip and r["flags"] & FIN]
    assert len(peer_fins) == 1, rows
    assert [r for r in mine if r["flags"] & RST] == [], rows
    if ip != lab.client_ip:  # own mode: the host kernel's address sends nothing either
        assert not [r for r in rows if r["ip.src"] == lab.client_ip], rows


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_client_exits_without_close(lab: Lab, mode: str, tmp_path: Path) -> None:
    """A client that sends 1 MiB and exits right after ``sendall`` without closing: at exit the
    stack delivers every queued byte, then a FIN, and stays until the peer's FIN came back (the
    host kernel never meets a late segment: nothing REJECTed)."""
    lab.block_kernel_egress()
    out, rows = _client_exits_without_close(lab, mode, tmp_path)
    assert out.split() == [str(len(ONE_MIB)), sha256_hex(ONE_MIB), stack_ip(lab, mode)]
    _check_close(rows, stack_ip(lab, mode), lab)
    assert lab.kernel_egress_rejected() == 0
    assert usocket_rules(lab) == []


def test_no_rst_at_all_after_exit_without_close(lab: Lab, tmp_path: Path) -> None:
    """Shared mode, the same run: no RST at all from the client's address reaches the peer
    (a kernel socket that exits leaves its TIME_WAIT silently)."""
    lab.block_kernel_egress()
    out, rows = _client_exits_without_close(lab, "shared", tmp_path)
    assert out.split()[0] == str(len(ONE_MIB))
    assert lab.kernel_egress_rejected() == 0
    assert usocket_rules(lab) == []
    assert [r for r in rows if r["ip.src"] == lab.client_ip and r["flags"] & RST] == []


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_server_exits_without_close(lab: Lab, mode: str, tmp_path: Path) -> None:
    """A server that answers 1 MiB and exits without closing the accepted connection (or its
    listener): the peer reads the whole answer, then EOF (a FIN, not a RST)."""
    lab.block_kernel_egress()
    server = write_script(tmp_path, "server.py", EXIT_WITHOUT_CLOSE_SERVER)
    reader = write_script(tmp_path, "reader.py", READ_TO_EOF)
    with lab.capture(lab.server_ns, lab.server_if, CONTROL) as pcap:
        proc = _popen(lab, mode, [server, str(SERVER_PORT)], tmp_path / "server.err")
        _read_until(proc, b"listening usocket")
        r = lab.run(lab.server_ns, [sys.executable, reader, stack_ip(lab, mode), str(SERVER_PORT)],
                    check=False, timeout=TIMEOUT)
        code, out = _wait(proc)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(len(ONE_MIB)), sha256_hex(ONE_MIB)]
    assert code == 0, (tmp_path / "server.err").read_text()
    assert "answered" in out
    _check_close(_tshark_tcp(pcap), stack_ip(lab, mode), lab)
    assert lab.kernel_egress_rejected() == 0
    assert usocket_rules(lab) == []


# -- 6. --pcap and --stats --------------------------------------------------------------------------
def test_pcap_and_stats_options(lab: Lab, mode: str, tmp_path: Path) -> None:
    """``--pcap FILE`` records the run (tshark reads it: the SYN and the HTTP request are there);
    ``--stats`` prints the stack's per-layer counters on stderr at exit."""
    lab.block_kernel_egress()
    pcap = tmp_path / "run.pcap"
    code = f"import urllib.request; print(len(urllib.request.urlopen({lab.url('/index.html', 'nginx')!r}).read()))"
    p = run_hijacked(lab, mode, ["-c", code], opts=["--pcap", str(pcap), "--stats"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(lab.http_files["/index.html"][0])
    rows = _tshark_tcp(str(pcap))
    ip = stack_ip(lab, mode)
    syns = [r for r in rows if r["flags"] & (SYN | ACK) == SYN]
    assert [(r["ip.src"], r["ip.dst"], r["tcp.dstport"]) for r in syns] == [(ip, lab.server_ip, "80")]
    requests = [(r["http.request.method"], r["http.request.uri"]) for r in rows if r["http.request.method"]]
    assert requests == [("GET", "/index.html")]
    assert re.search(rf"usocket stats \(pid \d+, {mode} mode, {lab.client_if} {re.escape(ip)}\)", p.stderr), p.stderr
    assert re.search(r"^\s+tcp: .*\bactive_open=1\b", p.stderr, re.MULTILINE), p.stderr
    assert re.search(r"^\s+ipv4: .*\btx=\d+", p.stderr, re.MULTILINE), p.stderr
    assert lab.kernel_egress_rejected() == 0
    assert usocket_rules(lab) == []
