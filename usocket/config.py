"""Stack configuration: plain data, plus discovery from the running system.

:class:`StackConfig` is what a :class:`usocket.stack.Stack` is built from. :func:`discover`
fills it from the system (route to a destination, the interface's address/MAC/MTU, the gateway,
resolv.conf, /etc/hosts), then applies environment variables, then explicit keyword overrides.

Environment variables (all optional):

=====================  ==================================================================
``USOCKET_IFACE``      interface name (default: the one of the route to ``USOCKET_ROUTE_TO``)
``USOCKET_ROUTE_TO``   destination whose route picks the interface (default ``1.1.1.1``,
                       only looked up in the routing table, never contacted)
``USOCKET_MODE``       ``shared`` (default: the interface's own IP, kernel diverted) or ``own``
``USOCKET_ADDR``       ``A.B.C.D/prefix`` the stack uses (own mode; default: the interface's)
``USOCKET_GATEWAY``    default gateway (``none`` for none)
``USOCKET_MTU``        MTU (default: the interface's)
``USOCKET_NAMESERVERS`` comma-separated nameserver IPs (default: resolv.conf)
``USOCKET_SEARCH``     comma-separated search domains (default: resolv.conf)
``USOCKET_RESOLV_CONF`` path of resolv.conf to read (default ``/etc/resolv.conf``)
``USOCKET_HOSTS``      path of the hosts file (default ``/etc/hosts``)
``USOCKET_NETNS``      run the stack's link/diversion inside this network namespace
=====================  ==================================================================
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from .wire.addr import ip_aton, mac_aton

SHARED = "shared"
OWN = "own"


@dataclass
class ResolverConfig:
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    ndots: int = 1
    timeout: float = 5.0
    attempts: int = 2
    rotate: bool = False
    hosts: dict[str, list[str]] = field(default_factory=dict)  # name (lower) -> addresses
    # The hosts file's IPv4 lines as written: (address, [canonical name, aliases...]).
    host_lines: list[tuple[str, list[str]]] = field(default_factory=list)


@dataclass
class StackConfig:
    iface: str = "usk0"
    mac: bytes = b"\x02\x00\x00\x00\x00\x01"
    address: bytes = b"\x0a\x00\x00\x01"  # 4 bytes
    prefix_len: int = 24
    gateway: bytes | None = None
    mtu: int = 1500
    mode: str = OWN
    netns: str | None = None
    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    # Ephemeral ports the stack allocates from (inclusive).
    ephemeral_ports: tuple[int, int] = (49152, 65535)
    default_ttl: int = 64

    def replace(self, **kw: object) -> StackConfig:
        return dataclasses.replace(self, **kw)  # type: ignore[arg-type]


def _ip(args: list[str], netns: str | None) -> Any:
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + args
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


MAXNS = 3  # glibc uses at most three nameservers


def _apply_options(rc: ResolverConfig, words: list[str]) -> None:
    for opt in words:
        name, _, val = opt.partition(":")
        try:
            if name == "ndots":
                rc.ndots = min(int(val), 15)
            elif name == "timeout":
                rc.timeout = float(max(1, min(int(val), 30)))
            elif name == "attempts":
                rc.attempts = max(1, min(int(val), 5))
            elif name == "rotate":
                rc.rotate = True
        except ValueError:
            pass


def parse_resolv_conf(text: str, environ: dict[str, str] | None = None) -> ResolverConfig:
    """resolv.conf as glibc reads it: at most three nameservers, the last ``search``/``domain``
    line wins, ``options`` ndots/timeout/attempts/rotate (clamped like glibc); then, as glibc,
    ``LOCALDOMAIN`` replaces the search list and ``RES_OPTIONS`` adds options (from ``environ``)."""
    rc = ResolverConfig()
    for line in text.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        key, *vals = line.split()
        if key == "nameserver" and vals:
            if len(rc.nameservers) < MAXNS:
                rc.nameservers.append(vals[0])
        elif key in ("search", "domain"):
            rc.search = list(vals)
        elif key == "options":
            _apply_options(rc, vals)
    env = environ if environ is not None else {}
    if env.get("LOCALDOMAIN") is not None:
        rc.search = env["LOCALDOMAIN"].split()
    if env.get("RES_OPTIONS"):
        _apply_options(rc, env["RES_OPTIONS"].split())
    return rc


def parse_host_lines(text: str) -> list[tuple[str, list[str]]]:
    """The IPv4 lines of a hosts file, names in their original case (first = canonical)."""
    lines: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and ":" not in fields[0]:
            lines.append((fields[0], fields[1:]))
    return lines


def parse_hosts(text: str) -> dict[str, list[str]]:
    hosts: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        addr = fields[0]
        if ":" in addr:  # IPv6 entries are the kernel's business for now
            continue
        for name in fields[1:]:
            hosts.setdefault(name.lower(), [])
            if addr not in hosts[name.lower()]:
                hosts[name.lower()].append(addr)
    return hosts


def _read(path: str, netns: str | None) -> str:
    # `ip netns exec` bind-mounts /etc/netns/<ns>/<file> over /etc/<file>; do the same here.
    if netns and path.startswith("/etc/"):
        alt = f"/etc/netns/{netns}/{path[5:]}"
        if os.path.exists(alt):
            path = alt
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def discover(**overrides: object) -> StackConfig:
    """Build a :class:`StackConfig` from the system, then the environment, then ``overrides``."""
    env = os.environ
    netns = overrides.get("netns", env.get("USOCKET_NETNS")) or None
    assert netns is None or isinstance(netns, str)
    iface = overrides.get("iface", env.get("USOCKET_IFACE"))
    gateway: bytes | None = None
    if not iface:
        dest = env.get("USOCKET_ROUTE_TO", "1.1.1.1")
        try:
            routes = _ip(["route", "get", dest], netns)
        except subprocess.CalledProcessError as e:
            raise OSError(errno.ENETUNREACH, f"usocket: no route to {dest} to pick an interface from "
                          f"(set USOCKET_IFACE): {e.stderr.strip()}") from None
        iface = routes[0]["dev"]
        if routes[0].get("gateway"):
            gateway = ip_aton(routes[0]["gateway"])
    else:
        try:
            default_routes = _ip(["route", "show", "default", "dev", str(iface)], netns)
        except subprocess.CalledProcessError:
            default_routes = []  # no such device: reported just below
        for r in default_routes:
            if r.get("gateway"):
                gateway = ip_aton(r["gateway"])
                break
    assert isinstance(iface, str)
    try:
        links = _ip(["addr", "show", "dev", iface], netns)
    except subprocess.CalledProcessError:
        links = []
    if not links:
        raise OSError(errno.ENODEV, f"usocket: no interface {iface!r}" + (f" in netns {netns}" if netns else ""))
    link = links[0]
    v4 = [a for a in link.get("addr_info", []) if a.get("family") == "inet"]
    cfg = StackConfig(iface=iface, mac=mac_aton(link.get("address", "00:00:00:00:00:00")),
                      mtu=int(link.get("mtu", 1500)), gateway=gateway, netns=netns, mode=SHARED)
    if v4:
        cfg.address = ip_aton(v4[0]["local"])
        cfg.prefix_len = int(v4[0]["prefixlen"])
    cfg.mode = str(overrides.get("mode", env.get("USOCKET_MODE", SHARED)))
    if cfg.mode not in (SHARED, OWN):
        raise ValueError(f"USOCKET_MODE must be 'shared' or 'own', not {cfg.mode!r}")
    addr = overrides.get("address", env.get("USOCKET_ADDR"))
    if addr:
        a, _, p = str(addr).partition("/")
        cfg.address = ip_aton(a)
        if p:
            cfg.prefix_len = int(p)
    elif cfg.mode == OWN:
        raise ValueError("usocket: own mode needs an address of its own (USOCKET_ADDR=A.B.C.D/prefix or "
                         "address=...): the interface's address is the kernel's")
    elif not v4:
        raise OSError(errno.EADDRNOTAVAIL, f"usocket: {iface} has no IPv4 address to share (shared mode)")
    gw = overrides.get("gateway", env.get("USOCKET_GATEWAY"))
    if gw:
        cfg.gateway = None if gw == "none" else ip_aton(str(gw))
    if "mtu" in overrides or "USOCKET_MTU" in env:
        cfg.mtu = int(str(overrides.get("mtu", env.get("USOCKET_MTU"))))
    resolv_conf = overrides.get("resolv_conf", env.get("USOCKET_RESOLV_CONF", "/etc/resolv.conf"))
    rc = parse_resolv_conf(_read(str(resolv_conf), netns), dict(env))
    hosts_text = _read(str(overrides.get("hosts", env.get("USOCKET_HOSTS", "/etc/hosts"))), netns)
    rc.hosts = parse_hosts(hosts_text)
    rc.host_lines = parse_host_lines(hosts_text)
    ns = overrides.get("nameservers", env.get("USOCKET_NAMESERVERS"))
    if ns:
        rc.nameservers = list(ns) if isinstance(ns, (list, tuple)) else [n.strip() for n in str(ns).split(",")
                                                                          if n.strip()]
    sd = overrides.get("search", env.get("USOCKET_SEARCH"))
    if sd is not None:
        rc.search = list(sd) if isinstance(sd, (list, tuple)) else [d.strip() for d in str(sd).split(",")
                                                                     if d.strip()]
    cfg.resolver = rc
    return cfg
