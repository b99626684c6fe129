"""Kernel diversion (shared mode): iptables NFQUEUE rules, the queue reader, port reservation.

Unit tests (no root) check rule text, owner tags and the netlink config message. Lab tests
(root) run a Diverter for the client namespace of a :class:`usocket.lab.Lab` and send from the
server namespace with kernel sockets. After every lab test no usocket rule may remain.
"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest

from usocket.divert import Diverter, KernelPortAllocator, cleanup, owner_alive, owner_tag
from usocket.divert.ipset import Ipset, IpsetError, element, fast_element
from usocket.divert.nfqueue import config_message
from usocket.divert.ports import ephemeral_range
from usocket.divert.rules import (
    FlowRules,
    Iptables,
    IptablesError,
    ListedRule,
    broadcast_match,
    flow_match,
    nfqueue_target,
    parse_set_name,
    parse_tag,
    process_start_time,
    set_name,
)
from usocket.netns import run_in_netns

ROOT = os.geteuid() == 0 or os.environ.get("CI") == "true"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 3.0  # seconds an expected event may take before the test fails


# -- unit ------------------------------------------------------------------------------------------
def test_flow_match_scopes_by_local_and_remote() -> None:
    assert flow_match(17, "10.0.0.1", 53, None) == ["-d", "10.0.0.1/32", "-p", "udp", "-m", "udp",
                                                   "--dport", "53"]
    assert flow_match(6, b"\x0a\x00\x00\x01", 4000, (b"\x0a\x00\x00\x02", 80)) == [
        "-s", "10.0.0.2/32", "-d", "10.0.0.1/32", "-p", "tcp", "-m", "tcp",
        "--sport", "80", "--dport", "4000"]
    with pytest.raises(ValueError):
        flow_match(1, "10.0.0.1", 1, None)
    with pytest.raises(ValueError):
        flow_match(6, "10.0.0.1", 0, None)


def test_broadcast_rule_only_for_udp_ports_open_to_any_remote() -> None:
    assert broadcast_match(17, 68) == ["-p", "udp", "-m", "addrtype", "--dst-type", "BROADCAST", "-m", "udp",
                                       "--dport", "68"]
    with pytest.raises(ValueError):
        broadcast_match(6, 80)
    fr = FlowRules("10.0.0.1", 7, tag="usocket:pid=1:start=2", iptables=Iptables(None), defer_removal=False)
    udp_any = fr.flow_rules(17, 5000, None)
    assert udp_any == [fr.rule_args(17, 5000, None), fr.broadcast_rule_args(17, 5000)]
    assert udp_any[1] == broadcast_match(17, 5000) + nfqueue_target(7, "usocket:pid=1:start=2")
    assert len(fr.flow_rules(17, 5000, (b"\x0a\0\0\x02", 53))) == 1  # connected: unicast only
    assert len(fr.flow_rules(6, 5000, None)) == 1  # TCP: no broadcasts
    fr.divert_broadcast = False
    assert len(fr.flow_rules(17, 5000, None)) == 1


class ListIptables(Iptables):
    """Applies batches to a list instead of the kernel."""

    def __init__(self) -> None:
        super().__init__(None)
        self.rules: list[str] = []
        self.batches = 0

    def restore(self, lines: list[str]) -> None:
        self.batches += 1
        for line in lines:
            if line.startswith("-A "):
                self.rules.append(line)
            else:
                self.rules.remove("-A" + line[2:])

    def ensure_chain(self) -> None:
        pass


class NoAddrtypeIptables(ListIptables):
    """Refuses any batch holding an addrtype rule, as a kernel without that match would."""

    def restore(self, lines: list[str]) -> None:
        if any("addrtype" in line for line in lines):
            raise IptablesError("iptables-restore: Couldn't load match `addrtype'")
        super().restore(lines)


def test_flow_rules_go_together_and_broadcast_is_given_up_without_addrtype() -> None:
    tag = "usocket:pid=1:start=2"
    ipt = ListIptables()
    fr = FlowRules("10.0.0.1", 7, tag=tag, iptables=ipt, defer_removal=False)
    fr.add(17, 5000, None)
    fr.add(17, 5000, None)
    assert len(ipt.rules) == 2 and ipt.batches == 1  # unicast + broadcast, in one batch
    assert fr.remove(17, 5000, None) and len(ipt.rules) == 2  # one user left
    assert fr.remove(17, 5000, None) and ipt.rules == [] and ipt.batches == 2  # both, in one batch
    assert not fr.remove(17, 5000, None)
    old = NoAddrtypeIptables()
    fr = FlowRules("10.0.0.1", 7, tag=tag, iptables=old, defer_removal=False)
    fr.add(17, 5000, None)
    assert len(old.rules) == 1 and "addrtype" not in old.rules[0]  # the flow itself is diverted
    assert not fr.divert_broadcast and isinstance(fr.broadcast_error, IptablesError)
    fr.add(17, 5001, None)
    assert len(old.rules) == 2
    assert fr.remove(17, 5000, None) and fr.remove(17, 5001, None) and old.rules == []


class NoIpset:
    """An ipset client for a kernel without ipset: every request fails."""

    def __init__(self, netns: str | None = None) -> None:
        raise IpsetError(errno.EPROTONOSUPPORT, "Protocol not supported")


class NoIpsetRules(FlowRules):
    ipset_class = NoIpset  # type: ignore[assignment]


class RulePathDiverter(Diverter):
    """A Diverter whose kernel has no ipset: connected flows fall back to one rule each."""

    rules_class = NoIpsetRules


def test_set_names_carry_the_owner_and_fit_ipset() -> None:
    tag = "usocket:pid=4194304:start=99999999999"
    name = set_name(tag, 65535)
    assert name.startswith("usocket-4194304-") and len(name) <= 31
    assert parse_set_name(name) == (tag, 65535)
    assert parse_set_name(set_name("usocket:pid=1:start=0", 0)) == ("usocket:pid=1:start=0", 0)
    assert parse_set_name("usocket-x") is None and parse_set_name("other-1-2-3") is None
    with pytest.raises(ValueError):
        set_name("not a tag", 1)


def test_the_one_pack_element_is_the_attribute_tree_byte_for_byte() -> None:
    """The per-connection element (one struct.pack) equals the generic builder's bytes, and those
    follow ip_set.h: DATA{IP{IPADDR_IPV4 ip}, PORT (big endian), PROTO}, padded to 4 bytes."""
    for ip, proto, port in [(b"\x0a\x00\x00\x02", 6, 40001), (b"\xff\xfe\xfd\xfc", 17, 1), (bytes(4), 6, 65535)]:
        elem = fast_element(ip, proto, port)
        assert elem == element(ip, proto, port)
        assert struct.unpack_from("=HH", elem) == (32, 7 | 0x8000)
        assert struct.unpack_from("=HHHH", elem, 4) == (12, 1 | 0x8000, 8, 1 | 0x4000) and elem[12:16] == ip
        assert struct.unpack_from("=HH", elem, 16) == (6, 4 | 0x4000) and struct.unpack_from("!H", elem, 20) == (port,)
        assert struct.unpack_from("=HHB", elem, 24) == (5, 7, proto)
    with pytest.raises(ValueError):
        fast_element(b"\x01\x02\x03", 6, 1)


def test_without_ipset_connected_flows_fall_back_to_rules() -> None:
    ipt = ListIptables()
    fr = NoIpsetRules("10.0.0.1", 7, tag="usocket:pid=1:start=2", iptables=ipt, defer_removal=False)
    remote = (b"\x0a\0\0\x02", 80)
    fr.add(6, 40000, remote)
    fr.add(6, 40001, remote)
    assert fr.path == "rules" and isinstance(fr.ipset_error, IpsetError)
    assert fr.stats["ipset.fallback"] == 1 and fr.stats["rule.add"] == 2  # tried once, not per flow
    assert ipt.rules == ["-A USOCKET " + " ".join(fr.rule_args(6, p, remote)) for p in (40000, 40001)]
    assert fr.remove(6, 40000, remote) and fr.remove(6, 40001, remote) and ipt.rules == []
    assert not fr.remove(6, 40001, remote)


def test_owner_tag_names_this_process_and_detects_dead_and_zombies() -> None:
    tag = owner_tag()
    assert parse_tag(tag) == (os.getpid(), process_start_time(os.getpid()))
    assert owner_alive(tag)
    pid, start = parse_tag(tag)  # type: ignore[misc]
    assert not owner_alive(f"usocket:pid={pid}:start={start + 1}")  # same pid, other process
    assert parse_tag("usl-lab-loss") is None and not owner_alive("usocket:pid=x")
    child = os.fork()
    if child == 0:
        os._exit(0)
    ctag = owner_tag(child) if process_start_time(child) is not None else None
    os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    if ctag is not None:
        assert not owner_alive(ctag)
    os.waitpid(child, 0)
    assert process_start_time(child) is None


def test_listed_rule_parses_iptables_s_output() -> None:
    line = ('-A USOCKET -d 10.0.0.1/32 -p udp -m udp --dport 5000 -m comment --comment '
            '"usocket:pid=12:start=34" -j NFQUEUE --queue-num 7 --queue-bypass')
    r = ListedRule.parse(line)
    assert (r.tag, r.queue_num) == ("usocket:pid=12:start=34", 7)
    assert r.delete_line().startswith("-D USOCKET -d 10.0.0.1/32")


def test_config_message_layout() -> None:
    msg = config_message(1234, 65535, 8192, flags=1, mask=1)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) and kind == 0x0302 and flags == 1 | 4 and pid == 0
    assert struct.unpack_from("!BBH", msg, 16) == (0, 0, 1234)
    # NFQA_CFG_PARAMS: len 9, type 2, copy_range 65535, mode COPY_PACKET (2), padded to 12
    assert struct.unpack_from("=HH", msg, 20) == (9, 2)
    assert struct.unpack_from("!IB", msg, 24) == (65535, 2)
    assert struct.unpack_from("=HH", msg, 32) == (8, 3)
    assert struct.unpack_from("!I", msg, 36) == (8192,)
    assert len(msg) == 16 + 4 + 12 + 8 + 8 + 8


def test_ephemeral_range_is_above_the_kernels() -> None:
    assert ephemeral_range((32768, 60999)) == (61000, 65535)
    assert ephemeral_range((1024, 65535)) is None


# -- lab helpers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab() -> Iterator[object]:
    if not ROOT:
        pytest.skip("needs root (network namespaces)")
    from usocket.lab import Lab
    lab = Lab(servers=False).build()
    try:
        yield lab
    finally:
        problems = lab.close_and_audit()
        assert not problems, problems


@pytest.fixture
def ns(lab: object) -> Iterator[object]:
    """The lab, checked after the test: no usocket rule or chain may remain in its namespaces."""
    yield lab
    left = {n: lab.foreign_rules(n) for n in (lab.client_ns, lab.server_ns)}  # type: ignore[attr-defined]
    for n, rules in left.items():
        if rules:
            cleanup(n, everything=True)
    assert left == {lab.client_ns: [], lab.server_ns: []}  # type: ignore[attr-defined]


def usocket_rules(netns: str) -> list[ListedRule]:
    return Iptables(netns).list_rules() or []


def snmp(netns: str) -> dict[str, int]:
    """``/proc/net/snmp`` of ``netns`` as {"Udp.NoPorts": n, ...}."""
    text = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], check=True,
                          capture_output=True, text=True).stdout.splitlines()
    out: dict[str, int] = {}
    for head, vals in zip(text[::2], text[1::2], strict=True):
        proto, *names = head.split()
        for name, val in zip(names, vals.split()[1:], strict=True):
            out[proto.rstrip(":") + "." + name] = int(val)
    return out


def udp_socket(netns: str, bind: tuple[str, int] | None = None) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if bind:
            s.bind(bind)
        return s
    return run_in_netns(netns, make)


def read_one(div: Diverter, handler: Callable[[bytes], bool]) -> list[bytes]:
    """Wait (select) until the queue has something and read it through ``handler``."""
    got: list[bytes] = []

    def h(p: bytes, csum_ok: bool) -> bool:
        got.append(p)
        return handler(p)

    while not got:
        r, _, _ = select.select([div], [], [], WAIT)
        assert r, "nothing arrived on the queue"
        div.read(h)
    return got


# -- rules -----------------------------------------------------------------------------------------
@pytest.mark.lab
def test_rules_scoped_tagged_refcounted_and_removed(ns: object) -> None:
    """The per-rule path (every flow when the kernel has no ipset; listeners always)."""
    lab = ns
    c, cip, sip = lab.client_ns, lab.client_ip, lab.server_ip  # type: ignore[attr-defined]
    with RulePathDiverter(cip, c, handle_signals=False) as div:
        rules = usocket_rules(c)
        assert rules == []
        assert lab.iptables_rules(c)[0] == "-A INPUT -j USOCKET"  # type: ignore[attr-defined]
        div.flow_opened(17, 5000, None)
        div.flow_opened(6, 40001, (socket.inet_aton(sip), 80))
        div.flow_opened(17, 5000, None)  # same flow again: refcounted, one set of rules
        rules = usocket_rules(c)
        assert len(rules) == 3  # UDP 5000: unicast + broadcast; TCP: unicast
        assert all(r.tag == owner_tag() and r.queue_num == div.queue_num for r in rules)
        assert all(r.line.endswith(f"-j NFQUEUE --queue-num {div.queue_num} --queue-bypass") for r in rules)
        udp, bcast = [r.line for r in rules if "-p udp" in r.line]
        assert f"-d {cip}/32" in udp and "--dport 5000" in udp and "-s " not in udp and "--sport" not in udp
        assert "-m addrtype --dst-type BROADCAST" in bcast and "--dport 5000" in bcast and "-d " not in bcast
        tcp = [r.line for r in rules if "-p tcp" in r.line][0]
        assert f"-s {sip}/32 -d {cip}/32" in tcp and "--sport 80 --dport 40001" in tcp
        assert not any("DROP" in r for r in lab.iptables_rules(c))  # type: ignore[attr-defined]
        div.flow_closed(17, 5000, None)
        assert div.flush_rules()
        assert len(usocket_rules(c)) == 3  # one user left
        div.flow_closed(17, 5000, None)
        div.flow_closed(6, 40001, (socket.inet_aton(sip), 80))
        assert div.flush_rules()
        assert usocket_rules(c) == []
        div.flow_opened(6, 40002, None)
        div.flow_closed(6, 40002, None)
        div.flow_opened(6, 40002, None)  # re-opened while its deletion may be pending
        assert div.flush_rules()
        assert [r.line.count("--dport 40002") for r in usocket_rules(c)] == [1]
        div.flow_opened(17, 5001, None)
        div.flow_opened(17, 5003, None)
        div.flow_closed(17, 5003, None)  # both of its rules go, in one batch
        assert div.flush_rules()
        assert sorted("BROADCAST" in r.line for r in usocket_rules(c) if "--dport 5001" in r.line) == [False, True]
        assert not any("--dport 5003" in r.line for r in usocket_rules(c))
        assert div.rules is not None and div.rules.path == "rules" and div.rules.stats["ipset.fallback"] == 1
        assert ipsets(c) == []
    assert div.closed
    assert Iptables(c).list_rules() is None  # chain gone
    assert "-A INPUT -j USOCKET" not in lab.iptables_rules(c)  # type: ignore[attr-defined]
    with pytest.raises(OSError):
        div.flow_opened(17, 5002, None)
    div.close()  # idempotent


@pytest.mark.lab
def test_two_diverters_in_one_namespace_keep_their_own_rules(ns: object) -> None:
    c, cip = ns.client_ns, ns.client_ip  # type: ignore[attr-defined]
    a = Diverter(cip, c, handle_signals=False).start()
    b = Diverter(cip, c, handle_signals=False).start()
    try:
        assert a.queue_num != b.queue_num
        a.flow_opened(17, 6000, None)
        b.flow_opened(17, 6001, None)
        a.close()
        rules = usocket_rules(c)
        assert [r.queue_num for r in rules] == [b.queue_num] * 2 and all("--dport 6001" in r.line for r in rules)
        assert cleanup(c) == 0  # the owner is alive: nothing to clean
        assert len(usocket_rules(c)) == 2
    finally:
        a.close()
        b.close()


def ipsets(netns: str) -> list[str]:
    with Ipset(netns) as ips:
        return [n for n in ips.names() if n.startswith("usocket")]


def members(netns: str, name: str) -> list[tuple[str, int, int]]:
    with Ipset(netns) as ips:
        return [(socket.inet_ntoa(ip), proto, port) for ip, proto, port in ips.members(name)]


@pytest.mark.lab
def test_connected_flows_are_members_of_the_owners_set(ns: object) -> None:
    """Connected flows: one set per owner, one rule for it, one member per (remote IP,
    proto:local port) added and deleted at once; listeners keep their own rules; the set
    goes at close; packets of members reach the queue, others the kernel."""
    lab = ns
    c, s, cip, sip = lab.client_ns, lab.server_ns, lab.client_ip, lab.server_ip  # type: ignore[attr-defined]
    rip = socket.inet_aton(sip)
    tx = udp_socket(s, (sip, 5300))
    kernel = udp_socket(c, (cip, 40003))  # a kernel socket on a port that is no member
    try:
        with Diverter(cip, c, handle_signals=False) as div:
            assert ipsets(c) == []  # created at the first connected flow
            div.flow_opened(6, 8000, None)  # a listener: its own rule
            div.flow_opened(6, 40001, (rip, 80))
            div.flow_opened(6, 40001, (rip, 81))  # same (remote IP, local port): one member
            div.flow_opened(17, 40002, (rip, 5300))
            assert div.rules is not None and div.rules.path == "ipset"
            name = set_name(owner_tag(), div.queue_num)
            assert ipsets(c) == [name]
            assert members(c, name) == [(sip, 6, 40001), (sip, 17, 40002)]
            rules = usocket_rules(c)
            assert len(rules) == 2 and all(r.tag == owner_tag() and r.queue_num == div.queue_num for r in rules)
            [set_rule] = [r.line for r in rules if "--match-set" in r.line]
            assert f"-d {cip}/32 -m set --match-set {name} src,dst" in set_rule
            assert set_rule.endswith(f"-j NFQUEUE --queue-num {div.queue_num} --queue-bypass")
            tx.sendto(b"member", (cip, 40002))
            [pkt] = read_one(div, lambda p: True)
            assert pkt[28:] == b"member"
            tx.sendto(b"kernel's", (cip, 40003))  # not a member: the kernel gets it, unqueued
            kernel.settimeout(WAIT)
            assert kernel.recv(100) == b"kernel's" and div.c["rx"] == 1
            div.flow_closed(6, 40001, (rip, 80))
            assert members(c, name) == [(sip, 6, 40001), (sip, 17, 40002)]  # one user left
            div.flow_closed(6, 40001, (rip, 81))
            div.flow_closed(17, 40002, (rip, 5300))
            assert members(c, name) == []  # at once: no background deletion for members
            tx.connect((cip, 40002))  # no member, no kernel socket: ICMP port unreachable
            tx.send(b"gone")
            tx.settimeout(WAIT)
            with pytest.raises(ConnectionRefusedError):
                tx.recv(100)
            assert div.c["rx"] == 1
            assert div.rules.stats["ipset.add"] == 2 and div.rules.stats["ipset.del"] == 2
            assert div.rules.stats["rule.add"] == 1  # the listener only
        assert ipsets(c) == [] and Iptables(c).list_rules() is None
    finally:
        tx.close()
        kernel.close()


@pytest.mark.lab
def test_a_set_removed_by_cleanup_all_comes_back_with_the_next_flow(ns: object) -> None:
    """``usocket cleanup --all`` removes a live owner's set too; the owner's next connected
    flow re-creates the set and its rule, with the members of the flows still open."""
    c, cip, sip = ns.client_ns, ns.client_ip, ns.server_ip  # type: ignore[attr-defined]
    rip = socket.inet_aton(sip)
    with Diverter(cip, c, handle_signals=False) as div:
        div.flow_opened(6, 41001, (rip, 80))
        name = set_name(owner_tag(), div.queue_num)
        stats: dict[str, int] = {}
        assert cleanup(c, everything=True, stats=stats) == 1 and stats == {"rules": 1, "sets": 1}
        assert ipsets(c) == [] and usocket_rules(c) == []
        div.flow_opened(6, 41002, (rip, 80))
        assert ipsets(c) == [name] and len(usocket_rules(c)) == 1
        assert members(c, name) == [(sip, 6, 41001), (sip, 6, 41002)]
        div.flow_closed(6, 41001, (rip, 80))
        div.flow_closed(6, 41002, (rip, 80))
        assert members(c, name) == []
    assert ipsets(c) == [] and Iptables(c).list_rules() is None


@pytest.mark.lab
def test_a_delete_without_ack_is_applied_in_the_send_and_a_refusal_is_counted_later(ns: object) -> None:
    c = ns.client_ns  # type: ignore[attr-defined]
    name = f"usl-late-{os.getpid()}"
    with Ipset(c) as ips:
        ips.create(name)
        try:
            ips.add(name, b"\x0a\x00\x00\x02", 6, 40001)
            ips.add(name, b"\x0a\x00\x00\x02", 17, 40002)
            ips.delete(name, b"\x0a\x00\x00\x02", 6, 40001, ack=False)
            assert ips.members(name) == [(b"\x0a\x00\x00\x02", 17, 40002)]  # gone before any read
            ips.delete(name + "x", b"\x0a\x00\x00\x02", 6, 40001, ack=False)  # no such set: refused
            assert ips.late_errors == 0  # not read yet
            ips.add(name, b"\x0a\x00\x00\x03", 6, 40003)  # its ACK is found behind the refusal
            assert ips.late_errors == 1
            with pytest.raises(IpsetError):
                ips.add(name + "x", b"\x0a\x00\x00\x02", 6, 40001)  # an add still reports at once
            assert ips.members(name) == [(b"\x0a\x00\x00\x02", 17, 40002), (b"\x0a\x00\x00\x03", 6, 40003)]
        finally:
            ips.destroy(name)


# -- the queue -------------------------------------------------------------------------------------
@pytest.mark.lab
def test_udp_diverted_reaches_read_and_kernel_stays_silent(ns: object) -> None:
    lab = ns
    c, s, cip = lab.client_ns, lab.server_ns, lab.client_ip  # type: ignore[attr-defined]
    kernel_p1 = udp_socket(c, (cip, 7001))  # a kernel socket on a port the stack owns
    kernel_p2 = udp_socket(c, (cip, 7002))
    tx = udp_socket(s)
    probe_p3 = udp_socket(s)
    probe_p4 = udp_socket(s)
    try:
        with Diverter(cip, c, handle_signals=False) as div:
            for port in (7001, 7002, 7003):
                div.flow_opened(17, port, None)
            before = snmp(c)
            big = os.urandom(65000)  # 45 fragments on the wire, reassembled before INPUT
            tx.sendto(big, (cip, 7001))
            [pkt] = read_one(div, lambda p: True)
            assert len(pkt) == 20 + 8 + len(big) and pkt[9] == 17 and pkt[28:] == big
            assert struct.unpack_from("!H", pkt, 22)[0] == 7001
            tx.sendto(b"declined", (cip, 7002))
            read_one(div, lambda p: False)
            kernel_p2.settimeout(WAIT)
            assert kernel_p2.recv(100) == b"declined"  # ACCEPT: the kernel got it
            kernel_p1.setblocking(False)
            with pytest.raises(BlockingIOError):  # DROP: given before the ACCEPT, never delivered
                kernel_p1.recv(65536)
            # no kernel socket on 7003: diverted and owned, so no ICMP port unreachable ...
            probe_p3.connect((cip, 7003))
            probe_p3.send(b"ours")
            read_one(div, lambda p: True)
            # ... while 7004 (no rule) gets one: the oracle works
            probe_p4.connect((cip, 7004))
            probe_p4.send(b"kernel")
            probe_p4.settimeout(WAIT)
            with pytest.raises(ConnectionRefusedError):
                probe_p4.recv(100)
            after = snmp(c)
            assert after["Udp.NoPorts"] - before["Udp.NoPorts"] == 1
            assert after["Icmp.OutDestUnreachs"] - before["Icmp.OutDestUnreachs"] == 1
            probe_p3.setblocking(False)
            with pytest.raises(BlockingIOError):
                probe_p3.recv(100)
            assert (div.c["rx"], div.c["dropped"], div.c["accepted"], div.c["errors"]) == (3, 2, 1, 0)
    finally:
        for sk in (kernel_p1, kernel_p2, tx, probe_p3, probe_p4):
            sk.close()


@pytest.mark.lab
def test_tcp_syn_diverted_no_rst_and_failing_handler_fails_open(ns: object) -> None:
    lab = ns
    c, s, cip = lab.client_ns, lab.server_ns, lab.client_ip  # type: ignore[attr-defined]

    def connector() -> socket.socket:
        sk = socket.socket()
        sk.setblocking(False)
        return sk

    a, b = run_in_netns(s, connector), run_in_netns(s, connector)
    try:
        with Diverter(cip, c, handle_signals=False) as div:
            div.flow_opened(6, 8001, None)
            div.flow_opened(6, 8002, None)
            before = snmp(c)
            a.connect_ex((cip, 8001))
            [syn] = read_one(div, lambda p: True)
            assert syn[9] == 6 and struct.unpack_from("!HH", syn, 20) == (a.getsockname()[1], 8001)
            assert syn[20 + 13] & 0x02  # SYN

            def broken(p: bytes) -> bool:
                raise ValueError("stack bug")

            b.connect_ex((cip, 8002))
            read_one(div, broken)  # error: ACCEPT, the kernel answers RST
            _, w, _ = select.select([], [b], [], WAIT)
            assert w and b.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
            assert snmp(c)["Tcp.OutRsts"] - before["Tcp.OutRsts"] == 1  # for 8002 only
            assert a.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # still connecting
            assert div.c["errors"] == 1 and isinstance(div.last_error, ValueError)
            assert div.c["accepted"] == 1 and div.c["dropped"] == 1
    finally:
        a.close()
        b.close()


@pytest.mark.lab
def test_read_respects_max_packets(ns: object) -> None:
    c, s, cip = ns.client_ns, ns.server_ns, ns.client_ip  # type: ignore[attr-defined]
    tx = udp_socket(s)
    try:
        with Diverter(cip, c, handle_signals=False) as div:
            div.flow_opened(17, 7100, None)
            for i in range(5):
                tx.sendto(bytes([i]), (cip, 7100))
            got: list[bytes] = []
            while len(got) < 5:
                r, _, _ = select.select([div], [], [], WAIT)
                assert r
                assert div.read(lambda p, _: got.append(p) or True, max_packets=2) <= 2
            assert [p[28] for p in got] == [0, 1, 2, 3, 4]
    finally:
        tx.close()


def queue_total(netns: str, queue_num: int) -> int:
    """Packets waiting for a verdict in queue ``queue_num`` (/proc/net/netfilter/nfnetlink_queue)."""
    text = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/netfilter/nfnetlink_queue"],
                          check=True, capture_output=True, text=True).stdout
    for line in text.splitlines():
        fields = line.split()
        if int(fields[0]) == queue_num:
            return int(fields[2])
    return 0


def wait_queued(netns: str, queue_num: int, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while queue_total(netns, queue_num) < n:  # no event says "the kernel queued n": poll
        assert time.monotonic() < deadline, f"{queue_total(netns, queue_num)} of {n} packets queued"
        time.sleep(0.01)


@pytest.mark.lab
@pytest.mark.parametrize("ours_port", [7200, 7201])
def test_one_verdict_send_per_read_and_exceptions_keep_order(ns: object, ours_port: int) -> None:
    """Six queued datagrams read in one call get their verdicts in one send: a batch verdict for
    the majority plus single verdicts for the rest. The kernel's datagrams reach its socket in
    their order, the stack's never do, and nothing stays queued. 7200 gets 3 of 6 datagrams
    (a tie: the batch drops), 7201 2 of 6 (the batch accepts)."""
    c, s, cip = ns.client_ns, ns.server_ns, ns.client_ip  # type: ignore[attr-defined]
    tx = udp_socket(s)
    kernel = {port: udp_socket(c, (cip, port)) for port in (7200, 7201)}
    order = [7201, 7200, 7201, 7200, 7200, 7200 if ours_port == 7200 else 7201]
    try:
        with Diverter(cip, c, handle_signals=False) as div:
            assert div.queue_num is not None
            div.flow_opened(17, 7200, None)
            div.flow_opened(17, 7201, None)
            for i, port in enumerate(order):
                tx.sendto(bytes([i]), (cip, port))
            wait_queued(c, div.queue_num, len(order))
            seen: list[tuple[int, int, bool]] = []

            def handler(p: bytes, csum_ok: bool) -> bool:
                port = struct.unpack_from("!H", p, 22)[0]
                seen.append((p[28], port, csum_ok))
                return port == ours_port

            assert div.read(handler) == len(order)
            assert [(i, port) for i, port, _ in seen] == list(enumerate(order))
            assert div.c["verdict_sends"] == 1 and div.c["reads"] == len(order)
            assert queue_total(c, div.queue_num) == 0
            mine = [i for i, port in enumerate(order) if port == ours_port]
            assert div.c["dropped"] == len(mine) and div.c["accepted"] == len(order) - len(mine)
            other = 7201 if ours_port == 7200 else 7200
            kernel[other].settimeout(WAIT)
            assert [kernel[other].recv(10)[0] for _ in range(len(order) - len(mine))] == [
                i for i, port in enumerate(order) if port == other]
            kernel[ours_port].setblocking(False)
            with pytest.raises(BlockingIOError):
                kernel[ours_port].recv(10)
            # veth senders offload the UDP checksum: the queue hands it over unfilled, and says so
            assert all(ok for _, _, ok in seen) and div.c["csum_not_ready"] == len(order)
            assert div.c["errors"] == div.c["nl_errors"] == 0
    finally:
        tx.close()
        for sk in kernel.values():
            sk.close()


@pytest.mark.lab
def test_udp_gso_super_packet_is_dropped_not_handed_over_as_one_datagram(ns: object) -> None:
    """A kernel sender with UDP_SEGMENT: three datagrams cross the veth as one GSO packet and the
    queue (asked for GSO packets) hands it over whole, without the datagram bounds. Handing it
    to the stack would make one 2500-byte datagram of three; it is dropped and counted instead."""
    c, s, cip = ns.client_ns, ns.server_ns, ns.client_ip  # type: ignore[attr-defined]
    tx = udp_socket(s)
    try:
        with Diverter(cip, c, handle_signals=False) as div:
            assert div.queue_num is not None
            div.flow_opened(17, 7300, None)
            tx.setsockopt(socket.IPPROTO_UDP, 103, 1000)  # UDP_SEGMENT: 1000-byte datagrams
            tx.sendto(b"a" * 1000 + b"b" * 1000 + b"c" * 500, (cip, 7300))
            wait_queued(c, div.queue_num, 1)
            got: list[bytes] = []
            assert div.read(lambda p, _: got.append(p) or True) == 1
            assert got == [] and div.c["gso"] == 1 and div.c["gso_unsupported"] == 1 and div.c["dropped"] == 1
            assert queue_total(c, div.queue_num) == 0
    finally:
        tx.close()


@pytest.mark.lab
def test_shared_mode_stack_gets_broadcasts_to_its_bound_port(ns: object) -> None:
    """Datagrams to 255.255.255.255 and to the subnet broadcast reach a wildcard-bound stack
    endpoint in shared mode (as in own mode): the port's broadcast rule diverts them."""
    from usocket.facade.sockets import socket_on
    from usocket.runtime import Runtime

    lab = ns
    c, s, sip = lab.client_ns, lab.server_ns, lab.server_ip  # type: ignore[attr-defined]
    subnet_bcast = lab.client_ip.rsplit(".", 1)[0] + ".255"  # type: ignore[attr-defined]
    assert lab.prefix_len == 24  # type: ignore[attr-defined]
    tx = udp_socket(s, (sip, 0))  # bound: 255.255.255.255 leaves by the address's interface
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    try:
        with (Runtime(lab.stack_config("shared")) as rt,  # type: ignore[attr-defined]
              socket_on(rt, socket.AF_INET, socket.SOCK_DGRAM) as sock):
            sock.bind(("", 0))
            port = sock.getsockname()[1]
            assert any("BROADCAST" in r.line and f"--dport {port}" in r.line for r in usocket_rules(c))
            sock.settimeout(WAIT)
            got = []
            for dst in ("255.255.255.255", subnet_bcast, lab.client_ip):  # type: ignore[attr-defined]
                tx.sendto(dst.encode(), (dst, port))
                got.append(sock.recvfrom(100))
            assert got == [(d.encode(), (sip, tx.getsockname()[1]))
                           for d in ("255.255.255.255", subnet_bcast, lab.client_ip)]  # type: ignore[attr-defined]
            # read on the stack thread: the datagram reaches the socket while its packet's
            # verdict is still being counted, a call runs after that pass's packets are done
            counters = rt.call(rt.stack.counters.snapshot)  # type: ignore[union-attr]
            divert = counters["divert"]
            assert divert.get("dropped", 0) == 3 and divert.get("accepted", 0) == 0, divert  # the kernel got none
            assert counters["udp"].get("rx.delivered") == 3
        assert usocket_rules(c) == []
    finally:
        tx.close()


# -- lifecycle across processes --------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    from usocket.divert import Diverter, owner_tag
    d = Diverter(sys.argv[1], sys.argv[2]).start()
    d.flow_opened(17, int(sys.argv[3]), None)
    d.flow_opened(6, int(sys.argv[3]), (bytes([198, 18, 255, 2]), 80))  # a member of its set
    print(owner_tag(), flush=True)
    sys.stdin.read()
""")


def start_child(netns: str, ip: str, port: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, ip, netns, str(port)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    tag = proc.stdout.readline().strip()
    assert tag.startswith("usocket:pid="), proc.wait()
    return proc, tag


def tags(netns: str) -> list[str | None]:
    return [r.tag for r in usocket_rules(netns)]


def owners_sets(netns: str) -> list[str | None]:
    """The owner tag of each usocket set in ``netns``."""
    return [(parse_set_name(n) or (None, 0))[0] for n in ipsets(netns)]


@pytest.mark.lab
def test_sigkill_leaves_rules_that_cleanup_and_start_remove_sigterm_sigint_remove_own(ns: object) -> None:
    c, cip = ns.client_ns, ns.client_ip  # type: ignore[attr-defined]
    killed, ktag = start_child(c, cip, 9001)
    live, ltag = start_child(c, cip, 9002)
    procs = [killed, live]
    try:
        # unicast + broadcast + the set's rule, and the set
        assert sorted(tags(c)) == sorted([ktag, ltag] * 3)  # type: ignore[type-var]
        assert sorted(owners_sets(c)) == sorted([ktag, ltag])
        killed.kill()
        killed.wait()
        assert ktag in tags(c) and ktag in owners_sets(c)  # SIGKILL: nothing ran, all stays (harmless: --queue-bypass)
        assert cleanup(c) == 3
        assert tags(c) == [ltag] * 3  # the live owner's rules stay ...
        assert owners_sets(c) == [ltag]  # ... and its set; the dead owner's set went
        live.send_signal(signal.SIGTERM)
        assert live.wait(WAIT * 3) == -signal.SIGTERM  # still dies of SIGTERM ...
        assert Iptables(c).list_rules() is None  # ... after removing its rule, chain and jump
        assert ipsets(c) == []  # and its set
        interrupted, itag = start_child(c, cip, 9004)
        procs.append(interrupted)
        interrupted.send_signal(signal.SIGINT)  # KeyboardInterrupt, then atexit
        assert interrupted.wait(WAIT * 3) == -signal.SIGINT
        assert Iptables(c).list_rules() is None
        again, atag = start_child(c, cip, 9003)
        procs.append(again)
        again.kill()
        again.wait()
        assert tags(c) == [atag] * 3 and owners_sets(c) == [atag]
        with Diverter(cip, c, handle_signals=False):  # start() removes dead owners' rules and sets
            assert tags(c) == [] and ipsets(c) == []
        cli, ctag = start_child(c, cip, 9005)
        procs.append(cli)
        cli.kill()
        cli.wait()
        assert owners_sets(c) == [ctag]
        out = subprocess.run([sys.executable, "-m", "usocket", "cleanup", "--netns", c], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        assert "removed 3 rule(s) and 1 ipset(s)" in out, out
        assert tags(c) == [] and ipsets(c) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
        cleanup(c)


# -- port reservation ------------------------------------------------------------------------------
@pytest.mark.lab
def test_port_reservation(ns: object) -> None:
    lab = ns
    c, cip = lab.client_ns, lab.client_ip  # type: ignore[attr-defined]
    lab.run(c, ["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 50000"])  # type: ignore[attr-defined]
    alloc = KernelPortAllocator(netns=c, local_ip=cip)
    kernel: list[socket.socket] = []

    def kbind(kind: int, port: int, addr: str = cip) -> socket.socket:
        def make() -> socket.socket:
            sk = socket.socket(socket.AF_INET, kind)
            try:
                sk.bind((addr, port))
            except OSError:
                sk.close()
                raise
            return sk
        sk = run_in_netns(c, make)
        kernel.append(sk)
        return sk

    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert soft == hard or hard == resource.RLIM_INFINITY
        assert alloc.kernel_range == (40000, 50000) and (alloc.lo, alloc.hi) == (50001, 65535)
        for proto, kind in ((17, socket.SOCK_DGRAM), (6, socket.SOCK_STREAM)):
            port = alloc.allocate(proto, lambda p: False)
            assert 50001 <= port <= 65535 and alloc.is_held(proto, port)
            for addr in (cip, "0.0.0.0"):  # the kernel can no longer take it
                with pytest.raises(OSError) as ei:
                    kbind(kind, port, addr)
                assert ei.value.errno == errno.EADDRINUSE
            assert alloc.claim(proto, port, explicit=True)  # the stack again: refcounted
            alloc.release(proto, port)
            assert alloc.is_held(proto, port)
            alloc.release(proto, port)
            assert not alloc.is_held(proto, port)
            kbind(kind, port).close()  # released: the kernel may use it now
            kbind(kind, 12345)  # a kernel program holds 12345
            with pytest.raises(OSError) as ei:
                alloc.claim(proto, 12345, explicit=True)
            assert ei.value.errno == errno.EADDRINUSE
            assert alloc.claim(proto, 12345, explicit=False) is False
        # primary range exhausted (both its ports held by the kernel): fall back to the kernel's range
        small = KernelPortAllocator(netns=c, local_ip=cip, port_range=(60000, 60001))
        kbind(socket.SOCK_DGRAM, 60000)
        kbind(socket.SOCK_DGRAM, 60001)
        port = small.allocate(17, lambda p: p == 40000)
        assert 40000 < port <= 50000 and small.is_held(17, port)
        small.close()
        assert not small.held and not small.spare
        # sockets are made in the namespace a pool at a time and bound from this thread; a
        # failed bind returns its socket to the pool
        spare = len(alloc.spare[6])
        held = [alloc.allocate(6, lambda p: alloc.is_held(6, p)) for _ in range(spare)]
        assert not alloc.spare[6] and all(alloc.is_held(6, p) for p in held)
        with pytest.raises(OSError):  # a new pool, and its first socket back in it
            alloc.claim(6, 12345, explicit=True)
        assert len(alloc.spare[6]) == alloc.pool_size
        for p in held:
            alloc.release(6, p)
    finally:
        alloc.close()
        for sk in kernel:
            sk.close()
        lab.run(c, ["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=32768 60999"])  # type: ignore[attr-defined]
