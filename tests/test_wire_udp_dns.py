"""UDP and DNS codecs, cross-checked with scapy both ways, plus hostile-input rejection."""
from __future__ import annotations

import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import DNS, DNSQR, DNSRR, DNSRRSOA, IP, UDP, Raw  # type: ignore[attr-defined]

from usocket.wire import MalformedError
from usocket.wire import dns as wire_dns
from usocket.wire.checksum import ones_sum, pseudo_header_sum
from usocket.wire.dns import (
    CLASS_IN,
    NXDOMAIN,
    TYPE_A,
    TYPE_CNAME,
    TYPE_MX,
    TYPE_PTR,
    TYPE_SOA,
    DnsHeader,
    DnsMessage,
    DnsQuestion,
    DnsRecord,
    Soa,
    build_message,
    build_query,
    decode_name,
    encode_name,
    name_key,
    parse_header,
    parse_message,
    parse_question,
    reverse_name,
    wire_key,
)
from usocket.wire.udp import MAX_UDP_PAYLOAD, build_udp, parse_udp

SRC = bytes([10, 0, 0, 1])
DST = bytes([10, 0, 0, 2])

addr = st.binary(min_size=4, max_size=4)
port = st.integers(0, 0xFFFF)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- UDP -----------------------------------------------------------------------------------------
@FAST
@given(addr, addr, port, port, st.binary(max_size=1500))
def test_udp_ours_to_scapy(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> None:
    dgram = build_udp(sport, dport, payload, src, dst)
    ip = IP(bytes(IP(src=".".join(map(str, src)), dst=".".join(map(str, dst)), proto=17) / Raw(dgram)))
    u = ip[UDP]
    assert (u.sport, u.dport, u.len) == (sport, dport, 8 + len(payload))
    assert bytes(u.payload) == payload
    # scapy recomputes the checksum of the same datagram: it must agree with ours.
    fresh = UDP(sport=sport, dport=dport) / Raw(payload)
    ref = bytes(IP(src=ip.src, dst=ip.dst) / fresh)[20:]
    assert struct.unpack_from("!H", dgram, 6)[0] == struct.unpack_from("!H", ref, 6)[0]


@FAST
@given(addr, addr, port, port, st.binary(max_size=1500))
def test_udp_scapy_to_ours(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> None:
    ip = IP(src=".".join(map(str, src)), dst=".".join(map(str, dst)))
    pkt = ip / UDP(sport=sport, dport=dport) / Raw(payload)
    dgram = bytes(pkt)[20:]
    h = parse_udp(dgram, src, dst)
    assert (h.src_port, h.dst_port, h.length) == (sport, dport, 8 + len(payload))
    assert dgram[8:h.length] == payload
    assert h.checksum != 0
    assert parse_udp(memoryview(dgram), src, dst) == h


@FAST
@given(st.binary(min_size=1, max_size=300), st.integers(0, 10_000), st.integers(0, 7))
def test_udp_corruption_detected(payload: bytes, pos: int, bit: int) -> None:
    dgram = bytearray(build_udp(1234, 53, payload, SRC, DST))
    pos = 8 + pos % len(payload)  # corrupt the payload (a zeroed checksum field would mean "none")
    dgram[pos] ^= 1 << bit
    with pytest.raises(MalformedError) as ei:
        parse_udp(bytes(dgram), SRC, DST)
    assert ei.value.reason == "bad_checksum"
    # ... unless verification is left to offload.
    assert parse_udp(bytes(dgram), SRC, DST, verify=False).length == len(dgram)


def test_udp_zero_checksum_sent_as_ffff() -> None:
    # Choose the first payload word so that the one's complement sum is exactly 0xFFFF.
    sport, dport, payload_len = 1000, 2000, 2
    length = 8 + payload_len
    partial = ones_sum(b"", pseudo_header_sum(SRC, DST, 17, length) + sport + dport + length)
    word = 0xFFFF - partial
    dgram = build_udp(sport, dport, word.to_bytes(2, "big"), SRC, DST)
    assert struct.unpack_from("!H", dgram, 6)[0] == 0xFFFF
    assert parse_udp(dgram, SRC, DST).checksum == 0xFFFF
    ref = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=dport) / Raw(dgram[8:])
    scapy_dgram = bytes(ref)[20:]
    assert scapy_dgram == dgram


def test_udp_no_checksum_and_lengths() -> None:
    dgram = build_udp(7, 9, b"hello", checksum=False)
    assert struct.unpack_from("!H", dgram, 6)[0] == 0
    assert parse_udp(dgram, SRC, DST).checksum == 0  # 0 = none: accepted without verifying
    assert parse_udp(dgram + b"\0" * 6, SRC, DST).length == 13  # Ethernet padding ignored
    for bad, reason in [(dgram[:7], "too_short"), (dgram[:12], "bad_length"),
                        (dgram[:4] + struct.pack("!H", 7) + dgram[6:], "bad_length")]:
        with pytest.raises(MalformedError) as ei:
            parse_udp(bad, SRC, DST)
        assert ei.value.reason == reason
    big = build_udp(1, 2, bytes(MAX_UDP_PAYLOAD), SRC, DST)
    assert parse_udp(big, SRC, DST).length == MAX_UDP_PAYLOAD + 8
    with pytest.raises(ValueError):
        build_udp(1, 2, bytes(0x10000), SRC, DST)


# -- DNS: scapy <-> ours ------------------------------------------------------------------------
def _scapy_response() -> DNS:
    return DNS(id=0xBEEF, qr=1, aa=1, rd=1, ra=1, rcode=0,
               qd=DNSQR(qname="www.Example.com", qtype="A"),
               an=[DNSRR(rrname="www.Example.com", type="CNAME", rdata="web.example.com", ttl=300),
                   DNSRR(rrname="web.example.com", type="A", rdata="192.0.2.7", ttl=60),
                   DNSRR(rrname="web.example.com", type="A", rdata="192.0.2.8", ttl=61)],
               ns=[DNSRRSOA(rrname="example.com", mname="ns1.example.com", rname="hostmaster.example.com",
                            serial=2024, refresh=7200, retry=900, expire=1209600, minimum=30, ttl=100)],
               ar=[DNSRR(rrname="web.example.com", type="MX", rdata=b"\x00\x0a\x00", ttl=5)])


@pytest.mark.parametrize("compress", [False, True])
def test_dns_scapy_to_ours(compress: bool) -> None:
    pkt = _scapy_response()
    raw = bytes(pkt.compress() if compress else pkt)
    m = parse_message(raw)
    h = m.header
    assert (h.id, h.qr, h.aa, h.rd, h.ra) == (0xBEEF, True, True, True, True)
    assert (h.tc, h.rcode, h.opcode) == (False, 0, 0)
    assert m.questions == (DnsQuestion("www.Example.com", TYPE_A, CLASS_IN),)
    assert m.answers[0] == DnsRecord("www.Example.com", TYPE_CNAME, CLASS_IN, 300, "web.example.com")
    assert [rr.data for rr in m.answers[1:]] == ["192.0.2.7", "192.0.2.8"]
    assert [rr.ttl for rr in m.answers[1:]] == [60, 61]
    soa = m.authority[0]
    assert soa.type == TYPE_SOA and soa.ttl == 100
    assert soa.data == Soa("ns1.example.com", "hostmaster.example.com", 2024, 7200, 900, 1209600, 30)
    assert m.additional[0].type == TYPE_MX and isinstance(m.additional[0].data, bytes)
    if compress:
        assert len(raw) < len(bytes(pkt))


def test_dns_ours_to_scapy() -> None:
    msg = DnsMessage(
        DnsHeader(id=4242, qr=True, aa=False, tc=True, rd=True, ra=True, rcode=NXDOMAIN),
        (DnsQuestion("alias.example.org", TYPE_A),),
        (DnsRecord("alias.example.org", TYPE_CNAME, CLASS_IN, 30, "real.example.org"),
         DnsRecord("real.example.org", TYPE_A, CLASS_IN, 20, "198.51.100.9")),
        (DnsRecord("example.org", TYPE_SOA, CLASS_IN, 50,
                   Soa("ns.example.org", "admin.example.org", 7, 1, 2, 3, 44)),),
        (DnsRecord("9.100.51.198.in-addr.arpa", TYPE_PTR, CLASS_IN, 9, "real.example.org"),),
    )
    for compress in (False, True):
        raw = build_message(msg, compress=compress)
        p = DNS(raw)
        assert (p.id, p.qr, p.tc, p.rd, p.ra, p.rcode) == (4242, 1, 1, 1, 1, 3)
        assert p.qd[0].qname == b"alias.example.org." and p.qd[0].qtype == 1
        assert p.an[0].type == 5 and p.an[0].rdata == b"real.example.org." and p.an[0].ttl == 30
        assert p.an[1].rdata == "198.51.100.9"
        assert p.ns[0].mname == b"ns.example.org." and p.ns[0].minimum == 44
        assert p.ar[0].type == 12 and p.ar[0].rdata == b"real.example.org."
        assert parse_message(raw) == msg  # and it round-trips through ours
    assert len(build_message(msg, compress=True)) < len(build_message(msg, compress=False))


def test_build_query_matches_scapy() -> None:
    ours = build_query(0x1234, "www.example.com", TYPE_A)
    ref = bytes(DNS(id=0x1234, rd=1, qd=DNSQR(qname="www.example.com", qtype="A")))
    assert ours == ref
    assert build_query(1, "x.", TYPE_PTR, rd=False)[2:4] == b"\x00\x00"
    p = DNS(build_query(9, "1.2.0.192.in-addr.arpa", TYPE_PTR))
    assert p.qd[0].qtype == 12 and p.qd[0].qname == b"1.2.0.192.in-addr.arpa."


# -- DNS names ------------------------------------------------------------------------------------
def test_name_escapes_round_trip() -> None:
    labels = [b"a.b", b"\x00\xff", b"back\\slash", b"ok"]
    wire = b"".join(bytes([len(lb)]) + lb for lb in labels) + b"\0"
    name, end = decode_name(b"\0" * 12 + wire, 12)
    assert end == 12 + len(wire)
    assert name == "a\\.b.\\000\\255.back\\\\slash.ok"
    assert encode_name(name) == wire
    assert encode_name("www.example.com.") == encode_name("www.example.com")
    assert encode_name("") == encode_name(".") == b"\0"
    assert name_key("WWW.Example.COM.") == "www.example.com"
    assert name_key("a\\.") == "a\\."  # an escaped dot is part of the label


@pytest.mark.parametrize("name, reason", [
    ("a..b", "empty_label"), (".a", "empty_label"), ("x" * 64 + ".com", "label_too_long"),
    (".".join(["abcdefghi"] * 26), "name_too_long"),
])
def test_encode_name_limits(name: str, reason: str) -> None:
    with pytest.raises(MalformedError) as ei:
        encode_name(name)
    assert ei.value.reason == reason


def test_encode_name_limits_exact() -> None:
    assert len(encode_name("x" * 63)) == 65
    name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 64*3 + 62 + 1 = 255 bytes on the wire
    assert len(encode_name(name)) == 255
    with pytest.raises(MalformedError):
        encode_name(name + "b")
    with pytest.raises(ValueError):
        encode_name("bücher.example")


HDR1 = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0)


def _reject(raw: bytes) -> str:
    with pytest.raises(MalformedError) as ei:
        parse_message(raw)
    return ei.value.reason


def test_compression_pointer_loops_rejected() -> None:
    # the question name is a pointer to itself
    assert _reject(HDR1 + b"\xc0\x0c" + b"\0\1\0\1") == "bad_pointer"
    # a label, then a pointer back to that label (a loop through one step)
    assert _reject(HDR1 + b"\x01a\xc0\x0c" + b"\0\1\0\1") == "bad_pointer"
    # forward pointer
    assert _reject(HDR1 + b"\xc0\x10\0\0\x01a\0" + b"\0\1\0\1") == "bad_pointer"
    # pointer into the header
    assert _reject(HDR1 + b"\xc0\x02" + b"\0\1\0\1") == "bad_pointer"
    # two names pointing at each other: the second's target is after the first's start
    two = struct.pack("!HHHHHH", 1, 0x8180, 2, 0, 0, 0)
    assert _reject(two + b"\x01a\xc0\x12\0\1\0\1" + b"\x01b\xc0\x0c\0\1\0\1") == "bad_pointer"
    # a truncated pointer, a reserved label type
    assert _reject(HDR1 + b"\xc0") == "truncated"
    assert _reject(HDR1 + b"\x40abc\0\0\1\0\1") == "bad_label_type"


def test_pointer_chain_too_long_name_rejected() -> None:
    # 40 questions, each one new 9-byte label + a pointer to the previous question's name:
    # legal backward pointers, but the last names expand past 255 bytes.
    n = 40
    body = bytearray(struct.pack("!HHHHHH", 1, 0x8180, n, 0, 0, 0))
    prev = None
    for _ in range(n):
        start = len(body)
        body += b"\x08abcdefgh"
        body += struct.pack("!H", 0xC000 | prev) if prev is not None else b"\0"
        body += b"\0\1\0\1"
        prev = start
    assert _reject(bytes(body)) == "name_too_long"


def test_bad_lengths_rejected() -> None:
    q = build_query(1, "a.example", TYPE_A)
    assert _reject(q[:11]) == "too_short"
    assert _reject(q[:-1]) == "truncated"
    assert _reject(struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + q[12:]) == "truncated"  # qdcount lies
    assert _reject(HDR1[:4] + b"\0\0" + b"\0\1" + HDR1[8:] + b"\0") == "truncated"  # ancount lies
    rr_hdr = struct.pack("!HHHHHH", 1, 0x8180, 0, 1, 0, 0)
    a_rr = b"\x01a\0" + struct.pack("!HHIH", TYPE_A, 1, 5, 5) + b"\1\2\3\4\5"
    assert _reject(rr_hdr + a_rr) == "bad_rdata"  # A with 5 bytes
    assert _reject(rr_hdr + a_rr[:-1]) == "truncated"  # rdlength past the end
    assert _reject(rr_hdr + b"\x01a\0" + struct.pack("!HHIH", TYPE_A, 1, 5, 9) + b"\1\2\3\4") == "truncated"
    cname = b"\x01a\0" + struct.pack("!HHIH", TYPE_CNAME, 1, 5, 5) + b"\x01b\0XX"
    assert _reject(rr_hdr + cname) == "bad_rdata"  # rdata longer than the name in it
    cname_short = b"\x01a\0" + struct.pack("!HHIH", TYPE_CNAME, 1, 5, 2) + b"\x01b\0"
    assert _reject(rr_hdr + cname_short) == "truncated"  # name runs past rdlength
    soa = b"\x01a\0" + struct.pack("!HHIH", TYPE_SOA, 1, 5, 4 + 19) + b"\x01m\0\x01r\0" + bytes(19)
    assert _reject(rr_hdr + soa) == "bad_rdata"


def test_reverse_name() -> None:
    assert reverse_name("192.0.2.1") == "1.2.0.192.in-addr.arpa"
    for bad in ("1.2.3", "1.2.3.256", "a.b.c.d", "1.2.3.4.5"):
        with pytest.raises(ValueError):
            reverse_name(bad)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parse_message_never_crashes(data: bytes) -> None:
    try:
        parse_message(data)
    except MalformedError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 107), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_response_never_crashes(edits: list[tuple[int, int]]) -> None:
    raw = bytearray(_SCAPY_COMPRESSED)
    for pos, val in edits:
        raw[pos % len(raw)] = val
    try:
        m = parse_message(bytes(raw))
    except MalformedError:
        return
    for rr in m.answers + m.authority + m.additional:
        assert len(encode_name(rr.name)) <= 255


_SCAPY_COMPRESSED = bytes(_scapy_response().compress())


# -- review fixes: comparison keys, bounded decoding ----------------------------------------------
def test_wire_key_is_one_key_per_name() -> None:
    """Texts of one name differ in escapes and case; the wire key does not."""
    same = [("foo;bar.example", "foo\\;BAR.example."), ("a\\065.x", "AA.X"), ('q"(u)@$', 'Q\\"\\(U\\)\\@\\$'),
            ("\\000a.b", "\\000A.b."), ("www.example.com", "WWW.Example.COM.")]
    for a, b in same:
        assert wire_key(a) == wire_key(b) == encode_name(a).lower(), (a, b)
    assert wire_key("a\\.b") != wire_key("a.b")  # an escaped dot is part of the label
    assert wire_key("\\193.x") != wire_key("\\225.x")  # only ASCII letters fold (RFC 4343)
    # A decoded name's text gives the wire form back (it is what replies are compared with).
    wire = b"\x07foo;bar\x02A(\x00"
    text, _ = decode_name(b"\0" * 12 + wire, 12)
    assert text == "foo\\;bar.A\\(" and wire_key(text) == wire.lower()
    # Invalid names get keys no valid name has, and no exception.
    for bad in ("a..b", "x" * 64, "bücher.example", "a\\999.b"):
        k = wire_key(bad)
        assert k[:1] == b"\xff" and k != wire_key("a.b")


def test_parse_question_and_header_read_only_the_start() -> None:
    raw = build_query(7, "Www.Example.com", TYPE_A) + b"\xc0"  # junk after the question
    h, qd, an, ns, ar = parse_header(raw)
    assert (h.id, qd, an, ns, ar) == (7, 1, 0, 0, 0)
    q, end = parse_question(raw)
    assert q == DnsQuestion("Www.Example.com", TYPE_A, CLASS_IN) and end == len(raw) - 1
    with pytest.raises(MalformedError):
        parse_question(raw[:-4])


def test_max_records_caps_each_section_and_skips_what_follows() -> None:
    q = DnsQuestion("a.example", TYPE_A)
    answers = tuple(DnsRecord("a.example", TYPE_A, CLASS_IN, 5, f"10.0.0.{i}") for i in range(10))
    soa = (DnsRecord("example", TYPE_SOA, CLASS_IN, 5, Soa("m.example", "r.example", 1, 2, 3, 4, 5)),)
    raw = build_message(DnsMessage(DnsHeader(1, qr=True), (q,), answers, soa, answers[:2]))
    assert parse_message(raw, 10) == parse_message(raw)
    m = parse_message(raw, 4)
    assert m.answers == answers[:4] and m.authority == () and m.additional == ()  # cut in the answers
    m = parse_message(build_message(DnsMessage(DnsHeader(1, qr=True), (q,), answers[:3], soa, answers)), 3)
    assert m.answers == answers[:3] and m.authority == soa and m.additional == answers[:3]
    assert parse_message(raw, 0) == DnsMessage(DnsHeader(1, qr=True))


def _pointer_flood(n: int, rdata_names: bool) -> bytes:
    """``n`` records whose names (and CNAME rdata) all point at one 253-byte name."""
    body = bytearray(struct.pack("!HHHHHH", 1, 0x8180, 0, n, 0, 0))
    long_off = len(body)
    body += b"".join(b"\x01a" for _ in range(126)) + b"\0" + struct.pack("!HHIH", TYPE_A, 1, 1, 4) + bytes(4)
    ptr = struct.pack("!H", 0xC000 | long_off)
    for _ in range(n - 1):
        if rdata_names:
            body += ptr + struct.pack("!HHIH", TYPE_CNAME, 1, 1, 2) + ptr
        else:
            body += ptr + struct.pack("!HHIH", TYPE_A, 1, 1, 4) + bytes(4)
    return bytes(body)


def test_pointer_flood_decodes_in_linear_time() -> None:
    raw = _pointer_flood(4000, rdata_names=True)
    assert len(raw) > 50000
    t0 = time.perf_counter()
    m = parse_message(raw)
    elapsed = time.perf_counter() - t0
    assert len(m.answers) == 4000 and m.answers[-1].data == m.answers[0].name
    assert len(m.answers[0].name) == 251
    assert elapsed < 0.3, f"{elapsed:.2f}s"  # ~0.03 s; ~1 s when each name is walked in full


def _parse_without_memo(raw: bytes) -> DnsMessage | str:
    saved = wire_dns.MEMO_SIZE
    wire_dns.MEMO_SIZE = 0  # nothing is remembered: every name is walked in full
    try:
        return parse_message(raw)
    except MalformedError as e:
        return e.reason
    finally:
        wire_dns.MEMO_SIZE = saved


def _parse_or_reason(raw: bytes) -> DnsMessage | str:
    try:
        return parse_message(raw)
    except MalformedError as e:
        return e.reason


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(st.binary(min_size=1, max_size=40), max_size=4),
                          st.one_of(st.none(), st.integers(0, 600)),
                          st.sampled_from([TYPE_A, TYPE_CNAME, TYPE_SOA])), min_size=1, max_size=12))
def test_memoised_decoding_equals_a_full_walk(records: list[tuple[list[bytes], int | None, int]]) -> None:
    """Names built from labels and pointers to arbitrary earlier offsets (legal or not): the
    memo never changes what is decoded or rejected, nor why."""
    body = bytearray(struct.pack("!HHHHHH", 1, 0x8180, 0, len(records), 0, 0))
    starts: list[int] = []  # where earlier names and their labels begin: the usual targets

    def name(labels: list[bytes], ptr: int | None) -> bytes:
        at = len(body)
        out = b""
        for lb in labels:
            starts.append(at + len(out))
            out += bytes([len(lb)]) + lb
        if ptr is None:
            return out + b"\0"
        if ptr % 3 and starts:  # mostly a label start (often legal), else any offset
            target = starts[ptr % len(starts)]
        else:
            target = ptr % max(1, at + len(out))
        return out + struct.pack("!H", 0xC000 | target)

    for labels, ptr, rtype in records:
        body += name(labels, ptr)
        if rtype == TYPE_A:
            body += struct.pack("!HHIH", TYPE_A, 1, 1, 4) + bytes(4)
        else:
            rdata = name(labels[::-1], None if ptr is None else ptr // 2)
            if rtype == TYPE_SOA:
                rdata += name(labels[:1], ptr) + bytes(20)
            body += struct.pack("!HHIH", rtype, 1, 1, len(rdata)) + rdata
    raw = bytes(body)
    assert _parse_or_reason(raw) == _parse_without_memo(raw)
