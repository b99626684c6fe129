"""ARP behaviour through a real Stack with a virtual clock.

Input frames are crafted with scapy and output frames dissected with scapy, so these tests do
not rely on usocket's own codecs. ARP is driven with ``stack.arp.output(ip, 0x0800, payload)``
directly: nothing here depends on the IPv4 layer. Time advances only through the ``now``
values given to ``receive_frame`` / ``poll``.
"""
from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Ether

from usocket.config import OWN, SHARED, StackConfig
from usocket.proto import arp as arpmod
from usocket.stack import Stack
from usocket.wire.addr import ip_aton, mac_aton

OUR_MAC, OUR_IP = "02:00:00:00:00:01", "10.0.0.1"
PEER_MAC, PEER_IP = "02:00:00:00:00:02", "10.0.0.2"
OTHER_MAC = "02:00:00:00:00:03"
BCAST = "ff:ff:ff:ff:ff:ff"
ZERO = "00:00:00:00:00:00"
IPV4 = 0x0800


def make(mode: str = OWN, **attrs: Any) -> tuple[Stack, list[tuple[bytes, list[bytes]]]]:
    """A stack (10.0.0.1/24) whose ARP layer has ``attrs`` set, and the list that collects
    ``on_neighbor_unreachable`` calls."""
    stack = Stack(StackConfig(mode=mode), rng=random.Random(7))
    for k, v in attrs.items():
        setattr(stack.arp, k, v)
    calls: list[tuple[bytes, list[bytes]]] = []
    stack.ipv4.on_neighbor_unreachable = lambda ip, payloads: calls.append((ip, payloads))  # type: ignore
    return stack, calls


def ip(text: str) -> bytes:
    return ip_aton(text)


def arp_in(stack: Stack, now: float, op: int, sha: str, spa: str, tpa: str, *, tha: str = ZERO,
           dst: str | None = None, src: str | None = None) -> None:
    """Feed one ARP frame (requests broadcast, replies to us, unless ``dst`` says otherwise)."""
    dst = dst or (BCAST if op == 1 else OUR_MAC)
    frame = Ether(dst=dst, src=src or sha) / ARP(op=op, hwsrc=sha, psrc=spa, hwdst=tha, pdst=tpa)
    stack.receive_frame(bytes(frame), now)


def reply(stack: Stack, now: float, sha: str = PEER_MAC, spa: str = PEER_IP) -> None:
    arp_in(stack, now, 2, sha, spa, OUR_IP, tha=OUR_MAC)


def out(stack: Stack) -> list[Ether]:
    return [Ether(f) for f in stack.take_output()]


def assert_request(p: Ether, target: str, dst: str = BCAST) -> None:
    assert (p.dst, p.src, p.type) == (dst, OUR_MAC, 0x0806)
    a = p[ARP]
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (1, OUR_MAC, OUR_IP, ZERO, target)


def assert_data(p: Ether, payload: bytes, dst: str = PEER_MAC) -> None:
    assert (p.dst, p.src, p.type) == (dst, OUR_MAC, IPV4)
    assert bytes(p.payload) == payload


def entry(stack: Stack, addr: str) -> arpmod.NeighborInfo | None:
    return next((e for e in stack.arp.entries() if e.ip == ip(addr)), None)


def state(stack: Stack, addr: str) -> str | None:
    e = entry(stack, addr)
    return e.state if e else None


def resolved(stack: Stack, t: float = 0.0) -> Stack:
    """Resolve PEER at time ``t`` (request + reply) and discard the frames."""
    stack.poll(t)
    stack.arp.output(ip(PEER_IP), IPV4, b"first")
    reply(stack, t)
    stack.take_output()
    assert state(stack, PEER_IP) == "REACHABLE"
    return stack


# -- resolution ------------------------------------------------------------------------------------
def test_request_on_first_output_then_flush_after_reply() -> None:
    stack, _ = make()
    stack.arp.output(ip(PEER_IP), IPV4, b"p1")
    stack.arp.output(ip(PEER_IP), IPV4, memoryview(b"p2"))
    (req,) = out(stack)  # one request, data held back
    assert_request(req, PEER_IP)
    assert state(stack, PEER_IP) == "INCOMPLETE" and entry(stack, PEER_IP).pending == 2  # type: ignore
    assert stack.arp.lookup(ip(PEER_IP)) is None
    reply(stack, 0.2)
    frames = out(stack)
    assert len(frames) == 2
    assert_data(frames[0], b"p1")
    assert_data(frames[1], b"p2")
    assert state(stack, PEER_IP) == "REACHABLE" and stack.arp.lookup(ip(PEER_IP)) == mac_aton(PEER_MAC)
    stack.arp.output(ip(PEER_IP), IPV4, b"p3")  # straight through now
    (p3,) = out(stack)
    assert_data(p3, b"p3")
    c = stack.counters["arp"]
    assert c["tx.request"] == 1 and c["resolved"] == 1 and c["rx.reply"] == 1
    assert stack.poll_at() is not None  # only the GC timer: no retransmission pending
    stack.poll(10.0)
    assert out(stack) == []


def test_retransmit_schedule_then_give_up_reports_unreachable() -> None:
    stack, calls = make()
    stack.arp.output(ip(PEER_IP), IPV4, b"a")
    stack.arp.output(ip(PEER_IP), 0x88B5, b"not-ip")  # queued, dropped, but not handed to IPv4
    stack.arp.output(ip(PEER_IP), IPV4, b"b")
    sent_at = []
    for t in (0.0, 0.5, 0.999, 1.0, 1.5, 2.0, 2.999):
        stack.poll(t)
        for p in out(stack):
            assert_request(p, PEER_IP)
            sent_at.append(t)
    assert sent_at == [0.0, 1.0, 2.0]
    assert calls == []
    assert stack.poll_at() == 3.0
    stack.poll(3.0)
    assert out(stack) == []  # no fourth request
    assert calls == [(ip(PEER_IP), [b"a", b"b"])]
    assert state(stack, PEER_IP) == "FAILED"
    c = stack.counters["arp"]
    assert c["resolve_failed"] == 1 and c["drop.unresolved"] == 3 and c["tx.request"] == 3
    # A new packet restarts resolution (the last request was >= 1 s ago: not rate limited).
    stack.arp.output(ip(PEER_IP), IPV4, b"c")
    (req,) = out(stack)
    assert_request(req, PEER_IP)
    assert state(stack, PEER_IP) == "INCOMPLETE"


def test_give_up_without_ipv4_hook_is_harmless() -> None:
    stack, _ = make()
    del stack.ipv4.on_neighbor_unreachable  # type: ignore[attr-defined]
    stack.ipv4 = object()  # type: ignore[assignment]  # an IPv4 layer without the method
    stack.arp.output(ip(PEER_IP), IPV4, b"a")
    for t in (1.0, 2.0, 3.0):
        stack.poll(t)
    assert state(stack, PEER_IP) == "FAILED" and stack.counters["arp"]["drop.unresolved"] == 1


def test_custom_timings_per_instance() -> None:
    stack, calls = make(retrans_time=0.25, mcast_probes=5)
    stack.arp.output(ip(PEER_IP), IPV4, b"a")
    times = []
    t = 0.0
    while not calls and t < 5:
        stack.poll(t)
        times += [t] * len(out(stack))
        t = round(t + 0.05, 2)
    assert times == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert calls and t == pytest.approx(1.3)


def test_request_while_incomplete_resolves_it() -> None:
    """The peer asks for us while we resolve it: RFC 826 merge fills in the entry."""
    stack, _ = make()
    stack.arp.output(ip(PEER_IP), IPV4, b"a")
    out(stack)
    arp_in(stack, 0.3, 1, PEER_MAC, PEER_IP, OUR_IP)
    frames = out(stack)
    assert_data(frames[0], b"a")
    assert frames[1][ARP].op == 2  # our reply to its request (own mode)
    assert state(stack, PEER_IP) == "STALE"  # a request does not prove reachability


def test_first_reply_wins_lock_time() -> None:
    stack, _ = make()
    stack.arp.output(ip(PEER_IP), IPV4, b"a")
    out(stack)
    reply(stack, 0.1, sha=PEER_MAC)
    reply(stack, 0.2, sha=OTHER_MAC)  # a competing (proxy? attacker?) answer within locktime
    assert stack.arp.lookup(ip(PEER_IP)) == mac_aton(PEER_MAC)
    assert stack.counters["arp"]["locked"] == 1
    stack.arp.output(ip(PEER_IP), IPV4, b"b")
    assert [p.dst for p in out(stack)] == [PEER_MAC, PEER_MAC]
    # After the lock time the new binding is accepted (the host changed its NIC).
    arp_in(stack, 1.2, 1, OTHER_MAC, PEER_IP, OUR_IP)
    assert stack.arp.lookup(ip(PEER_IP)) == mac_aton(OTHER_MAC)
    assert state(stack, PEER_IP) == "STALE"


# -- expiry and refresh ----------------------------------------------------------------------------
def test_reachable_expires_to_stale_then_unicast_refresh() -> None:
    stack = resolved(make()[0], 0.0)
    stack.poll(29.9)
    assert state(stack, PEER_IP) == "REACHABLE"
    stack.poll(30.0)
    assert state(stack, PEER_IP) == "STALE"
    stack.arp.output(ip(PEER_IP), IPV4, b"x")
    (p,) = out(stack)
    assert_data(p, b"x")  # a STALE entry is still used, without waiting
    assert state(stack, PEER_IP) == "DELAY"
    stack.poll(34.9)
    assert out(stack) == []
    stack.poll(35.0)  # delay_first_probe_time later: unicast probe to the cached MAC
    (probe,) = out(stack)
    assert_request(probe, PEER_IP, dst=PEER_MAC)
    assert state(stack, PEER_IP) == "PROBE"
    stack.arp.output(ip(PEER_IP), IPV4, b"y")  # still sent while probing
    assert_data(out(stack)[0], b"y")
    reply(stack, 35.1)
    assert state(stack, PEER_IP) == "REACHABLE"
    stack.poll(40.0)
    assert out(stack) == []  # probing stopped
    c = stack.counters["arp"]
    assert c["tx.probe"] == 1 and c["tx.request"] == 1


def test_unanswered_refresh_fails_then_broadcasts_again() -> None:
    stack, calls = make()
    resolved(stack, 0.0)
    stack.poll(31.0)
    stack.arp.output(ip(PEER_IP), IPV4, b"x")
    out(stack)
    probes = []
    for t in (36.0, 37.0, 38.0, 39.0):
        stack.poll(t)
        probes += [(t, p.dst) for p in out(stack)]
    assert probes == [(36.0, PEER_MAC), (37.0, PEER_MAC), (38.0, PEER_MAC)]
    assert state(stack, PEER_IP) == "FAILED" and calls == []  # nothing was queued
    stack.arp.output(ip(PEER_IP), IPV4, b"z")
    (req,) = out(stack)
    assert_request(req, PEER_IP)  # broadcast again


def test_upper_layer_confirm_avoids_probe() -> None:
    stack = resolved(make()[0], 0.0)
    stack.poll(31.0)
    stack.arp.output(ip(PEER_IP), IPV4, b"x")
    out(stack)
    stack.poll(32.0)
    stack.arp.confirm(ip(PEER_IP))  # e.g. TCP saw an ACK for new data
    assert state(stack, PEER_IP) == "REACHABLE"
    stack.poll(40.0)
    assert out(stack) == []


def test_same_mac_request_keeps_reachable_state() -> None:
    stack = resolved(make()[0], 0.0)
    arp_in(stack, 5.0, 1, PEER_MAC, PEER_IP, OUR_IP)
    assert state(stack, PEER_IP) == "REACHABLE"
    assert entry(stack, PEER_IP).confirmed == 0.0  # type: ignore[union-attr]  # not refreshed by a request


# -- rate limiting ---------------------------------------------------------------------------------
def test_global_token_bucket() -> None:
    stack, _ = make(request_rate=2.0, request_burst=3)
    for i in range(10, 15):
        stack.arp.output(ip(f"10.0.0.{i}"), IPV4, b"x")
    assert [p[ARP].pdst for p in out(stack)] == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
    assert stack.counters["arp"]["ratelimited.global"] == 2
    stack.poll(1.0)  # 2 tokens refilled; 5 retransmissions due
    assert len(out(stack)) == 2
    assert stack.counters["arp"]["ratelimited.global"] == 5


def test_per_target_limit_after_failure() -> None:
    stack, calls = make(request_min_interval=5.0)
    stack.arp.output(ip(PEER_IP), IPV4, b"a")
    for t in (0.0, 1.0, 2.0, 3.0):
        stack.poll(t)
    assert calls and len(out(stack)) == 3
    # The last request went at 2.0: with a 5 s per-target interval the next waits until 7.0.
    stack.arp.output(ip(PEER_IP), IPV4, b"b")
    assert out(stack) == [] and stack.counters["arp"]["ratelimited.target"] == 1
    stack.poll(6.9)
    assert out(stack) == []
    stack.poll(7.0)
    (req,) = out(stack)
    assert_request(req, PEER_IP)
    reply(stack, 7.1)
    assert_data(out(stack)[0], b"b")


# -- learning rules --------------------------------------------------------------------------------
def test_unsolicited_reply_and_gratuitous_arp_create_nothing() -> None:
    stack, _ = make()
    reply(stack, 0.0)  # nobody asked
    arp_in(stack, 0.0, 1, PEER_MAC, PEER_IP, PEER_IP)  # gratuitous request
    arp_in(stack, 0.0, 2, PEER_MAC, PEER_IP, PEER_IP, dst=BCAST)  # gratuitous reply
    assert stack.arp.entries() == []
    assert stack.counters["arp"]["drop.unsolicited"] == 3
    assert out(stack) == []


def test_gratuitous_arp_updates_existing_entry_after_lock_time() -> None:
    stack = resolved(make()[0], 0.0)
    arp_in(stack, 0.5, 1, OTHER_MAC, PEER_IP, PEER_IP)
    assert stack.arp.lookup(ip(PEER_IP)) == mac_aton(PEER_MAC)  # locked
    arp_in(stack, 2.0, 1, OTHER_MAC, PEER_IP, PEER_IP)
    assert stack.arp.lookup(ip(PEER_IP)) == mac_aton(OTHER_MAC)
    assert state(stack, PEER_IP) == "STALE"


def test_request_for_other_host_is_not_learned() -> None:
    stack, _ = make()
    arp_in(stack, 0.0, 1, PEER_MAC, PEER_IP, "10.0.0.9")
    assert stack.arp.entries() == [] and out(stack) == []
    assert stack.counters["arp"]["rx.other"] == 1


@pytest.mark.parametrize("mode", [OWN, SHARED])
def test_request_for_us_learned_and_answered_only_in_own_mode(mode: str) -> None:
    stack, _ = make(mode)
    arp_in(stack, 0.0, 1, PEER_MAC, PEER_IP, OUR_IP)
    e = entry(stack, PEER_IP)
    assert e is not None and e.state == "STALE" and e.mac == mac_aton(PEER_MAC)
    frames = out(stack)
    if mode == OWN:
        (p,) = frames
        assert (p.dst, p.src, p.type) == (PEER_MAC, OUR_MAC, 0x0806)
        a = p[ARP]
        assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, OUR_MAC, OUR_IP, PEER_MAC, PEER_IP)
        assert stack.counters["arp"]["tx.reply"] == 1
    else:
        assert frames == []  # the kernel answers for the shared address
    # Learned from the request: the first packet goes out without an ARP round trip.
    stack.arp.output(ip(PEER_IP), IPV4, b"x")
    (p,) = out(stack)
    assert_data(p, b"x")


def test_shared_mode_still_resolves() -> None:
    stack, calls = make(SHARED)
    stack.arp.output(ip(PEER_IP), IPV4, b"x")
    assert_request(out(stack)[0], PEER_IP)  # with the shared (kernel's) address as sender
    reply(stack, 0.1)
    assert_data(out(stack)[0], b"x")


def test_rfc5227_probe_for_our_address() -> None:
    stack, _ = make()
    arp_in(stack, 0.0, 1, PEER_MAC, "0.0.0.0", OUR_IP)
    (p,) = out(stack)
    a = p[ARP]
    assert p.dst == PEER_MAC and (a.op, a.psrc, a.hwdst, a.pdst) == (2, OUR_IP, PEER_MAC, "0.0.0.0")
    arp_in(stack, 0.0, 1, PEER_MAC, "0.0.0.0", "10.0.0.77")  # a probe for someone else
    assert out(stack) == [] and stack.arp.entries() == []
    assert stack.counters["arp"]["rx.probe"] == 2


@pytest.mark.parametrize("mode", [OWN, SHARED])
def test_conflict_counted_ignored_and_defended_in_own_mode(mode: str) -> None:
    stack, _ = make(mode)
    for t in (0.0, 1.0, 10.5):
        arp_in(stack, t, 1, OTHER_MAC, OUR_IP, OUR_IP)  # someone announces our address
    assert stack.counters["arp"]["conflict"] == 3
    assert stack.arp.entries() == []
    frames = out(stack)
    if mode == OWN:
        assert len(frames) == 2  # at 0.0 and 10.5: one defence per defend_interval
        for p in frames:
            a = p[ARP]
            assert p.dst == BCAST and (a.op, a.hwsrc, a.psrc, a.pdst) == (1, OUR_MAC, OUR_IP, OUR_IP)
    else:
        assert frames == []


@pytest.mark.parametrize("kw,reason", [
    ({"sha": BCAST}, "bad_sha"),
    ({"sha": "01:00:5e:00:00:01"}, "bad_sha"),
    ({"sha": ZERO}, "bad_sha"),
    ({"sha": OUR_MAC, "src": PEER_MAC}, "own_sha"),
    ({"spa": "224.0.0.1"}, "bad_spa"),
    ({"spa": "127.0.0.1"}, "bad_spa"),
    ({"spa": "10.0.0.255"}, "bad_spa"),
    ({"tpa": "224.0.0.1"}, "bad_tpa"),
])
def test_bogus_packets_dropped(kw: dict[str, str], reason: str) -> None:
    stack, _ = make()
    args = {"sha": PEER_MAC, "spa": PEER_IP, "tpa": OUR_IP, **kw}
    arp_in(stack, 0.0, 1, args["sha"], args["spa"], args["tpa"], src=kw.get("src", PEER_MAC))
    assert stack.counters.drops("arp") == {f"arp.drop.{reason}": 1}
    assert stack.arp.entries() == [] and out(stack) == []


@pytest.mark.parametrize("patch,reason", [
    (lambda b: b[:20], "too_short"),
    (lambda b: b"\x00\x06" + b[2:], "bad_htype"),
    (lambda b: b[:2] + b"\x86\xdd" + b[4:], "bad_ptype"),
    (lambda b: b[:4] + b"\x08" + b[5:], "bad_hlen"),
    (lambda b: b[:5] + b"\x10" + b[6:], "bad_plen"),
    (lambda b: b[:6] + b"\x00\x03" + b[8:], "bad_op"),
])
def test_malformed_arp_counted(patch: Any, reason: str) -> None:
    stack, _ = make()
    body = bytes(ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=OUR_IP))
    frame = bytes(Ether(dst=BCAST, src=PEER_MAC, type=0x0806)) + patch(body)
    stack.receive_frame(frame, 0.0)
    assert stack.counters.drops("arp") == {f"arp.drop.{reason}": 1}
    assert stack.arp.entries() == [] and out(stack) == []


# -- next hops needing no resolution ---------------------------------------------------------------
@pytest.mark.parametrize("dst_ip,dst_mac", [
    ("255.255.255.255", BCAST),
    ("10.0.0.255", BCAST),
    ("224.0.0.251", "01:00:5e:00:00:fb"),
    ("239.255.255.250", "01:00:5e:7f:ff:fa"),
])
def test_broadcast_and_multicast_next_hops(dst_ip: str, dst_mac: str) -> None:
    stack, _ = make()
    stack.arp.output(ip(dst_ip), IPV4, b"hi")
    (p,) = out(stack)
    assert_data(p, b"hi", dst=dst_mac)
    assert stack.arp.entries() == [] and stack.counters["arp"]["tx.request"] == 0


def test_slash31_has_no_broadcast() -> None:
    stack = Stack(StackConfig(address=ip("10.0.0.1"), prefix_len=31), rng=random.Random(1))
    stack.arp.output(ip("10.0.0.0"), IPV4, b"x")
    (p,) = out(stack)
    assert_request(p, "10.0.0.0")


@pytest.mark.parametrize("bad", ["0.0.0.0", "127.0.0.1", OUR_IP])
def test_bad_next_hops_dropped(bad: str) -> None:
    stack, _ = make()
    stack.arp.output(ip(bad), IPV4, b"x")
    assert out(stack) == [] and stack.arp.entries() == []
    assert stack.counters["arp"]["drop.bad_next_hop"] == 1


# -- bounds ----------------------------------------------------------------------------------------
def test_pending_queue_bounded_keeps_latest() -> None:
    stack, _ = make(pending_max=3)
    for i in range(6):
        stack.arp.output(ip(PEER_IP), IPV4, b"p%d" % i)
    assert len(out(stack)) == 1  # still a single request
    assert stack.counters["arp"]["drop.pending_overflow"] == 3
    reply(stack, 0.1)
    assert [bytes(p.payload) for p in out(stack)] == [b"p3", b"p4", b"p5"]


def test_pending_queue_of_zero_still_keeps_one() -> None:
    stack, _ = make(pending_max=0)
    stack.arp.output(ip(PEER_IP), IPV4, b"old")
    stack.arp.output(ip(PEER_IP), IPV4, b"new")
    out(stack)
    reply(stack, 0.1)
    assert [bytes(p.payload) for p in out(stack)] == [b"new"]


def test_cache_bounded_evicts_unused_learned_entries_first() -> None:
    stack, _ = make(max_entries=4, request_rate=1e9, request_burst=1e9)
    resolved(stack, 0.0)  # PEER: REACHABLE, in use
    for i in range(10, 30):  # a flood of requests from many senders
        arp_in(stack, 0.5, 1, f"02:00:00:00:01:{i:02x}", f"10.0.0.{i}", OUR_IP)
    assert len(stack.arp) == 4
    assert state(stack, PEER_IP) == "REACHABLE"  # the entry in use survived
    assert stack.counters["arp"]["evicted"] == 17
    # New resolutions still get an entry.
    stack.arp.output(ip("10.0.0.99"), IPV4, b"x")
    assert state(stack, "10.0.0.99") == "INCOMPLETE" and len(stack.arp) == 4


def test_cache_of_static_entries_refuses_new_ones() -> None:
    stack, _ = make(max_entries=2)
    stack.arp.add_static(ip("10.0.0.5"), mac_aton("02:00:00:00:00:05"))
    stack.arp.add_static(ip("10.0.0.6"), mac_aton("02:00:00:00:00:06"))
    stack.arp.output(ip(PEER_IP), IPV4, b"x")
    assert out(stack) == [] and stack.counters["arp"]["drop.cache_full"] == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.integers(0, 40), st.integers(0, 40),
                          st.sampled_from([OUR_IP, PEER_IP, "10.0.0.7"]), st.floats(0, 0.5)),
                max_size=40))
def test_random_arp_traffic_keeps_bounds(events: list[tuple[int, int, int, str, float]]) -> None:
    stack, _ = make(max_entries=8, pending_max=2)
    now = 0.0
    for op, host, macn, tpa, dt in events:
        now += dt
        stack.poll(now)
        arp_in(stack, now, op, f"02:00:00:00:02:{macn:02x}", f"10.0.0.{host + 2}", tpa)
        stack.arp.output(ip(f"10.0.0.{host + 2}"), IPV4, b"d")
        assert len(stack.arp) <= 8
        assert all(e.pending <= 2 for e in stack.arp.entries())
        assert all((e.mac is None) == (e.state in ("INCOMPLETE", "FAILED")) for e in stack.arp.entries())
    stack.take_output()


def test_random_bytes_never_raise() -> None:
    rnd = random.Random(42)
    stack, _ = make()
    head = bytes(Ether(dst=BCAST, src=PEER_MAC, type=0x0806))
    for i in range(2000):
        body = bytes(ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=OUR_IP))
        body = bytearray(body)
        for _ in range(rnd.randrange(1, 4)):
            body[rnd.randrange(len(body))] = rnd.randrange(256)
        stack.receive_frame(head + bytes(body[: rnd.randrange(len(body) + 1)]), i * 0.01)
    assert stack.counters["arp"]["rx"] == 2000
    assert len(stack.arp) <= stack.arp.max_entries


# -- garbage collection and helpers ----------------------------------------------------------------
def test_gc_removes_unused_entries_keeps_used_and_static() -> None:
    stack, _ = make()
    arp_in(stack, 0.0, 1, OTHER_MAC, "10.0.0.3", OUR_IP)  # learned, never used
    stack.arp.add_static(ip("10.0.0.4"), mac_aton("02:00:00:00:00:04"))
    resolved(stack, 0.0)
    for t in range(5, 200, 5):  # PEER used every 5 s (refreshed by its replies)
        stack.poll(float(t))
        stack.arp.output(ip(PEER_IP), IPV4, b"x")
        for p in out(stack):
            if ARP in p:
                reply(stack, float(t))
        out(stack)
    assert {e.ip for e in stack.arp.entries()} == {ip(PEER_IP), ip("10.0.0.4")}
    assert stack.counters["arp"]["gc"] == 1
    stack.arp.flush()
    assert [e.state for e in stack.arp.entries()] == ["PERMANENT"]
    stack.poll(1000.0)
    assert stack.poll_at() is None  # no dynamic entries: the GC timer stopped
    stack.arp.flush(static=True)
    assert stack.arp.entries() == []


def test_static_entry_flushes_pending_and_is_never_overridden() -> None:
    stack, calls = make()
    stack.arp.output(ip(PEER_IP), IPV4, b"queued")
    out(stack)
    stack.arp.add_static(ip(PEER_IP), mac_aton(OTHER_MAC))
    assert_data(out(stack)[0], b"queued", dst=OTHER_MAC)
    reply(stack, 5.0)  # the real host answers the earlier request
    arp_in(stack, 6.0, 1, PEER_MAC, PEER_IP, OUR_IP)
    assert stack.arp.lookup(ip(PEER_IP)) == mac_aton(OTHER_MAC)
    assert stack.counters["arp"]["static_mismatch"] == 2
    stack.poll(100.0)
    assert state(stack, PEER_IP) == "PERMANENT" and calls == []
    with pytest.raises(ValueError):
        stack.arp.add_static(ip(PEER_IP), b"\xff" * 6)


def test_delete_and_resolve_helpers() -> None:
    stack, _ = make()
    resolved(stack, 0.0)
    assert stack.arp.delete(ip(PEER_IP)) and not stack.arp.delete(ip(PEER_IP))
    stack.arp.resolve(ip("10.0.0.254"))  # e.g. the gateway, before any traffic
    (req,) = out(stack)
    assert_request(req, "10.0.0.254")
    reply(stack, 0.1, sha=OTHER_MAC, spa="10.0.0.254")
    assert stack.arp.lookup(ip("10.0.0.254")) == mac_aton(OTHER_MAC)
    stack.arp.resolve(ip("10.0.0.254"))  # known: nothing sent
    assert out(stack) == []
    assert stack.arp.lookup(ip("255.255.255.255")) == b"\xff" * 6


def test_subclass_can_override_policy() -> None:
    class NoLearning(arpmod.ArpLayer):
        reachable_time = 5.0

        def _learn(self, ip: bytes, mac: bytes) -> None:
            self.c["not_learned"] += 1

    class MyStack(Stack):
        arp_class = NoLearning

    stack = MyStack(StackConfig(), rng=random.Random(1))
    arp_in(stack, 0.0, 1, PEER_MAC, PEER_IP, OUR_IP)
    assert stack.arp.entries() == [] and stack.counters["arp"]["not_learned"] == 1
    resolved(stack, 1.0)
    stack.poll(6.0)
    assert state(stack, PEER_IP) == "STALE"


# -- against the Linux kernel (lab) ----------------------------------------------------------------
def _pump(sock: Any, stack: Stack, until: Any, timeout: float = 5.0) -> list[bytes]:
    """Run ``stack`` on an AF_PACKET socket until ``until()`` holds; return the frames it sent."""
    import select
    import socket
    import time

    sent: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not until():
        now = time.monotonic()
        assert now < deadline, "timed out"
        for f in stack.take_output():
            sock.send(f)
            sent.append(f)
        wake = stack.poll_at()
        wait = min(deadline - now, 0.05 if wake is None else max(0.0, wake - now), 0.05)
        if select.select([sock], [], [], wait)[0]:
            data, addr = sock.recvfrom(65535)
            if addr[2] != socket.PACKET_OUTGOING:
                stack.receive_frame(data, time.monotonic())
        stack.poll(time.monotonic())
    for f in stack.take_output():
        sock.send(f)
        sent.append(f)
    return sent


@pytest.mark.lab
def test_interop_with_linux_kernel(make_lab: Any) -> None:
    """Own mode on a veth: we resolve the kernel's address, and the kernel resolves ours."""
    import socket
    import time

    lab = make_lab(servers=False)
    cfg = lab.stack_config("own")
    stack = Stack(cfg, rng=random.Random(1), now=time.monotonic())

    def open_socket() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((lab.client_if, 0))
        s.setblocking(False)
        return s

    sock = lab.call(lab.client_ns, open_socket)
    try:
        server = ip(lab.server_ip)
        stack.arp.output(server, IPV4, b"\x45" + bytes(19))
        sent = _pump(sock, stack, lambda: stack.arp.lookup(server) is not None)
        assert stack.arp.lookup(server) == mac_aton(lab.server_mac)
        assert state(stack, lab.server_ip) == "REACHABLE"
        assert [Ether(f).type for f in sent] == [0x0806, IPV4]  # request, then the queued packet
        assert Ether(sent[1]).dst == lab.server_mac

        def kernel_sends() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.sendto(b"x", (lab.own_ip, 9))

        # The kernel learned us (STALE) from our request; forget that so it must ask (broadcast).
        lab.run(lab.server_ns, ["ip", "neigh", "flush", "dev", lab.server_if])
        lab.call(lab.server_ns, kernel_sends)  # the kernel must ARP for our (own-mode) address
        _pump(sock, stack, lambda: stack.counters["arp"]["tx.reply"] >= 1)
        deadline = time.monotonic() + 5
        while True:
            neigh = lab.run(lab.server_ns, ["ip", "neigh", "show", lab.own_ip]).stdout
            if lab.client_mac in neigh or time.monotonic() > deadline:
                break
            _pump(sock, stack, lambda: True)
        assert lab.client_mac in neigh and "REACHABLE" in neigh, neigh
        assert not stack.counters.drops("arp")
    finally:
        sock.close()


def test_pending_queue_holds_a_fragmented_64k_datagram_but_is_bounded_in_bytes() -> None:
    stack, _ = make()
    frags = [bytes([i]) * 1500 for i in range(45)]  # a 65507-byte UDP datagram's fragments
    for f in frags:
        stack.arp.output(ip(PEER_IP), IPV4, f)
    assert len(out(stack)) == 1  # the request
    assert stack.counters["arp"]["drop.pending_overflow"] == 0
    reply(stack, 0.1)
    assert [bytes(p.payload) for p in out(stack)] == frags
    # Per-address byte bound: far more than unres_qlen_bytes keeps only the newest.
    stack2, _ = make(pending_max=10_000)
    for i in range(300):
        stack2.arp.output(ip(PEER_IP), IPV4, bytes([i % 256]) * 1500)
    assert stack2.counters["arp"]["drop.pending_overflow"] == 300 - stack2.arp.pending_max_bytes // 1500
    assert stack2.arp._pending_bytes <= stack2.arp.pending_max_bytes


def test_pending_bytes_bounded_across_addresses() -> None:
    stack, _ = make(pending_total_max_bytes=30_000, request_rate=1e9, request_burst=1e9)
    for host in range(2, 60):
        stack.arp.output(ip(f"10.0.0.{host}"), IPV4, b"z" * 1000)
    assert stack.arp._pending_bytes <= 30_000
    assert stack.counters["arp"]["drop.pending_overflow"] > 0
