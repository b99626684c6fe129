"""The programs in examples/, run as their README says: in the lab, through the hijacker.

Each test runs an example with :class:`usocket.lab.run.LabRunner` (the API behind ``python -m
usocket.lab run``; one lab per mode for the module, the kernel's TCP/UDP egress REJECTed in the
client namespace) and checks what the program printed against what the lab serves (sizes and
SHA-256 of the files, the POST echo's answer, the echoed datagrams, the DNS data), that its exit
status is 0, that the REJECT rules caught nothing (every packet went through the stack) and that
no diversion rule outlived it. The command line itself is run as a subprocess for a server
program with ``--peer``, and interrupted (Ctrl-C to its process group, SIGTERM) to check it
tears its lab down on every path.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hijack_helpers import example

from usocket.lab import Lab
from usocket.lab.run import LabRunner, RunResult, format_command, port_in_command, stack_ip

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LINE = re.compile(r"^(\d{3}) (\d+) ([0-9a-f]{64}) (\S+)$", re.MULTILINE)  # "<status> <size> <sha256> <url>"




def fetched(result: RunResult) -> dict[str, tuple[int, int, str]]:
    """``{url: (status, size, sha256)}`` of the "<status> <size> <sha256> <url>" lines."""
    return {url: (int(status), int(size), digest) for status, size, digest, url in LINE.findall(result.stdout)}


def served(lab: Lab, path: str) -> tuple[int, int, str]:
    size, digest = lab.http_files[path]
    return 200, size, digest


# -- clients ------------------------------------------------------------------------------------------
def test_urllib_get_default(runner: LabRunner) -> None:
    lab = runner.lab
    got = fetched(example(runner, "urllib_get.py"))
    assert got == {lab.url("/1m.bin", "nginx", host=lab.server_name): served(lab, "/1m.bin")}


def test_urllib_get_https_and_names(runner: LabRunner) -> None:
    """HTTPS verified against the lab's CA through SSL_CERT_FILE (the program sets no context),
    a CNAME alias and the Python server."""
    lab = runner.lab
    urls = {lab.url("/1m.bin", "https", host=f"www.{lab.DOMAIN}"): "/1m.bin",
            lab.url("/1k.bin", "http", host=lab.server_name): "/1k.bin",
            lab.url("/", "nginx", host="hostsonly"): "/index.html"}
    got = fetched(example(runner, "urllib_get.py", *urls))
    assert got == {url: served(lab, path) for url, path in urls.items()}


def test_http_client_post(runner: LabRunner) -> None:
    size = 1 << 20
    body = random.Random(size).randbytes(size)  # what the example generates for this size
    expected = f"{size} {hashlib.sha256(body).hexdigest()}"
    out = example(runner, "http_client_post.py").stdout
    assert f"length : 200 {expected} match" in out
    assert f"chunked: 200 {expected} match" in out


def test_requests_session_keep_alive(runner: LabRunner) -> None:
    """Four GETs, one connection: the pool says so, and so does the stack (one active open)."""
    lab = runner.lab
    result = example(runner, "requests_session.py", hijack_opts=["--stats"])
    paths = ["/index.html", "/1k.bin", "/1m.bin", "/index.html"]
    got = LINE.findall(result.stdout)
    assert [(int(s), int(n), d) for s, n, d, _ in got] == [served(lab, p) for p in paths]
    assert [u for *_, u in got] == [lab.url(p, "http", host=lab.server_name) for p in paths]
    assert "4 requests over 1 connection(s)" in result.stdout
    tcp = re.search(r"^\s+tcp: (.*)$", result.stderr, re.MULTILINE)
    assert tcp is not None and "active_open=1 " in tcp.group(1) + " ", result.stderr


def test_udp_client(runner: LabRunner) -> None:
    lab = runner.lab
    out = example(runner, "udp_client.py").stdout
    assert "6/6 replies match" in out
    for size in (1, 16, 100, 512, 1000, 1472):
        assert f"{size} bytes sent, {size} back from {lab.server_ip}:{lab.ports['udp_echo']} ok" in out


def test_dns_lookup(runner: LabRunner) -> None:
    """Names through DNS (a CNAME chain, two addresses), /etc/hosts, PTR records; the queries
    reached dnsmasq from the stack's address."""
    lab, d = runner.lab, runner.lab.DOMAIN
    net = lab.server_ip.rsplit(".", 1)[0]
    out = example(runner, "dns_lookup.py", lab.server_name, f"www.{d}", f"multi.{d}", "hostsonly",
                  lab.client_ip).stdout
    s = lab.server_ip
    # 198.18.N.2 is in the client's /etc/hosts, which answers its reverse lookup first (as glibc's does)
    assert f"{lab.server_name}: gethostbyname {s} getaddrinfo {s} gethostbyaddr hostsonly.{d}" in out
    assert f"www.{d}: gethostbyname {s} getaddrinfo {s} gethostbyaddr hostsonly.{d}" in out
    assert f"hostsonly: gethostbyname {s} getaddrinfo {s} gethostbyaddr hostsonly.{d}" in out
    assert re.search(rf"^multi\.{re.escape(d)}: gethostbyname {net}\.[35] getaddrinfo {net}\.3,{net}\.5 "
                     rf"gethostbyaddr multi\.{re.escape(d)}$", out, re.MULTILINE), out
    c = lab.client_ip
    assert f"{c}: gethostbyname {c} getaddrinfo {c} gethostbyaddr client.{d}" in out
    queries = lab.dns_queries()
    assert ("A", f"www.{d}", stack_ip(lab, runner.mode)) in queries
    reverse = ".".join(reversed(c.split("."))) + ".in-addr.arpa"
    assert ("PTR", reverse, stack_ip(lab, runner.mode)) in queries


def test_asyncio_client(runner: LabRunner) -> None:
    lab = runner.lab
    paths = ["/index.html", "/1k.bin", "/1m.bin"]
    got = fetched(example(runner, "asyncio_client.py"))
    assert got == {lab.url(p, "nginx", host=lab.server_name): served(lab, p) for p in paths}


def test_asyncio_client_https(runner: LabRunner) -> None:
    """``open_connection(ssl=True)``: asyncio's TLS over the stack, the CA from SSL_CERT_FILE."""
    lab = runner.lab
    urls = {lab.url("/1m.bin", "https", host=lab.server_name): "/1m.bin",
            lab.url("/index.html", "https", host=f"www.{lab.DOMAIN}"): "/index.html"}
    got = fetched(example(runner, "asyncio_client.py", *urls))
    assert got == {url: served(lab, path) for url, path in urls.items()}


# -- a server: python -m http.server, fetched from the server namespace -----------------------------------
def test_http_server_with_peers(runner: LabRunner) -> None:
    readme = (EXAMPLES / "README.md").read_bytes()
    result = runner.run(["-m", "http.server", "8080", "--directory", "examples"], timeout=60, peers=[
        "curl -sS --fail http://{client_ip}:8080/README.md | sha256sum",
        "curl -sS -o /dev/null -w '%{http_code} %{size_download}\\n' http://{client_ip}:8080/urllib_get.py",
    ])
    assert result.listened and result.returncode == 0, result.output + str(result.peers)
    assert [p.returncode for p in result.peers] == [0, 0]
    assert result.peers[0].stdout.split()[0] == hashlib.sha256(readme).hexdigest()
    assert result.peers[1].stdout.strip() == f"200 {(EXAMPLES / 'urllib_get.py').stat().st_size}"
    # http.server logged both requests, from the server's address, and stopped on our SIGINT
    assert len(re.findall(rf'^{re.escape(runner.lab.server_ip)} .*"GET /(README.md|urllib_get.py) HTTP/1.1" 200',
                          result.stderr, re.MULTILINE)) == 2, result.stderr
    assert "Keyboard interrupt received, exiting." in result.stdout
    assert result.rejected == 0 and result.leftover_rules == []


def test_peer_failure_is_the_status(runner: LabRunner) -> None:
    result = runner.run(["-m", "http.server", "8081", "--bind", "0.0.0.0"], peers=["exit 7"], port=8081, timeout=60)
    assert result.listened and [p.returncode for p in result.peers] == [7]
    assert result.program_returncode == 0 and result.returncode == 7


def test_exit_status_and_timeout(runner: LabRunner) -> None:
    assert runner.run(["-c", "raise SystemExit(3)"], timeout=30).returncode == 3
    result = runner.run(["-c", "import time; print('sleeping', flush=True); time.sleep(60)"], timeout=1.0)
    assert result.returncode == 124 and result.elapsed < 15
    assert result.program_returncode == -signal.SIGINT  # stopped with SIGINT, as Ctrl-C
    assert "sleeping" in result.stdout


def test_peer_command_formatting() -> None:
    fields = {"client_ip": "198.18.1.1", "http_port": "8000"}
    assert format_command("curl -w '%{http_code}' http://{client_ip}:8080/{nope}", fields) == \
        "curl -w '%{http_code}' http://198.18.1.1:8080/{nope}"
    assert port_in_command("curl http://{client_ip}:8080/") == 8080
    assert port_in_command("nc $LAB_CLIENT_IP:9000") == 9000
    assert port_in_command("curl http://{server_ip}:8080/") is None


# -- the command line ---------------------------------------------------------------------------------
def lab_cli(*args: str, **kw: object) -> subprocess.Popen[str]:
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-m", "usocket.lab", "run", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def assert_left_nothing(pid: int) -> None:
    """The CLI process is gone: none of its namespaces may remain, nor usocket rules in the root ns."""
    assert [n for n in Lab.namespaces() if n.startswith(f"usl-{pid}-")] == []
    assert [x for x in Lab.leftovers() if x.startswith("root rule")] == []


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_cli_http_server_peer(mode: str) -> None:
    """The README's http.server command, verbatim (plus --mode)."""
    p = lab_cli("--mode", mode, "--peer", "curl -sS http://{client_ip}:8080/README.md | sha256sum", "--",
                "-m", "http.server", "8080", "--directory", "examples")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert hashlib.sha256((EXAMPLES / "README.md").read_bytes()).hexdigest() + "  -" in out
    assert "the kernel's REJECT rules caught 0 packet(s)" in err
    assert "nothing left behind" in err
    assert_left_nothing(p.pid)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_cli_interrupted_tears_down(how: str) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM to the runner
    alone while the program serves: the program is stopped, the lab torn down, status 128+N."""
    p = lab_cli("--", "-m", "http.server", "8080", start_new_session=True)
    assert p.stdout is not None
    for line in p.stdout:  # PYTHONUNBUFFERED: the banner comes as soon as it listens
        if "Serving HTTP" in line:
            break
    else:
        pytest.fail(f"http.server did not start: {p.communicate(timeout=30)[1]}")
    if how == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)
        expected = 128 + signal.SIGINT
    else:
        p.send_signal(signal.SIGTERM)
        expected = 128 + signal.SIGTERM
    _, err = p.communicate(timeout=30)
    assert p.returncode == expected, err
    assert "nothing left behind" in err
    assert_left_nothing(p.pid)


def test_cli_usage_errors() -> None:
    p = lab_cli("--peer", "true", "--", "-m", "http.server")  # no port anywhere: refused before any lab
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "--port" in err
    p = lab_cli("--mode", "own")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "no program" in err


# -- bugs found by running ordinary programs --------------------------------------------------------------
def test_hijack_import_ssl_first(runner: LabRunner) -> None:
    lab = runner.lab
    code = ("import ssl\nimport hashlib, urllib.request\n"
            f"body = urllib.request.urlopen({lab.url('/1k.bin', 'https', host=lab.server_name)!r}).read()\n"
            "print(len(body), hashlib.sha256(body).hexdigest())")
    result = runner.run(["-c", code], timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(lab.http_files["/1k.bin"][0]), lab.http_files["/1k.bin"][1]]
