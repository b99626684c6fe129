"""Fetch URLs concurrently with asyncio streams (asyncio.open_connection) and plain HTTP/1.0.

usage: python asyncio_client.py [URL ...]

Defaults: /index.html, /1k.bin and /1m.bin from http://$LAB_SERVER:$LAB_NGINX_PORT, fetched at
the same time. https:// URLs are verified against the default CAs (in the lab, SSL_CERT_FILE is
the lab's CA). Prints "<status> <size> <sha256> <url>" per URL, in the order given.
"""
import asyncio
import hashlib
import os
import sys
import urllib.parse


async def fetch(url):
    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=tls)
    try:
        request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read()  # HTTP/1.0: the server closes after the body
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(head.split(None, 2)[1])
    return f"{status} {len(body)} {hashlib.sha256(body).hexdigest()} {url}"


async def main(urls):
    if not urls:
        server, port = os.environ.get("LAB_SERVER", "localhost"), os.environ.get("LAB_NGINX_PORT", "80")
        urls = [f"http://{server}:{port}{path}" for path in ("/index.html", "/1k.bin", "/1m.bin")]
    for line in await asyncio.gather(*(fetch(url) for url in urls)):
        print(line)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
