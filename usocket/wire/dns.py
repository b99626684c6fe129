"""DNS message codec (RFC 1035): header, questions, resource records, name compression.

Names are text in presentation form without the trailing dot (the root is ``""``). Label
bytes that are not plain printable ASCII, and the characters ``.`` and ``\\``, are escaped
as ``\\DDD`` / ``\\.`` exactly like glibc's ``ns_name_ntop``; :func:`encode_name` accepts
the same escapes, so names round-trip. Compare names with :func:`wire_key` (the uncompressed
wire form, ASCII lower-cased: RFC 4343): two texts of one name can differ (``foo;bar`` and
``foo\\;bar``, ``A`` and ``\\065``) and only the wire form tells. :func:`name_key` only folds
case and a trailing dot of the text.

Parsing is strict, since the input comes from the network: every offset is bounds-checked,
compression pointers must point backwards (which makes loops impossible) into the message
body and are also capped in number, labels are at most 63 bytes and names 255 bytes on the
wire. Errors raise :class:`MalformedError` with one of the reasons ``too_short``,
``truncated``, ``bad_pointer``, ``too_many_pointers``, ``bad_label_type``,
``label_too_long``, ``name_too_long``, ``empty_label``, ``bad_rdata``. The cost of a message
can be bounded before it is paid: :func:`parse_header` and :func:`parse_question` read only
the start, and ``parse_message(buf, max_records=N)`` decodes at most N records per section.

RDATA is decoded for A (dotted-quad text), CNAME/PTR/NS (a name), SOA (:class:`Soa`); any
other type keeps its raw ``bytes``.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from . import MalformedError

# Types and classes (the ones this stack uses; others are plain ints).
TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1

# Response codes.
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5

HEADER_LEN = 12
MAX_LABEL = 63
MAX_NAME_WIRE = 255  # octets on the wire, length bytes and the root byte included
MAX_POINTERS = 64  # more than any legal message needs (each jump goes strictly backwards)
MAX_UDP_MESSAGE = 512  # RFC 1035 limit without EDNS0

_HEADER = struct.Struct("!HHHHHH")
_QFIXED = struct.Struct("!HH")
_RRFIXED = struct.Struct("!HHIH")
_RRHEAD = struct.Struct("!HHI")
_SOAFIXED = struct.Struct("!IIIII")

# Characters glibc escapes with a backslash in presentation form (ns_name_ntop "special").
_SPECIAL = frozenset(b'."\\;()@$')


class Soa(NamedTuple):
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int  # RFC 2308: the negative-caching TTL bound


RData = str | Soa | bytes


class DnsHeader(NamedTuple):
    id: int
    qr: bool = False
    opcode: int = 0
    aa: bool = False
    tc: bool = False
    rd: bool = True
    ra: bool = False
    rcode: int = NOERROR
    ad: bool = False
    cd: bool = False


class DnsQuestion(NamedTuple):
    name: str
    qtype: int = TYPE_A
    qclass: int = CLASS_IN


class DnsRecord(NamedTuple):
    name: str
    type: int
    rclass: int
    ttl: int  # unsigned 32 bit as sent; see RFC 2181 section 8 before using it
    data: RData


class DnsMessage(NamedTuple):
    header: DnsHeader
    questions: tuple[DnsQuestion, ...] = ()
    answers: tuple[DnsRecord, ...] = ()
    authority: tuple[DnsRecord, ...] = ()
    additional: tuple[DnsRecord, ...] = ()


def name_key(name: str) -> str:
    """A text key of a name: ASCII lower case, no trailing dot. It does not undo escapes
    (``a\\065`` and ``aA`` differ): to compare names use :func:`wire_key`."""
    if name.endswith("."):
        stem = name[:-1]
        if (len(stem) - len(stem.rstrip("\\"))) % 2 == 0:  # the dot is not escaped
            name = stem
    return name.translate(_LOWER)


_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def wire_key(name: str) -> bytes:
    """The comparison key of a name: its uncompressed wire form, ASCII lower-cased.

    Equal for every text of one name, whatever its escapes and case, with or without the
    trailing dot. Never raises: text that is no valid name gets a key no valid name has
    (it starts with 0xFF, never a length byte), so it simply matches nothing else.
    """
    try:
        return encode_name(name).lower()  # length bytes are <= 63: lower() leaves them alone
    except ValueError:  # MalformedError included
        return b"\xff" + name.encode("utf-8", "surrogatepass").lower()


# -- names -------------------------------------------------------------------------------------
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in _SPECIAL)


def _label_text(label: bytes) -> str:
    if not label.translate(None, _PLAIN):  # the usual case: nothing to escape
        return label.decode("ascii")
    out = []
    for b in label:
        if b in _SPECIAL:
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def _text_labels(name: str) -> list[bytes]:
    """Split a presentation-form name into raw labels, honouring ``\\.`` and ``\\DDD``."""
    if name in ("", "."):
        return []
    labels: list[bytes] = []
    cur = bytearray()
    i, n = 0, len(name)
    while i < n:
        ch = name[i]
        if ch == "\\":
            digits = name[i + 1:i + 4]
            if len(digits) == 3 and all(c in "0123456789" for c in digits):
                v = int(digits)
                if v > 255:
                    raise ValueError(f"bad escape in name {name!r}")
                cur.append(v)
                i += 4
                continue
            if i + 1 >= n:
                raise ValueError(f"dangling backslash in name {name!r}")
            cur += name[i + 1].encode("ascii")
            i += 2
            continue
        if ch == ".":
            if not cur:
                raise MalformedError("empty_label", repr(name))
            labels.append(bytes(cur))
            cur = bytearray()
        else:
            try:
                cur += ch.encode("ascii")
            except UnicodeEncodeError:
                raise ValueError(f"non-ASCII name {name!r} (IDNA-encode it first)") from None
        i += 1
    if cur:
        labels.append(bytes(cur))
    return labels


def encode_name(name: str) -> bytes:
    """The uncompressed wire form of ``name`` (a trailing dot is optional).

    Raises :class:`MalformedError` (``empty_label``, ``label_too_long``, ``name_too_long``)
    or ``ValueError`` for text that cannot be a name.
    """
    out = bytearray()
    for label in _text_labels(name):
        if len(label) > MAX_LABEL:
            raise MalformedError("label_too_long", f"{len(label)} bytes")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > MAX_NAME_WIRE:
        raise MalformedError("name_too_long", f"{len(out)} bytes")
    return bytes(out)


# A suffix decoded once, by the offset a pointer landed on: (text, wire bytes without the root
# byte, pointers followed, first offset past every byte read). See :func:`decode_name`.
Memo = dict[int, tuple[str, int, int, int]]
MEMO_SIZE = 1024  # suffixes remembered per message: a bounded cache, not a second copy of it


def decode_name(buf: bytes | memoryview, offset: int, end: int | None = None,
                memo: Memo | None = None) -> tuple[str, int]:
    """Read a possibly compressed name at ``offset``; return ``(name, offset_after)``.

    ``offset_after`` is where the name ends in place (after the first pointer, if any).
    Nothing at or past ``end`` (default: the buffer's end) is read. Every pointer must point
    strictly before the label sequence that contains it, and not into the header: together
    with the hop cap this rejects every loop.

    ``memo`` (one dict per message, shared by its names) remembers the suffix found behind
    each pointer target, so a message whose thousands of names point at one long name costs
    one decode of that name, not thousands. The result is the same with or without it.
    """
    if end is None or end > len(buf):
        end = len(buf)
    labels: list[str] = []
    wire_len = 1  # the final root byte
    pos = offset
    after = -1
    hops = 0
    floor = offset  # a pointer must land strictly below the start of the current sequence
    landings: list[tuple[int, int, int, int]] = []  # (target, len(labels), wire_len, hops) on landing
    reach: list[int] = []  # per run of in-place bytes: the offset past its last byte
    while True:
        if pos >= end:
            raise MalformedError("truncated", "name runs past the end")
        n = buf[pos]
        kind = n & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                raise MalformedError("truncated", "pointer runs past the end")
            target = ((n & 0x3F) << 8) | buf[pos + 1]
            if after < 0:
                after = pos + 2
            if target < HEADER_LEN or target >= floor:
                raise MalformedError("bad_pointer", f"pointer to {target} from {pos}")
            hops += 1
            if hops > MAX_POINTERS:
                raise MalformedError("too_many_pointers", str(hops))
            reach.append(pos + 2)
            hit = memo.get(target) if memo is not None else None
            if hit is not None and hit[3] <= end:
                text, s_wire, s_hops, s_reach = hit
                hops += s_hops
                if hops > MAX_POINTERS:
                    raise MalformedError("too_many_pointers", str(hops))
                wire_len += s_wire
                if wire_len > MAX_NAME_WIRE:
                    raise MalformedError("name_too_long", f"> {MAX_NAME_WIRE} bytes")
                if text:
                    labels.append(text)
                reach.append(s_reach)
                break
            landings.append((target, len(labels), wire_len, hops))
            pos = floor = target
            continue
        if kind:
            raise MalformedError("bad_label_type", f"{n:#04x} at {pos}")
        if n == 0:
            if after < 0:
                after = pos + 1
            reach.append(pos + 1)
            break
        if pos + 1 + n > end:
            raise MalformedError("truncated", "label runs past the end")
        wire_len += n + 1
        if wire_len > MAX_NAME_WIRE:
            raise MalformedError("name_too_long", f"> {MAX_NAME_WIRE} bytes")
        labels.append(_label_text(bytes(buf[pos + 1:pos + 1 + n])))
        pos += 1 + n
    if memo is not None and landings:
        # What follows landing k was read in runs k+1, k+2...: its reach is their maximum.
        far = max(reach[len(landings) + 1:], default=0)  # the remembered suffix, if one was used
        for k in range(len(landings) - 1, -1, -1):
            far = max(far, reach[k + 1])
            target, nlabels, wire_before, hops_before = landings[k]
            if target not in memo and len(memo) < MEMO_SIZE:
                memo[target] = (".".join(labels[nlabels:]), wire_len - wire_before, hops - hops_before, far)
    return ".".join(labels), after


class _NameWriter:
    """Builds a message body, compressing names against the suffixes already written."""

    def __init__(self, compress: bool) -> None:
        self.buf = bytearray(HEADER_LEN)
        self.compress = compress
        self.offsets: dict[tuple[bytes, ...], int] = {}

    def name(self, name: str) -> None:
        encode_name(name)  # validates the label and name lengths
        labels = _text_labels(name)
        keys = [lb.lower() for lb in labels]
        for i in range(len(labels)):
            suffix = tuple(keys[i:])
            if self.compress and suffix in self.offsets:
                self.buf += struct.pack("!H", 0xC000 | self.offsets[suffix])
                return
            if self.compress and len(self.buf) < 0x4000:
                self.offsets[suffix] = len(self.buf)
            self.buf.append(len(labels[i]))
            self.buf += labels[i]
        self.buf.append(0)


# -- messages ----------------------------------------------------------------------------------
def _flags(h: DnsHeader) -> int:
    return ((h.qr << 15) | ((h.opcode & 0xF) << 11) | (h.aa << 10) | (h.tc << 9) | (h.rd << 8)
            | (h.ra << 7) | (h.ad << 5) | (h.cd << 4) | (h.rcode & 0xF))


def build_query(qid: int, name: str, qtype: int = TYPE_A, rd: bool = True, qclass: int = CLASS_IN) -> bytes:
    """A standard query for one question (no EDNS0), like ``res_mkquery``."""
    flags = 0x0100 if rd else 0
    return _HEADER.pack(qid, flags, 1, 0, 0, 0) + encode_name(name) + _QFIXED.pack(qtype, qclass)


def _rdata_bytes(w: _NameWriter, rr: DnsRecord) -> None:
    """Append RDLENGTH + RDATA of ``rr``; names inside CNAME/PTR/NS/SOA are compressed."""
    start = len(w.buf)
    w.buf += b"\x00\x00"
    data = rr.data
    if isinstance(data, bytes):
        w.buf += data
    elif rr.type == TYPE_A and isinstance(data, str):
        parts = data.split(".")
        if len(parts) != 4:
            raise ValueError(f"bad A rdata {data!r}")
        w.buf += bytes(int(p) for p in parts)
    elif rr.type in (TYPE_CNAME, TYPE_PTR, TYPE_NS) and isinstance(data, str):
        w.name(data)
    elif rr.type == TYPE_SOA and isinstance(data, Soa):
        w.name(data.mname)
        w.name(data.rname)
        w.buf += _SOAFIXED.pack(data.serial, data.refresh, data.retry, data.expire, data.minimum)
    else:
        raise ValueError(f"cannot encode rdata {data!r} for type {rr.type}")
    struct.pack_into("!H", w.buf, start, len(w.buf) - start - 2)


def build_message(msg: DnsMessage, compress: bool = True) -> bytes:
    """Encode a whole message (queries and responses; handy for servers and tests)."""
    w = _NameWriter(compress)
    struct.pack_into("!HHHHHH", w.buf, 0, msg.header.id, _flags(msg.header), len(msg.questions),
                     len(msg.answers), len(msg.authority), len(msg.additional))
    for q in msg.questions:
        w.name(q.name)
        w.buf += _QFIXED.pack(q.qtype, q.qclass)
    for section in (msg.answers, msg.authority, msg.additional):
        for rr in section:
            w.name(rr.name)
            w.buf += _RRHEAD.pack(rr.type, rr.rclass, rr.ttl)
            _rdata_bytes(w, rr)
    return bytes(w.buf)


def parse_header(buf: bytes | memoryview) -> tuple[DnsHeader, int, int, int, int]:
    """The header and the four section counts (qd, an, ns, ar)."""
    if len(buf) < HEADER_LEN:
        raise MalformedError("too_short", f"{len(buf)} bytes")
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(buf)
    h = DnsHeader(qid, bool(flags & 0x8000), (flags >> 11) & 0xF, bool(flags & 0x0400),
                  bool(flags & 0x0200), bool(flags & 0x0100), bool(flags & 0x0080), flags & 0xF,
                  bool(flags & 0x0020), bool(flags & 0x0010))
    return h, qd, an, ns, ar


def parse_question(buf: bytes | memoryview, offset: int = HEADER_LEN,
                   memo: Memo | None = None) -> tuple[DnsQuestion, int]:
    """The question at ``offset`` (the first one by default) and the offset after it."""
    name, pos = decode_name(buf, offset, memo=memo)
    if pos + 4 > len(buf):
        raise MalformedError("truncated", "question")
    qtype, qclass = _QFIXED.unpack_from(buf, pos)
    return DnsQuestion(name, qtype, qclass), pos + 4


def _decode_rdata(buf: bytes | memoryview, rtype: int, start: int, end: int, memo: Memo | None = None) -> RData:
    if rtype == TYPE_A:
        if end - start != 4:
            raise MalformedError("bad_rdata", f"A rdata of {end - start} bytes")
        return ".".join(map(str, buf[start:end]))
    if rtype in (TYPE_CNAME, TYPE_PTR, TYPE_NS):
        name, after = decode_name(buf, start, end, memo)
        if after != end:
            raise MalformedError("bad_rdata", f"name rdata ends at {after}, rdlength says {end}")
        return name
    if rtype == TYPE_SOA:
        mname, pos = decode_name(buf, start, end, memo)
        rname, pos = decode_name(buf, pos, end, memo)
        if end - pos != _SOAFIXED.size:
            raise MalformedError("bad_rdata", "SOA fixed fields")
        return Soa(mname, rname, *_SOAFIXED.unpack_from(buf, pos))
    return bytes(buf[start:end])


def _parse_record(buf: bytes | memoryview, pos: int, memo: Memo | None = None) -> tuple[DnsRecord, int]:
    name, pos = decode_name(buf, pos, memo=memo)
    if pos + 10 > len(buf):
        raise MalformedError("truncated", "record header")
    rtype, rclass, ttl, rdlen = _RRFIXED.unpack_from(buf, pos)
    pos += 10
    end = pos + rdlen
    if end > len(buf):
        raise MalformedError("truncated", f"rdlength {rdlen} past the end")
    return DnsRecord(name, rtype, rclass, ttl, _decode_rdata(buf, rtype, pos, end, memo)), end


def parse_message(buf: bytes | memoryview, max_records: int | None = None) -> DnsMessage:
    """Decode a whole message; raise :class:`MalformedError` on any inconsistency.

    Bytes after the last record declared by the header are ignored. With ``max_records``, at
    most that many questions and records of each section are decoded: once a section holds
    more, the rest of it and the sections after it are left out (their place in the message is
    only known by decoding what comes before). Compare with :func:`parse_header`'s counts to
    tell a capped message; the cap bounds the CPU a large (64 KiB) message can cost.
    """
    if isinstance(buf, memoryview):
        buf = bytes(buf)
    header, qd, an, ns, ar = parse_header(buf)
    cap = -1 if max_records is None else max(0, max_records)
    memo: Memo = {}
    pos = HEADER_LEN
    questions = []
    for _ in range(qd if cap < 0 else min(qd, cap)):
        q, pos = parse_question(buf, pos, memo)
        questions.append(q)
    sections: list[tuple[DnsRecord, ...]] = [(), (), ()]
    if 0 <= cap < qd:
        return DnsMessage(header, tuple(questions))
    for i, count in enumerate((an, ns, ar)):
        records = []
        for _ in range(count if cap < 0 else min(count, cap)):
            rr, pos = _parse_record(buf, pos, memo)
            records.append(rr)
        sections[i] = tuple(records)
        if 0 <= cap < count:
            break
    return DnsMessage(header, tuple(questions), sections[0], sections[1], sections[2])


def reverse_name(ip_text: str) -> str:
    """``"192.0.2.1"`` -> ``"1.2.0.192.in-addr.arpa"`` (the name a PTR query asks)."""
    parts = ip_text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise ValueError(f"not a dotted-quad IPv4 address: {ip_text!r}")
    return ".".join(str(int(p)) for p in reversed(parts)) + ".in-addr.arpa"
