"""Bad input never kills the stack, and never makes its memory grow without bound.

Thousands of random and scapy-``fuzz()``ed frames are fired at a Stack in own mode (where it answers
ARP/ICMP itself, so every layer is exposed), then a normal exchange must still work and the memory
held by the stack must stay bounded.
"""
from __future__ import annotations

import random
import tracemalloc

import pytest
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw, fuzz

from usocket.config import OWN, StackConfig
from usocket.stack import Stack
from usocket.wire.addr import ip_aton, mac_aton

OUR_MAC = "02:00:00:00:00:01"
OUR_IP = "10.9.0.1"
PEER_MAC = "02:00:00:00:00:02"
PEER_IP = "10.9.0.2"


def make_stack(seed: int = 1) -> Stack:
    cfg = StackConfig(iface="fuzz0", mac=mac_aton(OUR_MAC), address=ip_aton(OUR_IP), prefix_len=24,
                      mode=OWN)
    return Stack(cfg, rng=random.Random(seed))


def fuzz_frames(rng: random.Random, n: int) -> list[bytes]:
    """A mix of pure noise, truncations and scapy-fuzzed headers of every layer we parse."""
    eth = Ether(dst=OUR_MAC, src=PEER_MAC)
    templates = [
        eth / fuzz(ARP()),
        eth / fuzz(IP(dst=OUR_IP)),
        eth / fuzz(IP(dst=OUR_IP, proto=17)) / fuzz(UDP()),
        eth / IP(dst=OUR_IP, src=PEER_IP) / fuzz(UDP()) / Raw(b"x" * 20),
        eth / IP(dst=OUR_IP, src=PEER_IP) / fuzz(ICMP()),
        eth / fuzz(IP(dst=OUR_IP, src=PEER_IP, proto=1)) / fuzz(ICMP()) / fuzz(IP(src=OUR_IP)) / fuzz(UDP()),
        eth / IP(dst=OUR_IP, src=PEER_IP, flags="MF", frag=rng.randrange(8191), id=rng.randrange(65536))
        / Raw(b"y" * 64),
    ]
    frames: list[bytes] = []
    for i in range(n):
        kind = i % 10
        if kind < 7:
            raw = bytes(templates[kind])
            # scapy's fuzz() re-randomises on each bytes() call; also flip a byte sometimes.
            if rng.random() < 0.3 and len(raw) > 14:
                b = bytearray(raw)
                b[rng.randrange(14, len(b))] ^= 1 << rng.randrange(8)
                raw = bytes(b)
        elif kind == 7:
            raw = bytes(eth)[:14] + rng.randbytes(rng.randrange(0, 1600))
        elif kind == 8:
            raw = rng.randbytes(rng.randrange(0, 80))
        else:
            # fragments with random offsets and ids: the reassembly memory bound is what is tested
            pkt = eth / IP(dst=OUR_IP, src=PEER_IP, id=rng.randrange(65536), proto=17,
                           frag=rng.randrange(0, 8000), flags="MF") / Raw(rng.randbytes(rng.randrange(8, 1400) & ~7))
            raw = bytes(pkt)
        frames.append(raw)
    return frames


def normal_exchange_works(stack: Stack, now: float) -> None:
    """ARP, ICMP echo and UDP delivery still behave after the barrage."""
    stack.take_output()
    # ARP request for our address gets a reply.
    stack.receive_frame(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC)
                              / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=OUR_IP)), now)
    out = [Ether(f) for f in stack.take_output()]
    assert any(ARP in p and p[ARP].op == 2 and p[ARP].psrc == OUR_IP for p in out), out
    # ICMP echo is answered.
    stack.receive_frame(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP)
                              / ICMP(type=8, id=7, seq=1) / Raw(b"ping")), now)
    out = [Ether(f) for f in stack.take_output()]
    assert any(ICMP in p and p[ICMP].type == 0 and p[ICMP].id == 7 for p in out), out
    # A UDP datagram, fragmented, reaches a bound endpoint intact once the flood's fragment queues
    # have timed out (a full reassembly memory refuses new fragments until then, as Linux does;
    # whether the barrage filled it depends on the random fragments).
    now += 31.0
    stack.poll(now)
    ep = stack.udp.open()
    stack.udp.bind(ep, ip_aton(OUR_IP), 5353)
    payload = bytes(range(256)) * 12
    for frag in fragment(IP(src=PEER_IP, dst=OUR_IP, id=4242) / UDP(sport=999, dport=5353) / Raw(payload),
                         fragsize=600):
        stack.receive_frame(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / frag), now)
    got = ep.pop()
    assert got is not None and got[0] == payload and got[2] == 999
    stack.udp.close(ep)


def test_fuzzed_frames_are_dropped_and_counted_and_the_stack_survives() -> None:
    rng = random.Random(20261123)
    stack = make_stack()
    now = 1000.0
    for frame in fuzz_frames(rng, 3000):
        now += 0.001
        stack.receive_frame(frame, now)  # must never raise
        stack.poll(now)
    drops = stack.counters.drops()
    assert sum(drops.values()) > 1000, drops  # most of the garbage was recognised and counted
    layers = {k.split(".")[0] for k in drops}
    assert {"ethernet", "ipv4"} <= layers, drops
    normal_exchange_works(stack, now)


def test_memory_stays_bounded_under_fragment_and_garbage_floods() -> None:
    rng = random.Random(7)
    stack = make_stack(2)
    now = 0.0
    tracemalloc.start()
    try:
        def barrage(n: int) -> int:
            nonlocal now
            for frame in fuzz_frames(rng, n):
                now += 0.0005
                stack.receive_frame(frame, now)
                stack.poll(now)
            stack.take_output()
            return tracemalloc.get_traced_memory()[0]

        barrage(2000)  # warm up caches, reach the steady state of the bounded structures
        first = barrage(3000)
        second = barrage(3000)
    finally:
        tracemalloc.stop()
    # Unbounded growth would add memory with every batch; bounded structures plateau.
    assert second - first < 2 * 1024 * 1024, (first, second)
    normal_exchange_works(stack, now)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pure_noise_never_raises(seed: int) -> None:
    rng = random.Random(seed)
    stack = make_stack(seed)
    for i in range(2000):
        stack.receive_frame(rng.randbytes(rng.randrange(0, 200)), float(i))
        stack.receive_ip(rng.randbytes(rng.randrange(0, 200)), float(i))
        stack.poll(float(i))
    assert stack.counters.drops()
