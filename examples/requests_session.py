"""Several GETs over one keep-alive connection with a requests.Session.

usage: python requests_session.py [BASE_URL [PATH ...]]

Defaults: http://$LAB_SERVER:$LAB_HTTP_PORT and /index.html /1k.bin /1m.bin /index.html.
Prints "<status> <size> <sha256> <url>" per request, then how many connections the session's
pool opened for them (1: every request reused the first connection).
"""
import hashlib
import os
import sys

import requests


def main(args):
    server, port = os.environ.get("LAB_SERVER", "localhost"), os.environ.get("LAB_HTTP_PORT", "8000")
    base = args[0] if args else f"http://{server}:{port}"
    paths = args[1:] or ["/index.html", "/1k.bin", "/1m.bin", "/index.html"]
    with requests.Session() as session:
        for path in paths:
            response = session.get(base + path, timeout=10)
            response.raise_for_status()
            body = response.content
            print(response.status_code, len(body), hashlib.sha256(body).hexdigest(), response.url)
        pools = session.get_adapter(base).poolmanager.pools  # urllib3's connection pools, one per host
        opened = sum(pools[key].num_connections for key in pools.keys())
        print(f"{len(paths)} requests over {opened} connection(s)")


if __name__ == "__main__":
    main(sys.argv[1:])
