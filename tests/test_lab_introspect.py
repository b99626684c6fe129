"""The command line's view of a running hijacked program: ``python -m usocket ss PID`` asks the
program's control endpoint for its socket table and counters, from the root network namespace
and from the program's own."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hijack_helpers import hijack_env, popen_hijacked
from lab_runtime import stack_ip

from usocket.lab import Lab
from usocket.netns import ns_cmd

pytestmark = pytest.mark.lab

TIMEOUT = 20.0

PROGRAM = """
    import socket, sys
    srv = socket.create_server(("", 8080))
    c = socket.create_connection((sys.argv[1], 7), timeout=10)
    c.sendall(b"hello")
    assert c.recv(5) == b"hello"
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((sys.argv[1], 7))
    u.send(b"ping")
    assert u.recv(16) == b"ping"
    print("ready", flush=True)
    sys.stdin.read()
"""


def _ss(netns: str | None, pid: int, ctl: Path, *extra: str) -> str:
    argv = ns_cmd(netns, [sys.executable, "-m", "usocket", "ss", "--dir", str(ctl), *extra, str(pid)])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_ss_shows_a_hijacked_programs_connections(lab: Lab, mode: str, tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(PROGRAM))
    env = hijack_env(lab, mode, USOCKET_CONTROL_DIR=str(ctl), PYTHONUNBUFFERED="1")
    proc: subprocess.Popen[Any] = popen_hijacked(lab, mode, [str(script), lab.server_ip], env=env,
                                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()  # the program prints it once its sockets are set up
    assert line == "ready\n", proc.stderr.read() if proc.stderr else line
    me = stack_ip(lab, mode)
    sock_file = ctl / f"{proc.pid}.sock"
    assert oct(sock_file.stat().st_mode & 0o777) == "0o600" and oct(ctl.stat().st_mode & 0o777) == "0o700"

    for netns in (None, lab.client_ns):  # the root namespace, and the program's own
        out = _ss(netns, proc.pid, ctl, "--all", "--info", "--counters")
        lines = out.splitlines()
        est = [ln for ln in lines if ln.startswith("tcp") and "ESTABLISHED" in ln]
        assert len(est) == 1 and f"{lab.server_ip}:7" in est[0] and est[0].split()[4].startswith(f"{me}:")
        assert f"pid={proc.pid},fd=" in est[0]
        assert any(ln.startswith("tcp") and "LISTEN" in ln and ":8080" in ln for ln in lines)
        assert any(ln.startswith("udp") and "ESTAB" in ln and f"{lab.server_ip}:7" in ln for ln in lines)
        assert "rtt:" in out and "cwnd:" in out and "bytes_acked:5" in out
        assert f"counters of pid {proc.pid} ({mode} mode" in out
        assert any(ln.strip().startswith("tcp:") and "active_open=1" in ln for ln in lines)

    js = _ss(None, proc.pid, ctl, "--json")
    assert '"state": "ESTABLISHED"' in js and '"congestion"' in js
    hj = subprocess.run([sys.executable, "-m", "usocket_hijack", "--ss", str(proc.pid)], capture_output=True,
                        text=True, timeout=TIMEOUT, env=dict(os.environ, USOCKET_CONTROL_DIR=str(ctl)))
    assert hj.returncode == 0 and "ESTABLISHED" in hj.stdout and "LISTEN" in hj.stdout and "tcp:" in hj.stdout

    proc.stdin.close()
    assert proc.wait(TIMEOUT) == 0
    assert not sock_file.exists(), "the control endpoint outlived the program"
    bad = subprocess.run([sys.executable, "-m", "usocket", "ss", "--dir", str(ctl), str(proc.pid)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert bad.returncode == 1 and "no control endpoint" in bad.stderr


def test_control_endpoint_opt_out(lab: Lab, tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    env = hijack_env(lab, "own", USOCKET_CONTROL_DIR=str(ctl), USOCKET_CONTROL="0")
    code = ("import socket, os; s = socket.socket(); s.bind(('', 0)); "
            "print(os.path.exists(os.environ['USOCKET_CONTROL_DIR']))")
    p = subprocess.run(ns_cmd(lab.client_ns, [sys.executable, "-m", "usocket_hijack", "-c", code]), env=env,
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False" and not os.path.exists(ctl)
