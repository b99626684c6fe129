"""nfnetlink_queue messages: the requests the queue reader sends, and parsing of what it reads.

Pure functions over bytes (no sockets): :class:`usocket.divert.nfqueue.Diverter` does the I/O.
Layouts are those of ``linux/netlink.h``, ``linux/netfilter/nfnetlink.h`` and
``linux/netfilter/nfnetlink_queue.h``. A netlink message is a ``nlmsghdr`` (length, type, flags,
sequence, port id: host byte order), then for nfnetlink a ``nfgenmsg`` (family, version, queue
number: big endian), then attributes (``nlattr``: length, type in host order; the payload padded
to 4 bytes). The values inside nfqueue attributes are big endian.

What the kernel sends per queued packet (NFQNL_MSG_PACKET), as far as the reader cares:
NFQA_PACKET_HDR (packet id), NFQA_PAYLOAD (the IPv4 packet, up to the copy range),
NFQA_CAP_LEN (only when the payload was cut: the packet's real length) and NFQA_SKB_INFO
(only when non-zero: NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO, NFQA_SKB_CSUM_NOTVERIFIED; the queue
must have asked for NFQA_CFG_F_GSO to get GSO packets whole and partial checksums unfilled).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

NETLINK_NETFILTER = 12
AF_INET = 2
AF_UNSPEC = 0

# netlink
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 1
NLM_F_ACK = 4

# nfnetlink_queue (subsystem 3)
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
NFQA_SKB_INFO = 14

NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2

NFQA_CFG_F_FAIL_OPEN = 1
NFQA_CFG_F_GSO = 4

NFQA_SKB_CSUMNOTREADY = 1
NFQA_SKB_GSO = 2
NFQA_SKB_CSUM_NOTVERIFIED = 4

NF_DROP = 0
NF_ACCEPT = 1

NFQNL_MAX_COPY_RANGE = 0xFFFF - 4  # the kernel's cap on the copy range: 65531

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_NFGENMSG = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_I32_HOST = struct.Struct("=i")


class Message(NamedTuple):
    """One parsed netlink message. For a queued packet (``kind == MSG_PACKET``): its id, the
    payload (a view into the buffer that was parsed: copy it before the buffer is reused),
    ``skb_info`` (NFQA_SKB_* bits, 0 when absent) and ``cap_len`` (the packet's full length
    when the payload was cut, else 0). For NLMSG_ERROR: ``error`` is the kernel's -errno (0 for
    an ACK) and ``seq`` the sequence number of the request it answers. ``MALFORMED``: see
    :func:`parse`."""

    kind: int
    seq: int
    packet_id: int = 0
    payload: memoryview | None = None
    skb_info: int = 0
    cap_len: int = 0
    error: int = 0


MALFORMED = -1  # Message.kind of the marker that ends a parse cut short by a bad length


def nla(kind: int, payload: bytes) -> bytes:
    """A netlink attribute, padded to 4 bytes."""
    attr = _NLATTR.pack(4 + len(payload), kind) + payload
    return attr + b"\0" * (-len(attr) % 4)


def nfq_message(msg: int, queue_num: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0,
                family: int = AF_UNSPEC) -> bytes:
    """A nfnetlink_queue message of type ``msg`` (NFQNL_MSG_*) for queue ``queue_num``."""
    body = _NFGENMSG.pack(family, 0, queue_num) + attrs
    return _NLMSGHDR.pack(16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def bind_message(queue_num: int, seq: int, command: int = NFQNL_CFG_CMD_BIND) -> bytes:
    """NFQNL_MSG_CONFIG with NFQA_CFG_CMD ``command`` (BIND/UNBIND) for IPv4, asking an ACK."""
    cmd = struct.pack("!BBH", command, 0, AF_INET)
    return nfq_message(NFQNL_MSG_CONFIG, queue_num, nla(NFQA_CFG_CMD, cmd), NLM_F_REQUEST | NLM_F_ACK, seq,
                       family=AF_INET)


def config_message(queue_num: int, copy_range: int, max_len: int, flags: int = 0, mask: int = 0,
                   seq: int = 0x75730001) -> bytes:
    """A NFQNL_MSG_CONFIG request (with ACK) setting copy mode/range, queue length and flags."""
    attrs = nla(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET))
    attrs += nla(NFQA_CFG_QUEUE_MAXLEN, _U32.pack(max_len))
    if mask:
        attrs += nla(NFQA_CFG_MASK, _U32.pack(mask)) + nla(NFQA_CFG_FLAGS, _U32.pack(flags))
    return nfq_message(NFQNL_MSG_CONFIG, queue_num, attrs, NLM_F_REQUEST | NLM_F_ACK, seq)


def verdict_message(queue_num: int, packet_id: int, verdict: int, batch: bool = False) -> bytes:
    """NFQNL_MSG_VERDICT for one packet, or with ``batch`` NFQNL_MSG_VERDICT_BATCH: the same
    verdict for every packet of the queue whose id is not after ``packet_id``. No ACK asked: the
    kernel answers only a failure (NLMSG_ERROR)."""
    msg = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
    return nfq_message(msg, queue_num, nla(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))


_VERDICT_HDR = struct.Struct("!II")
_batch_prefixes: dict[int, bytes] = {}


def batch_verdict_message(queue_num: int, packet_id: int, verdict: int) -> bytes:
    """``verdict_message(queue_num, packet_id, verdict, batch=True)`` from a prefix cached per
    queue: the message of every wakeup whose packets all get one verdict."""
    prefix = _batch_prefixes.get(queue_num)
    if prefix is None:
        prefix = _batch_prefixes[queue_num] = verdict_message(queue_num, 0, 0, batch=True)[:-8]
    return prefix + _VERDICT_HDR.pack(verdict, packet_id)


def verdicts_message(queue_num: int, verdicts: list[tuple[int, bool]]) -> bytes:
    """Verdicts for packets read in id order, ``(packet_id, ours)``; ours -> DROP, else ACCEPT.

    One batch verdict carries the majority, up to the last id; each exception gets its own
    verdict, placed before the batch (the kernel handles the messages of one send in order, and
    a packet with a verdict leaves the queue, so the batch does not touch it). Accepted packets
    thus reach the kernel in their arrival order: either all by the batch, or all as exceptions.
    """
    ours = sum(1 for _, o in verdicts if o)
    if ours == len(verdicts) or not ours:  # the common case: one batch verdict
        return batch_verdict_message(queue_num, verdicts[-1][0], NF_DROP if ours else NF_ACCEPT)
    majority = ours * 2 >= len(verdicts)
    parts = [verdict_message(queue_num, pid, NF_DROP if o else NF_ACCEPT) for pid, o in verdicts if o != majority]
    parts.append(verdict_message(queue_num, verdicts[-1][0], NF_DROP if majority else NF_ACCEPT, batch=True))
    return b"".join(parts)


def parse(buf: bytes | bytearray | memoryview, n: int | None = None) -> list[Message]:
    """The netlink messages in ``buf[:n]``. Queued packets and errors/ACKs are returned; other
    kinds (NOOP, DONE, messages of other subsystems) are skipped. A length field that points
    outside the data (or a packet without its header) ends the parse with a ``MALFORMED``
    message; what was parsed before it is kept. A queued packet without NFQA_PAYLOAD comes
    with ``payload`` None."""
    view = memoryview(buf)
    end = len(view) if n is None else n
    out: list[Message] = []
    off = 0
    while end - off >= 16:
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(view, off)
        if length < 16 or off + length > end or (length < 20 and kind in (MSG_PACKET, NLMSG_ERROR)):
            out.append(Message(MALFORMED, seq))
            break
        if kind == MSG_PACKET:
            msg = _parse_packet(view, off + 20, off + length, seq)
            out.append(msg)
            if msg.kind == MALFORMED:
                break
        elif kind == NLMSG_ERROR:
            out.append(Message(NLMSG_ERROR, seq, error=_I32_HOST.unpack_from(view, off + 16)[0]))
        off += (length + 3) & ~3
    return out


def _parse_packet(view: memoryview, off: int, end: int, seq: int) -> Message:
    packet_id = -1
    payload = None
    skb_info = cap_len = 0
    while end - off >= 4:
        alen, atype = _NLATTR.unpack_from(view, off)
        if alen < 4 or off + alen > end:
            return Message(MALFORMED, seq)
        atype &= 0x3FFF  # NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if atype == NFQA_PAYLOAD:
            payload = view[off + 4:off + alen]
        elif atype == NFQA_PACKET_HDR and alen >= 8:
            packet_id = _U32.unpack_from(view, off + 4)[0]
        elif atype == NFQA_SKB_INFO and alen >= 8:
            skb_info = _U32.unpack_from(view, off + 4)[0]
        elif atype == NFQA_CAP_LEN and alen >= 8:
            cap_len = _U32.unpack_from(view, off + 4)[0]
        off += (alen + 3) & ~3
    if packet_id < 0:
        return Message(MALFORMED, seq)
    return Message(MSG_PACKET, seq, packet_id, payload, skb_info, cap_len)
