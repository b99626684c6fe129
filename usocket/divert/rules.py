"""iptables NFQUEUE rules and an ipset that keep the kernel out of the stack's own flows (shared mode).

Layout, in the ``filter`` table of one network namespace::

    -A INPUT -j USOCKET                                   (inserted first, see below)
    -A USOCKET -d LOCAL_IP/32 -m set --match-set usocket-<pid>-<start>-<Q> src,dst
               -m comment --comment "usocket:pid=<pid>:start=<starttime>"
               -j NFQUEUE --queue-num Q --queue-bypass    (connected flows: one rule per owner)
    -A USOCKET -d LOCAL_IP/32 -p udp -m udp --dport LPORT
               -m comment ... -j NFQUEUE ...           (a port open to any remote: a listener)
    -A USOCKET -p udp -m addrtype --dst-type BROADCAST -m udp --dport LPORT
               -m comment ... -j NFQUEUE ...           (a UDP port open to any remote)

Connected flows (a remote address and port known: TCP connections, connected UDP sockets) are
members of the owner's ``hash:ip,port`` ipset: ``(remote IP, proto:local port)``, matched with
``src,dst`` by one rule that also names the local IP. A member is added and deleted with one
netlink message (:mod:`usocket.divert.ipset`, 7-15 us; no process), so a connection costs no
``iptables`` run. The member does not hold the remote port: two flows from one remote IP to one
local port share it (reference counted), and a packet of that pair that belongs to no flow of the
stack is declined by its handler (ACCEPT), as a stale rule's would be. The set and its rule are
created at the first connected flow and go at :meth:`FlowRules.remove_all`. If the namespace's
kernel has no ipset (or no ``set`` match), the rules module logs it once (INFO), sets
:attr:`FlowRules.ipset_error` and counts ``ipset.fallback`` in :attr:`FlowRules.stats`, and
connected flows take the per-rule path below, like listeners.

Flows open to any remote (listeners, unconnected UDP ports) are few and get one rule each
(reference counted inside the process), plus, for a UDP port open to any remote, one for
datagrams to a broadcast address (255.255.255.255 or a subnet's
directed broadcast: whatever the namespace's routing calls RTN_BROADCAST): the kernel has no
socket for them (the port's reservation socket is bound to LOCAL_IP), so without the rule they
would be lost, while in own mode the stack's wildcard-bound endpoints get them. A flow's rules
are added and removed together, in one batch. Each rule is tagged with the owning process:
``pid`` plus its start time from ``/proc/<pid>/stat`` (field 22), so a reused pid is not
mistaken for the owner; the set's name carries the same owner (start time in base 36, then the
queue number), so :func:`cleanup` destroys a dead owner's set after removing its rules.
``--queue-bypass`` makes the rule fail open: if nobody
listens on queue ``Q`` (the stack died) the kernel gets the packet as if the rule were absent.
There is never a plain DROP rule.

The jump sits first in INPUT: the stack's packets leave through AF_PACKET, unseen by
netfilter and conntrack, so a stateful host firewall would call the replies INVALID/NEW and
drop them; the stack must see them before such rules do.

Cost (reference machine, 2 cores; :func:`measure` reports it): each rule change is one
``iptables-restore --noflush`` process (an atomic batch). Adding a rule takes ~3 ms (of which
~1.5 ms is ``ip netns exec``). Deleting takes ~15 ms whatever the batch size: the nf_tables
commit of a deletion waits for an RCU grace period. So ``flow_closed`` does not wait: deletions
go to a :class:`BackgroundDeleter` thread that batches whatever piled up. Meanwhile the stale
rule still queues that flow's packets to the stack, whose handler declines them (ACCEPT), so
the kernel sees them as if the rule were gone. A re-opened identical flow simply adds another
rule instance; the pending ``-D`` removes exactly one. Set members are deleted at once, in
one send that waits for no ACK (the kernel applies it inside the send; a refusal is only
counted, in ``Ipset.late_errors``).

Concurrency: processes sharing a namespace serialise chain creation/removal and rule edits
with ``flock`` on the namespace itself (its nsfs inode: ``/var/run/netns/<name>``, or
``/proc/thread-self/ns/net`` for the current one). Unlike a lock file per namespace name in
/run, this leaves nothing behind when short-lived namespaces come and go, and a process that
runs *inside* a namespace (``netns=None``) takes the same lock as one naming it from outside.
Removing the chain is one atomic batch (``-D INPUT -j USOCKET`` + ``-X USOCKET``) that the
kernel refuses while the chain holds a rule, so it is safe even against a process not locking.
Sets belong to one owner each and need no lock; the kernel refuses to destroy a set a rule
still uses.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..netns import netns_path, ns_cmd
from ..wire.addr import ip_aton, ip_ntoa
from .ipset import ERR_BUSY, Ipset

log = logging.getLogger("usocket.divert")

CHAIN = "USOCKET"
TAG_PREFIX = "usocket:"
SET_PREFIX = "usocket-"
PROTO_NAMES = {6: "tcp", 17: "udp"}
Remote = tuple[bytes, int] | None


class IptablesError(OSError):
    """An iptables command failed (errno EIO; ``strerror`` holds iptables' message)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


# -- owners ------------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (comm may hold spaces and parens)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].decode("ascii", "replace").split()


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def owner_tag(pid: int | None = None) -> str:
    """The comment tag naming process ``pid`` (default: this one) as a rule's owner."""
    pid = os.getpid() if pid is None else pid
    start = process_start_time(pid)
    if start is None:
        raise ProcessLookupError(pid)
    return f"{TAG_PREFIX}pid={pid}:start={start}"


def parse_tag(tag: str) -> tuple[int, int] | None:
    """``(pid, start)`` from an owner tag, None if ``tag`` is not one."""
    if not tag.startswith(TAG_PREFIX):
        return None
    try:
        fields = dict(part.split("=", 1) for part in tag[len(TAG_PREFIX):].split(":"))
        return int(fields["pid"]), int(fields["start"])
    except (KeyError, ValueError):
        return None


def owner_alive(tag: str) -> bool:
    """True while the process named by ``tag`` runs (a zombie or a reused pid counts as dead)."""
    parsed = parse_tag(tag)
    if parsed is None:
        return False
    pid, start = parsed
    fields = _stat_fields(pid)
    if not fields or len(fields) <= 19:
        return False
    return fields[0] not in ("Z", "X") and int(fields[19]) == start


_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = _B36[d] + out
        if not n:
            return out


def set_name(tag: str, queue_num: int) -> str:
    """The ipset of owner ``tag`` and queue ``queue_num``: ``usocket-<pid>-<start, base 36>-<queue>``
    (at most 30 characters; ipset allows 31)."""
    parsed = parse_tag(tag)
    if parsed is None:
        raise ValueError(f"not an owner tag: {tag!r}")
    pid, start = parsed
    return f"{SET_PREFIX}{pid}-{_base36(start)}-{queue_num}"


def parse_set_name(name: str) -> tuple[str, int] | None:
    """``(owner tag, queue number)`` from a set name made by :func:`set_name`, else None."""
    if not name.startswith(SET_PREFIX):
        return None
    parts = name[len(SET_PREFIX):].split("-")
    if len(parts) != 3:
        return None
    try:
        pid, start, queue = int(parts[0]), int(parts[1], 36), int(parts[2])
    except ValueError:
        return None
    return f"{TAG_PREFIX}pid={pid}:start={start}", queue


# -- rule text ---------------------------------------------------------------------------------
def _ip_text(ip: str | bytes) -> str:
    return ip_ntoa(ip) if isinstance(ip, bytes) else ip


def flow_match(proto: int, local_ip: str | bytes, local_port: int, remote: Remote) -> list[str]:
    """iptables match arguments selecting inbound packets of one flow."""
    if proto not in PROTO_NAMES:
        raise ValueError(f"cannot divert protocol {proto}")
    if not 0 < local_port < 65536:
        raise ValueError(f"bad local port {local_port}")
    name = PROTO_NAMES[proto]
    if remote is None:
        return ["-d", f"{_ip_text(local_ip)}/32", "-p", name, "-m", name, "--dport", str(local_port)]
    rip, rport = remote
    return ["-s", f"{_ip_text(rip)}/32", "-d", f"{_ip_text(local_ip)}/32", "-p", name, "-m", name,
            "--sport", str(rport), "--dport", str(local_port)]


def broadcast_match(proto: int, local_port: int) -> list[str]:
    """iptables match arguments selecting datagrams to a broadcast address and ``local_port``."""
    if proto != 17:
        raise ValueError(f"only UDP has broadcasts, not protocol {proto}")
    if not 0 < local_port < 65536:
        raise ValueError(f"bad local port {local_port}")
    return ["-p", "udp", "-m", "addrtype", "--dst-type", "BROADCAST", "-m", "udp", "--dport", str(local_port)]


def nfqueue_target(queue_num: int, tag: str) -> list[str]:
    return ["-m", "comment", "--comment", tag, "-j", "NFQUEUE", "--queue-num", str(queue_num),
            "--queue-bypass"]


def set_match(local_ip: str | bytes, name: str) -> list[str]:
    """iptables match arguments selecting inbound packets to ``local_ip`` whose (source IP,
    protocol:destination port) is a member of set ``name``."""
    return ["-d", f"{_ip_text(local_ip)}/32", "-m", "set", "--match-set", name, "src,dst"]


@dataclass
class ListedRule:
    """One line of ``iptables -S USOCKET``, with the fields cleanup needs."""

    line: str
    tag: str | None
    queue_num: int | None

    @classmethod
    def parse(cls, line: str) -> ListedRule:
        tokens = shlex.split(line)
        tag = queue = None
        for i, tok in enumerate(tokens[:-1]):
            if tok == "--comment":
                tag = tokens[i + 1]
            elif tok == "--queue-num":
                with contextlib.suppress(ValueError):
                    queue = int(tokens[i + 1])
        return cls(line, tag, queue)

    def delete_line(self) -> str:
        """The ``-D`` form of this ``-A`` line (iptables-restore syntax)."""
        return "-D" + self.line[2:]


# -- one namespace's iptables ------------------------------------------------------------------
class Iptables:
    """Runs iptables in one namespace (``None``: the current one) on the usocket chain.

    Subclass to use another binary or to log commands; every command goes through :meth:`run`.
    """

    iptables = "iptables"
    iptables_restore = "iptables-restore"

    def __init__(self, netns: str | None = None, chain: str = CHAIN, lock_path: str | None = None) -> None:
        self.netns = netns
        self.chain = chain
        self.lock_path = lock_path or (netns_path(netns) if netns else "/proc/thread-self/ns/net")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock shared by every usocket process (and thread) working on this namespace."""
        fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(ns_cmd(self.netns, argv), input=stdin, capture_output=True, text=True,
                              check=False)

    def restore(self, lines: list[str]) -> None:
        """Apply ``lines`` (e.g. ``-A USOCKET ...``) to the filter table as one atomic batch."""
        text = "*filter\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"
        proc = self.run([self.iptables_restore, "-w", "--noflush"], stdin=text)
        if proc.returncode != 0:
            raise IptablesError(f"iptables-restore: {proc.stderr.strip() or proc.returncode}")

    def list_rules(self) -> list[ListedRule] | None:
        """The chain's rules, or None when the chain does not exist."""
        proc = self.run([self.iptables, "-w", "-S", self.chain])
        if proc.returncode != 0:
            return None  # iptables-nft 1.8.9 says "incompatible" for a missing chain
        return [ListedRule.parse(line) for line in proc.stdout.splitlines() if line.startswith("-A ")]

    def has_jump(self) -> bool:
        return self.run([self.iptables, "-w", "-C", "INPUT", "-j", self.chain]).returncode == 0

    def ensure_chain(self) -> None:
        """Create the chain and the INPUT jump unless present (call with :meth:`lock` held)."""
        try:
            self.restore([f"-N {self.chain}", f"-I INPUT 1 -j {self.chain}"])
            return
        except IptablesError:
            if self.list_rules() is None:
                raise
        if not self.has_jump():
            self.restore([f"-I INPUT 1 -j {self.chain}"])

    def remove_chain_if_empty(self) -> bool:
        """Drop the jump and the chain if the chain is empty (call with :meth:`lock` held)."""
        rules = self.list_rules()
        if rules is None or rules:
            return False
        lines = [f"-D INPUT -j {self.chain}"] if self.has_jump() else []
        try:
            self.restore(lines + [f"-X {self.chain}"])
        except IptablesError:
            return False  # a rule appeared meanwhile (a process not using our lock), keep it
        return True

    def delete(self, rules: list[ListedRule]) -> int:
        """Delete listed rules in one batch; rule by rule if the batch fails (some vanished)."""
        if not rules:
            return 0
        try:
            self.restore([r.delete_line() for r in rules])
            return len(rules)
        except IptablesError:
            pass
        n = 0
        for r in rules:
            with contextlib.suppress(IptablesError):
                self.restore([r.delete_line()])
                n += 1
        return n


class BackgroundDeleter:
    """Deletes rules on a worker thread, batching the lines queued meanwhile into one commit.

    Started on first use; ``stop()`` joins it (dropping what is still queued if ``drain`` is
    False: the caller then deletes by listing, as :meth:`FlowRules.remove_all` does).
    """

    def __init__(self, ipt: Iptables) -> None:
        self.ipt = ipt
        self.pending: list[str] = []
        self.errors = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._stopping = False

    def submit(self, *lines: str) -> None:
        """Queue ``lines`` (``-D ...``) for deletion; they go in one batch."""
        with self._cond:
            self.pending.extend(lines)
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="usocket-rule-deleter", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self.pending and not self._stopping:
                    self._cond.wait()
                if not self.pending:
                    return
                batch, self.pending = self.pending, []
                self._busy = True
            try:
                with self.ipt.lock():
                    try:
                        self.ipt.restore(batch)
                    except IptablesError:  # some rule vanished: delete the others one by one
                        for line in batch:
                            try:
                                self.ipt.restore([line])
                            except IptablesError:
                                self.errors += 1
            except Exception:  # noqa: BLE001 - e.g. iptables missing; never kill the thread silently
                self.errors += 1
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every queued deletion is done; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self.pending and not self._busy, timeout)

    def stop(self, drain: bool = True) -> None:
        with self._cond:
            if not drain:
                self.pending.clear()
            self._stopping = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()


# -- one process's flows -----------------------------------------------------------------------
def destroy_set(ips: Ipset, name: str, wait: float = 1.0) -> bool:
    """Destroy set ``name``; retry while a rule just deleted still holds it (at most ``wait``
    seconds). True when it is gone (or was never there)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            ips.destroy(name)
            return True
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return True
            if exc.errno != ERR_BUSY or time.monotonic() >= deadline:
                return False
        time.sleep(0.005)


class FlowRules:
    """The diversion of one owner (process + queue) in one namespace, reference counted.

    ``add`` and ``remove`` are what :class:`usocket.divert.nfqueue.Diverter` calls from
    ``flow_opened``/``flow_closed``. Identical flows share their rules; they go when the last
    user goes (in the background unless ``defer_removal`` is False; :meth:`flush` waits).
    Connected flows are members of the owner's ipset when :attr:`use_ipset` (default) and the
    kernel has ipset; :attr:`path` says which path they take (``"ipset"``, ``"rules"``, or
    ``None`` before the first connected flow). :attr:`stats` counts ``ipset.add``/``ipset.del``
    (members), ``rule.add``/``rule.del`` (flows on the per-rule path) and ``ipset.fallback``.
    ``divert_broadcast`` (default True) adds the broadcast rule to UDP ports open to any remote;
    it turns itself off (``broadcast_error`` says why) if iptables refuses that rule alone.
    ``remove_all`` deletes whatever rule carries this owner's tag and queue, including any
    this object lost track of, then the owner's set. Not thread-safe: one caller thread (the
    Diverter's lock).
    """

    iptables_class = Iptables
    ipset_class = Ipset
    divert_broadcast = True
    use_ipset = True

    def __init__(self, local_ip: str | bytes, queue_num: int, netns: str | None = None,
                 tag: str | None = None, iptables: Iptables | None = None,
                 defer_removal: bool = True) -> None:
        self.local_ip = _ip_text(local_ip)
        self.queue_num = queue_num
        self.netns = netns
        self.tag = tag if tag is not None else owner_tag()
        self.ipt = iptables if iptables is not None else self.iptables_class(netns)
        self.refs: dict[tuple[int, int, Remote], int] = {}
        self.lines: dict[tuple[int, int, Remote], list[str]] = {}  # the -A lines of each flow
        self.broadcast_error: IptablesError | None = None
        self.deleter = BackgroundDeleter(self.ipt) if defer_removal else None
        self.set_name = set_name(self.tag, queue_num) if parse_tag(self.tag) is not None else None
        self.ipset: Ipset | None = None  # opened with the set, at the first connected flow
        self.path: str | None = None
        self.ipset_error: Exception | None = None
        self.members: dict[tuple[bytes, int, int], int] = {}  # (remote ip, proto, local port) -> users
        self.in_set: dict[tuple[int, int, Remote], tuple[bytes, int, int]] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            ("ipset.add", "ipset.del", "ipset.fallback", "rule.add", "rule.del"), 0)

    def rule_args(self, proto: int, local_port: int, remote: Remote) -> list[str]:
        """The rule for one flow (override to change matching or target options)."""
        return flow_match(proto, self.local_ip, local_port, remote) + nfqueue_target(self.queue_num,
                                                                                     self.tag)

    def broadcast_rule_args(self, proto: int, local_port: int) -> list[str]:
        """The rule for a port's broadcast datagrams (override to change matching)."""
        return broadcast_match(proto, local_port) + nfqueue_target(self.queue_num, self.tag)

    def set_rule_args(self) -> list[str]:
        """The rule that diverts the members of this owner's set."""
        assert self.set_name is not None
        return set_match(self.local_ip, self.set_name) + nfqueue_target(self.queue_num, self.tag)

    def flow_rules(self, proto: int, local_port: int, remote: Remote) -> list[list[str]]:
        """Every rule one flow needs: its own, plus the broadcast one for a UDP port open to
        any remote (when :attr:`divert_broadcast`)."""
        rules = [self.rule_args(proto, local_port, remote)]
        if proto == 17 and remote is None and self.divert_broadcast:
            rules.append(self.broadcast_rule_args(proto, local_port))
        return rules

    def _lines(self, proto: int, local_port: int, remote: Remote) -> list[str]:
        return [" ".join(["-A", self.ipt.chain] + args) for args in self.flow_rules(proto, local_port, remote)]

    def start(self) -> None:
        with self.ipt.lock():
            self.ipt.ensure_chain()

    def _restore_with_chain(self, lines: list[str]) -> None:
        """Apply ``lines``; if that fails, make sure the chain exists and try once more
        (call with the lock held)."""
        try:
            self.ipt.restore(lines)
        except IptablesError:
            self.ipt.ensure_chain()  # someone removed the (then empty) chain
            self.ipt.restore(lines)

    # -- the set ----------------------------------------------------------------------------------
    def _set_ready(self) -> bool:
        """Create the set and its rule unless done; False (once logged) on the per-rule path."""
        if self.path is not None:
            return self.path == "ipset"
        if not self.use_ipset or self.set_name is None:
            self.path = "rules"
            return False
        ips = None
        try:
            ips = self.ipset_class(self.netns)
            ips.create(self.set_name)
            ips.flush(self.set_name)
            with self.ipt.lock():
                try:
                    self._restore_with_chain([" ".join(["-A", self.ipt.chain] + self.set_rule_args())])
                except IptablesError:
                    destroy_set(ips, self.set_name)
                    raise
        except (OSError, ValueError) as exc:
            if ips is not None:
                ips.close()
            self.ipset_error = exc
            self.stats["ipset.fallback"] += 1
            self.path = "rules"
            log.info("usocket: no ipset in %s (%s); one iptables rule per connection instead",
                     self.netns or "this namespace", exc)
            return False
        self.ipset = ips
        self.path = "ipset"
        return True

    def _add_member(self, proto: int, local_port: int, remote: tuple[bytes, int]) -> tuple[bytes, int, int] | None:
        rip = remote[0] if isinstance(remote[0], bytes) else ip_aton(remote[0])
        elem = (rip, proto, local_port)
        users = self.members.get(elem, 0)
        if not users:
            assert self.ipset is not None and self.set_name is not None
            try:
                self.ipset.add(self.set_name, rip, proto, local_port)
            except OSError as exc:  # the set was destroyed behind our back (cleanup --all)
                self.ipset_error = exc
                self._drop_set(destroy=False, forget=False)
                if not self._set_ready():
                    return None
                assert self.ipset is not None
                for old in self.members:  # the flows still open get their members back
                    self.ipset.add(self.set_name, *old)
                self.ipset.add(self.set_name, rip, proto, local_port)
            self.stats["ipset.add"] += 1
        self.members[elem] = users + 1
        return elem

    def _drop_set(self, destroy: bool = True, forget: bool = True) -> bool:
        """Close the set (destroying it if ``destroy``: its rule must be gone already) and, with
        ``forget``, its members."""
        ips, self.ipset = self.ipset, None
        self.path = None
        if forget:
            self.members.clear()
            self.in_set.clear()
        if ips is None:
            return True
        try:
            return destroy_set(ips, self.set_name) if destroy and self.set_name else True
        finally:
            ips.close()

    # -- flows ------------------------------------------------------------------------------------
    def add(self, proto: int, local_port: int, remote: Remote) -> None:
        """Divert one flow; raises OSError (IptablesError, IpsetError) if the kernel refuses."""
        key = (proto, local_port, remote)
        if key in self.refs:
            self.refs[key] += 1
            return
        if remote is not None and self._set_ready():
            if proto not in PROTO_NAMES or not 0 < local_port < 65536:
                flow_match(proto, self.local_ip, local_port, remote)  # raises ValueError like the rule path
            elem = self._add_member(proto, local_port, remote)
            if elem is not None:
                self.in_set[key] = elem
                self.refs[key] = 1
                return
        lines = self._lines(proto, local_port, remote)
        with self.ipt.lock():
            try:
                self._restore_with_chain(lines)
            except IptablesError as exc:
                if len(lines) < 2:
                    raise
                # A kernel without the addrtype match: divert the flows, not broadcasts.
                self.ipt.restore(lines[:1])
                self.divert_broadcast = False
                self.broadcast_error = exc
                lines = lines[:1]
        self.stats["rule.add"] += 1
        self.refs[key] = 1
        self.lines[key] = lines

    def remove(self, proto: int, local_port: int, remote: Remote) -> bool:
        """Drop one reference; delete the rule (or set member) with the last. False if it was gone."""
        key = (proto, local_port, remote)
        n = self.refs.get(key, 0)
        if n > 1:
            self.refs[key] = n - 1
            return True
        if n == 0:
            return False
        del self.refs[key]
        elem = self.in_set.pop(key, None)
        if elem is not None:
            users = self.members.get(elem, 0) - 1
            if users > 0:
                self.members[elem] = users
                return True
            self.members.pop(elem, None)
            if self.ipset is None or self.set_name is None:
                return False
            self.stats["ipset.del"] += 1
            try:  # no ACK awaited: applied in the send; a refusal is counted (Ipset.late_errors)
                self.ipset.delete(self.set_name, *elem, ack=False)
            except OSError:
                return False
            return True
        self.stats["rule.del"] += 1
        lines = self.lines.pop(key, None)
        if lines is None:
            return False
        rules = [ListedRule(line, self.tag, self.queue_num) for line in lines]
        if self.deleter is not None:
            self.deleter.submit(*(r.delete_line() for r in rules))
            return True
        with self.ipt.lock():  # False if some were already gone (e.g. `usocket cleanup --all`)
            return self.ipt.delete(rules) == len(rules)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait for background deletions; True when none is pending."""
        return self.deleter.flush(timeout) if self.deleter is not None else True

    def remove_all(self) -> int:
        """Delete every rule of this owner and queue, then its set, then the chain if it is
        left empty. Returns the number of rules deleted."""
        self.refs.clear()
        if self.deleter is not None:
            self.deleter.stop(drain=False)  # the listing below finds those rules anyway
        with self.ipt.lock():
            rules = self.ipt.list_rules()
            if rules is None:
                n = 0
            else:
                mine = [r for r in rules if r.tag == self.tag and r.queue_num == self.queue_num]
                n = self.ipt.delete(mine)
                self.ipt.remove_chain_if_empty()
        self._drop_set()
        return n

    def __len__(self) -> int:
        return len(self.refs)


def cleanup_sets(netns: str | None = None, everything: bool = False) -> int:
    """Destroy usocket sets of dead owners (every usocket set with ``everything``) in ``netns``.

    A set still used by a rule is kept (the kernel refuses). Returns the number destroyed;
    0 when the namespace has no ipset.
    """
    try:
        ips = Ipset(netns)
    except OSError:
        return 0
    n = 0
    with ips:
        try:
            names = ips.names()
        except OSError:
            return 0
        for name in names:
            if not name.startswith(SET_PREFIX):
                continue
            parsed = parse_set_name(name)
            if not everything and (parsed is None or owner_alive(parsed[0])):
                continue
            if destroy_set(ips, name, wait=0.2):
                n += 1
    return n


def cleanup(netns: str | None = None, everything: bool = False, iptables: Iptables | None = None,
            stats: dict[str, int] | None = None) -> int:
    """Remove usocket rules of dead owners (all usocket rules with ``everything``) in ``netns``,
    then their sets.

    Drops the chain and its jump when that leaves it empty. Returns the number of rules removed
    (``stats``, if given, gets ``rules`` and ``sets``).
    Backs ``usocket cleanup``; :meth:`Diverter.start` runs it (dead owners only).
    """
    ipt = iptables if iptables is not None else Iptables(netns)
    n = 0
    with ipt.lock():
        rules = ipt.list_rules()
        if rules is not None:
            if everything:
                doomed = rules
            else:
                doomed = [r for r in rules if r.tag is not None and parse_tag(r.tag) is not None
                          and not owner_alive(r.tag)]
            n = ipt.delete(doomed)
            ipt.remove_chain_if_empty()
    sets = cleanup_sets(netns, everything)
    if stats is not None:
        stats["rules"] = stats.get("rules", 0) + n
        stats["sets"] = stats.get("sets", 0) + sets
    return n


def measure(netns: str | None, local_ip: str = "198.18.255.1", n: int = 20) -> dict[str, float]:
    """Seconds per flow added and removed, averaged over ``n`` flows (for reports): ``add`` and
    ``remove`` on the per-rule path (UDP ports open to any remote), ``set_add`` and
    ``set_remove`` for connected flows (set members; equal to the rule path's figures when
    the namespace has no ipset)."""
    rules = FlowRules(local_ip, queue_num=65000, netns=netns, defer_removal=False)
    rules.start()
    remote = (ip_aton("198.18.255.2"), 80)
    try:
        out = {}
        for label, rem in (("", None), ("set_", remote)):
            t0 = time.perf_counter()
            for port in range(n):
                rules.add(17, 40000 + port, rem)
            t1 = time.perf_counter()
            for port in range(n):
                rules.remove(17, 40000 + port, rem)
            t2 = time.perf_counter()
            out[label + "add"], out[label + "remove"] = (t1 - t0) / n, (t2 - t1) / n
    finally:
        rules.remove_all()
    return out
