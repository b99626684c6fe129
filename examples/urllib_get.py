"""GET URLs with urllib.request; print the status, size and SHA-256 of each body.

usage: python urllib_get.py [URL ...]

Default URL: http://$LAB_SERVER:$LAB_NGINX_PORT/1m.bin (the lab's nginx). An https:// URL is
verified against the default CAs: in the lab, SSL_CERT_FILE is the lab's own CA.
Prints one line per URL: "<status> <size> <sha256> <url>".
"""
import hashlib
import os
import sys
import urllib.request


def main(urls):
    if not urls:
        server, port = os.environ.get("LAB_SERVER", "localhost"), os.environ.get("LAB_NGINX_PORT", "80")
        urls = [f"http://{server}:{port}/1m.bin"]
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        print(response.status, len(body), hashlib.sha256(body).hexdigest(), url)


if __name__ == "__main__":
    main(sys.argv[1:])
