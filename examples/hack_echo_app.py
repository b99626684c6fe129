"""An echo server written as callback applications on the stack (PyStack's TCPApplication).

    python -m usocket.lab run --peer 'python3 examples/peer_check.py echo {client_ip}:7007' \
        -- examples/hack_echo_app.py 7007

No socket API at all: a `TcpApplication` per accepted connection echoes what it gets and
closes after the peer does; a `UdpApplication` on the same port number echoes datagrams. It runs
until interrupted (the lab runner sends SIGINT once the peer is done), then prints what it served.
"""
from __future__ import annotations

import sys
import threading

from usocket import hack
from usocket.runtime import get_runtime

served = {"tcp_connections": 0, "tcp_bytes": 0, "udp_datagrams": 0}


class Echo(hack.TcpApplication):
    def on_connect(self) -> None:
        served["tcp_connections"] += 1

    def on_data(self, data: bytes) -> None:
        served["tcp_bytes"] += len(data)
        self.send(data)


class UdpEcho(hack.UdpApplication):
    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        served["udp_datagrams"] += 1
        self.sendto(data, addr)


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 7007
    rt = get_runtime()  # the process-wide stack (the hijacker's, or discovered from the system)
    listener = hack.listen_tcp(rt, port, Echo)
    udp = hack.open_udp(rt, port, UdpEcho())
    print(f"echo applications on TCP and UDP port {listener.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    listener.close()
    rt.call(udp.close)
    print("served: " + " ".join(f"{k}={v}" for k, v in served.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
