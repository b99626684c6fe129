"""TCP segment codec: cross-checked with scapy both ways, option parsing checked against a
line-by-line port of Linux tcp_parse_options, checksums, the fast paths, hostile input."""
from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, Raw  # type: ignore[attr-defined]
from scapy.layers.inet import in4_chksum

from usocket.wire import MalformedError
from usocket.wire import tcp as wire_tcp
from usocket.wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    MAX_OPTIONS_LEN,
    OPT_EOL,
    OPT_MSS,
    OPT_NOP,
    OPT_SACK,
    OPT_SACK_PERM,
    OPT_TIMESTAMPS,
    OPT_WSCALE,
    PROTO_TCP,
    PSH,
    RST,
    SYN,
    TCP_HEADER_LEN,
    URG,
    Segment,
    TcpTemplate,
    build_tcp,
    data_options,
    parse_tcp,
    syn_options,
    tcp_checksum_ok,
)

SRC = bytes([10, 0, 0, 1])
DST = bytes([10, 0, 0, 2])

addr = st.binary(min_size=4, max_size=4)
port = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
ts_st = st.none() | st.tuples(u32, u32)
sack_st = st.lists(st.tuples(u32, u32), max_size=6)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dotted(a: bytes) -> str:
    return ".".join(map(str, a))


def header(sport: int = 1000, dport: int = 80, seq: int = 1, ack: int = 2, flags: int = ACK,
           window: int = 100, options: bytes = b"", payload: bytes = b"", doff: int | None = None) -> bytes:
    """A segment with a zero checksum and any data offset (for parsing with verify=False)."""
    words = doff if doff is not None else (TCP_HEADER_LEN + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, words << 4, flags, window, 0, 0) + options + payload


def linux_parse_options(opts: bytes) -> dict[str, Any]:
    """A line-by-line port of Linux tcp_parse_options (net/ipv4/tcp_input.c) without the
    connection-state conditions (SYN only, sysctls, sack_ok): the reference model."""
    r: dict[str, Any] = {"mss": None, "wscale": None, "sack_perm": False, "ts": None, "sack": (), "bad": False}
    length = len(opts)
    ptr = 0
    while length > 0:
        opcode = opts[ptr]
        ptr += 1
        if opcode == OPT_EOL:
            return r
        if opcode == OPT_NOP:
            length -= 1
            continue
        if length < 2:
            r["bad"] = True
            return r
        opsize = opts[ptr]
        ptr += 1
        if opsize < 2:  # "silly options"
            r["bad"] = True
            return r
        if opsize > length:  # don't parse partial options
            r["bad"] = True
            return r
        if opcode == OPT_MSS and opsize == 4:
            in_mss = int.from_bytes(opts[ptr:ptr + 2], "big")
            if in_mss:
                r["mss"] = in_mss
        elif opcode == OPT_WSCALE and opsize == 3:
            r["wscale"] = opts[ptr]
        elif opcode == OPT_TIMESTAMPS and opsize == 10:
            r["ts"] = (int.from_bytes(opts[ptr:ptr + 4], "big"), int.from_bytes(opts[ptr + 4:ptr + 8], "big"))
        elif opcode == OPT_SACK_PERM and opsize == 2:
            r["sack_perm"] = True
        elif opcode == OPT_SACK and opsize >= 10 and (opsize - 2) % 8 == 0:
            edges = [int.from_bytes(opts[ptr + k:ptr + k + 4], "big") for k in range(0, opsize - 2, 4)]
            r["sack"] = tuple(zip(edges[::2], edges[1::2], strict=True))
        ptr += opsize - 2
        length -= opsize
    return r


def options_of(seg: Segment) -> dict[str, Any]:
    ts = None if seg.ts_val is None else (seg.ts_val, seg.ts_ecr)
    if seg.ts_val is None:
        assert seg.ts_ecr is None
    return {"mss": seg.mss, "wscale": seg.wscale, "sack_perm": seg.sack_perm, "ts": ts, "sack": seg.sack,
            "bad": seg.options_bad}


def scapy_options(mss: int, wscale: int | None, sack_perm: bool, ts: tuple[int, int] | None) -> list[Any]:
    """What scapy decodes from syn_options(mss, wscale, sack_perm, ts)."""
    nop = ("NOP", None)
    out: list[Any] = [("MSS", mss)]
    if ts is not None and sack_perm:
        out += [("SAckOK", b""), ("Timestamp", ts)]
    elif ts is not None:
        out += [nop, nop, ("Timestamp", ts)]
    elif sack_perm:
        out += [nop, nop, ("SAckOK", b"")]
    if wscale is not None:
        out += [nop, ("WScale", wscale)]
    return out


# -- ours -> scapy -------------------------------------------------------------------------------
@st.composite
def option_bytes(draw: st.DrawFn) -> tuple[bytes, list[Any]]:
    """Options from our encoders, with what scapy must decode from them."""
    if draw(st.booleans()):
        mss, ws, sp, ts = draw(u16), draw(st.none() | st.integers(0, 14)), draw(st.booleans()), draw(ts_st)
        return syn_options(mss, ws, sp, ts), scapy_options(mss, ws, sp, ts)
    ts, sack = draw(ts_st), draw(sack_st)
    nop = ("NOP", None)
    expect: list[Any] = [nop, nop, ("Timestamp", ts)] if ts is not None else []
    blocks = sack[:3 if ts is not None else 4]
    if blocks:
        expect += [nop, nop, ("SAck", tuple(e for b in blocks for e in b))]
    return data_options(ts, sack), expect


@FAST
@given(addr, addr, port, port, u32, u32, st.integers(0, 0xFF), u16, option_bytes(), st.binary(max_size=1500))
def test_ours_to_scapy(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
                       window: int, opts: tuple[bytes, list[Any]], payload: bytes) -> None:
    options, expect = opts
    seg = build_tcp(src, dst, sport, dport, seq, ack, flags, window, options, payload)
    # The template builds the very same bytes, whatever the payload's type.
    tpl = TcpTemplate(src, dst, sport, dport)
    assert tpl.build(seq, ack, flags, window, options, payload) == seg
    assert tpl.build(seq, ack, flags, window, options, memoryview(payload)) == seg
    assert tpl.build(seq, ack, flags, window, options, bytearray(payload)) == seg
    ip = IP(bytes(IP(src=dotted(src), dst=dotted(dst), proto=PROTO_TCP) / Raw(seg)))
    t = ip[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, int(t.flags) & 0xFF, t.window, t.urgptr) == \
        (sport, dport, seq, ack, flags, window, 0)
    assert t.dataofs == 5 + len(options) // 4
    assert t.options == expect
    assert bytes(t.payload) == payload
    # scapy's own checksum of the same segment (checksum field zeroed) equals ours.
    zeroed = seg[:16] + b"\0\0" + seg[18:]
    assert in4_chksum(PROTO_TCP, ip, zeroed) == struct.unpack_from("!H", seg, 16)[0]
    assert tcp_checksum_ok(seg, src, dst)
    # And it parses back to what was built.
    p = parse_tcp(seg, src, dst)
    assert (p.sport, p.dport, p.seq, p.ack, p.flags, p.window, p.urg) == (sport, dport, seq, ack, flags, window, 0)
    assert p.payload == payload and p.header_len == 20 + len(options) and not p.options_bad


@FAST
@given(addr, addr, port, port, u32, u16, st.binary(max_size=600))
def test_build_tcp_urgent_pointer_matches_scapy(src: bytes, dst: bytes, sport: int, dport: int, seq: int,
                                                urg: int, payload: bytes) -> None:
    seg = build_tcp(src, dst, sport, dport, seq, 0, URG | ACK, 1, b"", payload, urg=urg)
    ref = bytes(IP(src=dotted(src), dst=dotted(dst)) / TCP(sport=sport, dport=dport, seq=seq, ack=0, flags="UA",
                                                           window=1, urgptr=urg) / Raw(payload))[20:]
    assert seg == ref
    assert parse_tcp(seg, src, dst).urg == urg


# -- scapy -> ours -------------------------------------------------------------------------------
scapy_opt = st.one_of(
    st.tuples(st.just("MSS"), u16),
    st.tuples(st.just("WScale"), st.integers(0, 255)),
    st.tuples(st.just("SAckOK"), st.just(b"")),
    st.tuples(st.just("Timestamp"), st.tuples(u32, u32)),
    st.tuples(st.just("SAck"), st.lists(u32, min_size=2, max_size=8).filter(lambda e: len(e) % 2 == 0).map(tuple)),
    st.tuples(st.just("NOP"), st.none()),
    st.tuples(st.just("EOL"), st.none()),
    st.tuples(st.sampled_from([6, 7, 9, 28, 30, 34, 254]), st.binary(max_size=6)),  # unknown kinds
)
_SIZE = {"MSS": 4, "WScale": 3, "SAckOK": 2, "Timestamp": 10, "NOP": 1, "EOL": 1}


def option_size(o: tuple[Any, Any]) -> int:
    name, value = o
    if name == "SAck":
        return 2 + 4 * len(value)
    return _SIZE[name] if isinstance(name, str) else 2 + len(value)


def expected_from_list(opts: list[tuple[Any, Any]]) -> dict[str, Any]:
    """What a list of well-formed options means: read up to EOL, the last of a kind wins, MSS 0
    ignored."""
    r: dict[str, Any] = {"mss": None, "wscale": None, "sack_perm": False, "ts": None, "sack": (), "bad": False}
    for name, value in opts:
        if name == "EOL":
            break
        if name == "MSS" and value:
            r["mss"] = value
        elif name == "WScale":
            r["wscale"] = value
        elif name == "SAckOK":
            r["sack_perm"] = True
        elif name == "Timestamp":
            r["ts"] = value
        elif name == "SAck":
            r["sack"] = tuple(zip(value[::2], value[1::2], strict=True))
    return r


@FAST
@given(addr, addr, port, port, u32, u32, st.integers(0, 0xFF), u16, u16, st.lists(scapy_opt, max_size=10),
       st.binary(max_size=1500))
def test_scapy_to_ours(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
                       window: int, urg: int, opts: list[tuple[Any, Any]], payload: bytes) -> None:
    assume(sum(map(option_size, opts)) <= MAX_OPTIONS_LEN)
    pkt = IP(src=dotted(src), dst=dotted(dst)) / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
                                                     window=window, urgptr=urg, options=opts) / Raw(payload)
    raw = bytes(pkt)[20:]
    seg = parse_tcp(raw, src, dst)
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window, seg.urg) == \
        (sport, dport, seq, ack, flags, window, urg)
    assert seg.header_len == TCP(raw).dataofs * 4
    assert seg.payload == payload and type(seg.payload) is bytes
    assert options_of(seg) == expected_from_list(opts)
    assert options_of(seg) == linux_parse_options(raw[20:seg.header_len])
    mv = parse_tcp(memoryview(raw), src, dst)
    assert isinstance(mv.payload, memoryview) and mv == seg


@pytest.mark.parametrize("opts", [
    [("Timestamp", (5, 6)), ("NOP", None), ("NOP", None)],  # 12 bytes, TS first: not the fast layout
    [("WScale", 7), ("Timestamp", (5, 6)), ("MSS", 1400), ("NOP", None), ("SAckOK", b"")],
    [("SAck", (1, 2, 3, 4, 5, 6, 7, 8)), ("NOP", None), ("NOP", None)],  # 4 blocks: 34 bytes
    [("MSS", 1460), ("MSS", 536)],  # the last wins
    [("MSS", 1460), ("MSS", 0)],  # 0 ignored, as Linux does
    [("MSS", 1460), ("EOL", None), ("WScale", 3)],  # nothing after EOL counts
    [("NOP", None), ("NOP", None), ("Timestamp", (0xFFFFFFFF, 0)), ("NOP", None), ("NOP", None),
     ("SAck", (1, 2, 3, 4, 5, 6))],  # what Linux sends with 3 SACK blocks
    [(30, b"\x01\x02"), ("WScale", 14)],  # an unknown kind skipped by its length
])
def test_scapy_odd_orders(opts: list[tuple[Any, Any]]) -> None:
    raw = bytes(IP(src=dotted(SRC), dst=dotted(DST)) / TCP(options=opts) / Raw(b"xyz"))[20:]
    seg = parse_tcp(raw, SRC, DST)
    assert options_of(seg) == expected_from_list(opts)
    assert seg.payload == b"xyz"


# -- malformed options: never raise, Linux semantics ------------------------------------------------
TS_OPT = bytes((OPT_TIMESTAMPS, 10)) + struct.pack("!II", 7, 8)


@pytest.mark.parametrize("options, expect", [
    # Stops (options_bad), keeping what came before.
    (b"\x01\x01\x01\x02", {"bad": True}),  # a kind as the last byte: no length
    (b"\x02\x00\x05\xb4", {"bad": True}),  # length 0
    (b"\x02\x01\x05\xb4", {"bad": True}),  # length 1
    (b"\x08\x0a\x00\x00", {"bad": True}),  # past the end
    (b"\x01\x01" + TS_OPT + b"\x1e\x00\x00\x00", {"ts": (7, 8), "bad": True}),  # TS kept, then length 0
    (b"\x02\x04\x05\xb4\x03\x03\x07\x1e\x09\x00\x00\x00", {"mss": 1460, "wscale": 7, "bad": True}),
    # Wrong lengths for known kinds: skipped, parsing goes on.
    (b"\x02\x03\x05\x03\x03\x07\x01\x01", {"wscale": 7}),  # MSS of length 3
    (b"\x03\x04\x07\x00\x04\x02\x01\x01", {"sack_perm": True}),  # WSCALE of length 4
    (b"\x04\x03\x00\x02\x04\x05\xb4\x01", {"mss": 1460}),  # SACK_PERM of length 3
    (b"\x08\x08" + b"\0" * 6 + b"\x03\x03\x09\x00", {"wscale": 9}),  # TS of length 8
    (b"\x01\x01\x08\x0b" + b"\0" * 9 + b"\x00\x00\x00", {}),  # TS of length 11
    (b"\x05\x02\x01\x01", {}),  # SACK with no block
    (b"\x05\x09" + b"\0" * 7 + b"\x04\x02\x00", {"sack_perm": True}),  # SACK of length 9
    (b"\x05\x0e" + b"\0" * 12 + b"\x01\x01", {}),  # SACK of length 14: not 2 + 8n
    # Unknown kinds skipped by their length; EOL ends (what follows is not looked at).
    (b"\xfe\x04\xff\xff\x02\x04\x02\x18", {"mss": 536}),
    (b"\x00\x02\x00\x00", {}),
    (b"\x03\x03\x05\x00\x02\x01\x00\x00", {"wscale": 5}),  # EOL, then a length-1 option: not bad
])
def test_malformed_options(options: bytes, expect: dict[str, Any]) -> None:
    base: dict[str, Any] = {"mss": None, "wscale": None, "sack_perm": False, "ts": None, "sack": (), "bad": False}
    seg = parse_tcp(header(options=options, payload=b"data"), verify=False)
    assert options_of(seg) == base | expect
    assert options_of(seg) == linux_parse_options(options)
    assert seg.payload == b"data" and seg.header_len == 20 + len(options)


def test_wscale_and_sack_are_raw() -> None:
    opts = b"\x01\x03\x03\xff" + b"\x01\x01\x05\x0a" + struct.pack("!II", 0xFFFFFFFF, 3)
    seg = parse_tcp(header(options=opts), verify=False)
    assert seg.wscale == 255  # not clamped to 14: the state machine does that
    assert seg.sack == ((0xFFFFFFFF, 3),)  # edges as sent, even "wrapped" ones


@st.composite
def option_soup(draw: st.DrawFn) -> bytes:
    """Option areas mixing well-formed options, wrong lengths, silly lengths and noise."""
    chunk = st.one_of(
        st.sampled_from([b"\x01", b"\x00", b"\x04\x02", b"\x02\x00", b"\x08\x01"]),
        st.builds(lambda v: b"\x02\x04" + v.to_bytes(2, "big"), u16),
        st.builds(lambda v: bytes((3, 3, v)), st.integers(0, 255)),
        st.builds(lambda a, b: b"\x08\x0a" + struct.pack("!II", a, b), u32, u32),
        st.builds(lambda e: bytes((5, 2 + 4 * len(e))) + b"".join(x.to_bytes(4, "big") for x in e),
                  st.lists(u32, max_size=9)),
        st.builds(lambda k, n, body: bytes((k, n)) + body, st.integers(0, 255), st.integers(0, 40),
                  st.binary(max_size=12)),
        st.binary(min_size=1, max_size=4),
    )
    raw = b"".join(draw(st.lists(chunk, max_size=12)))[:MAX_OPTIONS_LEN]
    return raw + draw(st.binary(min_size=(-len(raw)) % 4, max_size=(-len(raw)) % 4))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option_soup())
def test_options_match_linux_model(options: bytes) -> None:
    seg = parse_tcp(header(options=options, payload=b"p"), verify=False)
    assert options_of(seg) == linux_parse_options(options)
    assert len(seg.sack) <= 4 and seg.payload == b"p"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=20, max_size=90), st.booleans())
def test_any_bytes_parse_or_raise_malformed(data: bytes, verify: bool) -> None:
    try:
        seg = parse_tcp(data, SRC, DST, verify=verify)
    except MalformedError as e:
        assert e.reason in ("bad_offset", "bad_checksum")
        return
    assert 20 <= seg.header_len <= len(data)
    assert bytes(seg.payload) == data[seg.header_len:]
    assert options_of(seg) == linux_parse_options(data[20:seg.header_len])


# -- header errors -------------------------------------------------------------------------------
def test_header_errors() -> None:
    good = build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"", b"abc")
    with pytest.raises(MalformedError) as e:
        parse_tcp(good[:19], SRC, DST)
    assert e.value.reason == "too_short"
    for doff in (0, 1, 4):
        with pytest.raises(MalformedError) as e:
            parse_tcp(header(doff=doff, payload=b"\0" * 40), verify=False)
        assert e.value.reason == "bad_offset"
    with pytest.raises(MalformedError) as e:  # 24-byte header in a 23-byte buffer
        parse_tcp(header(doff=6, payload=b"\1\1\1"), verify=False)
    assert e.value.reason == "bad_offset"
    seg = parse_tcp(header(doff=6, payload=b"\1\1\1\1"), verify=False)  # exactly fits: no payload
    assert seg.header_len == 24 and seg.payload == b""
    seg = parse_tcp(header(doff=15, payload=b"\1" * 40 + b"x"), verify=False)
    assert seg.header_len == 60 and seg.payload == b"x"
    with pytest.raises(ValueError):  # verification needs the addresses
        parse_tcp(good)


# -- checksum ------------------------------------------------------------------------------------
@FAST
@given(st.binary(min_size=0, max_size=3000), addr, addr)
def test_checksum_odd_and_even_lengths(payload: bytes, src: bytes, dst: bytes) -> None:
    # Lengths across the 1 KB split in the payload sum, odd ones included.
    for p in (payload, payload + b"\x81"):
        seg = build_tcp(src, dst, 4321, 22, 9, 10, PSH | ACK, 65535, data_options((1, 2)), p)
        zeroed = seg[:16] + b"\0\0" + seg[18:]
        ip = IP(src=dotted(src), dst=dotted(dst), proto=PROTO_TCP)
        assert in4_chksum(PROTO_TCP, ip, zeroed) == struct.unpack_from("!H", seg, 16)[0]
        assert tcp_checksum_ok(seg, src, dst) and tcp_checksum_ok(memoryview(seg), src, dst)
        assert parse_tcp(seg, src, dst).payload == p


@pytest.mark.parametrize("size", [0, 1, 2, 3, 1447, 1448, 2046, 2047, 2048, 2049, 2050, 2051, 9001, 65495])
def test_checksum_sizes_matches_scapy(size: int) -> None:
    """Sizes around the payload sum's 2 KB split, and the largest segment."""
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    seg = TcpTemplate(SRC, DST, 80, 5555).build(7, 8, ACK, 9, data_options((1, 2)), payload)
    ip = IP(src=dotted(SRC), dst=dotted(DST), proto=PROTO_TCP)
    assert in4_chksum(PROTO_TCP, ip, seg[:16] + b"\0\0" + seg[18:]) == struct.unpack_from("!H", seg, 16)[0]
    assert parse_tcp(memoryview(seg), SRC, DST).payload == payload
    assert not tcp_checksum_ok(seg[:-1] + bytes([seg[-1] ^ 1]), SRC, DST) if size else True


@FAST
@given(st.binary(min_size=1, max_size=1600), st.integers(0, 100_000), st.integers(0, 7))
def test_corruption_detected(payload: bytes, pos: int, bit: int) -> None:
    seg = bytearray(build_tcp(SRC, DST, 1000, 2000, 1, 2, ACK, 100, data_options((3, 4), [(5, 6)]), payload))
    pos %= len(seg)
    seg[pos] ^= 1 << bit
    assert not tcp_checksum_ok(seg, SRC, DST)
    with pytest.raises(MalformedError) as e:
        parse_tcp(bytes(seg), SRC, DST)
    # A corrupted data offset may point past the end, which is seen before the checksum.
    assert e.value.reason == "bad_checksum" or (pos == 12 and e.value.reason == "bad_offset")
    if pos != 12:  # (the data offset byte) verify=False does not look at the checksum
        seg2 = parse_tcp(bytes(seg), verify=False)
        assert seg2.header_len == 20 + 12 + 12 and len(seg2.payload) == len(payload)


def test_checksum_covers_pseudo_header_and_zero_sum() -> None:
    seg = build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"", b"hello")
    assert tcp_checksum_ok(seg, SRC, DST)
    assert not tcp_checksum_ok(seg, SRC, bytes([10, 0, 0, 3]))  # other destination
    assert not tcp_checksum_ok(seg, DST, bytes([10, 0, 0, 3]))
    assert not tcp_checksum_ok(seg + b"\0\1", SRC, DST)  # the length is in the pseudo header
    # A segment whose data sums to zero: the checksum is 0 (as scapy and Linux compute it) and
    # the alternative representation 0xFFFF is accepted too.
    # With a 2-byte payload w the checksum is ~(S + w): w = the checksum of the payload 0 zeroes it.
    filler = build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"", b"\0\0")[16:18]
    seg = build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"", filler)
    assert seg[16:18] == b"\0\0"
    assert TcpTemplate(SRC, DST, 1, 2).build(3, 4, ACK, 5, b"", filler) == seg
    assert tcp_checksum_ok(seg, SRC, DST)
    assert tcp_checksum_ok(seg[:16] + b"\xff\xff" + seg[18:], SRC, DST)
    ip = IP(src=dotted(SRC), dst=dotted(DST), proto=PROTO_TCP)
    assert in4_chksum(PROTO_TCP, ip, seg) == 0


# -- fast paths ----------------------------------------------------------------------------------
def test_fast_paths_skip_the_option_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = wire_tcp._parse_options

    def spy(seg: Segment, opts: bytes) -> None:
        calls.append(opts)
        real(seg, opts)

    monkeypatch.setattr(wire_tcp, "_parse_options", spy)
    tpl = TcpTemplate(SRC, DST, 5000, 443)
    payload = bytes(range(256)) * 6
    seg = parse_tcp(memoryview(tpl.build(1, 2, ACK, 3, data_options((0xDEADBEEF, 0xFEEDFACE)), payload)), SRC, DST)
    assert (seg.ts_val, seg.ts_ecr, seg.mss, seg.wscale, seg.sack_perm, seg.sack, seg.options_bad) == \
        (0xDEADBEEF, 0xFEEDFACE, None, None, False, (), False)
    assert seg.header_len == 32 and seg.payload == payload and isinstance(seg.payload, memoryview)
    seg = parse_tcp(tpl.build(1, 2, FIN | ACK, 3), SRC, DST)
    assert (seg.ts_val, seg.ts_ecr, seg.mss, seg.sack, seg.options_bad, seg.flags) == (None, None, None, (), False,
                                                                                       FIN | ACK)
    assert calls == []
    # The same 12 bytes in another order take the loop and read the same.
    opts = TS_OPT[:2] + struct.pack("!II", 0xDEADBEEF, 0xFEEDFACE) + b"\x01\x01"
    seg = parse_tcp(header(options=opts), verify=False)
    assert (seg.ts_val, seg.ts_ecr, seg.options_bad) == (0xDEADBEEF, 0xFEEDFACE, False)
    assert calls == [opts]


def test_all_flags_and_fields() -> None:
    flags = FIN | SYN | RST | PSH | ACK | URG | ECE | CWR
    assert flags == 0xFF
    raw = build_tcp(SRC, DST, 0xFFFF, 0, 0xFFFFFFFF, 0x80000000, flags, 0xFFFF, b"", b"", urg=0xFFFF)
    seg = parse_tcp(raw, SRC, DST)
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window, seg.urg) == \
        (0xFFFF, 0, 0xFFFFFFFF, 0x80000000, 0xFF, 0xFFFF, 0xFFFF)
    assert seg == Segment(0xFFFF, 0, 0xFFFFFFFF, 0x80000000, 0xFF, 0xFFFF, 0xFFFF)
    assert "[SAFRPUEC]" in repr(seg)


# -- builders ------------------------------------------------------------------------------------
def test_build_rejects_bad_options() -> None:
    tpl = TcpTemplate(SRC, DST, 1, 2)
    for opts in (b"\x01", b"\x01" * 6, b"\x01" * 44):
        with pytest.raises(ValueError):
            build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, opts)
        with pytest.raises(ValueError):
            tpl.build(3, 4, ACK, 5, opts)
    assert parse_tcp(tpl.build(3, 4, ACK, 5, b"\x01" * 40), SRC, DST).header_len == 60
    with pytest.raises(ValueError):
        build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"", b"\0" * 65516)
    with pytest.raises(ValueError):
        TcpTemplate(SRC, b"\0" * 16, 1, 2)
    with pytest.raises(ValueError):
        TcpTemplate(SRC, DST, 1, 65536)


def test_syn_options_linux_layouts() -> None:
    # The brief's example: 02 04 mss | 04 02 08 0a val ecr | 01 03 03 ws
    assert syn_options(1460, 7, True, (0x01020304, 0)) == \
        bytes.fromhex("020405b4" "0402080a0102030400000000" "01030307")
    assert syn_options(1460, None, False, None) == bytes.fromhex("020405b4")
    assert syn_options(536, None, True, None) == bytes.fromhex("02040218" "01010402")
    assert syn_options(1460, None, False, (5, 6)) == bytes.fromhex("020405b4" "0101080a0000000500000006")
    assert syn_options(1460, 14, False, None) == bytes.fromhex("020405b4" "0103030e")
    assert syn_options(1460, 0, True, None) == bytes.fromhex("020405b4" "01010402" "01030300")
    assert syn_options(1460, 2, False, (5, 6)) == bytes.fromhex("020405b4" "0101080a0000000500000006" "01030302")
    assert syn_options(1460, None, True, (5, 6)) == bytes.fromhex("020405b4" "0402080a0000000500000006")
    for mss in (0, 1, 65535):
        for ws in (None, 0, 14):
            for sp in (False, True):
                for ts in (None, (0xFFFFFFFF, 1)):
                    o = syn_options(mss, ws, sp, ts)
                    assert len(o) % 4 == 0 and len(o) <= 20
                    seg = parse_tcp(header(flags=SYN, options=o), verify=False)
                    assert (seg.mss, seg.wscale, seg.sack_perm, seg.options_bad) == (mss or None, ws, sp, False)
                    assert (None if seg.ts_val is None else (seg.ts_val, seg.ts_ecr)) == ts


def test_data_options_layouts_and_truncation() -> None:
    blocks = [(i * 100, i * 100 + 50) for i in range(1, 7)]
    assert data_options(None) == b""
    assert data_options(None, []) == b""
    assert data_options((1, 2)) == bytes.fromhex("0101080a0000000100000002")
    assert data_options((1, 2), blocks[:1]) == bytes.fromhex("0101080a0000000100000002" "0101050a") + \
        struct.pack("!II", 100, 150)
    with_ts = data_options((1, 2), blocks)
    assert len(with_ts) == 40 and with_ts[12:16] == bytes((1, 1, 5, 26))  # 3 blocks fit
    seg = parse_tcp(header(options=with_ts), verify=False)
    assert seg.sack == tuple(blocks[:3]) and (seg.ts_val, seg.ts_ecr) == (1, 2)
    without = data_options(None, blocks)
    assert len(without) == 36 and without[:4] == bytes((1, 1, 5, 34))  # 4 blocks fit
    seg = parse_tcp(header(options=without), verify=False)
    assert seg.sack == tuple(blocks[:4]) and seg.ts_val is None
    assert data_options(None, tuple(blocks[:2])) == data_options(None, blocks[:2])


@FAST
@given(ts_st, sack_st)
def test_data_options_roundtrip(ts: tuple[int, int] | None, sack: list[tuple[int, int]]) -> None:
    o = data_options(ts, sack)
    assert len(o) % 4 == 0 and len(o) <= MAX_OPTIONS_LEN
    seg = parse_tcp(header(options=o), verify=False)
    assert (None if seg.ts_val is None else (seg.ts_val, seg.ts_ecr)) == ts
    assert seg.sack == tuple(sack[:3 if ts is not None else 4])
