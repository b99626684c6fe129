"""Unmodified-style client code on ``usocket`` in the lab: the stdlib's HTTP, XML-RPC, TLS and
asyncio clients against real servers (nginx, ``http.server``, ``xmlrpc.server``, the echo
server) on the kernel peer.

The clients run in this process on ``usocket`` sockets carried by a stack in the lab's client
namespace; the client namespace's kernel TCP/UDP egress is REJECTed (the ``runtime`` fixture
fails the test if the kernel sent anything), and this process itself lives in the root namespace,
which has no route to the lab. So everything that passes went through the userland stack.

``http.client`` (and through it ``urllib.request`` and ``xmlrpc.client``) builds its connection
with ``socket.create_connection`` looked up in its own module's globals when a connection object
is made, so the tests patch ``http.client.socket`` to ``usocket`` for their own duration only
(until the hijacker swaps the module for everyone). ``usocket.socket`` itself is replaced by a
subclass that records every socket made (``usocket.create_connection`` looks ``socket`` up in
``usocket``'s globals), so each test asserts how many userland sockets carried its traffic and
where they went. asyncio gets ``usocket`` sockets handed in (``sock=``): its own resolver and
``socket`` calls stay the stdlib's.
"""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import os
import socket as stdsocket
import ssl
import threading
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import pytest
from lab_runtime import stack_ip

import usocket
from usocket.lab.servers import SINK_REPLY, bulk_pattern, bulk_sha256, parse_post_reply, parse_sink_reply
from usocket.wire.addr import ip_ntoa

pytestmark = pytest.mark.lab

TIMEOUT = 15.0  # every blocking step of a test is bounded by this
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Tracker:
    """Every ``usocket.socket`` made while a test runs (the class is swapped for a recording
    subclass), so a test can assert that its traffic was carried by userland sockets."""

    def __init__(self) -> None:
        self.socks: list[usocket.socket] = []
        tracker = self

        class TrackedSocket(usocket.socket):
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, **kw)
                tracker.socks.append(self)

        TrackedSocket.__name__ = TrackedSocket.__qualname__ = "socket"
        TrackedSocket.__module__ = "usocket"
        self.cls = TrackedSocket

    def peers(self) -> list[tuple[str, int]]:
        """Where each recorded stream socket connected (``(ip, port)``), in creation order."""
        out = []
        for s in self.socks:
            conn = s.connection
            if conn is not None and getattr(conn, "remote_ip", None) is not None:
                out.append((ip_ntoa(conn.remote_ip), conn.remote_port))
        return out

    def assert_userland(self, expected: list[tuple[str, int]]) -> None:
        """Exactly the sockets ``expected`` (in order) were made, all of them userland ones."""
        assert all(s.userland for s in self.socks), "a socket went to the kernel"
        assert self.peers() == expected, (self.peers(), expected)


@pytest.fixture
def on_usocket(monkeypatch: pytest.MonkeyPatch, facade_runtime: Any) -> Iterator[Tracker]:
    """``http.client`` (so also urllib and xmlrpc) on ``usocket`` for this test; no proxies."""
    tracker = Tracker()
    monkeypatch.setattr(usocket, "socket", tracker.cls)
    monkeypatch.setattr(usocket, "SocketType", tracker.cls)
    monkeypatch.setattr(http.client, "socket", usocket)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    yield tracker


def tls_context(lab: Any) -> ssl.SSLContext:
    """What a client that trusts the lab's CA uses: the default context (hostname checks on)."""
    return ssl.create_default_context(cafile=lab.ca_file)


def file_hash(lab: Any, path: str) -> str:
    return lab.http_files[path][1]


def read_http_response(sock: Any, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Parse one HTTP/1.1 response from ``sock`` (a socket or SSLSocket) with http.client."""
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    try:
        body = resp.read()
    finally:
        resp.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


# -- http.client ----------------------------------------------------------------------------------
@pytest.mark.parametrize("server", ["http", "nginx"])
def test_http_client_get_keepalive(lab: Any, on_usocket: Tracker, server: str) -> None:
    port = lab.ports[server]
    conn = http.client.HTTPConnection(lab.server_ip, port, timeout=TIMEOUT)
    try:
        for path in ("/", "/1k.bin", "/1m.bin", "/index.html", "/1k.bin"):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            want = "/index.html" if path == "/" else path
            assert resp.status == 200, (path, resp.status)
            assert (len(body), sha(body)) == lab.http_files[want], path
            assert not resp.will_close
        assert isinstance(conn.sock, usocket.socket) and conn.sock.userland
        assert conn.sock.getpeername() == (lab.server_ip, port)
        conn.request("GET", "/missing.bin")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404
    finally:
        conn.close()
    on_usocket.assert_userland([(lab.server_ip, port)])  # six requests, one connection


def test_http_client_post_bodies_to_http_server(lab: Any, on_usocket: Tracker) -> None:
    """POST with a bytes body, a chunked iterable body and a file body; the Python server answers
    each body's size and hash; a GET on the same connection afterwards still works."""
    body = os.urandom(3 << 20)
    parts = [os.urandom(n) for n in (1, 1000, 65536, 300000)]
    conn = http.client.HTTPConnection(lab.server_ip, lab.ports["http"], timeout=TIMEOUT)
    try:
        conn.request("POST", "/upload", body=body, headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        assert resp.status == 200 and parse_post_reply(resp.read()) == (len(body), sha(body))
        conn.request("POST", "/upload", body=iter(parts), encode_chunked=True)
        resp = conn.getresponse()
        joined = b"".join(parts)
        assert parse_post_reply(resp.read()) == (len(joined), sha(joined))
        conn.request("POST", "/upload", body=io.BytesIO(body[:777777]),
                     headers={"Content-Length": "777777"})
        resp = conn.getresponse()
        assert parse_post_reply(resp.read()) == (777777, sha(body[:777777]))
        conn.request("GET", "/1m.bin")
        got = conn.getresponse().read()
        assert sha(got) == file_hash(lab, "/1m.bin")
    finally:
        conn.close()
    on_usocket.assert_userland([(lab.server_ip, lab.ports["http"])])


def test_http_client_put_post_to_nginx(lab: Any, on_usocket: Tracker) -> None:
    """PUT a file to nginx (WebDAV) and GET it back; a POST with a body to a static file is
    refused (405) after nginx read and discarded the body, and the connection goes on."""
    body = os.urandom(2 << 20)
    conn = http.client.HTTPConnection(lab.server_ip, lab.ports["nginx"], timeout=TIMEOUT)
    try:
        conn.request("PUT", "/upload/dir/blob.bin", body=body)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201
        conn.request("GET", "/upload/dir/blob.bin")
        resp = conn.getresponse()
        assert resp.status == 200 and sha(resp.read()) == sha(body)
        conn.request("POST", "/1k.bin", body=body[:100000])
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 405
        conn.request("GET", "/1k.bin")
        resp = conn.getresponse()
        assert sha(resp.read()) == file_hash(lab, "/1k.bin")
    finally:
        conn.close()
    on_usocket.assert_userland([(lab.server_ip, lab.ports["nginx"])])


# -- urllib ------------------------------------------------------------------------------------------
def test_urlopen_files_with_hashes(lab: Any, on_usocket: Tracker) -> None:
    paths = ["/index.html", "/1k.bin", "/1m.bin", "/16m.bin"]
    for server in ("nginx", "http"):
        for path in paths if server == "nginx" else paths[:2]:
            with urllib.request.urlopen(lab.url(path, server), timeout=TIMEOUT) as resp:
                data = resp.read()
                assert resp.status == 200
            assert (len(data), sha(data)) == lab.http_files[path], (server, path)
    req = urllib.request.Request(lab.url("/post", "http"), data=b"x" * 5000, method="POST")
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        assert parse_post_reply(resp.read()) == (5000, sha(b"x" * 5000))
    nginx, py = (lab.server_ip, lab.ports["nginx"]), (lab.server_ip, lab.ports["http"])
    on_usocket.assert_userland([nginx] * 4 + [py] * 3)  # urllib closes after each request


# -- xmlrpc ------------------------------------------------------------------------------------------
def test_xmlrpc_calls(lab: Any, on_usocket: Tracker) -> None:
    upload = os.urandom(2 << 20)
    with xmlrpc.client.ServerProxy(lab.url("/RPC2", "xmlrpc"), use_builtin_types=True, allow_none=True) as proxy:
        assert proxy.add(2, 40) == 42
        assert proxy.add("us", "ocket") == "usocket"
        assert proxy.echo("grüße ✓") == "grüße ✓"
        assert proxy.echo(b"\x00\xff" * 1000) == b"\x00\xff" * 1000
        assert proxy.echo({"a": [1, 2.5, None, True]}) == {"a": [1, 2.5, None, True]}
        big = proxy.pattern(4 << 20)  # ~5.6 MB of base64 in XML on the wire
        assert len(big) == 4 << 20 and sha(big) == bulk_sha256(4 << 20)
        assert proxy.sha256(upload) == [len(upload), sha(upload)]
        multi = xmlrpc.client.MultiCall(proxy)
        multi.add(1, 2)
        multi.echo("x")
        multi.pattern(8)
        assert list(multi()) == [3, "x", bulk_pattern(0, 8)]
        with pytest.raises(xmlrpc.client.Fault, match="boom"):
            proxy.fail("boom")
        assert "pattern" in proxy.system.listMethods()
    # HTTP/1.1 keep-alive: every call went over one connection.
    on_usocket.assert_userland([(lab.server_ip, lab.ports["xmlrpc"])])


# -- TLS -------------------------------------------------------------------------------------------
def https_get_request(lab: Any, path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_tls_wrap_socket_get(lab: Any, on_usocket: Tracker, version: ssl.TLSVersion) -> None:
    ctx = tls_context(lab)
    ctx.minimum_version = ctx.maximum_version = version
    raw = usocket.create_connection((lab.server_ip, lab.ports["https"]), timeout=TIMEOUT)
    assert raw.userland
    with ctx.wrap_socket(raw, server_hostname=lab.server_name) as tls:
        assert tls.version() == version.name.replace("_", ".")
        cert = tls.getpeercert()
        assert ("DNS", lab.server_name) in cert["subjectAltName"]
        assert ("IP Address", lab.server_ip) in cert["subjectAltName"]
        tls.sendall(https_get_request(lab, "/1m.bin", lab.server_name))
        status, headers, body = read_http_response(tls)
    assert status == 200 and int(headers["content-length"]) == len(body)
    assert sha(body) == file_hash(lab, "/1m.bin")
    on_usocket.assert_userland([(lab.server_ip, lab.ports["https"])])


def test_tls_memory_bio_over_usocket(lab: Any, on_usocket: Tracker) -> None:
    """TLS through ``wrap_bio``: the application pumps the records over a usocket socket."""
    ctx = tls_context(lab)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=lab.server_name)
    with usocket.create_connection((lab.server_ip, lab.ports["https"]), timeout=TIMEOUT) as sock:

        def flush() -> None:
            data = outgoing.read()
            if data:
                sock.sendall(data)

        def fill() -> None:
            data = sock.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()

        def until_done(op: Any, *args: Any) -> Any:
            while True:
                try:
                    result = op(*args)
                except ssl.SSLWantReadError:
                    flush()
                    fill()
                else:
                    flush()
                    return result

        until_done(tls.do_handshake)
        assert tls.version() == "TLSv1.3"
        until_done(tls.write, https_get_request(lab, "/1m.bin", lab.server_name))
        received = bytearray()
        while True:
            try:
                chunk = until_done(tls.read, 65536)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not chunk:
                break
            received += chunk
        head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert sha(body) == file_hash(lab, "/1m.bin")
    on_usocket.assert_userland([(lab.server_ip, lab.ports["https"])])


def test_https_connection_keepalive(lab: Any, on_usocket: Tracker) -> None:
    """http.client.HTTPSConnection (verified against the lab CA, the address as the host: the
    certificate holds it as an IP SAN), several requests on one connection; urllib over HTTPS."""
    ctx = tls_context(lab)
    conn = http.client.HTTPSConnection(lab.server_ip, lab.ports["https"], timeout=TIMEOUT, context=ctx)
    try:
        for path in ("/index.html", "/1m.bin", "/1k.bin"):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200 and (len(body), sha(body)) == lab.http_files[path]
        assert isinstance(conn.sock, ssl.SSLSocket)
    finally:
        conn.close()
    with urllib.request.urlopen(lab.url("/1m.bin", "https"), timeout=TIMEOUT, context=ctx) as resp:
        assert sha(resp.read()) == file_hash(lab, "/1m.bin")
    on_usocket.assert_userland([(lab.server_ip, lab.ports["https"])] * 2)


def test_tls_verification_failures(lab: Any, on_usocket: Tracker) -> None:
    """A name the certificate does not hold, and a CA the client does not trust, both fail."""
    addr = (lab.server_ip, lab.ports["https"])
    with usocket.create_connection(addr, timeout=TIMEOUT) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|doesn't match"):
            tls_context(lab).wrap_socket(raw, server_hostname=f"client.{lab.DOMAIN}")
    with usocket.create_connection(addr, timeout=TIMEOUT) as raw:
        untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA at all
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            untrusting.wrap_socket(raw, server_hostname=lab.server_name)
    # HTTPSConnection checks the name it connected by; client.<domain> resolves to the client,
    # so the connection itself goes to the server's address (the attribute __init__ sets).
    conn = http.client.HTTPSConnection(f"client.{lab.DOMAIN}", lab.ports["https"], timeout=TIMEOUT,
                                       context=tls_context(lab))

    def to_server(*args: Any, **kw: Any) -> usocket.socket:
        return usocket.create_connection(addr, timeout=TIMEOUT)

    conn._create_connection = to_server  # type: ignore[attr-defined]
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/")
    conn.close()
    on_usocket.assert_userland([addr] * 3)


# SSLContext.wrap_socket builds its SSLSocket on the descriptor of the socket it is given; without
# usocket.facade.tls that was a plain stdlib socket on the AF_UNIX pair (addresses and options of the
# pair, a handshake on an unconnected pair). These tests keep it from coming back.
@pytest.mark.parametrize("mode", ["own"])  # the mode does not matter here: one is enough
def test_tls_socket_addresses_and_options(lab: Any, on_usocket: Tracker, mode: str) -> None:
    addr = (lab.server_ip, lab.ports["https"])
    raw = usocket.create_connection(addr, timeout=TIMEOUT)
    local = raw.getsockname()
    assert local[0] == stack_ip(lab, mode)
    with tls_context(lab).wrap_socket(raw, server_hostname=lab.server_name) as tls:
        assert tls.getpeername() == addr  # '' today
        assert tls.getsockname() == local
        tls.setsockopt(usocket.IPPROTO_TCP, usocket.TCP_NODELAY, 1)  # EOPNOTSUPP today
        assert tls.getsockopt(usocket.IPPROTO_TCP, usocket.TCP_NODELAY) == 1
        tls.setsockopt(usocket.SOL_SOCKET, usocket.SO_KEEPALIVE, 1)
        assert tls.connection is not None and tls.connection.keepalive


@pytest.mark.parametrize("mode", ["own"])
def test_tls_wrap_before_connect(lab: Any, on_usocket: Tracker, mode: str) -> None:
    addr = (lab.server_ip, lab.ports["https"])
    sock = usocket.socket(usocket.AF_INET, usocket.SOCK_STREAM)
    sock.settimeout(2.0)  # the handshake takes milliseconds once connected; today this times out
    with tls_context(lab).wrap_socket(sock, server_hostname=lab.server_name) as tls:
        tls.connect(addr)
        assert tls.version() == "TLSv1.3"
        tls.sendall(https_get_request(lab, "/1k.bin", lab.server_name))
        status, _, body = read_http_response(tls)
    assert status == 200 and sha(body) == file_hash(lab, "/1k.bin")
    on_usocket.assert_userland([addr])


@pytest.mark.parametrize("mode", ["own"])
def test_tls_server_side_accept(lab: Any, on_usocket: Tracker, mode: str) -> None:
    """A TLS server on usocket (the lab's server certificate), a kernel client in the peer."""
    tls_dir = os.path.dirname(lab.ca_file)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(os.path.join(tls_dir, "server.pem"), os.path.join(tls_dir, "server.key"))
    listener = usocket.create_server(("", 0))
    listener.settimeout(3.0)  # before wrapping: today wrap_socket handshakes on the listener's pair
    port = listener.getsockname()[1]
    results: list[Any] = []

    def client() -> bytes:  # kernel sockets in the server namespace
        ctx = tls_context(lab)
        with stdsocket.create_connection((stack_ip(lab, mode), port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=lab.server_name) as tls:
            tls.sendall(b"hello")
            return tls.recv(100)

    def run_client() -> None:
        try:
            results.append(lab.call(lab.server_ns, client))
        except Exception as e:  # reported by the assertion below
            results.append(e)

    thread = threading.Thread(target=run_client, daemon=True)
    try:
        with server_ctx.wrap_socket(listener, server_side=True) as tls_listener:
            thread.start()
            conn, addr = tls_listener.accept()
            with conn:
                assert addr[0] == lab.server_ip and conn.version() == "TLSv1.3"
                conn.sendall(conn.recv(100).upper())
            thread.join(TIMEOUT)
    finally:
        listener.close()
        if thread.ident is not None:
            thread.join(TIMEOUT)
    assert results == [b"HELLO"]


# -- asyncio ---------------------------------------------------------------------------------------
def run_async(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def echo_roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    got = await reader.read()  # the echo server closes after our EOF
    writer.close()
    await writer.wait_closed()
    return got


def test_asyncio_open_connection_on_usocket(lab: Any, on_usocket: Tracker) -> None:
    """Streams over a connected blocking usocket socket and over one still connecting
    (non-blocking ``connect`` raised EINPROGRESS): asyncio waits for writability, which comes
    when the handshake completes."""
    addr = (lab.server_ip, lab.ports["tcp_echo"])
    payload = os.urandom(1 << 20)

    async def main() -> tuple[bytes, bytes, Any]:
        connected = usocket.create_connection(addr, timeout=TIMEOUT)
        reader, writer = await asyncio.open_connection(sock=connected)
        peer = writer.get_extra_info("peername")
        first = await echo_roundtrip(reader, writer, payload)
        connecting = usocket.socket(usocket.AF_INET, usocket.SOCK_STREAM)
        connecting.setblocking(False)
        with pytest.raises(BlockingIOError):
            connecting.connect(addr)
        reader, writer = await asyncio.open_connection(sock=connecting)
        second = await echo_roundtrip(reader, writer, payload[::-1])
        return first, second, peer

    first, second, peer = run_async(main())
    assert sha(first) == sha(payload) and sha(second) == sha(payload[::-1])
    assert peer == addr
    on_usocket.assert_userland([addr, addr])


def test_asyncio_sock_methods(lab: Any, on_usocket: Tracker) -> None:
    """``loop.sock_connect`` / ``sock_sendall`` / ``sock_recv`` / ``sock_recv_into`` on a
    non-blocking usocket socket against the echo server."""
    addr = (lab.server_ip, lab.ports["tcp_echo"])
    payload = os.urandom(512 << 10)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        with usocket.socket(usocket.AF_INET, usocket.SOCK_STREAM) as s:
            s.setblocking(False)
            await loop.sock_connect(s, addr)
            assert s.getpeername() == addr
            await loop.sock_sendall(s, b"ping")
            got = b""
            while len(got) < 4:
                got += await loop.sock_recv(s, 4 - len(got))
            assert got == b"ping"
            sender = asyncio.ensure_future(loop.sock_sendall(s, payload))
            buf = bytearray(len(payload))
            view, n = memoryview(buf), 0
            while n < len(payload):
                k = await loop.sock_recv_into(s, view[n:])
                assert k > 0
                n += k
            await sender
            s.shutdown(usocket.SHUT_WR)
            assert await loop.sock_recv(s, 100) == b""  # the echo server closed after our EOF
            return bytes(buf)

    assert sha(run_async(main())) == sha(payload)
    on_usocket.assert_userland([addr])


def test_asyncio_create_connection_with_sock(lab: Any, on_usocket: Tracker) -> None:
    addr = (lab.server_ip, lab.ports["tcp_echo"])
    payload = os.urandom(256 << 10)

    class Collect(asyncio.Protocol):
        def __init__(self) -> None:
            self.data = bytearray()
            self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            self.data += data

        def eof_received(self) -> None:
            self.done.set_result(bytes(self.data))

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():
                self.done.set_exception(exc or ConnectionError("closed before EOF"))

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        sock = usocket.create_connection(addr, timeout=TIMEOUT)
        transport, proto = await loop.create_connection(Collect, sock=sock)
        assert transport.get_extra_info("socket").fileno() == sock.fileno()
        transport.write(payload)
        transport.write_eof()
        got = await proto.done
        transport.close()
        return got

    assert sha(run_async(main())) == sha(payload)
    on_usocket.assert_userland([addr])


def test_asyncio_tls_over_usocket(lab: Any, on_usocket: Tracker) -> None:
    """asyncio's own TLS (its MemoryBIO protocol) on a usocket socket, against nginx over HTTPS."""
    addr = (lab.server_ip, lab.ports["https"])

    async def main() -> bytes:
        sock = usocket.create_connection(addr, timeout=TIMEOUT)
        reader, writer = await asyncio.open_connection(sock=sock, ssl=tls_context(lab),
                                                       server_hostname=lab.server_name)
        writer.write(https_get_request(lab, "/1m.bin", lab.server_name))
        await writer.drain()
        data = await reader.read()
        writer.close()
        try:
            await writer.wait_closed()
        except (ssl.SSLError, ConnectionError):
            pass  # nginx may close before answering our close_notify
        return data

    head, _, body = run_async(main()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and sha(body) == file_hash(lab, "/1m.bin")
    on_usocket.assert_userland([addr])


# -- sendfile, errors ------------------------------------------------------------------------------
def test_sendfile_blocking_and_asyncio(lab: Any, on_usocket: Tracker) -> None:
    """``socket.sendfile`` and ``loop.sock_sendfile`` (``os.sendfile`` into the pair) of a docroot
    file to the bulk sink, which answers the byte count and hash of what it read."""
    path = os.path.join(lab.docroot, "1m.bin")
    want = lab.http_files["/1m.bin"]
    sink = (lab.server_ip, lab.ports["bulk_sink"])

    def reply(s: Any) -> tuple[int, str]:
        data = b""
        while len(data) < SINK_REPLY.size and (chunk := s.recv(SINK_REPLY.size - len(data))):
            data += chunk
        return parse_sink_reply(data)

    with usocket.create_connection(sink, timeout=TIMEOUT) as s, open(path, "rb") as f:
        assert s.sendfile(f) == want[0]
        s.shutdown(usocket.SHUT_WR)
        assert reply(s) == want

    async def main() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        with usocket.create_connection(sink, timeout=TIMEOUT) as s, open(path, "rb") as f:
            s.setblocking(False)
            assert await loop.sock_sendfile(s, f, offset=1000, count=200000) == 200000
            s.shutdown(usocket.SHUT_WR)
            s.setblocking(True)
            s.settimeout(TIMEOUT)
            return reply(s)

    with open(path, "rb") as f:
        part = f.read()[1000:201000]
    assert run_async(main()) == (len(part), sha(part))
    on_usocket.assert_userland([sink, sink])


def test_client_errors(lab: Any, on_usocket: Tracker) -> None:
    """What the stdlib clients raise, through the stack: refused, timed out, HTTP errors."""
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(f"http://{lab.server_ip}:{lab.ports['closed']}/", timeout=TIMEOUT)
    assert isinstance(info.value.reason, ConnectionRefusedError)
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(lab.url("/nothing-here", "nginx"), timeout=TIMEOUT)
    assert http_error.value.code == 404
    http_error.value.close()
    with pytest.raises(xmlrpc.client.ProtocolError) as rpc:
        xmlrpc.client.ServerProxy(lab.url("/not-rpc", "xmlrpc")).add(1, 2)
    assert rpc.value.errcode == 404
    blackhole = lab.server_ip.rsplit(".", 1)[0] + ".250"  # nobody answers ARP for it
    conn = http.client.HTTPConnection(blackhole, 80, timeout=0.5)
    with pytest.raises(TimeoutError):
        conn.request("GET", "/")
    conn.close()
    ip = lab.server_ip
    on_usocket.assert_userland([(ip, lab.ports["closed"]), (ip, lab.ports["nginx"]), (ip, lab.ports["xmlrpc"]),
                                (blackhole, 80)])


# -- names through the stack -----------------------------------------------------------------------
def test_connect_by_dns_name(lab: Any, on_usocket: Tracker, mode: str) -> None:
    """``connect((name, port))`` asks the lab's DNS through the stack (the query comes from the
    stack's address), then TLS verifies the certificate by that name."""
    echo = (lab.server_ip, lab.ports["tcp_echo"])
    with usocket.socket() as s:
        s.settimeout(TIMEOUT)
        s.connect((f"www.{lab.DOMAIN}", lab.ports["tcp_echo"]))  # a CNAME chain to server.<domain>
        s.sendall(b"by name")
        assert s.recv(100) == b"by name"
    with usocket.socket() as raw:
        raw.settimeout(TIMEOUT)
        raw.connect((lab.server_name, lab.ports["https"]))
        with tls_context(lab).wrap_socket(raw, server_hostname=lab.server_name) as tls:
            tls.sendall(https_get_request(lab, "/1k.bin", lab.server_name))
            status, _, body = read_http_response(tls)
    assert status == 200 and sha(body) == file_hash(lab, "/1k.bin")
    assert usocket.gethostbyname(lab.server_name) == lab.server_ip
    queries = lab.dns_queries()
    asked = {name for qtype, name, src in queries if qtype == "A" and src == stack_ip(lab, mode)}
    assert {f"www.{lab.DOMAIN}", lab.server_name} <= asked, queries
    on_usocket.assert_userland([echo, (lab.server_ip, lab.ports["https"])])


def test_http_clients_by_dns_name(lab: Any, on_usocket: Tracker, mode: str) -> None:
    """http.client, urllib and HTTPS by the server's DNS name: ``create_connection`` resolves it
    with ``usocket.getaddrinfo``, which must ask the lab's DNS through the stack."""
    name = lab.server_name
    assert usocket.getaddrinfo is not stdsocket.getaddrinfo
    conn = http.client.HTTPConnection(name, lab.ports["nginx"], timeout=TIMEOUT)
    try:
        conn.request("GET", "/1k.bin")
        assert sha(conn.getresponse().read()) == file_hash(lab, "/1k.bin")
    finally:
        conn.close()
    with urllib.request.urlopen(lab.url("/1m.bin", "https", host=name), timeout=TIMEOUT,
                                context=tls_context(lab)) as resp:
        assert sha(resp.read()) == file_hash(lab, "/1m.bin")
    asked = {n for qtype, n, src in lab.dns_queries() if src == stack_ip(lab, mode)}
    assert name in asked
    on_usocket.assert_userland([(lab.server_ip, lab.ports["nginx"]), (lab.server_ip, lab.ports["https"])])
