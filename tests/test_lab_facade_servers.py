"""Servers and event-driven code on ``usocket`` in the lab, real clients on the kernel peer.

The stdlib's own servers (``socketserver``, ``http.server``), asyncio and hand-written
``selectors`` loops run in this process on ``usocket`` sockets carried by a stack in the lab's
client namespace; the clients are real programs (curl, wrk, Python on kernel sockets) in the
server namespace. The client namespace's kernel TCP/UDP egress is REJECTed (the ``runtime``
fixture), so everything that passes went through the userland stack. The stdlib servers look up
``socket`` in their own module's globals, so each test patches those names to ``usocket`` for its
own duration only (``monkeypatch``), and asserts that the sockets it got really are userland ones.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import http.server
import json
import os
import re
import select
import selectors
import socketserver
import struct
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from lab_runtime import stack_ip

import usocket
from usocket.lab.servers import bulk_pattern, bulk_request

pytestmark = pytest.mark.lab

TIMEOUT = 15.0  # every blocking step of a test is bounded by this


# -- helpers ---------------------------------------------------------------------------------------
def peer_python(lab: Any, code: str, *args: Any, timeout: float = 30.0) -> str:
    """Run ``code`` with the kernel's own sockets in the peer namespace; its stdout (fails on errors)."""
    p = lab.run(lab.server_ns, [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                check=False, timeout=timeout)
    assert p.returncode == 0, f"peer script failed ({p.returncode}):\n{p.stderr}"
    return p.stdout


def peer(lab: Any, argv: list[str], timeout: float = 30.0) -> str:
    """Run a program in the peer namespace; its stdout (fails on a non-zero exit)."""
    p = lab.run(lab.server_ns, argv, check=False, timeout=timeout)
    assert p.returncode == 0, f"{argv[0]} failed ({p.returncode}):\n{p.stderr}\n{p.stdout[-2000:]}"
    return p.stdout


@pytest.fixture
def stdlib_on_usocket(monkeypatch: pytest.MonkeyPatch, facade_runtime: Any) -> Any:
    """``socketserver`` and ``http.server`` building their sockets with ``usocket`` (this test only)."""
    monkeypatch.setattr(socketserver, "socket", usocket)
    monkeypatch.setattr(http.server, "socket", usocket)
    return facade_runtime


class Serving:
    """A socketserver running ``serve_forever`` in a thread; stopped and closed on exit, which
    also joins the handler threads and fails on any error a handler raised (the server's
    ``handle_error`` would print it from its thread, at some later time)."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self.server = server
        server.errors = []  # type: ignore[attr-defined]
        server.handle_error = lambda request, addr: server.errors.append(sys.exc_info()[1])  # type: ignore
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="serve_forever", daemon=True)

    def __enter__(self) -> socketserver.BaseServer:
        self.thread.start()
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()  # ThreadingMixIn: joins the handler threads (block_on_close)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "serve_forever did not stop"
        assert not self.server.errors, self.server.errors  # type: ignore[attr-defined]


def assert_userland(sock: Any) -> None:
    assert isinstance(sock, usocket.socket) and sock.userland, f"{sock!r} is the kernel's"


def usocket_tcp(timeout: float | None = TIMEOUT) -> usocket.socket:
    s = usocket.socket(usocket.AF_INET, usocket.SOCK_STREAM)
    s.settimeout(timeout)
    assert_userland(s)
    return s


# -- socketserver --------------------------------------------------------------------------------
class LineEcho(socketserver.StreamRequestHandler):
    """Echo every line back; record the peer address and the request socket's kind."""

    timeout = TIMEOUT

    def handle(self) -> None:
        self.server.seen.append((self.client_address, bool(getattr(self.request, "userland", False))))
        for line in self.rfile:
            self.wfile.write(line)


class EchoServer(socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, *a: Any, **kw: Any) -> None:
        self.seen: list[tuple[Any, bool]] = []
        super().__init__(*a, **kw)


class ThreadingEchoServer(socketserver.ThreadingMixIn, EchoServer):
    pass


SEQUENTIAL_CLIENT = """
import hashlib, socket, sys, threading, json
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = []
for i in range(n):
    payload = b"".join(b"conn %d line %d %s\\n" % (i, k, b"x" * (k % 90)) for k in range(size))
    s = socket.create_connection((host, port), timeout=20)
    got = bytearray()
    def reader():
        while data := s.recv(65536):
            got.extend(data)
    t = threading.Thread(target=reader)
    t.start()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    t.join(20)
    s.close()
    out.append([len(payload), hashlib.sha256(payload).hexdigest(), len(got), hashlib.sha256(got).hexdigest()])
print(json.dumps(out))
"""

CONCURRENT_CLIENT = """
import socket, sys, json
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port), timeout=10) for _ in range(n)]
for i, s in enumerate(socks):
    s.sendall(b"hello %d\\n" % i)
# every connection answers while all of them are open: the server handles them at the same time
first = [s.makefile("rb").readline().decode() for s in socks]
for i, s in enumerate(socks):
    s.sendall(b"bye %d\\n" % i)
    s.shutdown(socket.SHUT_WR)
rest = [s.makefile("rb").read().decode() for s in socks]
print(json.dumps([first, rest]))
"""


def test_socketserver_echo_one_connection_at_a_time(lab, mode, stdlib_on_usocket):
    ip = stack_ip(lab, mode)
    with Serving(EchoServer(("", 0), LineEcho)) as srv:
        assert_userland(srv.socket)
        assert srv.server_address[0] == "0.0.0.0" and srv.server_address[1] > 0
        port = srv.server_address[1]
        out = json.loads(peer_python(lab, SEQUENTIAL_CLIENT, ip, port, 3, 3000))
    assert len(out) == 3
    for sent_len, sent_sha, got_len, got_sha in out:
        assert (got_len, got_sha) == (sent_len, sent_sha)
    assert [addr[0] for addr, _ in srv.seen] == [lab.server_ip] * 3
    assert all(userland for _, userland in srv.seen), srv.seen


def test_socketserver_threading_echo_serves_connections_at_once(lab, mode, stdlib_on_usocket):
    ip = stack_ip(lab, mode)
    n = 8
    with Serving(ThreadingEchoServer((ip, 0), LineEcho)) as srv:
        assert_userland(srv.socket)
        assert srv.server_address[0] == ip
        first, rest = json.loads(peer_python(lab, CONCURRENT_CLIENT, ip, srv.server_address[1], n))
    assert first == [f"hello {i}\n" for i in range(n)]
    assert rest == [f"bye {i}\n" for i in range(n)]
    assert len(srv.seen) == n and all(u and a[0] == lab.server_ip for a, u in srv.seen), srv.seen


# -- http.server ---------------------------------------------------------------------------------
SIZES = {"empty.bin": 0, "one.bin": 1, "small.txt": 1000, "odd.bin": 65536 + 7, "mb.bin": (1 << 20) + 3,
         "big.bin": 6 << 20}


@pytest.fixture
def docroot(tmp_path: Any) -> tuple[str, dict[str, str]]:
    """A directory of files of a few sizes; ``{name: sha256}``."""
    root = tmp_path / "www"
    root.mkdir()
    shas = {}
    for name, size in SIZES.items():
        data = os.urandom(size)
        (root / name).write_bytes(data)
        shas[name] = hashlib.sha256(data).hexdigest()
    return str(root), shas


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler without the stderr log, plus ``POST``: the body's sha256 back."""

    timeout = TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        length = int(self.headers["Content-Length"])
        h, left = hashlib.sha256(), length
        while left:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        body = f"{length - left} {h.hexdigest()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def http_server(directory: str, handler: type = QuietHandler, **attrs: Any) -> http.server.ThreadingHTTPServer:
    cls = type("Server", (http.server.ThreadingHTTPServer,), {"daemon_threads": False, **attrs})
    srv = cls(("", 0), lambda *a: handler(*a, directory=directory))
    assert_userland(srv.socket)
    return srv


def test_http_server_files_head_404_and_post(lab, mode, stdlib_on_usocket, docroot, tmp_path):
    root, shas = docroot
    ip = stack_ip(lab, mode)
    out_dir = tmp_path / "got"
    out_dir.mkdir()
    post_body = tmp_path / "post.bin"
    post_data = os.urandom(3 << 20)
    post_body.write_bytes(post_data)
    with Serving(http_server(root)) as srv:
        base = f"http://{ip}:{srv.server_address[1]}"
        argv = ["curl", "-sS", "--fail", "--max-time", "20", "-w", "%{http_code} %{size_download}\\n"]
        for name in SIZES:
            argv += ["-o", str(out_dir / name), f"{base}/{name}"]
        codes = peer(lab, argv).split("\n")[:-1]
        head = peer(lab, ["curl", "-sS", "--max-time", "10", "-I", f"{base}/mb.bin"])
        missing = peer(lab, ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                             f"{base}/no/such/file"])
        posted = peer(lab, ["curl", "-sS", "--fail", "--max-time", "20", "--data-binary", f"@{post_body}",
                            "-H", "Expect:", f"{base}/upload"])  # (HTTP/1.0 knows no 100-continue)
    assert codes == [f"200 {size}" for size in SIZES.values()]
    for name in SIZES:
        assert hashlib.sha256((out_dir / name).read_bytes()).hexdigest() == shas[name], name
    assert head.startswith("HTTP/1.0 200"), head
    assert re.search(rf"(?im)^content-length: {SIZES['mb.bin']}\r?$", head), head
    assert missing == "404"
    assert posted == f"{len(post_data)} {hashlib.sha256(post_data).hexdigest()}\n"


class KeepAliveHandler(QuietHandler):
    """HTTP/1.1 (persistent connections, 100-continue); ``/sendfile/<name>`` sends the file with
    ``socket.sendfile`` (os.sendfile on the descriptor) instead of copying it through ``wfile``."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if not self.path.startswith("/sendfile/"):
            return super().do_GET()
        path = os.path.join(self.directory, os.path.basename(self.path))
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            sent = self.connection.sendfile(f)
        assert sent == size


def test_http_server_keep_alive_sendfile_and_100_continue(lab, mode, stdlib_on_usocket, docroot, tmp_path):
    root, shas = docroot
    ip = stack_ip(lab, mode)
    out_dir = tmp_path / "got"
    out_dir.mkdir()
    post_body = tmp_path / "post.bin"
    post_data = os.urandom(3 << 20)
    post_body.write_bytes(post_data)
    with Serving(http_server(root, KeepAliveHandler)) as srv:
        base = f"http://{ip}:{srv.server_address[1]}"
        argv = ["curl", "-sS", "--fail", "--max-time", "20", "-w", "%{http_code} %{size_download} %{num_connects}\n"]
        for name in SIZES:
            argv += ["-o", str(out_dir / name), f"{base}/{name}", "-o", str(out_dir / f"sf-{name}"),
                     f"{base}/sendfile/{name}"]
        lines = peer(lab, argv).split("\n")[:-1]
        # curl waits for "100 Continue" before a body over 1 MiB; --expect100-timeout makes it wait
        # longer than --max-time, so only a server that answers it passes
        posted = peer(lab, ["curl", "-sS", "--fail", "--max-time", "10", "--expect100-timeout", "20",
                            "--data-binary", f"@{post_body}", f"{base}/upload"])
    want = []
    for size in SIZES.values():
        want += [f"200 {size} 0"] * 2
    want[0] = want[0][:-1] + "1"  # one connection for all of them
    assert lines == want
    for name in SIZES:
        for got in (name, f"sf-{name}"):
            assert hashlib.sha256((out_dir / got).read_bytes()).hexdigest() == shas[name], got
    assert posted == f"{len(post_data)} {hashlib.sha256(post_data).hexdigest()}\n"


class BarrierHandler(QuietHandler):
    """``GET /wait``: answer only once ``server.barrier`` has every party, i.e. when all the
    connections are being handled at the same moment; a missing one breaks the barrier (503)."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path != "/wait":
            return super().do_GET()
        try:
            index = self.server.barrier.wait()
        except threading.BrokenBarrierError:
            self.send_error(503, "barrier broken")
            return
        body = f"ok {index}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


PARALLEL = 100


def test_http_server_100_simultaneous_curl_connections(lab, mode, stdlib_on_usocket, tmp_path):
    ip = stack_ip(lab, mode)
    srv = http_server(str(tmp_path), BarrierHandler, request_queue_size=PARALLEL)
    srv.barrier = threading.Barrier(PARALLEL, timeout=TIMEOUT)
    with Serving(srv):
        url = f"http://{ip}:{srv.server_address[1]}/wait"
        argv = ["curl", "-sS", "--parallel", "--parallel-immediate", "--parallel-max", str(PARALLEL),
                "--max-time", "25", "-w", "%{http_code} %{size_download}\\n"]
        for _ in range(PARALLEL):
            argv += ["-o", "/dev/null", url]
        lines = peer(lab, argv, timeout=40).split("\n")[:-1]
    # barrier.wait() hands out 0..99: ten one-digit bodies ("ok 7\n"), ninety two-digit ones
    assert sorted(lines) == ["200 5"] * 10 + ["200 6"] * (PARALLEL - 10), lines
    assert not srv.barrier.broken


# Shared mode adds an iptables rule per accepted connection on the stack thread (~5 ms each), so
# it serves ~100 new connections a second where own mode serves ~500: a floor for each.
WRK_FLOOR = {"shared": 50, "own": 200}


def test_http_server_under_wrk_with_100_connections(lab, mode, stdlib_on_usocket, docroot):
    root, _ = docroot
    srv = http_server(root, request_queue_size=PARALLEL)
    with Serving(srv):
        url = f"http://{stack_ip(lab, mode)}:{srv.server_address[1]}/small.txt"
        out = peer(lab, ["wrk", "-t2", f"-c{PARALLEL}", "-d2s", "--timeout", "5s", url], timeout=30)
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    assert int(m.group(1)) >= WRK_FLOOR[mode], out
    assert "Non-2xx" not in out and "Socket errors" not in out, out  # wrk prints them only when non-zero


# -- asyncio -------------------------------------------------------------------------------------
STREAM_CLIENT = """
import hashlib, json, socket, sys, threading
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
results = [None] * n
def one(i):
    payload = (b"%04d" % i) * (size // 4)
    s = socket.create_connection((host, port), timeout=20)
    got = bytearray()
    def reader():
        while data := s.recv(65536):
            got.extend(data)
    t = threading.Thread(target=reader)
    t.start()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    t.join(20)
    s.close()
    results[i] = [len(got), hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()]
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join(30)
print(json.dumps(results))
"""


def test_asyncio_start_server_on_a_usocket_listener(lab, mode, facade_runtime):
    """``asyncio.start_server(sock=...)``: the loop accepts, reads and writes through the selector."""
    ip = stack_ip(lab, mode)
    n, size = 6, 256 * 1024
    peers: list[tuple[Any, bool]] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peers.append((writer.get_extra_info("peername"), bool(getattr(sock._sock, "userland", False))))
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> list[list[Any]]:
        ls = usocket_tcp(None)
        ls.bind((ip, 0))
        ls.listen(16)
        server = await asyncio.start_server(echo, sock=ls)
        async with server:
            port = server.sockets[0].getsockname()[1]
            out = await asyncio.get_running_loop().run_in_executor(
                None, peer_python, lab, STREAM_CLIENT, ip, port, n, size)
        return json.loads(out)

    results = asyncio.run(asyncio.wait_for(main(), 40))
    assert results == [[size, True]] * n
    assert len(peers) == n and all(p[0] == lab.server_ip and u for p, u in peers), peers


PING_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
peer = s.getpeername()[0]
s.sendall(b"ping")
s.shutdown(socket.SHUT_WR)
data = b""
while chunk := s.recv(100):
    data += chunk
print(data.decode(), peer)
"""


def test_asyncio_sock_accept_on_create_server(lab, mode, facade_runtime):
    """``usocket.create_server`` (the stdlib's function on usocket) and ``loop.sock_accept``."""
    ip = stack_ip(lab, mode)
    ls = usocket.create_server((ip, 0), backlog=4)
    assert_userland(ls)
    assert ls.getsockopt(usocket.SOL_SOCKET, usocket.SO_ACCEPTCONN) == 1
    assert ls.getsockopt(usocket.SOL_SOCKET, usocket.SO_REUSEADDR) == 1  # create_server sets it
    ls.setblocking(False)

    async def main() -> str:
        loop = asyncio.get_running_loop()
        client = loop.run_in_executor(None, peer_python, lab, PING_CLIENT, ip, ls.getsockname()[1])
        conn, addr = await loop.sock_accept(ls)
        assert_userland(conn)
        assert addr[0] == lab.server_ip and conn.getpeername() == addr and conn.getsockname()[0] == ip
        assert conn.gettimeout() == 0.0  # sock_accept made it non-blocking
        data = b""
        while chunk := await loop.sock_recv(conn, 100):
            data += chunk
        await loop.sock_sendall(conn, data.replace(b"i", b"o"))
        conn.close()
        return await client

    try:
        assert asyncio.run(asyncio.wait_for(main(), 30)) == f"pong {ip}\n"
    finally:
        ls.close()


def test_asyncio_sock_connect_and_streams_to_the_peer(lab, mode, facade_runtime):
    """``loop.sock_connect`` on a non-blocking usocket socket (EINPROGRESS, then writability and
    SO_ERROR), then data with ``sock_sendall``/``sock_recv``, and ``open_connection(sock=...)``."""
    echo = (lab.server_ip, lab.ports["tcp_echo"])
    payload = os.urandom(512 * 1024)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = usocket_tcp(0)
        await loop.sock_connect(s, echo)
        assert s.getpeername() == echo and s.getsockname()[0] == stack_ip(lab, mode)
        send = asyncio.ensure_future(loop.sock_sendall(s, payload))
        got = bytearray()
        while len(got) < len(payload):
            data = await loop.sock_recv(s, 65536)
            assert data, "EOF before the echo was complete"
            got += data
        await send
        assert bytes(got) == payload
        s.shutdown(usocket.SHUT_WR)
        assert await loop.sock_recv(s, 10) == b""
        s.close()

        s = usocket_tcp(0)
        await loop.sock_connect(s, echo)
        reader, writer = await asyncio.open_connection(sock=s)
        for i in range(20):
            writer.write(b"line %d\n" % i)
            assert await reader.readline() == b"line %d\n" % i
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

        refused = usocket_tcp(0)
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(refused, (lab.server_ip, lab.ports["closed"]))
        refused.close()

    asyncio.run(asyncio.wait_for(main(), 30))


# -- selectors, by hand --------------------------------------------------------------------------
def test_selectors_nonblocking_connect_and_echo(lab, mode, facade_runtime):
    echo = (lab.server_ip, lab.ports["tcp_echo"])
    payload = os.urandom(1 << 20)
    s = usocket_tcp(0)
    sel = selectors.DefaultSelector()
    try:
        with pytest.raises(BlockingIOError) as ei:
            s.connect(echo)
        assert ei.value.errno == errno.EINPROGRESS
        sel.register(s, selectors.EVENT_WRITE)
        events = sel.select(TIMEOUT)
        assert [(key.fileobj, ev) for key, ev in events] == [(s, selectors.EVENT_WRITE)]
        assert s.getsockopt(usocket.SOL_SOCKET, usocket.SO_ERROR) == 0
        assert s.getpeername() == echo
        # full duplex by hand: write while the selector says so, read what comes back
        sent, got = 0, bytearray()
        sel.modify(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = time.monotonic() + TIMEOUT
        while len(got) < len(payload):
            assert time.monotonic() < deadline, f"stuck: sent {sent}, got {len(got)}"
            for _, ev in sel.select(1.0):
                if ev & selectors.EVENT_WRITE:
                    try:
                        sent += s.send(payload[sent:sent + 65536])
                    except BlockingIOError:
                        pass
                    if sent == len(payload):
                        s.shutdown(usocket.SHUT_WR)
                        sel.modify(s, selectors.EVENT_READ)
                if ev & selectors.EVENT_READ:
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    assert data, f"EOF after {len(got)} bytes"
                    got += data
        assert bytes(got) == payload
        assert sel.select(TIMEOUT) and s.recv(10) == b""  # the echo server closes after our FIN
    finally:
        sel.close()
        s.close()


def test_selectors_connect_that_gets_no_answer_stays_unwritable(lab, facade_runtime):
    """Until the handshake completes the socket is neither writable nor readable. The peer's
    kernel drops what is not for it (no forwarding), so the SYN to TEST-NET-2 stays unanswered."""
    s = usocket_tcp(0)
    try:
        with pytest.raises(BlockingIOError):
            s.connect(("198.51.100.1", 80))
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
            assert sel.select(0.3) == []
        assert s.getsockopt(usocket.SOL_SOCKET, usocket.SO_ERROR) == 0
        with pytest.raises(OSError) as ei:
            s.getpeername()
        assert ei.value.errno == errno.ENOTCONN
    finally:
        s.close()


def test_selectors_echo_server_by_hand(lab, mode, facade_runtime):
    """The selectors docs' echo server, with write buffering: a non-blocking listener, accepted
    sockets made non-blocking, EVENT_WRITE only while output is pending; peers in parallel."""
    ip = stack_ip(lab, mode)
    n, size = 4, 300_000
    ls = usocket_tcp(0)
    ls.bind((ip, 0))
    ls.listen(8)
    client = lab.popen(lab.server_ns, [sys.executable, "-c", STREAM_CLIENT, ip, str(ls.getsockname()[1]), str(n),
                                       str(size)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)
    pending: dict[Any, bytearray] = {}
    accepted = closed = 0
    deadline = time.monotonic() + TIMEOUT
    try:
        while closed < n:
            assert time.monotonic() < deadline, f"accepted {accepted}, closed {closed}"
            for key, ev in sel.select(1.0):
                sock = key.fileobj
                if sock is ls:
                    try:
                        conn, addr = ls.accept()
                    except BlockingIOError:
                        continue
                    assert_userland(conn)
                    assert addr[0] == lab.server_ip and conn.gettimeout() is None  # accept(): blocking
                    conn.setblocking(False)
                    pending[conn] = bytearray()
                    sel.register(conn, selectors.EVENT_READ)
                    accepted += 1
                    continue
                out = pending[sock]
                if ev & selectors.EVENT_WRITE and out:
                    try:
                        del out[:sock.send(out)]
                    except BlockingIOError:
                        pass
                if ev & selectors.EVENT_READ:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        data = None
                    if data == b"":  # EOF: finish writing (blocking), then close
                        sel.unregister(sock)
                        sock.setblocking(True)
                        sock.sendall(out)
                        sock.close()
                        closed += 1
                        continue
                    if data:
                        out += data
                if not sock._closed:
                    sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
    finally:
        sel.close()
        ls.close()
        for sock in pending:
            sock.close()
    out, err = client.communicate(timeout=TIMEOUT)
    assert client.returncode == 0, err
    assert json.loads(out) == [[size, True]] * n


def test_selectors_nonblocking_connect_to_a_closed_port(lab, mode, facade_runtime):
    s = usocket_tcp(0)
    try:
        with pytest.raises(BlockingIOError) as ei:
            s.connect((lab.server_ip, lab.ports["closed"]))
        assert ei.value.errno == errno.EINPROGRESS
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_WRITE)
            events = sel.select(TIMEOUT)
        assert events and events[0][1] & selectors.EVENT_WRITE
        assert s.getsockopt(usocket.SOL_SOCKET, usocket.SO_ERROR) == errno.ECONNREFUSED
        assert s.getsockopt(usocket.SOL_SOCKET, usocket.SO_ERROR) == 0  # reported once, as Linux does
        with pytest.raises(OSError) as ei:
            s.getpeername()
        assert ei.value.errno == errno.ENOTCONN
    finally:
        s.close()


# -- UDP -----------------------------------------------------------------------------------------
def usocket_udp() -> usocket.socket:
    u = usocket.socket(usocket.AF_INET, usocket.SOCK_DGRAM)
    u.settimeout(5)
    assert_userland(u)
    return u


def test_udp_unconnected_and_connected_with_the_peer_echo(lab, mode, facade_runtime):
    echo = (lab.server_ip, lab.ports["udp_echo"])
    closed = (lab.server_ip, lab.ports["closed"])
    with usocket_udp() as u:
        for size in (1, 1472, 8000):  # (the peer's asyncio echo drops empty datagrams)
            data = os.urandom(size)
            assert u.sendto(data, echo) == size
            assert u.recvfrom(9000) == (data, echo)
        assert u.getsockname()[1] > 0
        # Linux reports no ICMP error to an unconnected socket: the next datagram just arrives
        u.sendto(b"anyone?", closed)
        u.sendto(b"still here", echo)
        assert u.recvfrom(100) == (b"still here", echo)
    with usocket_udp() as u:
        u.connect(echo)
        assert u.getpeername() == echo and u.getsockname()[0] == stack_ip(lab, mode)
        for i in range(5):
            u.send(b"ping %d" % i)
            assert u.recv(100) == b"ping %d" % i


def test_udp_connected_to_a_closed_port_gets_connection_refused(lab, mode, facade_runtime):
    with usocket_udp() as u:
        u.connect((lab.server_ip, lab.ports["closed"]))
        u.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError) as ei:
            u.recv(100)
        assert ei.value.errno == errno.ECONNREFUSED
        # reported once: the socket stays usable
        u.connect((lab.server_ip, lab.ports["udp_echo"]))
        u.send(b"again")
        assert u.recv(100) == b"again"


UDP_CLIENT = """
import json, socket, sys
host, port, sizes = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
out = []
for size in sizes:
    data = bytes(i % 251 for i in range(size))
    s.sendto(data, (host, port))
    reply, addr = s.recvfrom(65536)
    out.append([size, reply == data[::-1], list(addr)])
s.sendto(b"stop", (host, port))
print(json.dumps(out))
"""


class ReverseProtocol(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data == b"stop":
            self.done.set_result(None)
        else:
            self.transport.sendto(data[::-1], addr)


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_udp_server_on_usocket_answers_a_peer_client(lab, mode, facade_runtime, kind):
    ip = stack_ip(lab, mode)
    # asyncio's transport.sendto() skips empty datagrams, so the empty one only with the blocking server
    sizes = ([0] if kind == "blocking" else []) + [1, 100, 1472, 4000, 20000]
    u = usocket_udp()
    u.bind(("", 0))
    port = u.getsockname()[1]
    clients: set[Any] = set()
    if kind == "blocking":
        def serve() -> None:
            while True:
                data, addr = u.recvfrom(65536)
                clients.add(addr[0])
                if data == b"stop":
                    return
                u.sendto(data[::-1], addr)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        out = json.loads(peer_python(lab, UDP_CLIENT, ip, port, json.dumps(sizes)))
        t.join(TIMEOUT)
        assert not t.is_alive()
        u.close()
    else:
        async def main() -> str:
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            transport, _ = await loop.create_datagram_endpoint(lambda: ReverseProtocol(done), sock=u)
            try:
                result = await loop.run_in_executor(None, peer_python, lab, UDP_CLIENT, ip, port,
                                                         json.dumps(sizes))
                await done
                return result
            finally:
                transport.close()

        out = json.loads(asyncio.run(asyncio.wait_for(main(), 30)))
        clients.add(lab.server_ip)
    assert out == [[size, True, [ip, port]] for size in sizes]
    assert clients == {lab.server_ip}


# -- TCP endings -------------------------------------------------------------------------------
def test_shutdown_wr_then_the_peer_echoes_and_closes(lab, mode, facade_runtime):
    payload = os.urandom(300_000)
    with usocket_tcp() as s:
        s.connect((lab.server_ip, lab.ports["eof_echo"]))
        s.sendall(payload)
        s.shutdown(usocket.SHUT_WR)
        with pytest.raises(BrokenPipeError):
            s.send(b"more")
        got = bytearray()
        while data := s.recv(65536):
            got += data
        assert bytes(got) == payload
        assert s.recv(10) == b""


def test_peer_closes_first(lab, mode, facade_runtime):
    """The peer sends and closes: we read to EOF (and EOF again); our next write is answered with
    a RST by the peer, after which send fails with EPIPE, as on Linux."""
    size = 200_000
    with usocket_tcp() as s:
        s.connect((lab.server_ip, lab.ports["bulk_source"]))
        s.sendall(bulk_request(size))
        got = bytearray()
        while data := s.recv(65536):
            got += data
        assert bytes(got) == bulk_pattern(0, size)
        assert s.recv(10) == b""
        assert s.getpeername() == (lab.server_ip, lab.ports["bulk_source"])
        assert s.send(b"x") == 1  # accepted: the peer's kernel answers it with a RST
        wait_closed(s)
        with pytest.raises(BrokenPipeError):
            s.send(b"x")
        assert s.recv(10) == b""


def test_peer_reset_surfaces_as_connection_reset(lab, mode, facade_runtime):
    with usocket_tcp() as s:
        s.connect((lab.server_ip, lab.ports["reset"]))
        s.sendall(bulk_request(4 << 20))
        got = bytearray()
        with pytest.raises(ConnectionResetError):
            while data := s.recv(65536):
                got += data
        assert bytes(got) == bulk_pattern(0, len(got))  # what arrived before the RST is intact
        assert s.recv(10) == b""  # the error is reported once, then EOF
        with pytest.raises(BrokenPipeError):
            s.send(b"x")
        with pytest.raises(OSError) as ei:
            s.getpeername()
        assert ei.value.errno == errno.ENOTCONN


RESETTING_CLIENT = """
import socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"hello")
if sys.argv[3] == "go":  # wait until the server has accepted
    assert s.recv(1) == b"g"
if sys.argv[4] == "fin":
    s.shutdown(socket.SHUT_WR)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()  # RST (right after the FIN, with "fin")
"""


def wait_closed(sock: Any) -> None:
    """Until the stack's connection behind ``sock`` is CLOSED (there is no event to wait on)."""
    deadline = time.monotonic() + TIMEOUT
    while sock.connection.state.name != "CLOSED":
        assert time.monotonic() < deadline, f"still {sock.connection.state.name}"
        time.sleep(0.01)


def drive_reset_socket(s: Any) -> list[Any]:
    """What recv, recv, recv, send, send give on ``s`` (bytes, or the errno raised)."""
    out: list[Any] = []
    for op in ("recv", "recv", "recv", "send", "send"):
        try:
            out.append(s.recv(100) if op == "recv" else s.send(b"x"))
        except OSError as e:
            out.append(errno.errorcode[e.errno])
    return out


# What Linux gives (tcp_recvmsg hands out queued data and a queued FIN before sk_err; a RST in
# CLOSE_WAIT sets EPIPE, in ESTABLISHED ECONNRESET; send after it: EPIPE). Checked against the
# kernel with the same client.
LINUX_AFTER_RESET = {
    "fin": [b"hello", b"", b"", "EPIPE", "EPIPE"],
    "nofin": [b"hello", "ECONNRESET", b"", "EPIPE", "EPIPE"],
}


@pytest.mark.parametrize("fin", ["nofin", "fin"])
def test_peer_resets_an_accepted_connection(lab, mode, facade_runtime, fin):
    ip = stack_ip(lab, mode)
    with usocket_tcp() as ls:
        ls.bind((ip, 0))
        ls.listen(1)
        client = lab.popen(lab.server_ns, [sys.executable, "-c", RESETTING_CLIENT, ip, str(ls.getsockname()[1]),
                                           "go", fin], stderr=subprocess.PIPE, text=True)
        s, addr = ls.accept()
    with s:
        assert addr[0] == lab.server_ip
        s.sendall(b"g")
        _, err = client.communicate(timeout=TIMEOUT)
        assert client.returncode == 0, err
        wait_closed(s)
        assert drive_reset_socket(s) == LINUX_AFTER_RESET[fin]


def test_a_connection_reset_before_accept_is_still_accepted(lab, mode, facade_runtime):
    """Linux's accept() returns a queued connection the peer has reset meanwhile (a listener
    that forgot it would stay readable with nothing to accept: serve_forever would hang)."""
    ip = stack_ip(lab, mode)
    with usocket_tcp(1.0) as ls:
        ls.bind((ip, 0))
        ls.listen(1)
        peer_python(lab, RESETTING_CLIENT, ip, ls.getsockname()[1], "nowait", "nofin")
        s, addr = ls.accept()
    with s:
        assert addr[0] == lab.server_ip
        wait_closed(s)
        assert drive_reset_socket(s) == LINUX_AFTER_RESET["nofin"]


# -- what a server does to its clients -----------------------------------------------------------
CLOSE_BEFORE_ACCEPT_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"early bird")
s.close()  # FIN before the server even accepted
"""


def test_data_and_fin_that_arrive_before_accept_are_read_after_it(lab, mode, facade_runtime):
    ip = stack_ip(lab, mode)
    with usocket_tcp() as ls:
        ls.bind((ip, 0))
        ls.listen(1)
        port = ls.getsockname()[1]
        peer_python(lab, CLOSE_BEFORE_ACCEPT_CLIENT, ip, port)
        s, addr = ls.accept()
    with s:
        assert addr[0] == lab.server_ip and s.getsockname() == (ip, port)
        got = bytearray()
        while data := s.recv(100):
            got += data
        assert bytes(got) == b"early bird"
        assert s.recv(10) == b""


UNREAD_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"z" * 20000)
try:
    print(repr(s.recv(100)))
except OSError as e:
    print(type(e).__name__)
"""


@pytest.mark.parametrize("how", ["unread", "linger0"])
def test_server_close_with_unread_data_or_linger0_resets_the_client(lab, mode, facade_runtime, how):
    """Linux tcp_close: unread data (or SO_LINGER 0) means RST, so the client's recv fails."""
    ip = stack_ip(lab, mode)
    with usocket_tcp() as ls:
        ls.bind((ip, 0))
        ls.listen(1)
        client = lab.popen(lab.server_ns, [sys.executable, "-c", UNREAD_CLIENT, ip, str(ls.getsockname()[1])],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        s, _ = ls.accept()
    with s:
        want = 20000 if how == "linger0" else 10
        got = bytearray()
        while len(got) < want:
            data = s.recv(want - len(got))
            assert data
            got += data
        if how == "linger0":
            s.setsockopt(usocket.SOL_SOCKET, usocket.SO_LINGER, struct.pack("ii", 1, 0))
        else:  # the rest is in the socket's own buffer, unread (not still in the stack)
            deadline = time.monotonic() + TIMEOUT
            while len(s.recv(20000, usocket.MSG_PEEK)) < 20000 - want:
                assert time.monotonic() < deadline
                time.sleep(0.01)
    out, err = client.communicate(timeout=TIMEOUT)
    assert client.returncode == 0, err
    assert out.strip() == "ConnectionResetError"


CONNECT_MANY_CLIENT = """
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port), timeout=10) for _ in range(n)]
for s in socks:
    s.sendall(b"x")
print("connected", flush=True)
out = []
for s in socks:
    try:
        out.append(repr(s.recv(100)))
    except OSError as e:
        out.append(type(e).__name__)
print(" ".join(out))
"""


def test_closing_a_listener_resets_the_connections_it_did_not_accept(lab, mode, facade_runtime):
    ip = stack_ip(lab, mode)
    ls = usocket_tcp()
    ls.bind((ip, 0))
    ls.listen(8)
    client = lab.popen(lab.server_ns, [sys.executable, "-c", CONNECT_MANY_CLIENT, ip, str(ls.getsockname()[1]), "3"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline() == "connected\n"
        with selectors.DefaultSelector() as sel:  # the listener shows the queued connections
            sel.register(ls, selectors.EVENT_READ)
            assert sel.select(TIMEOUT)
    finally:
        ls.close()
    out, err = client.communicate(timeout=TIMEOUT)
    assert client.returncode == 0, err
    assert out.split() == ["ConnectionResetError"] * 3


class ByeFirst(socketserver.BaseRequestHandler):
    """The server speaks and closes first, so its side of the connection ends in TIME_WAIT."""

    def handle(self) -> None:
        self.request.sendall(b"bye\n")


BYE_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
data = b""
while chunk := s.recv(100):
    data += chunk
print(data.decode().strip())
"""


def test_server_restarts_on_its_port_with_reuse_address(lab, mode, stdlib_on_usocket):
    """A restarted server binds its port again while the old connections sit in TIME_WAIT,
    with SO_REUSEADDR (socketserver's allow_reuse_address); without it Linux says EADDRINUSE."""
    ip = stack_ip(lab, mode)
    rt = stdlib_on_usocket
    with Serving(EchoServer((ip, 0), ByeFirst)) as srv:
        port = srv.server_address[1]
        assert peer_python(lab, BYE_CLIENT, ip, port) == "bye\n"
    deadline = time.monotonic() + TIMEOUT
    while not any(c.state.name == "TIME_WAIT" and c.local_port == port for c in list(rt.stack.tcp.conns.values())):
        assert time.monotonic() < deadline, "the server's side never reached TIME_WAIT"
        time.sleep(0.01)

    class NoReuse(EchoServer):
        allow_reuse_address = False

    with pytest.raises(OSError) as ei:
        NoReuse((ip, port), ByeFirst)
    assert ei.value.errno == errno.EADDRINUSE
    with Serving(EchoServer((ip, port), ByeFirst)) as srv:
        assert_userland(srv.socket)
        assert srv.server_address == (ip, port)
        assert peer_python(lab, BYE_CLIENT, ip, port) == "bye\n"


def test_shutdown_of_a_listener_wakes_its_waiters(lab, mode, facade_runtime):
    """Linux: a listener shut down shows POLLHUP (select: readable), so a thread blocked in
    accept() or a server's select() on it wakes; accept() then gives EINVAL."""
    with usocket_tcp(1.0) as ls:
        ls.bind((stack_ip(lab, mode), 0))
        ls.listen(4)
        assert select.select([ls], [], [], 0)[0] == []
        ls.shutdown(usocket.SHUT_RDWR)
        assert select.select([ls], [], [], 0)[0] == [ls]
        with pytest.raises(OSError) as ei:
            ls.accept()
        assert ei.value.errno == errno.EINVAL


REUSEPORT_CLIENT = """
import socket, sys
socks = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) for _ in range(int(sys.argv[3]))]
print(sorted(s.getsockname()[1] % 2 for s in socks))
"""


def test_so_reuseport_spreads_connections_over_the_listeners(lab, mode, facade_runtime):
    """Linux hashes the 4-tuple over an SO_REUSEPORT group. (Its clients connect() from even
    ports only: a choice linear in the source port sends everything to one listener.)"""
    ip = stack_ip(lab, mode)
    n = 20
    listeners = []
    try:
        for _ in range(2):
            ls = usocket_tcp(0)
            ls.setsockopt(usocket.SOL_SOCKET, usocket.SO_REUSEPORT, 1)
            ls.bind((ip, listeners[0].getsockname()[1] if listeners else 0))
            ls.listen(n)
            listeners.append(ls)
        parities = peer_python(lab, REUSEPORT_CLIENT, ip, listeners[0].getsockname()[1], n)
        counts = [0, 0]
        deadline = time.monotonic() + TIMEOUT
        while sum(counts) < n and time.monotonic() < deadline:  # (the last ACKs may still be on the way)
            for ls in select.select(listeners, [], [], 1.0)[0]:
                try:
                    ls.accept()[0].close()
                except BlockingIOError:
                    continue
                counts[listeners.index(ls)] += 1
    finally:
        for ls in listeners:
            ls.close()
    assert sum(counts) == n, (counts, parities)
    assert min(counts) > 0, (counts, parities)  # Linux: ~n/2 each (20 all on one: p = 2**-19)


READ_A_BIT_CLIENT = """
import socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
got = 0
while got < 100000:
    got += len(s.recv(65536))
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()  # RST in the middle of the server's write
print(got)
"""


def test_a_peer_reset_fails_a_long_sendall(lab, mode, facade_runtime):
    """One big ``sendall`` while the peer resets: Linux fails it (ECONNRESET or EPIPE) rather
    than reporting everything as sent."""
    ip = stack_ip(lab, mode)
    with usocket_tcp() as ls:
        ls.bind((ip, 0))
        ls.listen(1)
        client = lab.popen(lab.server_ns, [sys.executable, "-c", READ_A_BIT_CLIENT, ip, str(ls.getsockname()[1])],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        s, _ = ls.accept()
    with s:
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            s.sendall(bytes(64 << 20))
    out, err = client.communicate(timeout=TIMEOUT)
    assert client.returncode == 0, err
