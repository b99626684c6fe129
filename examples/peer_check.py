"""The kernel's side of the hacking examples: run in the lab's *server* namespace with `--peer`.

Plain Python on the kernel's sockets (no usocket), so what it reports is what Linux saw:

    python3 examples/peer_check.py echo HOST:PORT [BYTES]    # TCP and UDP echo round trips
    python3 examples/peer_check.py synack HOST:PORT [N]      # N connections; print each SYN-ACK

`synack` captures with an AF_PACKET socket (root) opened before connecting, and prints the
SYN-ACK each connection got as the wire carried it: sequence number, window, TTL and options.
"""
from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
OPTION_NAMES = {0: "eol", 1: "nop", 2: "mss", 3: "ws", 4: "sok", 5: "sack", 8: "ts"}


def address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def echo(target: tuple[str, int], size: int) -> int:
    data = os.urandom(size)
    with socket.create_connection(target, timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
    ok = bytes(got) == data
    print(f"tcp echo {'ok' if ok else 'MISMATCH'}: {len(got)} bytes, sha256 {hashlib.sha256(got).hexdigest()[:16]}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        u.sendto(b"udp hello", target)
        reply, _ = u.recvfrom(2048)
    print(f"udp echo {'ok' if reply == b'udp hello' else 'MISMATCH'}: {reply!r}")
    return 0 if ok and reply == b"udp hello" else 1


def options(raw: bytes) -> list[str]:
    out, i = [], 0
    while i < len(raw):
        kind = raw[i]
        name = OPTION_NAMES.get(kind, str(kind))
        if kind in (0, 1):
            out.append(name)
            i += 1
            if kind == 0:
                break
            continue
        length = raw[i + 1] if i + 1 < len(raw) else 0
        body = raw[i + 2:i + length]
        if kind == 2:
            name += f"={struct.unpack('!H', body)[0]}"
        elif kind == 3:
            name += f"={body[0]}"
        out.append(name)
        i += max(length, 2)
    return out


def synack(target: tuple[str, int], count: int) -> int:
    host, port = target
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    cap.settimeout(5)
    for _ in range(count):
        with socket.create_connection(target, timeout=10) as s:
            s.sendall(b"ping")
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            frame = cap.recv(65536)
            if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
                continue
            ihl = (frame[14] & 15) * 4
            ip, tcp = frame[14:14 + ihl], frame[14 + ihl:]
            if socket.inet_ntoa(ip[12:16]) != host or struct.unpack("!H", tcp[:2])[0] != port:
                continue
            if tcp[13] & 0x12 != 0x12:  # SYN and ACK
                continue
            seq, = struct.unpack("!I", tcp[4:8])
            window, = struct.unpack("!H", tcp[14:16])
            print(f"SYN-ACK from {host}:{port}: seq=0x{seq:08x} window={window} ttl={ip[8]} "
                  f"options={','.join(options(tcp[20:(tcp[12] >> 4) * 4]))}")
            break
        else:
            print("no SYN-ACK captured")
            return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("echo", "synack"):
        print(__doc__)
        return 2
    target = address(argv[1])
    if argv[0] == "echo":
        return echo(target, int(argv[2]) if len(argv) > 2 else 100_000)
    return synack(target, int(argv[2]) if len(argv) > 2 else 2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
