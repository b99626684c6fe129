"""Send datagrams of several sizes to a UDP echo server and check every reply.

usage: python udp_client.py [HOST [PORT [COUNT]]]

Defaults: $LAB_SERVER, $LAB_UDP_ECHO_PORT (7) and 6 datagrams (1 to 1472 bytes: the largest
that fits a 1500-byte MTU unfragmented). Exits 1 if a reply is missing (2 s) or differs.
"""
import os
import socket
import sys

SIZES = [1, 16, 100, 512, 1000, 1472]


def main(args):
    host = args[0] if len(args) > 0 else os.environ.get("LAB_SERVER", "localhost")
    port = int(args[1]) if len(args) > 1 else int(os.environ.get("LAB_UDP_ECHO_PORT", "7"))
    count = int(args[2]) if len(args) > 2 else len(SIZES)
    server = (socket.gethostbyname(host), port)
    good = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for i in range(count):
            size = SIZES[i % len(SIZES)]
            message = (b"%d:" % i + bytes(range(256)) * 6)[:size]
            sock.sendto(message, server)
            try:
                reply, sender = sock.recvfrom(65535)
            except TimeoutError:
                print(f"{size} bytes sent, no reply")
                continue
            ok = reply == message and sender == server
            good += ok
            print(f"{size} bytes sent, {len(reply)} back from {sender[0]}:{sender[1]} {'ok' if ok else 'MISMATCH'}")
    print(f"{good}/{count} replies match")
    return 0 if good == count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
