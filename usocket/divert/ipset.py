"""A minimal ipset client over nfnetlink: create, destroy, add, delete, list (no ``ipset`` binary).

Only what the diversion rules need (:mod:`usocket.divert.rules`): ``hash:ip,port`` sets of
IPv4 ``(ip, proto, port)`` elements. Each change is one netlink message answered by an ACK
(a member's delete may skip the ACK: ``delete(..., ack=False)``), 7-15 us on the reference
machine, against milliseconds for an ``iptables-restore`` process.

The socket is opened inside ``netns`` (``None``: the current namespace) and stays bound to it.
Messages follow ``include/uapi/linux/netfilter/ipset/ip_set.h`` (protocol 7; 6 is the oldest the
kernel accepts). Without ``NLM_F_EXCL`` the kernel tolerates adding a present element, deleting a
missing one and creating an existing set of the same type, so those calls are idempotent.
Errors raise :class:`IpsetError` with the kernel's errno (ipset's own codes are above 4096,
e.g. :data:`ERR_BUSY` for a set still referenced by a rule).
"""
from __future__ import annotations

import os
import struct
import threading

from .. import _stdsocket as socket
from ..netns import run_in_netns

NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET = 6
NFPROTO_IPV4 = 2
PROTOCOL = 7
# commands
CMD_PROTOCOL, CMD_CREATE, CMD_DESTROY, CMD_FLUSH = 1, 2, 3, 4
CMD_LIST, CMD_ADD, CMD_DEL = 7, 9, 10
# attributes (command level)
ATTR_PROTOCOL, ATTR_SETNAME, ATTR_TYPENAME, ATTR_REVISION, ATTR_FAMILY = 1, 2, 3, 4, 5
ATTR_FLAGS, ATTR_DATA, ATTR_ADT = 6, 7, 8
# attributes inside DATA
ATTR_IP, ATTR_PORT, ATTR_PROTO = 1, 4, 7
ATTR_IPADDR_IPV4 = 1
FLAG_LIST_SETNAME = 1 << 1
# ipset errnos
ERR_PRIVATE = 4096
ERR_PROTOCOL, ERR_FIND_TYPE, ERR_MAX_SETS, ERR_BUSY = 4097, 4098, 4099, 4100
ERR_REFERENCED = 4108

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NAME_MAX = 31  # IPSET_MAXNAMELEN - 1

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_NFGEN = struct.Struct("=BBH")
# The DATA attribute of a hash:ip,port element in one pack (see element()): DATA, nested
# IP{IPADDR_IPV4 ip}, PORT (big-endian value, padded), PROTO (padded).
_ELEMENT = struct.Struct("=HHHHHH4sHH2s2xHHB3x")


class IpsetError(OSError):
    """The kernel refused an ipset request (``errno``: a Linux errno or an ipset code > 4096)."""


def _attr(kind: int, data: bytes) -> bytes:
    n = _NLA.size + len(data)
    return _NLA.pack(n, kind) + data + b"\0" * (-n & 3)


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def parse_attrs(data: bytes | memoryview, offset: int = 0) -> dict[int, memoryview]:
    """Netlink attributes from ``offset`` on: ``{type (flags stripped): payload}``; a repeated
    type keeps its last payload (use :func:`iter_attrs` for lists)."""
    return dict(iter_attrs(data, offset))


def iter_attrs(data: bytes | memoryview, offset: int = 0) -> list[tuple[int, memoryview]]:
    view = memoryview(data)
    out = []
    while offset + _NLA.size <= len(view):
        n, kind = _NLA.unpack_from(view, offset)
        if n < _NLA.size:
            break
        out.append((kind & 0x3FFF, view[offset + _NLA.size:offset + n]))
        offset += (n + 3) & ~3
    return out


def element(ip: bytes, proto: int, port: int) -> bytes:
    """The DATA attribute of a ``hash:ip,port`` element."""
    ip_attr = _attr(ATTR_IP | NLA_F_NESTED, _attr(ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, ip))
    return _attr(ATTR_DATA | NLA_F_NESTED,
                 ip_attr + _attr(ATTR_PORT | NLA_F_NET_BYTEORDER, struct.pack("!H", port))
                 + _attr(ATTR_PROTO, bytes([proto])))


def fast_element(ip: bytes, proto: int, port: int) -> bytes:
    """:func:`element` in one ``struct.pack`` (the per-connection path; same bytes)."""
    if len(ip) != 4:
        raise ValueError(f"not an IPv4 address: {ip!r}")
    return _ELEMENT.pack(32, ATTR_DATA | NLA_F_NESTED, 12, ATTR_IP | NLA_F_NESTED,
                         8, ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, ip,
                         6, ATTR_PORT | NLA_F_NET_BYTEORDER, port.to_bytes(2, "big"),
                         5, ATTR_PROTO, proto)


class Ipset:
    """One nfnetlink socket in ``netns`` speaking the ipset protocol. Thread-safe; ``close()``."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.sock = run_in_netns(netns, self._open)
        self._seq = 0
        self._lock = threading.Lock()
        self._bodies: dict[tuple[int, str], bytes] = {}  # (cmd, set name) -> fixed message part
        self.late_errors = 0  # refusals of requests sent without waiting (delete(..., ack=False))

    @staticmethod
    def _open() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Ipset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------
    def _message(self, cmd: int, attrs: bytes, flags: int) -> tuple[bytes, int]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        body = _NFGEN.pack(NFPROTO_IPV4, 0, 0) + _attr(ATTR_PROTOCOL, bytes([PROTOCOL])) + attrs
        return _NLMSG.pack(_NLMSG.size + len(body), NFNL_SUBSYS_IPSET << 8 | cmd, flags, self._seq, 0) + body, self._seq

    def request(self, cmd: int, attrs: bytes = b"") -> None:
        """Send one command and wait for its ACK; raises :class:`IpsetError` on a refusal."""
        self.batch([(cmd, attrs)])

    def batch(self, commands: list[tuple[int, bytes]]) -> list[int]:
        """Send several commands in one datagram; returns each one's errno (0 = done).

        Raises :class:`IpsetError` for the first refusal unless every command is checked by
        the caller through the returned list (``batch`` itself never raises for refusals).
        """
        with self._lock:
            msgs, seqs = [], {}
            for i, (cmd, attrs) in enumerate(commands):
                msg, seq = self._message(cmd, attrs, NLM_F_REQUEST | NLM_F_ACK)
                msgs.append(msg)
                seqs[seq] = i
            self.sock.send(b"".join(msgs))
            results = [-1] * len(commands)
            left = len(commands)
            while left:
                for mtype, seq, payload in self._read():
                    if mtype != NLMSG_ERROR:
                        continue
                    if seq in seqs and results[seqs[seq]] == -1:
                        results[seqs[seq]] = -struct.unpack_from("=i", payload)[0]
                        left -= 1
                    elif seq not in seqs and struct.unpack_from("=i", payload)[0]:
                        self.late_errors += 1
        if len(commands) == 1 and results[0]:
            raise self.error(results[0])
        return results

    @staticmethod
    def error(code: int) -> IpsetError:
        names = {ERR_PROTOCOL: "protocol error", ERR_FIND_TYPE: "set type not supported",
                 ERR_MAX_SETS: "too many sets", ERR_BUSY: "set in use by a rule",
                 ERR_REFERENCED: "set referenced"}
        text = names.get(code) or (os.strerror(code) if code < ERR_PRIVATE else f"ipset error {code}")
        return IpsetError(code, text)

    def _read(self) -> list[tuple[int, int, memoryview]]:
        data = self.sock.recv(1 << 17)
        view = memoryview(data)
        out, off = [], 0
        while off + _NLMSG.size <= len(view):
            n, mtype, _flags, seq, _pid = _NLMSG.unpack_from(view, off)
            if n < _NLMSG.size:
                break
            out.append((mtype, seq, view[off + _NLMSG.size:off + n]))
            off += (n + 3) & ~3
        return out

    def dump(self, attrs: bytes = b"") -> list[memoryview]:
        """``IPSET_CMD_LIST`` as a dump: the attribute area of every answer message."""
        with self._lock:
            msg, seq = self._message(CMD_LIST, attrs, NLM_F_REQUEST | NLM_F_DUMP)
            self.sock.send(msg)
            out: list[memoryview] = []
            while True:
                for mtype, mseq, payload in self._read():
                    if mseq != seq:
                        continue
                    if mtype == NLMSG_DONE:
                        return out
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", payload)[0]
                        if code:
                            raise self.error(code)
                        return out
                    out.append(payload[_NFGEN.size:])

    # -- commands -------------------------------------------------------------------------------
    def protocol(self) -> None:
        """Check the kernel speaks ipset (raises IpsetError/OSError when not)."""
        self.request(CMD_PROTOCOL)

    def create(self, name: str, typename: str = "hash:ip,port", revision: int = 0) -> None:
        """Create ``name`` (an existing set of the same type is kept as it is)."""
        check_name(name)
        self.request(CMD_CREATE, _str(ATTR_SETNAME, name) + _str(ATTR_TYPENAME, typename)
                     + _attr(ATTR_REVISION, bytes([revision])) + _attr(ATTR_FAMILY, bytes([NFPROTO_IPV4]))
                     + _attr(ATTR_DATA | NLA_F_NESTED, b""))

    def destroy(self, name: str) -> None:
        self.request(CMD_DESTROY, _str(ATTR_SETNAME, name))

    def flush(self, name: str) -> None:
        self.request(CMD_FLUSH, _str(ATTR_SETNAME, name))

    def add(self, name: str, ip: bytes, proto: int, port: int) -> None:
        """Add an element and wait for the ACK (raises :class:`IpsetError`). The kernel applies
        the change inside the send, so the member matches packets once this returns."""
        self._member(CMD_ADD, name, ip, proto, port, True)

    def delete(self, name: str, ip: bytes, proto: int, port: int, ack: bool = True) -> None:
        """Delete an element. With ``ack`` False the request asks no ACK and this returns
        after the send (the kernel has applied it by then); a refusal arrives later as an
        error message, counted in :attr:`late_errors` when the next request reads it."""
        self._member(CMD_DEL, name, ip, proto, port, ack)

    def _member(self, cmd: int, name: str, ip: bytes, proto: int, port: int, ack: bool) -> None:
        """One element change as a single prebuilt message (the per-connection path)."""
        key = (cmd, name)
        body = self._bodies.get(key)
        if body is None:
            check_name(name)
            body = self._bodies[key] = (_NFGEN.pack(NFPROTO_IPV4, 0, 0) + _attr(ATTR_PROTOCOL, bytes([PROTOCOL]))
                                        + _str(ATTR_SETNAME, name))
        elem = fast_element(ip, proto, port)
        with self._lock:
            self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
            flags = NLM_F_REQUEST | NLM_F_ACK if ack else NLM_F_REQUEST
            self.sock.send(_NLMSG.pack(_NLMSG.size + len(body) + len(elem), NFNL_SUBSYS_IPSET << 8 | cmd,
                                       flags, seq, 0) + body + elem)
            if not ack:
                return
            while True:
                for mtype, mseq, payload in self._read():
                    if mtype != NLMSG_ERROR:
                        continue
                    code = -struct.unpack_from("=i", payload)[0]
                    if mseq == seq:
                        if code:
                            raise self.error(code)
                        return
                    if code:
                        self.late_errors += 1

    def names(self) -> list[str]:
        """Every set's name in the namespace."""
        flags = _attr(ATTR_FLAGS | NLA_F_NET_BYTEORDER, struct.pack("!I", FLAG_LIST_SETNAME))
        out = []
        for msg in self.dump(flags):
            name = parse_attrs(msg).get(ATTR_SETNAME)
            if name is not None:
                out.append(bytes(name).rstrip(b"\0").decode(errors="replace"))
        return sorted(set(out))

    def members(self, name: str) -> list[tuple[bytes, int, int]]:
        """The ``(ip, proto, port)`` elements of a ``hash:ip,port`` set."""
        out = []
        for msg in self.dump(_str(ATTR_SETNAME, name)):
            adt = parse_attrs(msg).get(ATTR_ADT)
            if adt is None:
                continue
            for kind, data in iter_attrs(adt):
                if kind != ATTR_DATA:
                    continue
                fields = parse_attrs(data)
                ip = parse_attrs(fields[ATTR_IP]).get(ATTR_IPADDR_IPV4) if ATTR_IP in fields else None
                port = fields.get(ATTR_PORT)
                proto = fields.get(ATTR_PROTO)
                if ip is not None and port is not None and proto is not None:
                    out.append((bytes(ip), proto[0], struct.unpack("!H", port)[0]))
        return sorted(out)


def check_name(name: str) -> None:
    if not name or len(name.encode()) > NAME_MAX:
        raise ValueError(f"bad ipset name {name!r} (1-{NAME_MAX} bytes)")


def available(netns: str | None = None) -> bool:
    """True when the kernel of ``netns`` answers the ipset protocol."""
    try:
        with Ipset(netns) as ips:
            ips.protocol()
        return True
    except OSError:
        return False


__all__ = ["ERR_BUSY", "Ipset", "IpsetError", "available", "element"]
