"""The :class:`Link` contract: a non-blocking source and sink of whole Ethernet frames.

A link is the edge of the sans-IO stack. The runtime selects on ``fileno()``, drains
``recv_batch()`` into ``stack.receive_frame(frame, now, csum_ok)`` and writes
``stack.take_output()`` with ``send_batch()``. Links never block and never raise for what the
network or a full queue does: such frames are dropped and counted in ``link.counters``
(``rx``/``tx`` plus ``drop.<reason>``), like a NIC dropping on a full ring.

``csum_ok`` (per received frame) is True when the L4 checksum need not be verified: either the
kernel already validated it, or it was never computed because the sender offloaded it (a
local veth peer); the stack must then not reject the frame for a "wrong" checksum.

Transmit segmentation offload: a link with ``gso_max_size > 0`` accepts, besides ordinary
frames, :class:`usocket.wire.gso.GsoPacket` frames (one TCP super-segment, IPv4 packet up to
``gso_max_size`` bytes, checksum partial) and has them cut into wire segments; TCP builds such
frames only for a stack whose ``gso_max_size`` the runtime set from its link. Links that
cannot (memory, TAP, socketpair...) keep the default 0.

Frames may be longer than ``mtu + 14``: a kernel TCP sender with TSO/GSO on a veth hands an
AF_PACKET reader whole super-segments of up to ~64 KB. The TCP layer accepts them.
"""
from __future__ import annotations

import errno
from collections import defaultdict
from collections.abc import Iterable
from types import TracebackType

#: Receive buffer large enough for a GSO super-packet: 65535 (max IPv4 total length) + 14
#: (Ethernet) + 4 (a reinserted VLAN tag), rounded up.
MAX_FRAME = 65600


def errno_reason(exc: OSError) -> str:
    """A short counter key for an ``OSError`` (``"enobufs"``...), bounded by the errno table."""
    return errno.errorcode.get(exc.errno or 0, "oserror").lower()


class Link:
    """Base class of every link. Subclasses implement ``fileno``, ``recv_batch``, ``send``,
    and extend ``close`` to release their resources.

    Attributes: ``name`` (interface name or a label), ``mtu`` (IP MTU, excluding the Ethernet
    header), ``mac`` (the 6-byte address the stack should use on this link), ``counters``,
    ``gso_max_size`` (the largest IPv4 packet accepted as one TCP super-segment; 0: none).
    """

    gso_max_size = 0

    def __init__(self, name: str, mtu: int = 1500, mac: bytes = b"\x00" * 6) -> None:
        self.name = name
        self.mtu = mtu
        self.mac = mac
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.closed = False

    def fileno(self) -> int:
        """A file descriptor that is readable when ``recv_batch`` has something to return."""
        raise NotImplementedError

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        """Up to ``max_frames`` received ``(frame, csum_ok)`` pairs; ``[]`` when none is
        waiting. Never blocks."""
        raise NotImplementedError

    def send(self, frame: bytes) -> bool:
        """Transmit one frame. Returns False (and counts why) when it was dropped."""
        raise NotImplementedError

    def send_batch(self, frames: Iterable[bytes]) -> int:
        """Transmit frames in order; returns how many were accepted."""
        send = self.send
        return sum(1 for f in frames if send(f))

    def close(self) -> None:
        """Release the link's resources. Idempotent."""
        self.closed = True

    def __enter__(self) -> Link:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<{type(self).__name__} {self.name} mtu={self.mtu}{state}>"
