"""An AF_PACKET link on a real (or veth) interface.

One persistent packet socket per interface, opened with scapy's ``L2Socket`` (inside the
interface's network namespace when ``netns`` is given) and then used as a plain socket: frames
are raw ``bytes``, never scapy packets.

Receive details that matter to a stack:

- ``PACKET_AUXDATA`` gives the kernel's checksum knowledge: ``TP_STATUS_CSUMNOTREADY`` (the
  sender offloaded the checksum, e.g. a veth peer: the field holds only a partial sum) and
  ``TP_STATUS_CSUM_VALID`` (already verified) both yield ``csum_ok=True``.
- Frames of type ``PACKET_OUTGOING`` (our own transmissions and the kernel's) are skipped;
  ``PACKET_IGNORE_OUTGOING`` asks the kernel not to queue them at all where supported.
- A VLAN tag the NIC stripped into metadata is put back into the frame, so the stack sees
  the real frame (and drops it: the stack is untagged).
- The receive buffer holds a whole GSO super-packet (~64 KB: a kernel TCP sender with TSO on a
  veth passes such segments up unsplit). Truncated frames are dropped and counted.
- Transmit goes through a second packet socket bound to no protocol (it receives nothing) with
  ``PACKET_VNET_HDR``: every frame is sent behind a 10-byte ``struct virtio_net_hdr``. For a
  plain frame it is all zeros; for a TCP super-segment (:class:`usocket.wire.gso.GsoPacket`)
  it asks the kernel to complete the checksum and cut the segment into ``gso_size`` pieces
  (TSO: a veth passes it whole to its peer, other devices segment in hardware or in the
  kernel's software GSO). :attr:`PacketLink.gso_max_size` advertises this; it is 0 when the
  kernel refuses ``PACKET_VNET_HDR``, and frames then go out of the receive socket as they are.
  Received frames are unaffected (the receive socket has no vnet header).
- With ``bpf=`` the socket is opened bound to no protocol, the filter is attached, and only then
  bound to ``ETH_P_ALL``: no unfiltered frame is ever queued. :meth:`PacketLink.attach_filter`
  on a live link re-filters what was queued before the filter took effect.
"""
from __future__ import annotations

import fcntl
import logging
import struct
from typing import Any

from .. import _stdsocket as socket  # the kernel's module even after the hijacker swaps sys.modules["socket"]
from ..netns import run_in_netns
from ..wire.gso import GsoPacket
from . import bpf as _bpf
from .base import MAX_FRAME, Link, errno_reason

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
PACKET_VNET_HDR = 15
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SIOCGIFMTU = 0x8921

TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
TP_STATUS_CSUM_VALID = 1 << 7
CSUM_KNOWN = TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID

_AUX = struct.Struct("IIIHHHH")  # struct tpacket_auxdata
_VNET = struct.Struct("<BBHHHH")  # struct virtio_net_hdr: flags gso_type hdr_len gso_size csum_start csum_offset
_VNET_NONE = bytes(_VNET.size)
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
#: The largest IPv4 packet handed over as one super-segment: the IPv4 limit.
GSO_MAX_SIZE = 65535
_CMSG_SPACE = socket.CMSG_SPACE(_AUX.size)


def _open_l2socket(iface: str, proto: int, promisc: bool) -> Any:
    """Open scapy's L2Socket on ``iface`` without consulting scapy's interface table (which
    lists the root namespace's interfaces) and without a tcpdump-compiled filter."""
    from scapy.arch.linux import L2Socket
    from scapy.interfaces import NetworkInterface

    dev = NetworkInterface(None, {"name": iface, "network_name": iface})  # type: ignore[arg-type]
    # scapy warns that it cannot guess a decoder class for protocol 0 (we bind to no protocol
    # until the BPF filter is in place, and never let scapy decode anyway): silence just that.
    scapy_log = logging.getLogger("scapy.runtime")
    level = scapy_log.level
    scapy_log.setLevel(logging.ERROR)
    try:
        return L2Socket(iface=dev, type=proto, promisc=promisc, nofilter=1)
    finally:
        scapy_log.setLevel(level)


_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: the enum's & runs in Python per frame

class PacketLink(Link):
    """AF_PACKET link on ``iface`` (in ``netns``), optionally with a classic-BPF filter.

    ``mac`` and ``mtu`` are the interface's. ``rcvbuf``/``sndbuf`` are forced past the
    sysctl limits when running as root (``SO_RCVBUFFORCE``)."""

    _tx: socket.socket | None = None  # the transmit socket with PACKET_VNET_HDR (see the module doc)

    def __init__(self, iface: str, netns: str | None = None, bpf: _bpf.Program | None = None, *,
                 promisc: bool = False, rcvbuf: int = 8 << 20, sndbuf: int = 4 << 20) -> None:
        super().__init__(iface)
        self.netns = netns
        self._pending: list[tuple[bytes, bool]] = []
        proto = 0 if bpf is not None else ETH_P_ALL
        self._l2 = run_in_netns(netns, lambda: _open_l2socket(iface, proto, promisc))
        sock: socket.socket = self._l2.ins
        self.sock = sock
        try:
            self._configure(rcvbuf, sndbuf)
            if bpf is not None:
                _bpf.attach_filter(sock, bpf)
                sock.bind((iface, ETH_P_ALL))
            self.mac = bytes(sock.getsockname()[4][:6])
            self.mtu = self._query_mtu()
            self._tx = run_in_netns(netns, lambda: self._open_tx(iface, sndbuf))
        except BaseException:
            self._l2.close()
            raise
        if self._tx is not None:
            self.gso_max_size = GSO_MAX_SIZE

    @staticmethod
    def _open_tx(iface: str, sndbuf: int) -> socket.socket | None:
        """The transmit socket with ``PACKET_VNET_HDR``, or None where the kernel refuses it."""
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            try:
                tx.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
            except PermissionError:
                tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            tx.bind((iface, 0))  # protocol 0: nothing is ever queued for reading
            tx.setblocking(False)
        except OSError:
            tx.close()
            return None
        return tx

    def _configure(self, rcvbuf: int, sndbuf: int) -> None:
        sock = self.sock
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)  # scapy turns it on; we do not use it
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:  # kernel < 4.20: the pkttype check below does the job
            pass
        for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
                                   (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
        sock.setblocking(False)

    def _query_mtu(self) -> int:
        req = struct.pack("16si20x", self.name.encode(), 0)
        return int(struct.unpack_from("16si", fcntl.ioctl(self.sock.fileno(), SIOCGIFMTU, req))[1])

    # -- Link API --------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        if self._pending:
            out, self._pending = self._pending[:max_frames], self._pending[max_frames:]
        c = self.counters
        recvmsg = self.sock.recvmsg
        while len(out) < max_frames:
            try:
                data, anc, flags, addr = recvmsg(MAX_FRAME, _CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. ENETDOWN, reported once
                c["drop.rx_" + errno_reason(exc)] += 1
                break
            if addr[2] == PACKET_OUTGOING:
                c["skip.outgoing"] += 1
                continue
            if flags & _MSG_TRUNC:
                c["drop.truncated"] += 1
                continue
            csum_ok = False
            for level, kind, cdata in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(cdata) >= _AUX.size:
                    status, _, _, _, _, tci, tpid = _AUX.unpack_from(cdata)
                    csum_ok = bool(status & CSUM_KNOWN)
                    if status & TP_STATUS_VLAN_VALID:
                        data = self.reinsert_vlan(data, tci, tpid if status & TP_STATUS_VLAN_TPID_VALID
                                                  else 0x8100)
            if len(data) < 14:
                c["drop.runt"] += 1
                continue
            c["rx"] += 1
            out.append((data, csum_ok))
        return out

    @staticmethod
    def reinsert_vlan(frame: bytes, tci: int, tpid: int) -> bytes:
        """Put back an 802.1Q tag the NIC stripped into packet metadata."""
        return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]

    def send(self, frame: bytes) -> bool:
        try:
            tx = self._tx
            if tx is None:
                self.sock.send(frame)
            elif type(frame) is GsoPacket:
                tx.sendmsg((self.vnet_header(frame), frame))
            else:
                tx.sendmsg((_VNET_NONE, frame))
        except BlockingIOError:
            self.counters["drop.tx_busy"] += 1
            return False
        except OSError as exc:  # EMSGSIZE (frame > MTU), ENETDOWN, ENOBUFS...
            self.counters["drop.tx_" + errno_reason(exc)] += 1
            return False
        self.counters["tx"] += 1
        return True

    @staticmethod
    def vnet_header(frame: bytes) -> bytes:
        """The ``virtio_net_hdr`` of an Ethernet frame holding a TCP super-segment: checksum to
        complete from the TCP header on (field at offset 16), cut into ``gso_size`` payloads."""
        ihl = (frame[14] & 0x0F) * 4
        start = 14 + ihl
        return _VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                          start + (frame[start + 12] >> 4) * 4, getattr(frame, "gso_size", 0), start, 16)

    # -- filters ---------------------------------------------------------------------------------
    def attach_filter(self, program: _bpf.Program) -> int:
        """Attach ``program`` to the live socket. Frames queued before it took effect are read
        now and kept only if ``program`` accepts them (interpreted in Python; VLAN-tagged ones
        are dropped). Returns how many queued frames were dropped."""
        _bpf.attach_filter(self.sock, program)
        queued = self._pending
        self._pending = []
        while True:
            batch = self.recv_batch(256)
            if not batch:
                break
            queued.extend(batch)
        keep = [(f, ok) for f, ok in queued
                if f[12:14] not in (b"\x81\x00", b"\x88\xa8") and _bpf.run_filter(program, f)]
        self._pending = keep
        dropped = len(queued) - len(keep)
        self.counters["rx"] -= dropped
        self.counters["drop.filter_drain"] += dropped
        return dropped

    def detach_filter(self) -> None:
        _bpf.detach_filter(self.sock)

    def close(self) -> None:
        if not self.closed:
            self._l2.close()
            if self._tx is not None:
                self._tx.close()
        super().close()
