"""Resolve names (and addresses) with the socket module's resolver functions.

usage: python dns_lookup.py [NAME_OR_ADDRESS ...]

Defaults: $LAB_SERVER, www.$LAB_DOMAIN (a CNAME chain to it) and $LAB_SERVER_IP. For each, prints
gethostbyname, every IPv4 address of getaddrinfo, and gethostbyaddr of the first address
("-" when it has no name). Exits 1 if a name does not resolve.
"""
import os
import socket
import sys


def lookup(name):
    address = socket.gethostbyname(name)
    infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
    addresses = sorted({info[4][0] for info in infos}, key=socket.inet_aton)
    try:
        reverse = socket.gethostbyaddr(address)[0]
    except socket.herror:
        reverse = "-"
    return f"{name}: gethostbyname {address} getaddrinfo {','.join(addresses)} gethostbyaddr {reverse}"


def main(names):
    domain = os.environ.get("LAB_DOMAIN", "localdomain")
    names = names or [os.environ.get("LAB_SERVER", "localhost"), f"www.{domain}",
                      os.environ.get("LAB_SERVER_IP", "127.0.0.1")]
    failed = 0
    for name in names:
        try:
            print(lookup(name))
        except socket.gaierror as e:
            print(f"{name}: {e}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
