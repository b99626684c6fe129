"""The hacking API (usocket.hack, issue 7) over the in-memory network and a virtual clock.

Two whole stacks (A 10.9.0.1, B 10.9.0.2) on a :class:`MemoryNetwork`: hand-built stacks,
custom IP protocols, callback applications, per-connection classes (fixed ISN, OS
personalities), packet hooks at every boundary and fragmentation controls. What goes on the
wire is checked by parsing it with the project's own codecs (and scapy where a hook asks for it).
The same APIs on the socket facade run on a runtime over an in-memory link pair (no root).
"""
from __future__ import annotations

import random
import struct
import timeit
from typing import Any

import pytest

from usocket import hack
from usocket.config import OWN, StackConfig
from usocket.link.memory import MemoryNetwork
from usocket.proto.arp import ArpLayer
from usocket.proto.ethernet import EthernetLayer
from usocket.proto.icmp import IcmpLayer
from usocket.proto.ipv4 import IPv4Layer
from usocket.proto.tcp.connection import TcpConnection
from usocket.proto.tcp.layer import TcpLayer
from usocket.proto.udp import UdpEndpoint, UdpLayer
from usocket.stack import Stack
from usocket.wire.addr import ip_aton, mac_aton
from usocket.wire.ipv4 import parse_ipv4
from usocket.wire.tcp import ACK, SYN, parse_tcp

A_IP, B_IP = "10.9.0.1", "10.9.0.2"


@pytest.fixture(autouse=True)
def unhook() -> Any:
    """Every test leaves the layer classes as they were (hooks patch class methods)."""
    from usocket.hack.hooks import _BY_STACK, _ClassPatch

    yield
    for h in list(_BY_STACK.values()):
        h.clear()
    assert _ClassPatch.active == {}


def config(n: int) -> StackConfig:
    return StackConfig(iface=f"h{n}", mac=mac_aton(f"02:00:00:00:0{n}:01"), address=ip_aton(f"10.9.0.{n}"),
                       mode=OWN)


def pair(b_stack: Stack | None = None) -> tuple[MemoryNetwork, Stack, Stack]:
    net = MemoryNetwork(seed=7, latency=0.0005)
    a = Stack(config(1), rng=random.Random(1))
    b = b_stack if b_stack is not None else Stack(config(2), rng=random.Random(2))
    net.attach(a, name="A")
    net.attach(b, name="B")
    return net, a, b


class Echo(UdpEndpoint):
    def on_datagram(self, data: bytes, src_ip: bytes, src_port: int) -> None:
        self.layer.sendto(self, data, src_ip, src_port)


def udp_roundtrip(net: MemoryNetwork, a: Stack, payload: bytes, port: int = 7) -> bytes | None:
    ep = a.udp.open()
    a.udp.sendto(ep, payload, ip_aton(B_IP), port)
    net.run_until(lambda: ep.queue, 2.0)
    item = ep.pop()
    a.udp.close(ep)
    return None if item is None else item[0]


def segments(log: list[tuple[bytes, bytes, bytes]]) -> list[Any]:
    return [parse_tcp(data, src, dst) for data, src, dst in log]


# -- stack crafting ------------------------------------------------------------------------------
class CountingIPv4(IPv4Layer):
    received = 0

    def receive(self, packet: Any, csum_ok: bool) -> None:
        CountingIPv4.received += 1
        super().receive(packet, csum_ok)


def test_a_hand_built_stack_without_tcp_serves_udp_and_uses_its_own_layer_classes() -> None:
    b = Stack.build(config(2), [EthernetLayer, ArpLayer, CountingIPv4, IcmpLayer, UdpLayer], rng=random.Random(2))
    assert isinstance(b.ipv4, CountingIPv4) and b.tcp is None and b.dns is None
    assert b.transports == {17: b.udp}
    net, a, _ = pair(b)
    echo = b.udp.open(Echo)
    b.udp.bind(echo, b"\0\0\0\0", 7)
    CountingIPv4.received = 0
    assert udp_roundtrip(net, a, b"crafted") == b"crafted"
    assert CountingIPv4.received >= 1
    # TCP to a stack without TCP: protocol unreachable (own mode), so A's connect fails at once
    conn = a.tcp.open()
    a.tcp.connect(conn, ip_aton(B_IP), 80)
    net.run_until(lambda: conn.state.name == "CLOSED", 2.0)
    assert conn.state.name == "CLOSED" and b.counters.get("ipv4", "drop.no_protocol") >= 1
    b.shutdown()


def test_build_takes_factories_and_rejects_incomplete_stacks() -> None:
    made: list[str] = []

    def tcp_factory(stack: Stack) -> TcpLayer:
        made.append("tcp")
        return TcpLayer(stack)

    st = Stack.build(config(3), [UdpLayer, IcmpLayer, IPv4Layer, ArpLayer, EthernetLayer, ("tcp", tcp_factory)])
    assert made == ["tcp"] and st.transports == {17: st.udp, 6: st.tcp}
    with pytest.raises(ValueError, match="needs the layers"):
        Stack.build(config(3), [EthernetLayer, ArpLayer, IPv4Layer])
    with pytest.raises(ValueError, match="two ipv4"):
        Stack.build(config(3), [EthernetLayer, ArpLayer, IPv4Layer, CountingIPv4, IcmpLayer])
    with pytest.raises(ValueError, match="not a layer class"):
        Stack.build(config(3), [EthernetLayer, ArpLayer, IPv4Layer, IcmpLayer, object])


def test_a_runtime_runs_a_hand_built_stack() -> None:
    from usocket.link.memory import link_pair
    from usocket.runtime import Runtime

    end, other = link_pair()
    factory = hack.stack_factory([EthernetLayer, ArpLayer, CountingIPv4, IcmpLayer, UdpLayer])
    rt = Runtime(StackConfig(address=bytes([10, 0, 0, 1]), prefix_len=24), link=end, divert=False,
                 stack_class=factory)
    try:
        rt.start()
        assert isinstance(rt.stack, Stack) and isinstance(rt.stack.ipv4, CountingIPv4) and rt.stack.tcp is None
        app = hack.open_udp(rt, 0, hack.UdpApplication())
        assert app.port > 0
    finally:
        rt.stop()
        other.close()


# -- custom protocols and applications --------------------------------------------------------------
def test_a_custom_ip_protocol_is_received_with_its_addresses_and_answered() -> None:
    net, a, b = pair()
    got_a: list[tuple[bytes, str, str]] = []
    handle_b: list[hack.ProtocolHandle] = []

    def on_b(payload: bytes, src: str, dst: str) -> None:
        handle_b[0].send(src, payload.upper())

    handle_b.append(hack.register_protocol(b, 253, on_b))
    send_a = hack.register_protocol(a, 253, lambda p, s, d: got_a.append((p, s, d)))
    send_a(B_IP, b"x" * 3000)  # fragmented and reassembled on the way
    send_a.send(B_IP, b"hello")
    net.run_until(lambda: len(got_a) == 2, 2.0)
    assert sorted(got_a) == sorted([(b"X" * 3000, B_IP, A_IP), (b"HELLO", B_IP, A_IP)])
    send_a.close()
    assert 253 not in a.ipv4.protocols


class EchoApp(hack.TcpApplication):
    closed: list[str] = []

    def on_data(self, data: bytes) -> None:
        self.send(data)

    def on_close(self, reason: str) -> None:
        EchoApp.closed.append(reason)
        super().on_close(reason)


class Client(hack.TcpApplication):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.got = bytearray()
        self.events: list[str] = []

    def on_connect(self) -> None:
        self.events.append("connect")
        self.send(self.payload)
        self.close()  # FIN after the data; the echo still comes back (half-close)

    def on_data(self, data: bytes) -> None:
        self.got += data

    def on_close(self, reason: str) -> None:
        self.events.append(reason)


def test_tcp_applications_echo_over_a_listener_one_per_connection() -> None:
    net, a, b = pair()
    EchoApp.closed = []
    listener = hack.listen_tcp(b, 7, EchoApp)
    clients = [Client(bytes([i]) * 200_000) for i in range(3)]
    for c in clients:
        hack.connect_tcp(a, (B_IP, 7), c)
    net.run_until(lambda: all("eof" in c.events for c in clients), 10.0)
    for i, c in enumerate(clients):
        assert c.events[:2] == ["connect", "eof"] and bytes(c.got) == bytes([i]) * 200_000
        assert c.remote == (B_IP, 7)
    net.run_for(1.0)
    assert EchoApp.closed.count("eof") == 3
    listener.close()
    assert b.tcp.listeners == {}


def test_a_failed_tcp_application_connect_reports_the_error() -> None:
    net, a, b = pair()
    c = Client(b"x")
    hack.connect_tcp(a, (B_IP, 9), c)
    net.run_until(lambda: c.events, 2.0)
    assert c.events == ["error"] and c.error == 111  # ECONNREFUSED


def test_udp_applications_answer_datagrams() -> None:
    net, a, b = pair()

    class Upper(hack.UdpApplication):
        def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
            self.sendto(data.upper(), addr)

    hack.open_udp(b, 7, Upper())
    assert udp_roundtrip(net, a, b"quiet") == b"QUIET"


# -- per-connection classes ---------------------------------------------------------------------
def tap(stack: Stack, where: str | int, direction: str) -> list[tuple[bytes, bytes, bytes]]:
    """Record (data, src, dst) at a transport boundary through an observing hook."""
    log: list[tuple[bytes, bytes, bytes]] = []

    def observe(data: bytes, ctx: hack.HookContext) -> bytes:
        assert ctx.src is not None and ctx.dst is not None
        log.append((data, ctx.src, ctx.dst))
        return data

    hack.hooks(stack).add(where, direction, observe)
    return log


def test_a_listener_with_a_fixed_isn_sends_its_syn_ack_with_it() -> None:
    net, a, b = pair()
    listener = hack.listen_tcp(b, 7, EchoApp, connection_class=hack.fixed_isn(0xDEADBEEF))
    sent = tap(b, "tcp", "out")
    for _ in range(2):
        c = Client(b"abc")
        hack.connect_tcp(a, (B_IP, 7), c)
        net.run_until(lambda c=c: "eof" in c.events, 5.0)  # type: ignore[misc]
        assert bytes(c.got) == b"abc"
    synacks = [s for s in segments(sent) if s.flags & SYN]
    assert len(synacks) == 2 and {s.seq for s in synacks} == {0xDEADBEEF}
    assert all(type(child).__mro__[1].__name__.startswith("FixedIsn") for child in b.tcp.conns.values())
    listener.close()


def syn_of(stack_log: list[tuple[bytes, bytes, bytes]]) -> Any:
    return next(s for s in segments(stack_log) if s.flags & SYN)


@pytest.mark.parametrize("name", sorted(hack.PROFILES))
def test_os_personalities_shape_the_syn_and_the_syn_ack(name: str) -> None:
    profile = hack.PROFILES[name]
    net, a, b = pair()
    listener = hack.listen_tcp(b, 7, EchoApp, connection_class=hack.personality(profile))
    ip_out_a: list[bytes] = []
    hack.hooks(a).add("ipv4", "out", lambda d, ctx: ip_out_a.append(d) or d)
    syn_log, synack_log = tap(a, "tcp", "out"), tap(b, "tcp", "out")
    c = Client(b"z" * 5000)
    hack.connect_tcp(a, (B_IP, 7), c, connection_class=hack.personality(profile))
    net.run_until(lambda: "eof" in c.events, 5.0)
    assert bytes(c.got) == b"z" * 5000
    raw_syn = syn_log[0][0]
    syn, synack = syn_of(syn_log), syn_of(synack_log)
    assert synack.flags & ACK
    for seg in (syn, synack):
        assert seg.window == profile.window
        assert seg.mss == 1460 and seg.wscale == profile.wscale
        assert (seg.ts_val is not None) == profile.timestamps and seg.sack_perm == profile.sack
    kinds = _option_kinds(raw_syn)
    assert kinds == [{"mss": 2, "nop": 1, "ws": 3, "sok": 4, "ts": 8, "eol": 0}[k] for k in profile.layout]
    hdr, _ = parse_ipv4(ip_out_a[0])
    assert hdr.ttl == profile.ttl and hdr.df
    conn = next(iter(a.tcp.conns.values()), None)
    assert conn is None or conn.ts_ok == profile.timestamps
    listener.close()


def _option_kinds(segment: bytes) -> list[int]:
    off = (segment[12] >> 4) * 4
    opts, i, kinds = segment[20:off], 0, []
    while i < len(opts):
        kind = opts[i]
        kinds.append(kind)
        if kind in (0, 1):
            i += 1
            if kind == 0:
                break
        else:
            i += opts[i + 1]
    return kinds


def test_a_windows_server_answers_a_linux_client_without_timestamps_and_it_works() -> None:
    net, a, b = pair()
    hack.listen_tcp(b, 7, EchoApp, connection_class=hack.personality("windows"))
    c = Client(b"q" * 300_000)
    hack.connect_tcp(a, (B_IP, 7), c)  # the default (Linux-like) SYN offers timestamps
    net.run_until(lambda: "eof" in c.events, 10.0)
    assert bytes(c.got) == b"q" * 300_000
    assert a.counters.get("tcp", "active_open") == 1


# -- hooks ---------------------------------------------------------------------------------------
SWAPPED = [("stack", "transmit"), ("ethernet", "receive"), ("ethernet", "send"), ("arp", "output"),
           ("arp", "receive"), ("ipv4", "receive"), ("ipv4", "send")]


def pristine(st: Stack) -> bool:
    """No hook wrapper anywhere: the layers' classes have their own methods (no dispatcher), no
    layer object has instance attributes shadowing them, and the handlers are the layers'."""
    from usocket.hack.hooks import _ClassPatch

    objs = {"stack": st, "ethernet": st.ethernet, "arp": st.arp, "ipv4": st.ipv4}
    for o, name in SWAPPED:
        method = getattr(type(objs[o]), name)
        if "." not in method.__qualname__ or name in vars(objs[o]):
            return False
    if _ClassPatch.active:
        return False
    handlers = st.ethernet.handlers
    return (handlers[0x0800] == st.ipv4.receive and handlers[0x0806] == st.arp.receive
            and st.ipv4.protocols[6] == st.tcp.receive and st.ipv4.protocols[17] == st.udp.receive
            and st.ipv4.protocols[1] == st.icmp.receive)


@pytest.mark.parametrize("where", ["link", "ipv4", "arp", "icmp", "udp", "tcp"])
@pytest.mark.parametrize("direction", ["in", "out"])
def test_every_boundary_observes_traffic_and_unhooks_to_the_pristine_stack(where: str, direction: str) -> None:
    net, a, b = pair()
    b.udp.bind(b.udp.open(Echo), b"\0\0\0\0", 7)
    assert pristine(a)
    seen: list[bytes] = []
    remove = hack.hooks(a).add(where, direction, lambda d, ctx: seen.append(d) or d)
    assert not pristine(a)
    assert udp_roundtrip(net, a, b"ping") == b"ping"  # ARP both ways, then UDP
    conn = a.tcp.open()
    a.tcp.connect(conn, ip_aton(B_IP), 9)  # refused: TCP out, RST in
    a.udp.sendto(a.udp.open(), b"closed", ip_aton(B_IP), 9)  # ICMP port unreachable in
    b.udp.sendto(b.udp.open(), b"closed", ip_aton(A_IP), 9)  # ICMP port unreachable out
    net.run_for(0.5)
    assert seen, f"nothing seen at {where} {direction}"
    remove()
    assert pristine(a)


def test_a_hook_on_an_unregistered_protocol_is_refused_and_leaves_nothing() -> None:
    net, a, b = pair()
    with pytest.raises(ValueError, match="register it before"):
        hack.hooks(a).add(253, "in", lambda d, ctx: d)
    with pytest.raises(ValueError):
        hack.hooks(a).add("nowhere", "in", lambda d, ctx: d)
    assert hack.hooks(a).chains == {} and pristine(a)


def test_a_hook_modifies_drops_and_injects() -> None:
    net, a, b = pair()
    b.udp.bind(b.udp.open(Echo), b"\0\0\0\0", 7)
    h = hack.hooks(b)

    def rewrite(data: bytes, ctx: hack.HookContext) -> bytes | None:
        if data[8:] == b"drop me":
            return None
        if data[8:] == b"twice":
            ctx.inject(data)  # one copy past the hooks, then the original
        if data[8:] == b"lower":  # modify: new payload, zero checksum (allowed in UDP/IPv4)
            return data[:4] + struct.pack("!HH", 8 + 5, 0) + b"UPPER"
        return data

    remove = h.add("udp", "in", rewrite)
    assert udp_roundtrip(net, a, b"lower") == b"UPPER"
    assert udp_roundtrip(net, a, b"drop me") is None
    assert b.counters.get("hooks", "drop.17.in") == 1
    ep = a.udp.open()
    a.udp.sendto(ep, b"twice", ip_aton(B_IP), 7)
    net.run_for(0.5)
    assert [ep.pop(), ep.pop(), ep.pop()][:2] != [None, None] and ep.pop() is None
    remove()
    # injection from outside a hook: a whole frame from B to A's link
    got: list[bytes] = []
    hack.register_protocol(a, 253, lambda p, s, d: got.append(p))
    h.inject(253, "out", b"injected", dst=ip_aton(A_IP))
    net.run_for(0.1)
    assert got == [b"injected"]


def test_a_scapy_hook_rewrites_a_segment_and_scapy_fixes_the_checksum() -> None:
    from scapy.layers.inet import TCP

    net, a, b = pair()
    listener = hack.listen_tcp(b, 7, EchoApp)

    @hack.scapy_view
    def bigger_window(pkt: Any, ctx: hack.HookContext) -> Any:
        assert isinstance(pkt, TCP)
        if pkt.flags.S:
            pkt.window = 1234
            del pkt.chksum  # recomputed over the ctx's addresses
        return pkt

    hack.hooks(a).add("tcp", "out", bigger_window)
    seen = tap(b, "tcp", "in")
    c = Client(b"via scapy")
    hack.connect_tcp(a, (B_IP, 7), c)
    net.run_until(lambda: "eof" in c.events, 5.0)
    assert bytes(c.got) == b"via scapy"
    assert syn_of(seen).window == 1234  # parse_tcp verified the checksum scapy computed
    listener.close()


def test_hooks_of_one_stack_leave_another_stack_of_the_same_classes_alone() -> None:
    net, a, b = pair()
    b.udp.bind(b.udp.open(Echo), b"\0\0\0\0", 7)
    seen: list[bytes] = []
    remove = hack.hooks(a).add("link", "out", lambda d, ctx: seen.append(d) or d)
    hack.hooks(b).add("link", "in", lambda d, ctx: d)()  # another stack: added and removed
    assert udp_roundtrip(net, a, b"only A") == b"only A"
    assert seen and all(f[6:12] == a.config.mac for f in seen)  # B's frames never reached A's hook
    remove()
    assert pristine(a) and pristine(b)


def test_no_hook_costs_nothing_on_the_receive_path() -> None:
    """The stack's receive path is the same objects before a hook is added and after the last
    one is removed (the timing is printed for the record, not asserted; see
    benchmarks/hack_hooks.py)."""
    net, a, b = pair()
    b.udp.bind(b.udp.open(Echo), b"\0\0\0\0", 7)
    udp_roundtrip(net, a, b"warm up")
    for where in ("link", "ipv4", "arp", "udp", "tcp"):
        for direction in ("in", "out"):
            hack.hooks(b).add(where, direction, lambda d, ctx: d)()
    assert pristine(b)
    frame = _udp_frame(a, b)
    t = min(timeit.repeat(lambda: b.receive_frame(frame, 1.0), number=2000, repeat=3)) / 2000
    print(f"receive_frame, no hook: {t * 1e6:.2f} us per frame")


def _udp_frame(a: Stack, b: Stack) -> bytes:
    """One UDP frame from A to B's port 9 (nobody listens; the frame is counted and dropped)."""
    out: list[bytes] = []
    remove = hack.hooks(a).add("link", "out", lambda d, ctx: out.append(d) or None)
    a.udp.sendto(a.udp.open(), b"x" * 100, ip_aton(B_IP), 9)
    remove()
    return out[-1]


# -- fragmentation --------------------------------------------------------------------------------
def test_fragments_in_reverse_and_random_order_reassemble() -> None:
    net, a, b = pair()
    got: list[bytes] = []
    hack.register_protocol(b, 253, lambda p, s, d: got.append(p))
    udp_roundtrip(net, a, b"arp first")  # resolve B (no fragment waits in ARP's queue)
    payload = bytes(range(200))
    for order in ("reverse", "random", [2, 0, 1, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]):
        frags = hack.send_fragmented(a, B_IP, 253, payload, size=16, order=order)
        assert len(frags) >= 13 and sum(len(f.data) for f in set(frags)) == 200
        net.run_for(0.1)
    assert got == [payload] * 3


@pytest.mark.parametrize("policy, expected", [("linux", None), ("first", b"A" * 8 + b"B" * 16 + b"A" * 8),
                                              ("last", b"A" * 32)])
def test_overlapping_fragments_meet_the_receivers_policy(policy: str, expected: bytes | None) -> None:
    net, a, b = pair()
    b.ipv4.overlap_policy = policy
    got: list[bytes] = []
    hack.register_protocol(b, 253, lambda p, s, d: got.append(p))
    udp_roundtrip(net, a, b"arp first")
    # the overlap goes first and straddles the two real fragments (0-16, 16-32)
    hack.send_fragmented(a, B_IP, 253, b"A" * 32, size=16, overlaps=[(8, b"B" * 16)], overlaps_first=True)
    net.run_for(0.1)
    assert got == ([] if expected is None else [expected])
    if expected is None:
        assert b.counters.get("ipv4", "drop.frag_overlap") == 1


def test_a_fragment_plan_is_checked() -> None:
    net, a, b = pair()
    with pytest.raises(ValueError):
        hack.send_fragmented(a, B_IP, 17, b"x" * 20, size=12)
    with pytest.raises(ValueError):
        hack.send_fragmented(a, A_IP, 17, b"x" * 20)
    frags = hack.fragment_plan(a, b"x" * 20, 8, dst=ip_aton(B_IP), proto=17, order="reverse",
                               overlaps=[(16, b"yyyy")], overlaps_first=True)
    assert [(f.offset, f.more) for f in frags] == [(16, False), (16, False), (8, True), (0, True)]


# -- the socket facade ---------------------------------------------------------------------------
def test_set_connection_class_on_sockets_and_what_a_listener_accepts(loop_runtime: Any) -> None:
    import usocket

    sent: list[tuple[bytes, bytes, bytes]] = []
    loop_runtime.call(lambda: tap(loop_runtime.stack, "tcp", "out").__class__)  # warm
    loop_runtime.call(lambda: hack.hooks(loop_runtime.stack).add(
        "tcp", "out", lambda d, ctx: sent.append((d, ctx.src, ctx.dst)) or d))
    srv = usocket.socket()
    srv.bind(("10.0.0.1", 0))
    hack.set_connection_class(srv, hack.fixed_isn(0x01020304))
    srv.listen()
    assert hack.get_connection_class(srv).__name__.startswith("FixedIsn")
    cli = usocket.socket()
    hack.set_connection_class(cli, hack.personality("windows"))
    assert cli.getsockopt(usocket.IPPROTO_IP, usocket.IP_TTL) == 128
    cli.connect(srv.getsockname())
    conn, _ = srv.accept()
    cli.sendall(b"over the facade")
    assert conn.recv(100) == b"over the facade"
    with pytest.raises(ValueError):
        hack.set_connection_class(cli, TcpConnection)  # already connected
    for s in (conn, cli, srv):
        s.close()
    segs = loop_runtime.call(lambda: segments(sent))
    synack = next(s for s in segs if s.flags & SYN and s.flags & ACK)
    syn = next(s for s in segs if s.flags & SYN and not s.flags & ACK)
    assert synack.seq == 0x01020304 and syn.window == 8192 and syn.ts_val is None
    udp = usocket.socket(usocket.AF_INET, usocket.SOCK_DGRAM)
    with pytest.raises(TypeError):
        hack.set_connection_class(udp, TcpConnection)
    udp.close()
    loop_runtime.call(lambda: hack.hooks(loop_runtime.stack).clear())
