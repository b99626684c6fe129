"""Ethernet II and ARP codecs, cross-checked with scapy in both directions."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Dot1Q, Ether, getmacbyip
from scapy.packet import Raw

from usocket.wire import MalformedError
from usocket.wire.addr import ip_aton, ip_ntoa, mac_aton, mac_ntoa
from usocket.wire.arp import ARP_LEN, OP_REPLY, OP_REQUEST, ArpPacket, build_arp, parse_arp
from usocket.wire.ethernet import (
    ETH_HLEN,
    ETH_ZLEN,
    EthernetHeader,
    build_ethernet,
    build_header,
    ipv4_multicast_mac,
    is_multicast_mac,
    is_unicast_mac,
    parse_ethernet,
)

macs = st.binary(min_size=6, max_size=6)
ips = st.binary(min_size=4, max_size=4)
# Ethernet II EtherTypes, minus the VLAN tags the parser refuses by design.
ethertypes = st.integers(0x0600, 0xFFFF).filter(lambda t: t not in (0x8100, 0x88A8, 0x9100, 0x9200))
payloads = st.binary(max_size=100)


# -- Ethernet ------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(dst=macs, src=macs, ethertype=ethertypes, payload=payloads)
def test_build_ethernet_parsed_by_scapy(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> None:
    frame = build_ethernet(dst, src, ethertype, payload)
    assert len(frame) == ETH_HLEN + len(payload)
    pkt = Ether(frame)
    assert mac_aton(pkt.dst) == dst and mac_aton(pkt.src) == src and pkt.type == ethertype
    assert bytes(pkt.payload)[: len(payload)] == payload


@settings(max_examples=150, deadline=None)
@given(dst=macs, src=macs, ethertype=ethertypes, payload=payloads)
def test_scapy_ethernet_parsed_by_us(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> None:
    raw = bytes(Ether(dst=mac_ntoa(dst), src=mac_ntoa(src), type=ethertype) / Raw(payload))
    for buf in (raw, memoryview(raw), bytearray(raw)):
        hdr = parse_ethernet(buf)
        assert hdr == EthernetHeader(dst, src, ethertype)
        assert type(hdr.dst) is bytes and type(hdr.src) is bytes
    assert raw[ETH_HLEN:] == payload


def test_build_header_is_frame_prefix() -> None:
    dst, src = mac_aton("02:00:00:00:00:02"), mac_aton("02:00:00:00:00:01")
    assert build_header(dst, src, 0x0800) + b"xy" == build_ethernet(dst, src, 0x0800, b"xy")
    with pytest.raises(ValueError):
        build_header(b"\x00" * 5, src, 0x0800)


def test_build_ethernet_pad() -> None:
    dst, src = b"\xff" * 6, mac_aton("02:00:00:00:00:01")
    short = build_ethernet(dst, src, 0x0806, b"a" * 28, pad=True)
    assert len(short) == ETH_ZLEN and short.endswith(bytes(ETH_ZLEN - 42))
    assert len(build_ethernet(dst, src, 0x0806, b"a" * 28)) == 42  # no padding unless asked
    big = build_ethernet(dst, src, 0x0800, b"b" * 100, pad=True)
    assert len(big) == 114  # long frames untouched


@pytest.mark.parametrize("n", range(ETH_HLEN))
def test_ethernet_too_short(n: int) -> None:
    with pytest.raises(MalformedError) as ei:
        parse_ethernet(bytes(Ether(type=0x0800))[:n])
    assert ei.value.reason == "too_short"


@pytest.mark.parametrize("tpid", [0x8100, 0x88A8])
def test_ethernet_vlan_tagged_refused(tpid: int) -> None:
    raw = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", type=tpid) / Dot1Q(vlan=5) / ARP())
    with pytest.raises(MalformedError) as ei:
        parse_ethernet(raw)
    assert ei.value.reason == "vlan_tagged"


def test_ethernet_8023_length_frame_refused() -> None:
    raw = bytes(Ether(dst="01:80:c2:00:00:00", type=38) / Raw(b"\x42\x42\x03" + bytes(35)))  # STP-ish LLC
    with pytest.raises(MalformedError) as ei:
        parse_ethernet(raw)
    assert ei.value.reason == "not_ethernet_ii"
    assert parse_ethernet(raw[:12] + b"\x06\x00").ethertype == 0x0600  # smallest EtherType is fine


def test_mac_classes() -> None:
    assert is_multicast_mac(b"\xff" * 6) and is_multicast_mac(mac_aton("01:00:5e:00:00:01"))
    assert not is_multicast_mac(mac_aton("02:00:00:00:00:01"))
    assert is_unicast_mac(mac_aton("00:11:22:33:44:55"))
    assert not is_unicast_mac(b"\x00" * 6) and not is_unicast_mac(b"\xff" * 6)
    assert not is_unicast_mac(mac_aton("33:33:00:00:00:01"))


@given(ip=st.tuples(st.integers(224, 239), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
def test_ipv4_multicast_mac_matches_scapy(ip: tuple[int, int, int, int]) -> None:
    text = ".".join(map(str, ip))
    assert mac_ntoa(ipv4_multicast_mac(ip_aton(text))) == getmacbyip(text)


# -- ARP -----------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(op=st.sampled_from([OP_REQUEST, OP_REPLY]), sha=macs, spa=ips, tha=macs, tpa=ips)
def test_build_arp_parsed_by_scapy(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> None:
    raw = build_arp(op, sha, spa, tha, tpa)
    assert len(raw) == ARP_LEN
    a = ARP(raw)
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, op)
    assert mac_aton(a.hwsrc) == sha and ip_aton(a.psrc) == spa
    assert mac_aton(a.hwdst) == tha and ip_aton(a.pdst) == tpa
    assert not a.payload  # nothing after the 28 bytes


@settings(max_examples=150, deadline=None)
@given(op=st.sampled_from([OP_REQUEST, OP_REPLY]), sha=macs, spa=ips, tha=macs, tpa=ips,
       pad=st.binary(max_size=32))
def test_scapy_arp_parsed_by_us(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes, pad: bytes) -> None:
    raw = bytes(ARP(op=op, hwsrc=mac_ntoa(sha), psrc=ip_ntoa(spa), hwdst=mac_ntoa(tha), pdst=ip_ntoa(tpa)))
    p = parse_arp(memoryview(raw + pad))  # trailing Ethernet padding is ignored
    assert p == ArpPacket(op, sha, spa, tha, tpa)
    assert all(type(f) is bytes for f in p[1:])


def test_arp_in_padded_scapy_frame() -> None:
    frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:02")
                  / ARP(op=1, hwsrc="02:00:00:00:00:02", psrc="10.0.0.2", pdst="10.0.0.1"))
    frame += bytes(ETH_ZLEN - len(frame))
    hdr = parse_ethernet(frame)
    assert hdr.ethertype == 0x0806
    p = parse_arp(memoryview(frame)[ETH_HLEN:])
    assert p.op == OP_REQUEST and p.spa == ip_aton("10.0.0.2") and p.tpa == ip_aton("10.0.0.1")


@pytest.mark.parametrize("field,value,reason", [
    ("hwtype", 6, "bad_htype"),
    ("ptype", 0x86DD, "bad_ptype"),
    ("hwlen", 8, "bad_hlen"),
    ("plen", 16, "bad_plen"),
    ("op", 3, "bad_op"),  # RARP request
    ("op", 0, "bad_op"),
])
def test_arp_bad_fields(field: str, value: int, reason: str) -> None:
    good = ARP(op=1, hwsrc="02:00:00:00:00:02", psrc="10.0.0.2", pdst="10.0.0.1")
    raw = bytes(good)
    # Patch the field in the raw bytes (scapy would otherwise change the address lengths).
    offsets = {"hwtype": (0, 2), "ptype": (2, 2), "hwlen": (4, 1), "plen": (5, 1), "op": (6, 2)}
    off, size = offsets[field]
    bad = raw[:off] + value.to_bytes(size, "big") + raw[off + size:]
    with pytest.raises(MalformedError) as ei:
        parse_arp(bad)
    assert ei.value.reason == reason
    parse_arp(raw)  # the unpatched packet is fine


@pytest.mark.parametrize("n", [0, 1, 8, 27])
def test_arp_truncated(n: int) -> None:
    raw = build_arp(OP_REQUEST, b"\x02" * 6, b"\x0a\x00\x00\x02", b"\x00" * 6, b"\x0a\x00\x00\x01")
    with pytest.raises(MalformedError) as ei:
        parse_arp(raw[:n])
    assert ei.value.reason == "too_short"


def test_build_arp_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError):
        build_arp(OP_REQUEST, b"\x02" * 6, b"\x0a\x00\x00", b"\x00" * 6, b"\x0a\x00\x00\x01")
    with pytest.raises(ValueError):
        build_arp(OP_REQUEST, b"\x02" * 8, b"\x0a\x00\x00\x02", b"\x00" * 6, b"\x0a\x00\x00\x01")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_parsers_only_raise_malformed(data: bytes) -> None:
    for parse in (parse_ethernet, parse_arp):
        try:
            parse(data)
        except MalformedError as e:
            assert e.reason.replace("_", "").isalpha()
