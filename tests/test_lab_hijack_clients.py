"""Unmodified client programs under ``python -m usocket_hijack``, fetching from the lab's servers.

Each test writes an ordinary Python program (it never mentions usocket) to a file, runs it
hijacked in the lab's client namespace, and checks what it printed against what the servers
hold: sizes and SHA-256 of the lab's HTTP files, the POST echo's ``<count> <sha256>`` answer,
the XML-RPC server's results, the bulk pattern's hash. The programs cover the stdlib's clients
(``urllib.request``, ``http.client``, ``xmlrpc.client``, ``asyncio`` streams, ``ssl``),
``requests`` (a keep-alive session) and name resolution, by DNS name through the stack's own
resolver (the lab's dnsmasq logs which address asked).

The client namespace's kernel TCP/UDP egress is REJECTed in every test and the rejection counter
must stay 0, so everything that worked went through the userland stack; every program must exit
0 and leave no diversion rule behind. Stack counters come from ``--stats`` (stderr at exit):
``tcp: active_open=N`` says how many connections the program opened, which proves keep-alive
reuse (together with a capture at the peer that counts the SYNs). Captures are read with
``tshark``: a clean exchange shows no RST from either side and FINs both ways, each acknowledged.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hijack_helpers import run_hijacked, sha256_hex, usocket_rules, write_script
from lab_runtime import stack_ip

from usocket.lab import Lab, bulk_sha256
from usocket.wire.tcp import ACK, FIN, RST, SYN

pytestmark = pytest.mark.lab

TIMEOUT = 60.0  # a whole hijacked program (a 16 MiB download takes about a second in shared mode)
POST_SIZE = 3 * (1 << 20) + 7  # not a multiple of any segment or buffer size


# -- helpers ----------------------------------------------------------------------------------------
def _run(lab: Lab, mode: str, args: list[str]) -> tuple[dict[str, Any], dict[str, int]]:
    """Run ``args`` hijacked with ``--stats``; the program must exit 0 and leave no rule.

    Returns the program's JSON lines (``{"key": value}`` each) merged into one dict, and its
    stack's TCP counters from the ``--stats`` report."""
    p = run_hijacked(lab, mode, args, opts=["--stats"], timeout=TIMEOUT)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-4000:]}"
    assert usocket_rules(lab) == [], "the hijacked program left diversion rules behind"
    out: dict[str, Any] = {}
    for line in p.stdout.splitlines():
        out.update(json.loads(line))
    return out, _counters(p.stderr, "tcp", mode)


def _counters(stderr: str, layer: str, mode: str) -> dict[str, int]:
    """One layer's counters of the single ``--stats`` report in ``stderr`` (of a stack in ``mode``)."""
    reports = re.findall(r"usocket stats \(pid \d+, (\w+) mode.*?\n((?:  .*\n)*)", stderr)
    assert [m for m, _ in reports] == [mode], f"expected one {mode} stats report:\n{stderr[-3000:]}"
    m = re.search(rf"^\s*{layer}: (.*)$", reports[0][1], re.MULTILINE)
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())} if m else {}


def _tshark(pcap: str, fields: list[str], display_filter: str = "tcp") -> list[dict[str, str]]:
    """``tshark -r pcap -T fields``: one dict per packet (absent fields are "")."""
    argv = ["tshark", "-r", pcap, "-n", "-Y", display_filter, "-T", "fields"] + [a for f in fields for a in ("-e", f)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"tshark -r {pcap} failed: {p.stderr}"
    return [dict(zip(fields, line.split("\t") + [""] * len(fields), strict=False))
            for line in p.stdout.splitlines()]


TCP_FIELDS = ["tcp.stream", "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.seq",
              "tcp.ack", "tcp.len"]


def _streams(pcap: str) -> dict[int, list[dict[str, Any]]]:
    """The capture's TCP packets grouped by connection (tshark's ``tcp.stream``), in order,
    with ``flags``/``seq``/``ack``/``len`` as ints (relative sequence numbers)."""
    streams: dict[int, list[dict[str, Any]]] = {}
    for row in _tshark(pcap, TCP_FIELDS):
        pkt: dict[str, Any] = dict(row)
        pkt["flags"] = int(row["tcp.flags"], 16)
        for f in ("seq", "ack", "len"):
            pkt[f] = int(row[f"tcp.{f}"] or 0)
        streams.setdefault(int(row["tcp.stream"]), []).append(pkt)
    return streams


def _requests_sent(pcap: str, client: str) -> dict[int, list[str]]:
    """The HTTP request targets ``client`` sent on each connection (``tcp.stream``), read from
    the byte stream it sent, rebuilt from the payloads by sequence number (so a retransmitted
    or oddly split request counts once; no dependence on tshark's HTTP reassembly)."""
    rows = _tshark(pcap, ["tcp.stream", "tcp.seq", "tcp.payload"], f"ip.src=={client} && tcp.len>0")
    sent: dict[int, bytearray] = {}
    for row in rows:
        data, offset = bytes.fromhex(row["tcp.payload"].replace(":", "")), int(row["tcp.seq"]) - 1
        buf = sent.setdefault(int(row["tcp.stream"]), bytearray())
        if len(buf) < offset:
            buf.extend(b"\0" * (offset - len(buf)))  # a hole: the request parsing below will not match it
        buf[offset:offset + len(data)] = data
    return {stream: [m.decode() for m in re.findall(rb"^(?:GET|POST) (\S+) HTTP/1\.1\r$", bytes(buf), re.M)]
            for stream, buf in sent.items()}


def _check_connection(stream: list[dict[str, Any]], client: str) -> None:
    """One connection, opened by ``client``: exactly one SYN from it, a FIN from each side."""
    syns = [p for p in stream if p["flags"] & SYN and not p["flags"] & ACK]
    assert [p["ip.src"] for p in syns] == [client], f"expected one SYN from {client}: {syns}"
    for src in (client, stream[0]["ip.dst"]):
        assert any(p["ip.src"] == src and p["flags"] & FIN for p in stream), \
            f"no FIN from {src} in stream {stream[0]['tcp.stream']}"


def _check_clean_close(stream: list[dict[str, Any]], client: str) -> None:
    """:func:`_check_connection`, no RST from either side, and each FIN acknowledged."""
    _check_connection(stream, client)
    server = stream[0]["ip.dst"]
    resets = [p for p in stream if p["flags"] & RST]
    assert not [p for p in resets if p["ip.src"] == client], f"RST from the client side: {resets}"
    assert not resets, f"RST from the server: {resets}"
    for src, dst in ((client, server), (server, client)):
        fin = [p for p in stream if p["ip.src"] == src and p["flags"] & FIN][-1]
        fin_end = fin["seq"] + fin["len"] + 1
        assert any(p["ip.src"] == dst and p["flags"] & ACK and p["ack"] == fin_end for p in stream), \
            f"the FIN from {src} (seq {fin['seq']}) was never acknowledged"


def _dns_check(lab: Lab, mode: str, before: int, names: set[str]) -> None:
    """Every DNS query logged since ``before`` came from the stack's address, and ``names``
    were among them (asked by the hijacked program's stack, not the kernel's resolver)."""
    queries = lab.dns_queries()[before:]
    assert queries, "the hijacked program asked dnsmasq nothing"
    assert {src for _, _, src in queries} == {stack_ip(lab, mode)}, queries
    assert names <= {name for qtype, name, _ in queries if qtype == "A"}, queries


# -- 1. urllib, http.client, names ----------------------------------------------------------------
STDLIB_HTTP = """
    import hashlib, http.client, json, socket, sys, urllib.request

    name, body_file = sys.argv[1], sys.argv[2]


    def out(key, value):
        print(json.dumps({key: value}), flush=True)


    def sha(data):
        return hashlib.sha256(data).hexdigest()


    out("module", socket.__name__)
    out("gethostbyname", socket.gethostbyname(name))
    out("getaddrinfo", sorted({ai[4][0] for ai in socket.getaddrinfo("www." + name.split(".", 1)[1], 80,
                                                                     socket.AF_INET, socket.SOCK_STREAM)}))
    for path in ("/1m.bin", "/16m.bin"):  # nginx on port 80, by name; one connection each
        with urllib.request.urlopen("http://%s%s" % (name, path), timeout=30) as response:
            data = response.read()
            out("urllib " + path, [response.status, len(data), sha(data)])

    # The POST echo (python http.server, port 8000): Content-Length, then chunked, one connection.
    with open(body_file, "rb") as f:
        body = f.read()
    conn = http.client.HTTPConnection(name, 8000, timeout=30)
    conn.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    out("post", [response.status, response.read().decode()])
    pieces = (body[i:i + 100000] for i in range(0, len(body), 100000))
    conn.request("POST", "/echo", body=pieces, encode_chunked=True)
    response = conn.getresponse()
    out("post chunked", [response.status, response.read().decode()])
    conn.close()
"""


def test_urllib_and_http_client_by_name(lab: Lab, mode: str, tmp_path: Path) -> None:
    """urllib fetches /1m.bin and /16m.bin from nginx by DNS name, http.client POSTs 3 MiB to
    the POST echo (with ``Content-Length``, then chunked, on one kept-alive connection): every
    hash matches; the names were resolved by the stack's DNS (dnsmasq saw the stack's address);
    three connections were opened. urllib's two connections (``Connection: close``: nginx closes
    first) ended cleanly on the wire: FINs both ways, each acknowledged, no RST from anyone (in
    shared mode: the host's kernel never answered a segment meant for the stack)."""
    from usocket.lab.servers import parse_post_reply

    lab.block_kernel_egress()
    body = os.urandom(POST_SIZE)
    body_file = tmp_path / "body.bin"
    body_file.write_bytes(body)
    before = len(lab.dns_queries())
    script = write_script(tmp_path, "stdlib_http.py", STDLIB_HTTP)
    # headers and requests only (a full capture of 17 MiB at veth speed may drop packets)
    with lab.capture(lab.server_ns, lab.server_if, "tcp port 80", snaplen=400) as pcap:
        out, tcp = _run(lab, mode, [script, lab.server_name, str(body_file)])
    assert out["module"] == "usocket"
    assert out["gethostbyname"] == lab.server_ip
    assert out["getaddrinfo"] == [lab.server_ip]  # www. is a CNAME chain to the server
    for path in ("/1m.bin", "/16m.bin"):
        assert out[f"urllib {path}"] == [200, *lab.http_files[path]], path
    for key in ("post", "post chunked"):
        status, reply = out[key]
        assert status == 200
        assert parse_post_reply(reply.encode()) == (len(body), sha256_hex(body)), key
    assert tcp.get("active_open") == 3, tcp  # urllib: one each; http.client: one for both POSTs
    streams = _streams(pcap)
    assert sorted(_requests_sent(pcap, stack_ip(lab, mode)).values()) == [["/16m.bin"], ["/1m.bin"]]
    for stream in streams.values():
        _check_clean_close(stream, stack_ip(lab, mode))
    _dns_check(lab, mode, before, {lab.server_name, f"www.{lab.DOMAIN}"})
    assert lab.kernel_egress_rejected() == 0


# -- 2. xmlrpc.client and asyncio streams -----------------------------------------------------------
XMLRPC_ASYNCIO = """
    import asyncio, hashlib, json, socket, sys, xmlrpc.client

    name, xmlrpc_port, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


    def out(key, value):
        print(json.dumps({key: value}), flush=True)


    def sha(data):
        return hashlib.sha256(data).hexdigest()


    out("module", socket.__name__)
    proxy = xmlrpc.client.ServerProxy("http://%s:%d/RPC2" % (name, xmlrpc_port), use_builtin_types=True,
                                   allow_none=True)
    out("add", proxy.add(2, 40))
    value = {"text": "h\\u00e9llo", "list": [1, 2.5, True, None], "bytes": bytes(range(256))}
    echoed = proxy.echo(value)
    out("echo", [echoed == value, type(echoed["bytes"]).__name__])
    blob = bytes(range(256)) * (big // 256)
    out("sha256", [proxy.sha256(blob), [len(blob), sha(blob)]])
    pattern = proxy.pattern(big)
    out("pattern", [len(pattern), sha(pattern)])
    try:
        proxy.fail("deliberate")
    except xmlrpc.client.Fault as e:
        out("fault", e.faultString)
    out("methods", sorted(proxy.system.listMethods()))
    proxy("close")()


    async def get(path):
        reader, writer = await asyncio.open_connection(name, 80)
        writer.write(("GET %s HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" % (path, name)).encode())
        await writer.drain()
        raw = await reader.read()  # to EOF: nginx closes after the answer
        writer.close()
        await writer.wait_closed()
        head, _, body = raw.partition(b"\\r\\n\\r\\n")
        return [head.split(b"\\r\\n")[0].decode(), len(body), sha(body)]


    async def main():
        one, two = await asyncio.gather(get("/1m.bin"), get("/index.html"))  # concurrently
        out("asyncio /1m.bin", one)
        out("asyncio /index.html", two)


    asyncio.run(main())
"""


def test_xmlrpc_and_asyncio_clients(lab: Lab, mode: str, tmp_path: Path) -> None:
    """xmlrpc.client calls the lab's XML-RPC server (nested values, 1 MiB each way, a Fault,
    introspection, one kept-alive connection) and ``asyncio.open_connection`` runs two raw
    HTTP/1.1 GETs to nginx by name concurrently: every answer and hash is right."""
    lab.block_kernel_egress()
    big = 1 << 20
    script = write_script(tmp_path, "xmlrpc_asyncio.py", XMLRPC_ASYNCIO)
    out, tcp = _run(lab, mode, [script, lab.server_name, str(lab.ports["xmlrpc"]), str(big)])
    assert out["module"] == "usocket"
    assert out["add"] == 42
    assert out["echo"] == [True, "bytes"]
    got, expected = out["sha256"]
    assert got == expected  # the server hashed the 1 MiB request it read
    assert out["pattern"] == [big, bulk_sha256(big)]
    assert "deliberate" in out["fault"]
    assert {"add", "echo", "fail", "pattern", "sha256", "system.multicall"} <= set(out["methods"])
    for path in ("/1m.bin", "/index.html"):
        status, size, sha = out[f"asyncio {path}"]
        assert status == "HTTP/1.1 200 OK"
        assert (size, sha) == lab.http_files[path], path
    assert tcp.get("active_open") == 3, tcp  # one for all XML-RPC calls (kept alive), one per asyncio GET
    assert lab.kernel_egress_rejected() == 0


# -- 3. requests: a keep-alive session --------------------------------------------------------------
REQUESTS_SESSION = """
    import hashlib, json, socket, sys

    import requests

    name, paths = sys.argv[1], sys.argv[2:]
    print(json.dumps({"module": socket.__name__}), flush=True)
    with requests.Session() as session:
        for i, path in enumerate(paths):
            r = session.get("http://%s%s" % (name, path), timeout=30)
            print(json.dumps({"get %d" % i: [path, r.status_code, len(r.content),
                                             hashlib.sha256(r.content).hexdigest()]}), flush=True)
"""


def test_requests_session_reuses_one_connection(lab: Lab, mode: str, tmp_path: Path) -> None:
    """A ``requests.Session`` GETs five files from nginx by name: every body is right, and all
    five went over ONE connection: the stack made one active open, the peer saw one SYN and all
    five requests on that connection, which ended with FINs both ways. (That this close is also
    free of RSTs is :func:`test_client_closes_first_no_rst`'s business.)"""
    lab.block_kernel_egress()
    paths = ["/1m.bin", "/index.html", "/1k.bin", "/16m.bin", "/1m.bin"]
    script = write_script(tmp_path, "session.py", REQUESTS_SESSION)
    with lab.capture(lab.server_ns, lab.server_if, "tcp port 80", snaplen=400) as pcap:
        out, tcp = _run(lab, mode, [script, lab.server_name, *paths])
    assert out["module"] == "usocket"
    for i, path in enumerate(paths):
        assert out[f"get {i}"] == [path, 200, *lab.http_files[path]], path
    assert tcp.get("active_open") == 1, tcp
    streams = _streams(pcap)
    assert len(streams) == 1, f"{len(streams)} connections, not one"
    (stream,) = streams.values()
    assert _requests_sent(pcap, stack_ip(lab, mode)) == {int(stream[0]["tcp.stream"]): paths}
    _check_connection(stream, stack_ip(lab, mode))
    assert lab.kernel_egress_rejected() == 0


# -- 4. https ---------------------------------------------------------------------------------------
HTTPS = """
    import hashlib, http.client, json, socket, ssl, sys, urllib.error, urllib.request

    name, server_ip, ca_file, failures_only = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"


    def out(key, value):
        print(json.dumps({key: value}), flush=True)


    def sha(data):
        return hashlib.sha256(data).hexdigest()


    if not failures_only:
        out("module", socket.__name__)
        context = ssl.create_default_context(cafile=ca_file)
        with urllib.request.urlopen("https://%s/1m.bin" % name, context=context, timeout=30) as response:
            data = response.read()
            out("urllib", [response.status, len(data), sha(data)])
        conn = http.client.HTTPSConnection(name, 443, context=context, timeout=30)  # two GETs, one connection
        for path in ("/index.html", "/16m.bin"):
            conn.request("GET", path)
            response = conn.getresponse()
            data = response.read()
            out("http.client " + path, [response.status, len(data), sha(data)])
        out("tls", [conn.sock.version(), sorted(v for _, v in conn.sock.getpeercert()["subjectAltName"])])
        conn.close()
        try:  # no CA given: the system's store does not hold the lab's CA
            urllib.request.urlopen("https://%s/" % name, timeout=30)
            out("urllib no CA", "no error")
        except urllib.error.URLError as e:
            out("urllib no CA", [type(e.reason).__name__, e.reason.verify_code, e.reason.verify_message])

    # The same two failures on a plain socket by address (so the kernel's sockets can run this too).
    cases = [("wrong name", ssl.create_default_context(cafile=ca_file), "wrong.invalid"),
             ("no CA", ssl.create_default_context(), name)]
    for key, context, hostname in cases:
        sock = socket.create_connection((server_ip, 443), timeout=30)
        try:
            context.wrap_socket(sock, server_hostname=hostname)
            out(key, "no error")
        except ssl.SSLCertVerificationError as e:
            out(key, [type(e).__name__, e.verify_code, e.verify_message, str(e)])
        finally:
            sock.close()
"""


def test_https_verified_and_failures(lab: Lab, mode: str, tmp_path: Path) -> None:
    """Over TLS to nginx by name, verified with the lab's CA: urllib and a kept-alive
    http.client connection get the right bodies. Without the CA, or with a name the certificate
    lacks, the handshake fails with ``ssl.SSLCertVerificationError``, exactly as on the kernel's
    sockets (the same program, unhijacked, in the server namespace, prints the same lines)."""
    lab.block_kernel_egress()
    script = write_script(tmp_path, "https.py", HTTPS)
    args = [script, lab.server_name, lab.server_ip, lab.ca_file]
    out, tcp = _run(lab, mode, [*args, "0"])
    assert out["module"] == "usocket"
    assert out["urllib"] == [200, *lab.http_files["/1m.bin"]]
    for path in ("/index.html", "/16m.bin"):
        assert out[f"http.client {path}"] == [200, *lab.http_files[path]], path
    version, names = out["tls"]
    assert version in ("TLSv1.2", "TLSv1.3")
    assert names == sorted([*lab.tls_names, lab.server_ip])
    assert out["urllib no CA"] == ["SSLCertVerificationError", 20, "unable to get local issuer certificate"]
    assert out["wrong name"][:3] == ["SSLCertVerificationError", 62, "Hostname mismatch, certificate is not valid "
                                     "for 'wrong.invalid'."]
    assert out["no CA"][:2] == ["SSLCertVerificationError", 20]
    assert tcp.get("active_open") == 5, tcp  # urllib, http.client, urllib without CA, two raw sockets
    kernel = lab.run(lab.server_ns, [sys.executable, *args, "1"], timeout=TIMEOUT)
    assert {k: v for k, v in out.items() if k in ("wrong name", "no CA")} == \
        {k: v for line in kernel.stdout.splitlines() for k, v in json.loads(line).items()}
    assert lab.kernel_egress_rejected() == 0


# -- 5. clean closes on the wire --------------------------------------------------------------------
CLOSES = """
    import hashlib, http.client, json, socket, sys, urllib.request

    import requests

    name = sys.argv[1]


    def out(key, value):
        print(json.dumps({key: value}), flush=True)


    def sha(data):
        return hashlib.sha256(data).hexdigest()


    for path in ("/1m.bin", "/index.html"):  # urllib says "Connection: close": nginx closes first
        data = urllib.request.urlopen("http://%s%s" % (name, path), timeout=30).read()
        out("urllib " + path, [len(data), sha(data)])
    conn = http.client.HTTPConnection(name, 80, timeout=30)  # kept alive; the client closes first
    for path in ("/1k.bin", "/1m.bin", "/index.html"):
        conn.request("GET", path)
        data = conn.getresponse().read()
        out("http.client " + path, [len(data), sha(data)])
    conn.close()
    with requests.Session() as session:  # kept alive; the client closes first, then exits at once
        for path in ("/16m.bin", "/1k.bin"):
            data = session.get("http://%s%s" % (name, path), timeout=30).content
            out("requests " + path, [len(data), sha(data)])
"""

@pytest.mark.parametrize("close_mode", ["shared", "own"])
def test_client_closes_first_no_rst(lab: Lab, close_mode: str, tmp_path: Path) -> None:
    """A program fetching with urllib (nginx closes first), an http.client keep-alive connection
    and a requests session (the client closes first, the latter right before the program exits):
    the peer's capture shows four connections, each with one SYN, FINs both ways, each
    acknowledged, and no RST at all: neither the host's kernel (shared mode) nor the stack (which
    must neither reset TIME_WAIT at exit nor abort a close still in progress) resets a clean
    exchange, as a program on the kernel's sockets would not."""
    lab.block_kernel_egress()
    script = write_script(tmp_path, "closes.py", CLOSES)
    with lab.capture(lab.server_ns, lab.server_if, "tcp", snaplen=400) as pcap:
        out, tcp = _run(lab, close_mode, [script, lab.server_name])
    expected = {"urllib /1m.bin", "urllib /index.html", "http.client /1k.bin", "http.client /1m.bin",
                "http.client /index.html", "requests /16m.bin", "requests /1k.bin"}
    assert set(out) == expected
    for key, got in out.items():
        assert got == list(lab.http_files[key.split()[1]]), key
    assert tcp.get("active_open") == 4, tcp
    assert lab.kernel_egress_rejected() == 0
    streams = _streams(pcap)
    assert len(streams) == 4, f"{len(streams)} connections, expected 4"
    client = stack_ip(lab, close_mode)
    resets = [p for s in streams.values() for p in s if p["flags"] & RST and p["ip.src"] == client]
    assert not resets, f"RST from the client side: {resets}"
    for stream in streams.values():
        _check_clean_close(stream, client)
