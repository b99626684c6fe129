"""The lab's peer servers: small, concurrent, kernel-stack servers with checkable answers.

Run in the lab's server namespace as ``python -m usocket.lab.servers --tcp-echo 7 ...``; the
process prints one line ``ready <name>=<port> ...`` on stdout once every socket listens (and
nothing else there afterwards), logs errors to stderr and exits on SIGTERM/SIGINT.

Servers (asyncio in the main thread, ``http.server`` and ``xmlrpc.server`` in threads of their own):

- **TCP echo**: echoes every byte; on EOF from the client it closes its side.
- **UDP echo**: sends every datagram back to its sender.
- **bulk source**: the client sends an 8-byte big-endian length ``N``; the server streams the
  first ``N`` bytes of the *bulk pattern* and closes. Memory use is constant whatever ``N``.
- **bulk sink**: reads to EOF, then answers with an 8-byte big-endian byte count and the 32-byte
  SHA-256 of everything read, then closes.
- **EOF echo**: reads to EOF (the client's FIN), then sends everything back and closes: the
  client half-closed and keeps receiving (at most :data:`EOF_ECHO_MAX` bytes are held).
- **reset**: the client sends an 8-byte big-endian length ``N``; the server hands the first
  ``N`` bytes of the bulk pattern to its socket in one write (the kernel takes what fits in its
  send buffer and starts sending), then at once closes it with ``SO_LINGER`` 0: the kernel throws
  away what it has not sent and sends a RST instead of a FIN. With ``N`` of a few MiB the client
  gets the first segments of the pattern, then the RST, in the middle of the stream.
- **HTTP**: :class:`http.server.ThreadingHTTPServer` (HTTP/1.1, keep-alive) on a docroot made by
  :func:`make_docroot`. ``POST`` to any path reads the body (``Content-Length`` or chunked) and
  answers ``<byte count> <sha256 hex>\n`` (:func:`parse_post_reply`), so uploads can be checked.
- **XML-RPC**: :class:`xmlrpc.server.SimpleXMLRPCServer` (a thread per connection, HTTP/1.1
  keep-alive, builtin types so ``bytes`` travel as base64, never gzip-compressed so a large
  answer is large on the wire) on ``/`` and ``/RPC2``, with :data:`XMLRPC_FUNCTIONS`, the
  introspection functions and ``system.multicall``.

The bulk pattern: the concatenation of the 8-byte big-endian unsigned integers 0, 1, 2, ...
(word ``k`` sits at offset ``8k``), truncated to the requested length. Every 8-byte-aligned
position holds a different value, so a lost, duplicated or misplaced segment changes the hash.
:func:`bulk_pattern` returns any slice of it and :func:`bulk_sha256` its hash for a length.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import functools
import hashlib
import http.server
import os
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import xmlrpc.server
from collections.abc import Iterator
from typing import Any

CHUNK = 256 * 1024  # bulk source write size; a multiple of 8
SINK_REPLY = struct.Struct(">Q32s")  # bulk sink answer: count + sha256 digest
LENGTH = struct.Struct(">Q")  # bulk source request
EOF_ECHO_MAX = 256 << 20  # the EOF echo server holds what it read until EOF
XMLRPC_PATTERN_MAX = 64 << 20  # the largest answer the XML-RPC ``pattern`` function gives


# -- the bulk pattern ---------------------------------------------------------------------------
def bulk_pattern(offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of the bulk pattern (8-byte BE counters 0, 1, 2 ...)."""
    if length <= 0:
        return b""
    first, last = offset // 8, (offset + length + 7) // 8
    words = array.array("Q", range(first, last))
    if sys.byteorder == "little":
        words.byteswap()
    start = offset - first * 8
    return words.tobytes()[start:start + length]


def bulk_chunks(length: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """The first ``length`` bytes of the bulk pattern, in chunks of at most ``chunk`` bytes."""
    pos = 0
    while pos < length:
        n = min(chunk, length - pos)
        yield bulk_pattern(pos, n)
        pos += n


@functools.lru_cache(maxsize=64)
def bulk_sha256(length: int) -> str:
    """SHA-256 (hex) of the first ``length`` bytes of the bulk pattern (cached)."""
    h = hashlib.sha256()
    for c in bulk_chunks(length, 1 << 20):
        h.update(c)
    return h.hexdigest()


def bulk_request(length: int) -> bytes:
    """What a client sends the bulk source to ask for ``length`` bytes."""
    return LENGTH.pack(length)


def parse_sink_reply(reply: bytes) -> tuple[int, str]:
    """The bulk sink's 40-byte answer as ``(byte_count, sha256_hex)``."""
    count, digest = SINK_REPLY.unpack(reply)
    return count, digest.hex()


# -- the HTTP docroot -----------------------------------------------------------------------------
INDEX_HTML = (b"<!DOCTYPE html>\n<html><head><title>usocket lab</title></head>\n"
              b"<body><h1>usocket lab</h1><p>It works.</p></body></html>\n")
DOC_FILES = {"/1k.bin": 1024, "/1m.bin": 1 << 20, "/16m.bin": 16 << 20}


def make_docroot(path: str, seed: int = 1) -> dict[str, tuple[int, str]]:
    """Write the lab's HTTP files into ``path``; return ``{url path: (size, sha256 hex)}``.

    ``/index.html`` (also served for ``/``) and pseudo-random binary files of 1 KiB, 1 MiB and
    16 MiB from a seeded RNG, so their content is the same on every run.
    """
    os.makedirs(path, exist_ok=True)
    files = {"/index.html": INDEX_HTML}
    rng = random.Random(seed)
    for name, size in DOC_FILES.items():
        files[name] = rng.randbytes(size)
    out = {}
    for name, data in files.items():
        with open(os.path.join(path, name.lstrip("/")), "wb") as f:
            f.write(data)
        out[name] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def parse_post_reply(body: bytes) -> tuple[int, str]:
    """The HTTP server's answer to a ``POST`` as ``(byte_count, sha256_hex)`` of the body it read."""
    count, digest = body.split()
    return int(count), digest.decode("ascii")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files over HTTP/1.1 (keep-alive), without a log line per request; ``POST`` answers
    the size and SHA-256 of the request body (so a client's upload is checked end to end)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body, as ``Content-Length`` or ``Transfer-Encoding: chunked`` gives it."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return
                yield from self._read(size)
                self.rfile.readline()  # the CRLF after the chunk
        yield from self._read(int(self.headers.get("Content-Length") or 0))

    def _read(self, left: int) -> Iterator[bytes]:
        """Exactly ``left`` bytes of the body, in pieces of at most 1 MiB."""
        while left:
            data = self.rfile.read(min(left, 1 << 20))
            if not data:
                raise ConnectionError("body cut short")
            left -= len(data)
            yield data

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        h, count = hashlib.sha256(), 0
        try:
            for data in self._body_chunks():
                h.update(data)
                count += len(data)
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        reply = f"{count} {h.hexdigest()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


class LabHTTPServer(http.server.ThreadingHTTPServer):
    """A thread per connection, a deep listen backlog (hundreds of simultaneous clients)."""

    request_queue_size = 1024
    daemon_threads = True


def start_http(host: str, port: int, docroot: str) -> LabHTTPServer:
    """Listen now, serve from a daemon thread; returns the server (``shutdown()`` stops it)."""
    handler = functools.partial(QuietHandler, directory=docroot)
    srv = LabHTTPServer((host, port), handler)
    threading.Thread(target=srv.serve_forever, name="http", daemon=True).start()
    return srv


# -- XML-RPC ---------------------------------------------------------------------------------------
def _xmlrpc_echo(value: Any) -> Any:
    """Return the argument unchanged (str, bytes, numbers, lists, dicts ...)."""
    return value


def _xmlrpc_add(a: Any, b: Any) -> Any:
    """``a + b``."""
    return a + b


def _xmlrpc_pattern(length: int) -> bytes:
    """The first ``length`` bytes of the bulk pattern (a large answer; see :func:`bulk_sha256`)."""
    if not 0 <= length <= XMLRPC_PATTERN_MAX:
        raise ValueError(f"length must be 0..{XMLRPC_PATTERN_MAX}")
    return bulk_pattern(0, length)


def _xmlrpc_sha256(data: Any) -> list[Any]:
    """``[length, sha256 hex]`` of ``data`` (bytes, or str as UTF-8): checks a large request."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    return [len(raw), hashlib.sha256(raw).hexdigest()]


def _xmlrpc_fail(message: str) -> None:
    """Raise, so the client gets an ``xmlrpc.client.Fault``."""
    raise ValueError(message)


XMLRPC_FUNCTIONS: dict[str, Any] = {"echo": _xmlrpc_echo, "add": _xmlrpc_add, "pattern": _xmlrpc_pattern,
                    "sha256": _xmlrpc_sha256, "fail": _xmlrpc_fail}


class LabXMLRPCHandler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    """HTTP/1.1 keep-alive, no gzip (a large answer is that large on the wire), no log lines."""

    protocol_version = "HTTP/1.1"
    encode_threshold = None  # type: ignore[assignment]  # typeshed says int; the stdlib checks for None
    rpc_paths = ("/", "/RPC2")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


class LabXMLRPCServer(socketserver.ThreadingMixIn, xmlrpc.server.SimpleXMLRPCServer):
    """A thread per connection, a deep listen backlog."""

    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


def start_xmlrpc(host: str, port: int) -> LabXMLRPCServer:
    """Listen now, serve :data:`XMLRPC_FUNCTIONS` from a daemon thread; returns the server."""
    srv = LabXMLRPCServer((host, port), requestHandler=LabXMLRPCHandler, logRequests=False,
                          allow_none=True, use_builtin_types=True)
    for name, fn in XMLRPC_FUNCTIONS.items():
        srv.register_function(fn, name)
    srv.register_introspection_functions()
    srv.register_multicall_functions()
    threading.Thread(target=srv.serve_forever, name="xmlrpc", daemon=True).start()
    return srv


# -- asyncio servers -----------------------------------------------------------------------------
async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await writer.wait_closed()
    except OSError:
        pass


async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then close."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        await _close(writer)


async def bulk_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read an 8-byte length, stream that much of the bulk pattern, close."""
    try:
        (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
        for chunk in bulk_chunks(length):
            writer.write(chunk)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        await _close(writer)


async def bulk_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read to EOF, answer count + sha256, close."""
    h, count = hashlib.sha256(), 0
    try:
        while data := await reader.read(1 << 18):
            h.update(data)
            count += len(data)
        writer.write(SINK_REPLY.pack(count, h.digest()))
        await writer.drain()
    except OSError:
        pass
    finally:
        await _close(writer)


async def eof_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read to EOF, then send it all back, then close."""
    parts: list[bytes] = []
    size = 0
    try:
        while data := await reader.read(1 << 18):
            size += len(data)
            if size > EOF_ECHO_MAX:
                return
            parts.append(data)
        for part in parts:
            writer.write(part)
            await writer.drain()
    except OSError:
        pass
    finally:
        await _close(writer)


async def reset_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read an 8-byte length, write that much of the bulk pattern without waiting, close with
    SO_LINGER 0 (RST): what the kernel had not sent, and what asyncio still buffered, is lost."""
    try:
        (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
        writer.write(bulk_pattern(0, length))  # the kernel takes its send buffer's worth now
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # close() now: the kernel discards its send queue and sends a RST
    except (OSError, asyncio.IncompleteReadError):
        await _close(writer)


class UdpEcho(asyncio.DatagramProtocol):
    """Send every datagram back; send errors (e.g. EPERM from a lab loss rule) are ignored."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]
        except OSError:
            pass

    def error_received(self, exc: Exception) -> None:
        pass


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready: list[str] = []
    kw = {"host": args.host, "backlog": 1024, "reuse_address": True}
    for name, handler in (("tcp_echo", tcp_echo), ("bulk_source", bulk_source), ("bulk_sink", bulk_sink),
                          ("eof_echo", eof_echo), ("reset", reset_after)):
        port = getattr(args, name)
        if port:
            await asyncio.start_server(handler, port=port, **kw)  # type: ignore[arg-type]
            ready.append(f"{name}={port}")
    if args.udp_echo:
        await loop.create_datagram_endpoint(UdpEcho, local_addr=(args.host, args.udp_echo),
                                            family=socket.AF_INET)
        ready.append(f"udp_echo={args.udp_echo}")
    if args.http:
        start_http(args.host, args.http, args.docroot)
        ready.append(f"http={args.http}")
    if args.xmlrpc:
        start_xmlrpc(args.host, args.xmlrpc)
        ready.append(f"xmlrpc={args.xmlrpc}")
    print("ready " + " ".join(ready), flush=True)
    await stop.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m usocket.lab.servers", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--tcp-echo", type=int, default=0, dest="tcp_echo")
    p.add_argument("--udp-echo", type=int, default=0, dest="udp_echo")
    p.add_argument("--bulk-source", type=int, default=0, dest="bulk_source")
    p.add_argument("--bulk-sink", type=int, default=0, dest="bulk_sink")
    p.add_argument("--eof-echo", type=int, default=0, dest="eof_echo")
    p.add_argument("--reset", type=int, default=0)
    p.add_argument("--http", type=int, default=0)
    p.add_argument("--xmlrpc", type=int, default=0)
    p.add_argument("--docroot", default=".")
    args = p.parse_args(argv)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
