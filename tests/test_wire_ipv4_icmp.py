"""IPv4 and ICMP codecs, cross-checked with scapy in both directions."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror

from usocket.wire import MalformedError
from usocket.wire.checksum import checksum, verify
from usocket.wire.icmp import (
    DEST_UNREACH,
    ECHO_REPLY,
    ECHO_REQUEST,
    ERROR_DATAGRAM_LIMIT,
    FRAG_NEEDED,
    PARAM_PROBLEM,
    build_echo,
    build_error,
    frag_needed_rest,
    param_problem_rest,
    parse_icmp,
    parse_quote,
    quote,
)
from usocket.wire.ipv4 import (
    IPv4Template,
    build_ipv4,
    parse_ipv4,
    parse_ipv4_quoted,
    reassembled_header,
)

addr = st.binary(min_size=4, max_size=4)
SETTINGS = settings(max_examples=150, deadline=None)


def a2s(raw: bytes) -> str:
    return ".".join(map(str, raw))


@st.composite
def ip_fields(draw: st.DrawFn) -> dict:
    df, mf = draw(st.booleans()), draw(st.booleans())
    return dict(src=draw(addr), dst=draw(addr), proto=draw(st.integers(0, 255)),
                tos=draw(st.integers(0, 255)), ttl=draw(st.integers(0, 255)),
                ident=draw(st.integers(0, 0xFFFF)), df=df, mf=mf,
                frag_offset=draw(st.integers(0, 0x1FFF)) * 8,
                options=b"\x01" * (4 * draw(st.integers(0, 10))),  # NOPs: any IHL from 5 to 15
                payload=draw(st.binary(max_size=200)))


# -- IPv4 ------------------------------------------------------------------------------------------
@SETTINGS
@given(ip_fields())
def test_parse_ipv4_reads_scapy_packets(f: dict) -> None:
    flags = (2 if f["df"] else 0) | (1 if f["mf"] else 0)
    pkt = IP(src=a2s(f["src"]), dst=a2s(f["dst"]), proto=f["proto"], tos=f["tos"], ttl=f["ttl"],
             id=f["ident"], flags=flags, frag=f["frag_offset"] // 8, options=f["options"]) / f["payload"]
    raw = bytes(pkt)
    hdr, payload = parse_ipv4(raw)
    assert bytes(payload) == f["payload"]
    assert (hdr.src, hdr.dst, hdr.proto, hdr.tos, hdr.ttl, hdr.ident) == (
        f["src"], f["dst"], f["proto"], f["tos"], f["ttl"], f["ident"])
    assert (hdr.df, hdr.mf, hdr.frag_offset) == (f["df"], f["mf"], f["frag_offset"])
    assert hdr.header_len == 20 + len(f["options"]) == IP(raw).ihl * 4
    assert hdr.total_length == len(raw) and hdr.checksum == IP(raw).chksum
    assert hdr.raw + bytes(payload) == raw
    # A memoryview stays a (zero-copy) memoryview slice.
    _, mv_payload = parse_ipv4(memoryview(raw))
    assert isinstance(mv_payload, memoryview) and bytes(mv_payload) == f["payload"]


@SETTINGS
@given(ip_fields())
def test_build_ipv4_is_read_by_scapy(f: dict) -> None:
    raw = build_ipv4(f["src"], f["dst"], f["proto"], f["payload"], tos=f["tos"], ttl=f["ttl"],
                     ident=f["ident"], df=f["df"], mf=f["mf"], frag_offset=f["frag_offset"],
                     options=f["options"])
    pkt = IP(raw)
    assert (pkt.src, pkt.dst, pkt.proto, pkt.tos, pkt.ttl, pkt.id) == (
        a2s(f["src"]), a2s(f["dst"]), f["proto"], f["tos"], f["ttl"], f["ident"])
    assert pkt.flags.DF == f["df"] and pkt.flags.MF == f["mf"] and pkt.frag * 8 == f["frag_offset"]
    assert pkt.len == len(raw) and pkt.ihl * 4 == 20 + len(f["options"])
    assert bytes(pkt.payload) == f["payload"]
    # scapy recomputes the checksum to the value we wrote.
    check = pkt.copy()
    del check.chksum
    assert IP(bytes(check)).chksum == pkt.chksum
    assert verify(raw[:pkt.ihl * 4])


@SETTINGS
@given(ip_fields())
def test_template_matches_build_ipv4(f: dict) -> None:
    t = IPv4Template(f["src"], f["dst"], f["proto"], ttl=f["ttl"], tos=f["tos"])
    got = t.build(f["payload"], f["ident"], df=f["df"], mf=f["mf"], frag_offset=f["frag_offset"])
    want = build_ipv4(f["src"], f["dst"], f["proto"], f["payload"], tos=f["tos"], ttl=f["ttl"],
                      ident=f["ident"], df=f["df"], mf=f["mf"], frag_offset=f["frag_offset"])
    assert got == want


def test_padding_stripped_by_total_length() -> None:
    raw = build_ipv4(b"\x0a\0\0\2", b"\x0a\0\0\1", 17, b"abc")
    hdr, payload = parse_ipv4(raw + b"\0" * 23)  # Ethernet minimum-frame padding
    assert bytes(payload) == b"abc" and hdr.total_length == 23


def corrupt(raw: bytes, offset: int, value: int, fix_checksum: bool = True) -> bytes:
    b = bytearray(raw)
    b[offset] = value
    if fix_checksum:
        hl = (b[0] & 15) * 4 if (b[0] & 15) >= 5 else 20
        b[10:12] = b"\0\0"
        b[10:12] = checksum(bytes(b[:hl])).to_bytes(2, "big")
    return bytes(b)


GOOD = build_ipv4(b"\x0a\0\0\2", b"\x0a\0\0\1", 17, b"x" * 12)


@pytest.mark.parametrize("raw,reason", [
    (GOOD[:19], "truncated"),
    (b"", "truncated"),
    (corrupt(GOOD, 0, 0x65), "bad_version"),
    (corrupt(GOOD, 0, 0x44), "bad_ihl"),
    (corrupt(GOOD, 0, 0x4F)[:40], "truncated"),  # IHL 15 (60 bytes) in a 32-byte packet
    (corrupt(GOOD, 3, 19), "bad_length"),  # total length below the header length
    (corrupt(GOOD, 3, 200), "bad_length"),  # total length beyond the buffer
    (corrupt(GOOD, 8, 1, fix_checksum=False), "bad_checksum"),
])
def test_parse_ipv4_rejects(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedError) as ei:
        parse_ipv4(raw)
    assert ei.value.reason == reason


def test_parse_ipv4_checksum_check_optional() -> None:
    bad = corrupt(GOOD, 8, 1, fix_checksum=False)
    hdr, _ = parse_ipv4(bad, verify_checksum=False)
    assert hdr.ttl == 1


def test_quoted_header_tolerates_truncation_and_bad_checksum() -> None:
    full = build_ipv4(b"\x0a\0\0\1", b"\x0a\0\0\2", 17, struct.pack("!HHHH", 5000, 53, 1008, 0) + b"q" * 1000)
    cut = corrupt(full, 8, 3, fix_checksum=False)[:28]
    hdr, l4 = parse_ipv4_quoted(cut)
    assert hdr.total_length == 1028 and hdr.ttl == 3 and l4 == full[20:28]
    with pytest.raises(MalformedError) as ei:
        parse_ipv4_quoted(full[:27])  # fewer than 8 transport bytes
    assert ei.value.reason == "truncated"
    assert parse_ipv4_quoted(full[:20], l4_min=0)[1] == b""


def test_reassembled_header() -> None:
    frag = build_ipv4(b"\x0a\0\0\2", b"\x0a\0\0\1", 17, b"y" * 8, ident=77, df=False, mf=True,
                      options=b"\x01\x01\x01\x01")
    first, _ = parse_ipv4(frag)
    hdr = reassembled_header(first, 3000)
    assert hdr.total_length == 3024 and not hdr.mf and hdr.frag_offset == 0 and hdr.ident == 77
    assert verify(hdr.raw) and parse_ipv4(hdr.raw + b"z" * 3000)[0] == hdr
    with pytest.raises(ValueError):
        reassembled_header(first, 65535 - 23)


def test_build_ipv4_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        build_ipv4(b"\0" * 4, b"\0" * 4, 17, b"", frag_offset=12)
    with pytest.raises(ValueError):
        build_ipv4(b"\0" * 4, b"\0" * 4, 17, b"", options=b"\x01" * 41)
    with pytest.raises(ValueError):
        IPv4Template(b"\0" * 4, b"\0" * 4, 17).header(65516, 1)


# -- ICMP ------------------------------------------------------------------------------------------
@SETTINGS
@given(st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_echo_both_ways(reply: bool, ident: int, seq: int, data: bytes) -> None:
    ours = build_echo(ident, seq, data, reply=reply)
    pkt = ICMP(ours)
    assert pkt.type == (ECHO_REPLY if reply else ECHO_REQUEST) and pkt.code == 0
    assert (pkt.id, pkt.seq, bytes(pkt.payload)) == (ident, seq, data)
    check = pkt.copy()
    del check.chksum
    assert ICMP(bytes(check)).chksum == pkt.chksum
    theirs = bytes(ICMP(type=0 if reply else 8, id=ident, seq=seq) / data)
    msg = parse_icmp(theirs)
    assert (msg.type, msg.ident, msg.seq, msg.data) == ((0 if reply else 8), ident, seq, data)
    assert not msg.is_error


OFFENDING = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=4000, dport=53) / (b"d" * 40))


@SETTINGS
@given(st.integers(0, 15), st.integers(0, 0xFFFF))
def test_dest_unreachable_both_ways(code: int, mtu: int) -> None:
    rest = frag_needed_rest(mtu) if code == FRAG_NEEDED else 0
    ours = build_error(DEST_UNREACH, code, OFFENDING, rest=rest)
    pkt = ICMP(ours)
    assert pkt.type == 3 and pkt.code == code
    if code == FRAG_NEEDED:
        assert pkt.nexthopmtu == mtu
    assert pkt[IPerror].src == "10.0.0.1" and pkt[UDPerror].dport == 53
    theirs = bytes(ICMP(type=3, code=code, nexthopmtu=mtu if code == FRAG_NEEDED else 0)
                   / IPerror(OFFENDING))
    msg = parse_icmp(theirs)
    assert msg.is_error and msg.code == code and (code != FRAG_NEEDED or msg.mtu == mtu)
    qh, l4 = parse_quote(msg)
    assert qh.src == b"\x0a\0\0\1" and qh.proto == 17 and l4[:4] == struct.pack("!HH", 4000, 53)


def test_param_problem_and_time_exceeded() -> None:
    msg = parse_icmp(build_error(PARAM_PROBLEM, 0, OFFENDING, rest=param_problem_rest(9)))
    assert msg.pointer == 9 and ICMP(build_error(PARAM_PROBLEM, 0, OFFENDING,
                                                 rest=param_problem_rest(9))).ptr == 9
    theirs = parse_icmp(bytes(ICMP(type=11, code=1) / IPerror(OFFENDING)))
    assert (theirs.type, theirs.code) == (11, 1) and parse_quote(theirs)[0].dst == b"\x0a\0\0\2"


def test_error_quote_keeps_error_within_576_bytes() -> None:
    big = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (b"p" * 1400))
    err = build_error(DEST_UNREACH, 3, big)
    assert 20 + len(err) == ERROR_DATAGRAM_LIMIT
    assert err[8:] == big[:ERROR_DATAGRAM_LIMIT - 28]
    assert quote(OFFENDING) == OFFENDING  # short datagrams are quoted whole


def test_parse_icmp_rejects() -> None:
    with pytest.raises(MalformedError) as ei:
        parse_icmp(b"\x08\0\0")
    assert ei.value.reason == "truncated"
    bad = bytearray(build_echo(1, 2, b"hello"))
    bad[-1] ^= 1
    with pytest.raises(MalformedError) as ei:
        parse_icmp(bytes(bad))
    assert ei.value.reason == "bad_checksum"
    with pytest.raises(MalformedError) as ei:
        parse_quote(parse_icmp(build_error(3, 3, OFFENDING[:24])))
    assert ei.value.reason == "truncated"
