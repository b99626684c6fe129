"""The demo's client: an ordinary urllib program that knows nothing about usocket.

``python usocket/demo_client.py NAME... -- URL...`` resolves each NAME with
``socket.gethostbyname`` and fetches each URL with ``urllib.request.urlopen``, printing timings and
each body's sha256. ``python -m usocket demo`` runs it under ``python -m usocket_hijack``.
"""
import hashlib
import socket
import sys
import time
import urllib.request


def main(argv):
    sep = argv.index("--") if "--" in argv else len(argv)
    names, urls = argv[:sep], argv[sep + 1:]
    print("1. Names (socket.gethostbyname):")
    for name in names:
        t = time.monotonic()
        addr = socket.gethostbyname(name)
        print(f"   {name:<28} -> {addr:<15} in {1000 * (time.monotonic() - t):.1f} ms")
    print("\n2. urllib.request.urlopen():")
    for url in urls:
        t = time.monotonic()
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = resp.read()
            status = resp.status
        dt = time.monotonic() - t
        print(f"   {url:<48} {status} {len(body):>9} B in {1000 * dt:7.1f} ms "
              f"({len(body) / dt / 1e6:5.1f} MB/s), sha256 {hashlib.sha256(body).hexdigest()}", flush=True)
    print(f"\n   socket module: {socket.__name__} (socket.socket is {socket.socket.__module__}.socket)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
