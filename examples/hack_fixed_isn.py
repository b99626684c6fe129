"""A server whose SYN-ACKs all carry the same initial sequence number (PyStack's example).

    python -m usocket.lab run --hijack-opt=--pcap=/tmp/fixed-isn.pcap \
        --peer 'python3 examples/peer_check.py synack {client_ip}:7008 2' -- examples/hack_fixed_isn.py 7008 0xdeadbeef
    tshark -r /tmp/fixed-isn.pcap -Y 'tcp.flags.syn==1 && tcp.flags.ack==1' -T fields -e tcp.seq_raw

An ordinary `usocket.socket` echo server; one call, `hack.set_connection_class(listener,
hack.fixed_isn(ISN))`, gives the listener (and every connection it accepts) a fixed ISN. The
peer prints the SYN-ACK of each connection as captured in its namespace; the pcap (`--pcap`)
shows it from the stack's side.
"""
from __future__ import annotations

import sys
import threading

import usocket as socket
from usocket import hack


def serve(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 7008
    isn = int(sys.argv[2], 0) if len(sys.argv) > 2 else 0xDEADBEEF
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("", port))
    hack.set_connection_class(srv, hack.fixed_isn(isn))
    srv.listen()
    print(f"listening on port {port}; every SYN-ACK carries ISN 0x{isn:08x}", flush=True)
    try:
        while True:
            conn, addr = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    except KeyboardInterrupt:
        pass
    srv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
