"""nfnetlink_queue messages (:mod:`usocket.divert.netlink`) over crafted bytes: no root, no kernel.

The packet messages are built here by hand with the layouts of ``linux/netfilter/nfnetlink_queue.h``
(independently of the module's own builders), so a parser that misreads an offset, the byte order
of an attribute or the padding fails.
"""
from __future__ import annotations

import struct

from usocket.divert import netlink as nl


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + bytes(-len(raw) % 4)


def packet_msg(packet_id: int, payload: bytes | None, skb_info: int | None = None, cap_len: int | None = None,
               seq: int = 0, queue: int = 7) -> bytes:
    body = struct.pack("!BBH", 2, 0, queue)
    body += attr(1, struct.pack("!IHB", packet_id, 0x0800, 1) + b"\0")  # NFQA_PACKET_HDR (padded struct)
    body += attr(3, struct.pack("!I", 0xABCD))  # NFQA_MARK: skipped
    body += attr(5, struct.pack("!I", 2))  # NFQA_IFINDEX_INDEV: skipped
    if skb_info is not None:
        body += attr(14, struct.pack("!I", skb_info))
    if cap_len is not None:
        body += attr(13, struct.pack("!I", cap_len))
    if payload is not None:
        body += attr(10, payload)
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, seq, 0) + body


def error_msg(err: int, seq: int) -> bytes:
    orig = struct.pack("=IHHII", 40, 0x0302, 5, seq, 0)
    return struct.pack("=IHHII", 16 + 4 + 16, 2, 0, seq, 0) + struct.pack("=i", err) + orig


def test_packet_message_fields() -> None:
    ip = bytes(range(45))  # odd length: the attribute is padded
    [m] = nl.parse(packet_msg(0x01020304, ip, skb_info=nl.NFQA_SKB_CSUMNOTREADY | nl.NFQA_SKB_GSO))
    assert m.kind == nl.MSG_PACKET and m.packet_id == 0x01020304
    assert m.payload is not None and bytes(m.payload) == ip
    assert m.skb_info == 3 and m.cap_len == 0 and m.error == 0


def test_several_messages_in_one_read_and_a_prefix_of_the_buffer() -> None:
    data = (packet_msg(1, b"a" * 3) + error_msg(0, 99) + packet_msg(2, b"bb", cap_len=70000)
            + struct.pack("=IHHII", 16, nl.NLMSG_NOOP, 0, 0, 0) + packet_msg(3, b"c" * 8))
    buf = bytearray(data + b"\xff" * 100)  # garbage after n: never looked at
    msgs = nl.parse(buf, len(data))
    assert [(m.kind, m.packet_id) for m in msgs] == [(nl.MSG_PACKET, 1), (nl.NLMSG_ERROR, 0),
                                                    (nl.MSG_PACKET, 2), (nl.MSG_PACKET, 3)]
    assert msgs[1].seq == 99 and msgs[1].error == 0  # an ACK
    assert msgs[2].cap_len == 70000 and bytes(msgs[2].payload or b"") == b"bb"
    assert [bytes(m.payload) for m in msgs if m.payload is not None] == [b"aaa", b"bb", b"c" * 8]


def test_error_reply_carries_errno_and_request_seq() -> None:
    [m] = nl.parse(error_msg(-1, 0x75730005))
    assert (m.kind, m.seq, m.error) == (nl.NLMSG_ERROR, 0x75730005, -1)


def test_packet_without_payload_attribute() -> None:
    [m] = nl.parse(packet_msg(5, None))
    assert m.kind == nl.MSG_PACKET and m.packet_id == 5 and m.payload is None


def test_malformed_lengths_end_the_parse_and_keep_what_came_before() -> None:
    good = packet_msg(1, b"x")
    bad_msg = bytearray(packet_msg(2, b"y"))
    struct.pack_into("=I", bad_msg, 0, len(bad_msg) + 8)  # message longer than the data
    msgs = nl.parse(good + bytes(bad_msg))
    assert [(m.kind, m.packet_id) for m in msgs] == [(nl.MSG_PACKET, 1), (nl.MALFORMED, 0)]

    bad_attr = bytearray(packet_msg(4, b"payload"))
    struct.pack_into("=H", bad_attr, 20, 2)  # first attribute length 2 (< 4)
    assert [m.kind for m in nl.parse(good + bytes(bad_attr))] == [nl.MSG_PACKET, nl.MALFORMED]

    tiny = struct.pack("=IHHII", 3, 0x0300, 0, 0, 0)  # length below the header's own size
    assert [m.kind for m in nl.parse(tiny)] == [nl.MALFORMED]
    no_hdr = struct.pack("=IHHII", 20 + 8, 0x0300, 0, 0, 0) + struct.pack("!BBH", 2, 0, 7) + attr(10, b"abcd")
    assert [m.kind for m in nl.parse(no_hdr)] == [nl.MALFORMED]
    assert nl.parse(b"") == [] and nl.parse(b"\0" * 10) == []  # less than a header: nothing


def test_other_subsystems_are_skipped() -> None:
    other = struct.pack("=IHHII", 24, 0x0100, 0, 0, 0) + b"\0" * 8  # a conntrack message
    assert [m.packet_id for m in nl.parse(other + packet_msg(9, b"q"))] == [9]


def verdict_list(data: bytes) -> list[tuple[str, int, int, int]]:
    """(kind, queue, verdict, id) of each verdict message in ``data``, checking the framing."""
    out = []
    off = 0
    while off < len(data):
        length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        assert flags == nl.NLM_F_REQUEST and length == 16 + 4 + 12
        _family, _version, queue = struct.unpack_from("!BBH", data, off + 16)
        alen, atype = struct.unpack_from("=HH", data, off + 20)
        assert (alen, atype) == (12, nl.NFQA_VERDICT_HDR)
        verdict, pid = struct.unpack_from("!II", data, off + 24)
        out.append(({0x0301: "one", 0x0303: "batch"}[kind], queue, verdict, pid))
        off += length
    return out


def test_verdicts_one_batch_when_all_agree() -> None:
    assert verdict_list(nl.verdicts_message(7, [(10, True), (11, True), (12, True)])) == [
        ("batch", 7, nl.NF_DROP, 12)]
    assert verdict_list(nl.verdicts_message(7, [(10, False)])) == [("batch", 7, nl.NF_ACCEPT, 10)]


def test_batch_verdicts_of_different_queues_keep_their_queue() -> None:
    """The one-batch fast path caches a prefix per queue: each queue's message names it."""
    for _ in range(2):
        for queue in (0, 7, 65535):
            assert verdict_list(nl.verdicts_message(queue, [(2**32 - 1, True)])) == [
                ("batch", queue, nl.NF_DROP, 2**32 - 1)]
            assert nl.batch_verdict_message(queue, 5, nl.NF_ACCEPT) == nl.verdict_message(
                queue, 5, nl.NF_ACCEPT, batch=True)


def test_verdicts_exceptions_first_then_the_majority_batch() -> None:
    mixed = [(20, True), (21, False), (22, True), (23, True)]
    assert verdict_list(nl.verdicts_message(3, mixed)) == [("one", 3, nl.NF_ACCEPT, 21),
                                                           ("batch", 3, nl.NF_DROP, 23)]
    mostly_kernel = [(30, False), (31, True), (32, False), (33, False), (34, True)]
    assert verdict_list(nl.verdicts_message(3, mostly_kernel)) == [
        ("one", 3, nl.NF_DROP, 31), ("one", 3, nl.NF_DROP, 34), ("batch", 3, nl.NF_ACCEPT, 34)]
    # the batch's max id is the last packet's, even when that one is an exception itself: the
    # kernel skips it (its verdict came first) and the batch covers 30, 32, 33


def test_bind_and_config_messages() -> None:
    msg = nl.bind_message(1234, seq=77)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), 0x0302, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 77)
    assert struct.unpack_from("!BBH", msg, 16) == (2, 0, 1234)
    assert struct.unpack_from("=HH", msg, 20) == (8, nl.NFQA_CFG_CMD)
    assert struct.unpack_from("!BBH", msg, 24) == (nl.NFQNL_CFG_CMD_BIND, 0, 2)
    unbind = nl.bind_message(1234, seq=78, command=nl.NFQNL_CFG_CMD_UNBIND)
    assert unbind[24] == nl.NFQNL_CFG_CMD_UNBIND
    cfg = nl.config_message(5, 65535, 100, flags=nl.NFQA_CFG_F_GSO, mask=nl.NFQA_CFG_F_GSO | nl.NFQA_CFG_F_FAIL_OPEN)
    assert struct.unpack_from("=HH", cfg, 40) == (8, nl.NFQA_CFG_MASK)
    assert struct.unpack_from("!I", cfg, 44) == (5,)
    assert struct.unpack_from("=HH", cfg, 48) == (8, nl.NFQA_CFG_FLAGS)
    assert struct.unpack_from("!I", cfg, 52) == (4,) and len(cfg) == 56
