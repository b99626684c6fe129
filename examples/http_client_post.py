"""POST a generated body with http.client, twice (Content-Length, then chunked); check the reply.

usage: python http_client_post.py [HOST [PORT [SIZE]]]

Defaults: $LAB_SERVER, $LAB_HTTP_PORT (the lab's http.server, which answers a POST with
"<bytes read> <sha256 of them>") and 1048576 bytes. Prints the reply to each POST and whether it
matches what was sent; exits 1 if one does not.
"""
import hashlib
import http.client
import os
import random
import sys


def post(host, port, body, chunked):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        if chunked:  # an iterable body with encode_chunked: Transfer-Encoding: chunked
            pieces = (body[i:i + 65536] for i in range(0, len(body), 65536))
            conn.request("POST", "/upload", body=pieces, encode_chunked=True,
                         headers={"Content-Type": "application/octet-stream"})
        else:
            conn.request("POST", "/upload", body=body, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        return response.status, response.read().decode().strip()
    finally:
        conn.close()


def main(args):
    host = args[0] if len(args) > 0 else os.environ.get("LAB_SERVER", "localhost")
    port = int(args[1]) if len(args) > 1 else int(os.environ.get("LAB_HTTP_PORT", "8000"))
    size = int(args[2]) if len(args) > 2 else 1 << 20
    body = random.Random(size).randbytes(size)  # the same body for the same size, every run
    expected = f"{len(body)} {hashlib.sha256(body).hexdigest()}"
    print(f"sent {expected}")
    ok = True
    for chunked in (False, True):
        status, reply = post(host, port, body, chunked)
        match = status == 200 and reply == expected
        ok = ok and match
        print(f"{'chunked' if chunked else 'length '}: {status} {reply} {'match' if match else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
