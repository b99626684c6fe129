"""The Ethernet layer inside a real Stack: demultiplexing, filtering, framing, counters."""
from __future__ import annotations

import random

import pytest
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from usocket.config import StackConfig
from usocket.proto.ethernet import EthernetLayer
from usocket.stack import Stack
from usocket.wire.addr import mac_aton

OUR = "02:00:00:00:00:01"
PEER = "02:00:00:00:00:02"
TEST_TYPE = 0x88B5  # IEEE local experimental EtherType


def make_stack() -> tuple[Stack, list[tuple[bytes, bool]]]:
    stack = Stack(StackConfig(), rng=random.Random(1))
    got: list[tuple[bytes, bool]] = []

    def handler(payload: memoryview, csum_ok: bool) -> None:
        assert isinstance(payload, memoryview)
        got.append((bytes(payload), csum_ok))

    stack.ethernet.register(TEST_TYPE, handler)
    return stack, got


def frame(dst: str = OUR, src: str = PEER, type_: int = TEST_TYPE, data: bytes = b"hello") -> bytes:
    return bytes(Ether(dst=dst, src=src, type=type_) / Raw(data))


def test_unicast_and_broadcast_delivered_with_payload_view() -> None:
    stack, got = make_stack()
    stack.receive_frame(frame(data=b"one"), 1.0, csum_ok=True)
    stack.receive_frame(frame(dst="ff:ff:ff:ff:ff:ff", data=b"two" + bytes(43)), 2.0)  # padded
    assert got == [(b"one", True), (b"two" + bytes(43), False)]
    c = stack.counters["ethernet"]
    assert c["rx"] == 2 and c["rx.broadcast"] == 1
    assert not stack.counters.drops("ethernet")


@pytest.mark.parametrize("raw,reason", [
    (frame()[:13], "too_short"),
    (b"", "too_short"),
    (frame(dst="02:00:00:00:00:99"), "not_for_us"),
    (frame(dst="01:00:5e:00:00:fb"), "multicast"),
    (frame(src=OUR), "own_src"),
    (frame(dst="ff:ff:ff:ff:ff:ff", src="01:02:03:04:05:06"), "bad_src"),
    (frame(type_=0x86DD), "unknown_ethertype"),
    (bytes(Ether(dst=OUR, src=PEER) / Dot1Q(vlan=7, type=TEST_TYPE) / Raw(b"x")), "vlan_tagged"),
    (bytes(Ether(dst=OUR, src=PEER, type=100) / Raw(bytes(100))), "not_ethernet_ii"),
])
def test_drops_counted(raw: bytes, reason: str) -> None:
    stack, got = make_stack()
    stack.receive_frame(raw, 0.0)
    assert got == []
    assert stack.counters.drops("ethernet") == {f"ethernet.drop.{reason}": 1}
    assert stack.take_output() == []


def test_multicast_group_accepted_when_joined() -> None:
    stack, got = make_stack()
    stack.ethernet.multicast.add(mac_aton("01:00:5e:00:00:fb"))
    stack.receive_frame(frame(dst="01:00:5e:00:00:fb"), 0.0)
    stack.receive_frame(frame(dst="01:00:5e:00:00:fc"), 0.0)
    assert got == [(b"hello", False)]
    assert stack.counters["ethernet"]["rx.multicast"] == 1
    assert stack.counters.drops("ethernet") == {"ethernet.drop.multicast": 1}


def test_link_broadcast_flag_visible_to_handlers_only() -> None:
    stack, _ = make_stack()
    eth: EthernetLayer = stack.ethernet
    seen: list[bool] = []

    def handler(payload: memoryview, csum_ok: bool) -> None:
        seen.append(eth.rx_link_broadcast)
        if bytes(payload) == b"boom":
            raise RuntimeError("a handler bug")

    eth.register(TEST_TYPE, handler)
    eth.multicast.add(mac_aton("01:00:5e:00:00:fb"))
    stack.receive_frame(frame(dst="ff:ff:ff:ff:ff:ff"), 0.0)
    assert eth.rx_link_broadcast is False  # reset once the handler returned
    stack.receive_frame(frame(), 0.0)
    stack.receive_frame(frame(dst="01:00:5e:00:00:fb"), 0.0)
    with pytest.raises(RuntimeError):
        stack.receive_frame(frame(dst="ff:ff:ff:ff:ff:ff", data=b"boom"), 0.0)
    assert seen == [True, False, True, True] and eth.rx_link_broadcast is False
    stack.receive_ip(bytes(20), 0.0)  # NFQUEUE path: never a link broadcast
    assert eth.rx_link_broadcast is False


def test_unregister() -> None:
    stack, got = make_stack()
    stack.ethernet.unregister(TEST_TYPE)
    stack.receive_frame(frame(), 0.0)
    assert got == [] and stack.counters["ethernet"]["drop.unknown_ethertype"] == 1


def test_layers_registered_arp_and_ipv4() -> None:
    stack, _ = make_stack()
    assert stack.ethernet.handlers[0x0806] == stack.arp.receive
    assert 0x0800 in stack.ethernet.handlers


def test_send_builds_frame() -> None:
    stack, _ = make_stack()
    stack.ethernet.send(mac_aton(PEER), 0x0800, b"x" * 30)
    stack.ethernet.send(mac_aton(PEER), 0x0800, memoryview(b"y" * 30))
    out = stack.take_output()
    assert len(out) == 2 and all(type(f) is bytes for f in out)
    for f, ch in zip(out, b"xy", strict=True):
        e = Ether(f)
        assert (e.dst, e.src, e.type) == (PEER, OUR, 0x0800)
        assert f[14:] == bytes([ch]) * 30 and len(f) == 44  # no padding by default
    assert stack.counters["ethernet"]["tx"] == 2


def test_send_pads_when_asked() -> None:
    stack, _ = make_stack()
    stack.ethernet.pad_to = 60
    stack.ethernet.send(mac_aton(PEER), 0x0806, b"a" * 28)
    stack.ethernet.send(mac_aton(PEER), 0x0800, b"b" * 100)
    short, long_ = stack.take_output()
    assert len(short) == 60 and short[42:] == bytes(18)
    assert len(long_) == 114


def test_send_oversize_dropped() -> None:
    stack, _ = make_stack()
    stack.ethernet.send(mac_aton(PEER), 0x0800, bytes(1500))
    stack.ethernet.send(mac_aton(PEER), 0x0800, bytes(1501))
    assert [len(f) for f in stack.take_output()] == [1514]
    assert stack.counters["ethernet"]["drop.tx_oversize"] == 1


def test_header_cache_bounded_and_follows_our_mac() -> None:
    stack, _ = make_stack()
    eth: EthernetLayer = stack.ethernet
    eth.header_cache_max = 8
    h1 = eth.header(mac_aton(PEER), 0x0800)
    assert eth.header(mac_aton(PEER), 0x0800) is h1  # cached template reused
    for i in range(50):
        eth.header(bytes([2, 0, 0, 0, 1, i]), 0x0800)
    assert len(eth._headers) <= 8
    stack.config.mac = mac_aton("02:00:00:00:00:aa")
    stack.ethernet.send(mac_aton(PEER), 0x0800, b"z")
    assert Ether(stack.take_output()[0]).src == "02:00:00:00:00:aa"
    # ... and received frames are now filtered on the new MAC.
    stack.receive_frame(bytes(Ether(dst=PEER, src="02:00:00:00:00:aa") / ARP()), 0.0)
    assert stack.counters["ethernet"]["drop.not_for_us"] == 1
