"""A two-namespace network lab: the userland stack's client side, the Linux kernel as the peer.

``Lab()`` builds (on ``__enter__`` or :meth:`Lab.build`)::

    client ns  usl-<pid>-<n>-c           server ns  usl-<pid>-<n>-s
      uslc 198.18.<m>.1/24  <--- veth --->  usls 198.18.<m>.2/24
      default route via 198.18.<m>.2        kernel servers: echo, bulk, http.server, XML-RPC,
      /etc/netns/<ns>/resolv.conf, hosts   nginx (HTTP and HTTPS), dnsmasq

``<n>`` counts labs in this process; ``<m> = (n - 1) % 254 + 1``. Names are unique per process
(pid + counter), so parallel labs and parallel pytest sessions never collide; addresses may repeat
across processes, which is harmless because each pair of namespaces is isolated. Offloads stay on
(checksum, TSO) as in a container. IPv6 is disabled in both namespaces (``ipv6=True`` keeps it) so
captures hold only the traffic a test makes.

TLS: each lab makes a throwaway CA (EC P-256, valid two days) and a server certificate signed by
it for the server's names (:attr:`Lab.tls_names`: ``server.<domain>`` and its CNAME aliases) and
its address; nginx serves the HTTP docroot over HTTPS with it. Clients verify against
:attr:`Lab.ca_file` (``ssl.create_default_context(cafile=lab.ca_file)``).

Teardown (:meth:`Lab.close`, run by ``__exit__`` even on exceptions and by ``atexit`` for labs
still open) kills every process in both namespaces, deletes them, their ``/etc/netns`` dirs and
the temp dir. :meth:`Lab.cleanup_stale` removes what a killed process left behind.
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..netns import netns_path, ns_cmd, run_in_netns
from . import servers as _servers

T = TypeVar("T")
NETNS_DIR = "/var/run/netns"
ETC_NETNS = "/etc/netns"
PREFIX = "usl-"
LAB_COMMENT = "usl-lab"  # every iptables rule the lab itself adds carries a comment starting so
_NAME_RE = re.compile(r"^usl-(\d+)-")
# What a stack (not the lab) may leave behind: its NFQUEUE diversion and USOCKET chains.
SUSPECT_RULE = re.compile(r"usocket|nfqueue", re.IGNORECASE)


class LabError(RuntimeError):
    """Building, driving or tearing down a lab failed."""


def _sh(argv: list[str], check: bool = True, timeout: float = 30.0,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise LabError(f"{shlex.join(argv)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, never reaped by some container inits, counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _rmtree_if_owner(path: str, pid: int) -> None:
    if os.getpid() == pid:  # not from a forked child
        shutil.rmtree(path, ignore_errors=True)


def _listening(pid: int, proto: str, port: int) -> bool:
    """Whether a socket of ``pid``'s namespace listens (TCP) or is bound (UDP) on ``port``."""
    try:
        with open(f"/proc/{pid}/net/{proto}") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        local, state = fields[1], fields[3]
        if int(local.rsplit(":", 1)[1], 16) == port and (proto == "udp" or state == "0A"):
            return True
    return False


class Lab:
    """Two namespaces joined by a veth pair, with kernel-stack servers on the server side.

    Attributes: ``client_ns``/``server_ns``, ``client_if``/``server_if``, ``client_ip``/
    ``server_ip``/``own_ip`` (a free address for the stack's own mode), ``prefix_len``,
    ``client_mac``/``server_mac``, ``mtu``, ``ports`` (``closed`` is a port nothing listens on),
    ``http_files`` ``{url path: (size, sha256 hex)}`` (``/`` serves ``/index.html``; the
    ``http``, ``nginx`` and ``https`` servers serve the same files; ``POST`` to ``http`` answers
    the body's size and hash, nginx takes ``PUT`` under ``/upload/``), ``server_name`` (the
    server's DNS name), ``ca_file`` (the test CA's PEM), ``tls_names`` (the DNS names in the
    server certificate, which also holds ``server_ip``), ``xmlrpc`` functions on ``ports['xmlrpc']``
    (see :mod:`usocket.lab.servers`),
    ``dns_records`` ``{name: final addresses}`` with ``dns_a``/``dns_cnames``/``dns_ptr``/
    ``dns_nxdomain`` (dnsmasq answers names in :attr:`DOMAIN` and the lab's reverse zone,
    NXDOMAIN for unknown ones, REFUSED for everything else), ``hosts_records`` (the client's
    /etc/hosts), ``resolv_conf``/``hosts_file`` paths, ``dns_log`` (see :meth:`dns_queries`).
    Subclass to change names, ports or server set-up (``_set_names``, ``_start_servers`` ...).
    """

    DOMAIN = "usocket.test"
    CLIENT_IF = "uslc"
    SERVER_IF = "usls"
    PORTS = {"tcp_echo": 7, "udp_echo": 7, "bulk_source": 19, "bulk_sink": 9, "http": 8000,
             "nginx": 80, "https": 443, "xmlrpc": 8001, "dns": 53, "closed": 9999, "eof_echo": 2007,
             "reset": 2019}
    READY_TIMEOUT = 15.0
    _counter = itertools.count(1)
    _live: dict[int, Lab] = {}
    _live_lock = threading.Lock()
    _atexit_done = False
    _docroot_cache: tuple[str, dict[str, tuple[int, str]]] | None = None

    def __init__(self, loss: float = 0.0, mtu: int = 1500, servers: bool = True, *,
                 ipv6: bool = False) -> None:
        self.loss, self.mtu, self.servers, self.ipv6 = loss, mtu, servers, ipv6
        self.index = next(Lab._counter)
        self.tag = f"{PREFIX}{os.getpid()}-{self.index}"
        self.client_ns, self.server_ns = f"{self.tag}-c", f"{self.tag}-s"
        self.client_if, self.server_if = self.CLIENT_IF, self.SERVER_IF
        net = (self.index - 1) % 254 + 1
        self.subnet = f"198.18.{net}.0"
        self.prefix_len = 24
        self.client_ip, self.server_ip = f"198.18.{net}.1", f"198.18.{net}.2"
        self.own_ip = f"198.18.{net}.11"
        self.client_mac = f"02:75:6c:{net:02x}:00:01"
        self.server_mac = f"02:75:6c:{net:02x}:00:02"
        self.ports = dict(self.PORTS)
        self.tmpdir = ""
        self.docroot = ""
        self.resolv_conf = f"{ETC_NETNS}/{self.client_ns}/resolv.conf"
        self.hosts_file = f"{ETC_NETNS}/{self.client_ns}/hosts"
        self.dns_log = ""
        self.http_files: dict[str, tuple[int, str]] = {}
        self.ca_file = ""  # set when the servers start
        self._set_names()
        self._procs: list[subprocess.Popen[Any]] = []
        self._rules: dict[str, list[list[str]]] = {}  # ns -> iptables argv added by the lab
        self._state = "new"
        self._pid = os.getpid()  # a forked child's atexit must not tear down its parent's labs

    # -- names served ----------------------------------------------------------------------------
    def _set_names(self) -> None:
        """Fill the DNS and hosts data (override to serve other names)."""
        d, net = self.DOMAIN, self.server_ip.rsplit(".", 1)[0]
        s, c = self.server_ip, self.client_ip
        self.dns_a: dict[str, list[str]] = {  # A records dnsmasq holds
            f"server.{d}": [s], f"client.{d}": [c], f"multi.{d}": [f"{net}.3", f"{net}.5"],
            f"override.{d}": [f"{net}.4"], f"big.{d}": [f"{net}.{100 + i}" for i in range(40)],
        }
        self.dns_cnames = {f"www.{d}": f"web.{d}", f"web.{d}": f"server.{d}"}  # alias -> target
        self.dns_records: dict[str, list[str]] = dict(self.dns_a)  # every name -> final addresses
        for alias in self.dns_cnames:
            target = alias
            while target in self.dns_cnames:
                target = self.dns_cnames[target]
            self.dns_records[alias] = self.dns_a[target]
        self.dns_ptr = {s: f"server.{d}", c: f"client.{d}"}
        self.dns_nxdomain = f"nonexistent.{d}"  # any name in the domain not listed is NXDOMAIN
        self.server_name = f"server.{d}"
        # The server certificate's DNS names: the server's own and the aliases that lead to it.
        self.tls_names = [self.server_name] + [a for a, addrs in self.dns_records.items()
                                               if a in self.dns_cnames and addrs == [s]]
        # /etc/hosts of the client namespace: a name only there, and one that overrides DNS.
        self.hosts_records = {f"hostsonly.{d}": [s], "hostsonly": [s], f"override.{d}": [s],
                              "localhost": ["127.0.0.1"]}

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.close()
        except LabError as e:
            if exc is None:
                raise
            print(f"usocket.lab: teardown of {self.tag}: {e}", file=sys.stderr)

    def build(self) -> Lab:
        """Create namespaces, link, addresses, name files and servers. Cleans up if it fails."""
        if self._state != "new":
            raise LabError(f"lab {self.tag} already {self._state}")
        self._state = "building"
        with Lab._live_lock:
            Lab._live[id(self)] = self
            if not Lab._atexit_done:
                atexit.register(Lab._close_all)
                Lab._atexit_done = True
        try:
            self.tmpdir = tempfile.mkdtemp(prefix=f"{self.tag}-")
            self._build_netns()
            self._write_name_files()
            if self.servers:
                self._start_servers()
            if self.loss:
                self.set_loss(self.loss)
        except BaseException:
            with contextlib.suppress(LabError):  # keep the original error
                self.close()
            raise
        self._state = "up"
        return self

    def _build_netns(self) -> None:
        c, s = self.client_ns, self.server_ns
        for ns in (c, s):
            if os.path.exists(netns_path(ns)):  # left by a dead process that had our pid: never ours
                _remove_netns(ns)
            _sh(["ip", "netns", "add", ns])
            if not self.ipv6:
                self.run(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                              "net.ipv6.conf.default.disable_ipv6=1"])
        mtu = str(self.mtu)
        _sh(["ip", "link", "add", self.client_if, "netns", c, "address", self.client_mac, "mtu", mtu,
             "type", "veth", "peer", "name", self.server_if, "netns", s, "address", self.server_mac,
             "mtu", mtu])
        plen = self.prefix_len
        _sh(["ip", "-n", c, "-batch", "-"], input="\n".join([
            "link set lo up", f"addr add {self.client_ip}/{plen} dev {self.client_if}",
            f"link set {self.client_if} up", f"route add default via {self.server_ip} dev {self.client_if}",
        ]) + "\n")
        _sh(["ip", "-n", s, "-batch", "-"], input="\n".join([
            "link set lo up", f"addr add {self.server_ip}/{plen} dev {self.server_if}",
            f"link set {self.server_if} up",
        ]) + "\n")
        self._wait_link_up()

    def _wait_link_up(self) -> None:
        deadline = time.monotonic() + self.READY_TIMEOUT
        for ns, dev in ((self.client_ns, self.client_if), (self.server_ns, self.server_if)):
            while "state UP" not in _sh(["ip", "-n", ns, "-o", "link", "show", "dev", dev]).stdout:
                if time.monotonic() > deadline:
                    raise LabError(f"{ns}/{dev} did not come up")
                time.sleep(0.005)

    def _write_name_files(self) -> None:
        d = os.path.dirname(self.resolv_conf)
        for _ in range(3):  # another lab's teardown may rmdir /etc/netns between the two makedirs steps
            try:
                os.makedirs(d, exist_ok=True)
                with open(self.resolv_conf, "w") as f:
                    f.write(f"# usocket lab {self.tag}\nnameserver {self.server_ip}\nsearch {self.DOMAIN}\n"
                            "options timeout:2 attempts:2\n")
                break
            except FileNotFoundError:
                continue
        by_addr: dict[str, list[str]] = {}
        for name, addrs in self.hosts_records.items():
            for a in addrs:
                by_addr.setdefault(a, []).append(name)
        with open(self.hosts_file, "w") as f:
            f.write(f"# usocket lab {self.tag}\n")
            f.writelines(f"{a}\t{' '.join(names)}\n" for a, names in by_addr.items())

    # -- servers ---------------------------------------------------------------------------------
    def _start_servers(self) -> None:
        self.docroot = os.path.join(self.tmpdir, "www")
        os.makedirs(self.docroot)
        p = self.ports
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(_servers.__file__))))
        env = dict(os.environ, PYTHONPATH=pkg_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        py = self.popen(self.server_ns, [
            sys.executable, "-m", "usocket.lab.servers", "--tcp-echo", str(p["tcp_echo"]),
            "--udp-echo", str(p["udp_echo"]), "--bulk-source", str(p["bulk_source"]),
            "--bulk-sink", str(p["bulk_sink"]), "--eof-echo", str(p["eof_echo"]), "--reset", str(p["reset"]),
            "--http", str(p["http"]), "--docroot", self.docroot, "--xmlrpc", str(p["xmlrpc"]),
        ], stdout=subprocess.PIPE, stderr=self._log("servers"), env=env)
        self._make_tls()  # while Python starts; nginx needs the files
        nginx = self.popen(self.server_ns, ["nginx", "-e", os.path.join(self.tmpdir, "nginx-error.log"),
                                            "-p", self.tmpdir, "-c", self._nginx_conf()],
                           stdout=subprocess.DEVNULL, stderr=self._log("nginx"))
        self.dns_log = os.path.join(self.tmpdir, "dnsmasq.log")
        dns = self.popen(self.server_ns, self._dnsmasq_argv(), stdout=subprocess.DEVNULL,
                         stderr=self._log("dnsmasq"))
        deadline = time.monotonic() + self.READY_TIMEOUT
        self.http_files = self._fill_docroot(self.docroot)  # while the servers start up
        self._wait_ready_line(py, "servers", deadline)
        self._wait_listening(nginx, "nginx", [("tcp", p["nginx"]), ("tcp", p["https"])], deadline)
        self._wait_listening(dns, "dnsmasq", [("udp", p["dns"]), ("tcp", p["dns"])], deadline)

    @classmethod
    def _fill_docroot(cls, path: str) -> dict[str, tuple[int, str]]:
        """Hard-link the generated HTTP files into ``path`` (read-only: labs share them).

        They are made once per process in ``<tmp>/usl-<pid>-docroot-*`` (removed at exit or by
        :meth:`cleanup_stale`), which saves generating and hashing 18 MiB for every lab.
        """
        with cls._live_lock:
            cache = cls._docroot_cache
            if cache is None or not os.path.isdir(cache[0]):
                d = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-docroot-")
                cache = cls._docroot_cache = (d, _servers.make_docroot(d))
                atexit.register(_rmtree_if_owner, d, os.getpid())
        src, files = cache
        for name in files:
            a, b = os.path.join(src, name.lstrip("/")), os.path.join(path, name.lstrip("/"))
            try:
                os.link(a, b)
            except OSError:
                shutil.copyfile(a, b)
        return dict(files)

    def _log(self, name: str) -> Any:
        return open(os.path.join(self.tmpdir, f"{name}.log"), "wb")  # noqa: SIM115 - the child owns it

    def _log_tail(self, name: str) -> str:
        try:
            with open(os.path.join(self.tmpdir, f"{name}.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def _wait_ready_line(self, proc: subprocess.Popen[Any], name: str, deadline: float) -> None:
        """Wait for the ``ready`` line a server process prints once it listens."""
        assert proc.stdout is not None
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"{name} not ready in time: {self._log_tail(name)}")
            r, _, _ = select.select([proc.stdout], [], [], left)
            if r:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise LabError(f"{name} exited ({proc.wait()}): {self._log_tail(name)}")
                buf += chunk
        if not buf.startswith(b"ready"):
            raise LabError(f"{name}: unexpected output {buf[:200]!r}")

    def _wait_listening(self, proc: subprocess.Popen[Any], name: str, socks: list[tuple[str, int]],
                        deadline: float) -> None:
        """Poll the process's namespace socket tables until every ``(proto, port)`` is bound."""
        while not all(_listening(proc.pid, proto, port) for proto, port in socks):
            if proc.poll() is not None:
                raise LabError(f"{name} exited ({proc.returncode}): {self._log_tail(name)}")
            if time.monotonic() > deadline:
                raise LabError(f"{name} not listening in time: {self._log_tail(name)}")
            time.sleep(0.005)

    _OPENSSL_CONF = """# usocket lab: what the test CA and the server certificate hold
[req]
distinguished_name = dn
prompt = no
[dn]
CN = usocket lab
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = {san}
"""

    def _make_tls(self) -> None:
        """A throwaway CA and a server certificate it signs, in ``<tmpdir>/tls`` (EC P-256: the
        two ``openssl`` runs take milliseconds). Sets :attr:`ca_file`."""
        d = os.path.join(self.tmpdir, "tls")
        os.makedirs(d)
        san = ", ".join([f"DNS:{n}" for n in self.tls_names] + [f"IP:{self.server_ip}"])
        conf = os.path.join(d, "openssl.cnf")
        with open(conf, "w") as f:
            f.write(self._OPENSSL_CONF.format(san=san))
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc", "-days", "2"]
        ca_key, self.ca_file = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
        _sh(["openssl", "req", "-x509", "-config", conf, "-extensions", "ca", *key, "-keyout", ca_key,
             "-out", self.ca_file, "-subj", f"/CN=usocket lab test CA {self.tag}"])
        _sh(["openssl", "req", "-x509", "-config", conf, "-extensions", "leaf", "-CA", self.ca_file,
             "-CAkey", ca_key, *key, "-keyout", os.path.join(d, "server.key"),
             "-out", os.path.join(d, "server.pem"), "-subj", f"/CN={self.server_name}"])

    def _nginx_conf(self) -> str:
        t = self.tmpdir
        conf = f"""# usocket lab {self.tag}: everything under {t}, nothing outside it
daemon off;
master_process on;
worker_processes 1;
user root;
pid {t}/nginx.pid;
error_log {t}/nginx-error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {t}/nginx-body;
    proxy_temp_path {t}/nginx-proxy;
    fastcgi_temp_path {t}/nginx-fastcgi;
    uwsgi_temp_path {t}/nginx-uwsgi;
    scgi_temp_path {t}/nginx-scgi;
    types {{ text/html html; application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    client_max_body_size 0;
    server {{
        listen {self.ports['nginx']} backlog=1024;
        server_name _;
        root {self.docroot};
        index index.html;
        location /upload/ {{
            root {t}/dav;
            dav_methods PUT DELETE;
            create_full_put_path on;
        }}
    }}
    server {{
        listen {self.ports['https']} ssl backlog=1024;
        server_name _;
        ssl_certificate {t}/tls/server.pem;
        ssl_certificate_key {t}/tls/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {self.docroot};
        index index.html;
    }}
}}
"""
        path = os.path.join(t, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    @property
    def reverse_zone(self) -> str:
        """The in-addr.arpa zone of the lab's /24, answered locally (NXDOMAIN for unknowns)."""
        a, b, c, _ = self.subnet.split(".")
        return f"{c}.{b}.{a}.in-addr.arpa"

    def _dnsmasq_argv(self) -> list[str]:
        d = self.DOMAIN
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--no-poll", "--user=root", "--group=root", f"--pid-file={self.tmpdir}/dnsmasq.pid",
                f"--listen-address={self.server_ip}", "--bind-interfaces", f"--port={self.ports['dns']}",
                f"--local=/{d}/", f"--local=/{self.reverse_zone}/",
                "--log-queries", f"--log-facility={self.dns_log}", "--cache-size=0"]
        # The PTR records come from the first host-record of each address.
        for addr, name in self.dns_ptr.items():
            argv.append(f"--host-record={name},{addr}")
        for name, addrs in self.dns_a.items():
            argv += [f"--host-record={name},{a}" for a in addrs if self.dns_ptr.get(a) != name]
        argv += [f"--cname={alias},{target}" for alias, target in self.dns_cnames.items()]
        return argv

    def dns_queries(self) -> list[tuple[str, str, str]]:
        """Queries dnsmasq logged so far, as ``(qtype, name, source ip)``, oldest first."""
        out = []
        try:
            with open(self.dns_log, errors="replace") as f:
                for line in f:
                    m = re.search(r"query\[(\w+)\] (\S+) from (\S+)", line)
                    if m:
                        out.append((m.group(1), m.group(2), m.group(3)))
        except OSError:
            pass
        return out

    # -- running things --------------------------------------------------------------------------
    def run(self, ns: str, argv: list[str], check: bool = True, timeout: float = 30.0,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in namespace ``ns`` (``ip netns exec``), capturing text output."""
        p = subprocess.run(ns_cmd(ns, argv), capture_output=True, text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise LabError(f"[{ns}] {shlex.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def popen(self, ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``ns``; the process is terminated (then killed) at teardown."""
        proc = subprocess.Popen(ns_cmd(ns, argv), **kw)
        self._procs.append(proc)
        return proc

    def call(self, ns: str, fn: Callable[[], T]) -> T:
        """``fn()`` run in a thread inside ``ns`` (sockets it creates belong to ``ns``)."""
        return run_in_netns(ns, fn)

    def url(self, path: str = "/", server: str = "http", host: str | None = None) -> str:
        """URL of ``path`` on the ``http`` (Python), ``nginx``, ``https`` (nginx over TLS) or
        ``xmlrpc`` server; ``host`` (default: the server's address) may be a name, e.g.
        :attr:`server_name`, which the certificate also holds."""
        scheme = "https" if server == "https" else "http"
        return f"{scheme}://{host or self.server_ip}:{self.ports[server]}{path}"

    def env(self, mode: str = "shared") -> dict[str, str]:
        """``USOCKET_*`` environment for a stack in the client namespace (``shared`` or ``own``)."""
        e = {"USOCKET_NETNS": self.client_ns, "USOCKET_IFACE": self.client_if, "USOCKET_MODE": mode}
        if mode == "own":
            e["USOCKET_ADDR"] = f"{self.own_ip}/{self.prefix_len}"
        return e

    def stack_config(self, mode: str = "shared", **overrides: Any) -> Any:
        """A :class:`usocket.config.StackConfig` for the client side, discovered from the lab."""
        from ..config import discover
        kw: dict[str, Any] = {"netns": self.client_ns, "iface": self.client_if, "mode": mode}
        if mode == "own":
            kw["address"] = f"{self.own_ip}/{self.prefix_len}"
        kw.update(overrides)
        return discover(**kw)

    # -- iptables --------------------------------------------------------------------------------
    def _iptables(self, ns: str, action: str, rule: list[str]) -> None:
        self.run(ns, ["iptables", "-w", action, *rule])

    def _add_rule(self, ns: str, rule: list[str]) -> None:
        self._iptables(ns, "-I", rule)
        self._rules.setdefault(ns, []).append(rule)

    def _del_rules(self, ns: str, comment: str) -> None:
        keep = []
        for rule in self._rules.get(ns, []):
            if comment in rule:
                self._iptables(ns, "-D", rule)
            else:
                keep.append(rule)
        self._rules[ns] = keep

    def set_loss(self, p: float, direction: str = "both") -> None:
        """Drop each packet at random with probability ``p`` at the server's veth.

        ``direction``: ``in`` (client to server), ``out`` (server to client) or ``both``, each
        direction independently (a round trip then survives with ``(1 - p) ** 2``). ``p = 0``
        removes the loss. Kernel senders in the server namespace see their dropped UDP sends
        fail with EPERM (the echo server ignores it); kernel TCP just retransmits.
        """
        if not 0.0 <= p <= 1.0 or direction not in ("in", "out", "both"):
            raise ValueError(f"bad loss {p!r} / direction {direction!r}")
        comment = f"{LAB_COMMENT}-loss"
        self._del_rules(self.server_ns, comment)
        self.loss = p
        if p == 0:
            return
        stat = ["-m", "statistic", "--mode", "random", "--probability", f"{p:.6f}",
                "-m", "comment", "--comment", comment, "-j", "DROP"]
        if direction in ("in", "both"):
            self._add_rule(self.server_ns, ["INPUT", "-i", self.server_if, *stat])
        if direction in ("out", "both"):
            self._add_rule(self.server_ns, ["OUTPUT", "-o", self.server_if, *stat])

    def block_kernel_egress(self) -> None:
        """Reject TCP and UDP the client namespace's *kernel* sends out of the veth.

        The userland stack transmits with AF_PACKET, which netfilter never sees, so its packets
        pass; a kernel socket (a fallback that should not happen, or the kernel answering the
        stack's peer with RST) is refused and counted by :meth:`kernel_egress_rejected`.
        """
        comment = f"{LAB_COMMENT}-egress"
        if any(comment in r for r in self._rules.get(self.client_ns, [])):
            return
        for proto in ("tcp", "udp"):
            self._add_rule(self.client_ns, ["OUTPUT", "-o", self.client_if, "-p", proto,
                                            "-m", "comment", "--comment", comment, "-j", "REJECT"])

    def unblock_kernel_egress(self) -> None:
        self._del_rules(self.client_ns, f"{LAB_COMMENT}-egress")

    def _rule_packets(self, ns: str, comment: str) -> int:
        out = self.run(ns, ["iptables-save", "-c", "-t", "filter"]).stdout
        total = 0
        for line in out.splitlines():
            m = re.match(r"\[(\d+):\d+\] -A .*--comment \"?" + re.escape(comment) + r"\b", line)
            if m:
                total += int(m.group(1))
        return total

    def kernel_egress_rejected(self) -> int:
        """Packets the :meth:`block_kernel_egress` rules have rejected so far."""
        return self._rule_packets(self.client_ns, f"{LAB_COMMENT}-egress")

    def loss_dropped(self) -> int:
        """Packets the :meth:`set_loss` rules have dropped so far."""
        return self._rule_packets(self.server_ns, f"{LAB_COMMENT}-loss")

    def iptables_rules(self, ns: str | None) -> list[str]:
        """The ``-A`` lines of ``iptables-save`` in ``ns`` (``None``: the root namespace)."""
        out = _sh(ns_cmd(ns, ["iptables-save"])).stdout
        return [line for line in out.splitlines() if line.startswith("-A ")]

    def foreign_rules(self, ns: str) -> list[str]:
        """usocket/NFQUEUE rules and USOCKET chains in ``ns`` that the lab did not add itself,
        then usocket ipsets (as ``ipset NAME``)."""
        out = self.run(ns, ["iptables-save"]).stdout
        return [line for line in out.splitlines() if line.startswith(("-A ", ":")) and
                SUSPECT_RULE.search(line) and LAB_COMMENT not in line] + [
                    f"ipset {name}" for name in self.usocket_sets(ns)]

    @staticmethod
    def usocket_sets(ns: str | None) -> list[str]:
        """Names of the usocket ipsets in ``ns`` (``None``: the current namespace); none if the
        kernel has no ipset."""
        from ..divert.ipset import Ipset

        try:
            with Ipset(ns) as ips:
                return [name for name in ips.names() if SUSPECT_RULE.search(name)]
        except OSError:
            return []

    # -- capture ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture(self, ns: str, iface: str, bpf_filter: str = "", path: str | None = None,
                settle: float = 0.05, snaplen: int = 0, buffer_kib: int = 32768) -> Iterator[str]:
        """tcpdump on ``iface`` in ``ns`` while the block runs; yields the pcap path.

        ``snaplen`` bytes of each packet are kept (0: all); ``buffer_kib`` is tcpdump's kernel
        buffer (a small one drops packets of a fast transfer: 64 KB GSO packets fill it quickly).

        Capturing has started when the block is entered. On exit the capture waits until the file
        stopped growing for ``settle`` seconds (at most 2 s), then stops tcpdump, so the file holds
        every packet seen before the block ended. ``path`` defaults to a file in the lab's temp
        dir (deleted at teardown).
        """
        if path is None:
            fd, path = tempfile.mkstemp(prefix=f"{ns}-{iface}-", suffix=".pcap", dir=self.tmpdir or None)
            os.close(fd)
        argv = ["tcpdump", "-i", iface, "-w", path, "-U", "--immediate-mode", "-n", "-s", str(snaplen),
                "-B", str(buffer_kib), "-Z", "root"]
        argv += shlex.split(bpf_filter)
        proc = self.popen(ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = b""
        deadline = time.monotonic() + self.READY_TIMEOUT
        while b"listening on" not in err:
            left = deadline - time.monotonic()
            r, _, _ = select.select([proc.stderr], [], [], max(left, 0))
            chunk = os.read(proc.stderr.fileno(), 4096) if r else b""
            if not chunk:
                proc.kill()
                proc.wait()
                raise LabError(f"tcpdump did not start: {err.decode(errors='replace')}")
            err += chunk
        try:
            yield path
        finally:
            size, stable_since, end = -1, time.monotonic(), time.monotonic() + 2.0
            while time.monotonic() < end:
                now_size = os.path.getsize(path)
                if now_size != size:
                    size, stable_since = now_size, time.monotonic()
                elif time.monotonic() - stable_since >= settle:
                    break
                time.sleep(settle / 5)
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()

    # -- teardown --------------------------------------------------------------------------------
    def close(self) -> None:
        """Tear everything down; every step runs even if an earlier one fails. Idempotent."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        self._state = "closing"  # an interrupted teardown runs again (atexit): every step is idempotent
        errors: list[str] = []
        for proc in self._procs:
            with contextlib.suppress(OSError):
                proc.terminate()
        end = time.monotonic() + 2.0
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        for ns in (self.client_ns, self.server_ns):
            errors += _remove_netns(ns)
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        with Lab._live_lock:
            Lab._live.pop(id(self), None)
        self._state = "closed"
        if errors:
            raise LabError(f"teardown of {self.tag}: " + "; ".join(errors))

    def close_and_audit(self) -> list[str]:
        """Close the lab and return what was left behind (empty when clean).

        Before deleting the namespaces: usocket/NFQUEUE rules and USOCKET chains the lab did not
        add (a stack that forgot to undo its diversion). After: the lab's namespaces, /etc/netns
        dirs and temp dir still present, and usocket/NFQUEUE rules in the root namespace.
        """
        problems: list[str] = []
        if self._state != "closed":
            for ns in (self.client_ns, self.server_ns):
                if os.path.exists(netns_path(ns)):
                    try:
                        problems += [f"rule in {ns}: {r}" for r in self.foreign_rules(ns)]
                    except LabError as e:
                        problems.append(str(e))
        try:
            self.close()
        except LabError as e:
            problems.append(str(e))
        for ns in (self.client_ns, self.server_ns):
            for path in (netns_path(ns), os.path.join(ETC_NETNS, ns)):
                if os.path.exists(path):
                    problems.append(f"{path} still exists")
        if self.tmpdir and os.path.exists(self.tmpdir):
            problems.append(f"{self.tmpdir} still exists")
        problems += [x for x in Lab.leftovers() if x.startswith("root rule")]
        return problems

    @classmethod
    def _close_all(cls) -> None:
        with cls._live_lock:
            labs = [lab for lab in cls._live.values() if lab._pid == os.getpid()]
        for lab in labs:
            with contextlib.suppress(Exception):
                lab.close()

    # -- the whole machine -----------------------------------------------------------------------
    @staticmethod
    def namespaces() -> list[str]:
        """Every ``usl-*`` namespace on the machine (any process's)."""
        try:
            return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
        except FileNotFoundError:
            return []

    @staticmethod
    def leftovers(pid: int | None = None) -> list[str]:
        """``usl-*`` namespaces (of ``pid`` only, if given), usocket/NFQUEUE rules and usocket ipsets in the root ns."""
        names = Lab.namespaces()
        if pid is not None:
            names = [n for n in names if n.startswith(f"{PREFIX}{pid}-")]
        out = [f"namespace {n}" for n in names]
        save = _sh(["iptables-save"], check=False).stdout
        out += [f"root rule {line}" for line in save.splitlines()
                if line.startswith(("-A ", ":")) and SUSPECT_RULE.search(line)]
        out += [f"root rule ipset {name}" for name in Lab.usocket_sets(None)]
        return out

    @staticmethod
    def cleanup_stale() -> int:
        """Remove namespaces, /etc/netns dirs and temp dirs of labs whose process is dead.

        Returns the number of namespaces removed. (A recycled pid keeps its labs alive: run
        again once that process is gone.)
        """
        def dead(name: str) -> bool:
            m = _NAME_RE.match(name)
            return m is not None and not _pid_alive(int(m.group(1)))

        removed = 0
        for ns in Lab.namespaces():
            if dead(ns):
                _remove_netns(ns)
                removed += 1
        for base in (ETC_NETNS, tempfile.gettempdir()):
            with contextlib.suppress(OSError):
                for name in os.listdir(base):
                    if name.startswith(PREFIX) and dead(name):
                        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(ETC_NETNS)
        return removed

    def __repr__(self) -> str:
        return (f"<Lab {self.tag} {self._state} client={self.client_ns}:{self.client_ip} "
                f"server={self.server_ns}:{self.server_ip}>")


def _remove_netns(ns: str) -> list[str]:
    """Kill every process in ``ns``, delete it and its /etc/netns dir; returns error strings."""
    errors: list[str] = []
    if os.path.exists(netns_path(ns)):
        pids = _sh(["ip", "netns", "pids", ns], check=False).stdout.split()
        for pid in (int(p) for p in pids):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        p = _sh(["ip", "netns", "del", ns], check=False)
        if p.returncode != 0 and os.path.exists(netns_path(ns)):
            errors.append(f"ip netns del {ns}: {p.stderr.strip()}")
    shutil.rmtree(os.path.join(ETC_NETNS, ns), ignore_errors=True)
    if os.path.exists(os.path.join(ETC_NETNS, ns)):
        errors.append(f"{ETC_NETNS}/{ns} still exists")
    with contextlib.suppress(OSError):
        os.rmdir(ETC_NETNS)  # only if empty
    return errors
