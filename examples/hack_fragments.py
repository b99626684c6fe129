"""What does Linux reassemble? Odd fragmentations of UDP datagrams sent to the kernel's echo server.

    python -m usocket.lab run -- examples/hack_fragments.py

Each case sends one UDP datagram (40 bytes of payload, the letters A-E) from a `usocket.socket`
to the lab's UDP echo server (port 7, the kernel's stack), fragmented with
`hack.sendto_fragmented(sock, data, addr, size=..., order=..., overlaps=...)`, and prints what
the server echoed, i.e. the datagram the kernel reassembled, or that nothing came back. The UDP
checksum is left at 0 ("none"), so a datagram whose bytes an overlap changed is still accepted.
Fragment offsets count from the UDP header (8 bytes), so payload byte k is at offset 8 + k.

What Linux does (since 4.19, RFC 5722's rule applied to IPv4): fragments in any order
reassemble; an exact duplicate of a fragment is ignored whatever its bytes (the first copy
wins); a fragment that partly overlaps another one discards the whole datagram.
"""
from __future__ import annotations

import os
import sys

import usocket as socket
from usocket import hack

PAYLOAD = b"AAAAAAAABBBBBBBBCCCCCCCCDDDDDDDDEEEEEEEE"  # 40 bytes; the datagram is 48 with its header

CASES: list[tuple[str, dict]] = [
    ("in order, 8-byte fragments", {"size": 8}),
    ("reverse order", {"size": 8, "order": "reverse"}),
    ("random order", {"size": 16, "order": "random"}),
    ("a fragment sent twice", {"size": 16, "order": [0, 1, 1, 2]}),
    ("exact duplicate with other bytes, sent first",
     {"size": 16, "overlaps": [(16, b"x" * 16)], "overlaps_first": True}),
    ("duplicate with other bytes, after completion", {"size": 16, "overlaps": [(16, b"x" * 16)]}),
    ("partial overlap", {"size": 16, "overlaps": [(8, b"x" * 16)], "overlaps_first": True}),
    ("a fragment missing", {"size": 16, "order": [0, 2]}),
]


def main() -> int:
    server = (os.environ.get("LAB_SERVER_IP", "198.18.1.2"), int(os.environ.get("LAB_UDP_ECHO_PORT", "7")))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.sendto(b"warm-up", server)  # resolves the server's MAC first: no fragment waits for ARP
    s.recvfrom(2048)
    for name, plan in CASES:
        frags = hack.sendto_fragmented(s, PAYLOAD, server, checksum=False, **plan)
        shape = " ".join(f"{f.offset}+{len(f.data)}{'' if f.more else '.'}" for f in frags)
        try:
            reply, _ = s.recvfrom(2048)
            result = f"echoed {reply.decode()}"
        except TimeoutError:
            result = "no reply: the kernel discarded the datagram"
        print(f"{name:46} [{shape}] -> {result}", flush=True)
    s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
