"""Classic pcap capture files (readable by tcpdump, tshark, Wireshark, scapy's ``rdpcap``).

Format: the libpcap 2.4 file header with microsecond timestamps, native byte order, snap length
262144 and ``LINKTYPE_ETHERNET``; then one record header + frame per packet.

Flush policy: records go through the file object's buffer and are flushed when a record's
timestamp is ``flush_interval`` seconds (default 1.0) past the last flush, on :meth:`flush`
and on :meth:`close`. ``flush_interval=0`` flushes after every record (slow but nothing is lost
on a crash). Timestamps are whatever clock the caller uses (virtual time in the memory network,
``time.time()`` in :class:`PcapLink`), so no wall clock is read here.

One lock serialises writes, so a writer may be shared by a stack thread and another thread.
"""
from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import BinaryIO

from .base import Link

MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
_HDR = struct.Struct("IHHiIII")
_REC = struct.Struct("IIII")


class PcapWriter:
    """Write Ethernet frames to ``path_or_file`` (a path, opened and owned; or a binary file
    object, written to and flushed but not closed)."""

    def __init__(self, path_or_file: str | os.PathLike[str] | BinaryIO, *, flush_interval: float = 1.0,
                 snaplen: int = SNAPLEN) -> None:
        if isinstance(path_or_file, (str, os.PathLike)):
            self._f: BinaryIO = open(path_or_file, "wb")  # noqa: SIM115 - closed in close()
            self._owned = True
        else:
            self._f = path_or_file
            self._owned = False
        self.flush_interval = flush_interval
        self.snaplen = snaplen
        self.count = 0
        self.closed = False
        self._lock = threading.Lock()
        self._last_flush: float | None = None
        self._f.write(_HDR.pack(MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write(self, frame: bytes | bytearray | memoryview, ts: float) -> None:
        """Record one frame seen at ``ts`` (seconds since the epoch, or any clock)."""
        usec_total = max(0, round(ts * 1_000_000))
        sec, usec = divmod(usec_total, 1_000_000)
        n = len(frame)
        incl = min(n, self.snaplen)
        with self._lock:
            if self.closed:
                raise ValueError("write to a closed PcapWriter")
            self._f.write(_REC.pack(sec & 0xFFFFFFFF, usec, incl, n))
            self._f.write(frame[:incl] if incl < n else frame)
            self.count += 1
            if self._last_flush is None:
                self._last_flush = ts
            if ts - self._last_flush >= self.flush_interval:
                self._f.flush()
                self._last_flush = ts

    def write_ip(self, packet: bytes | bytearray | memoryview, ts: float,
                 src_mac: bytes = b"\x00" * 6, dst_mac: bytes = b"\x00" * 6) -> None:
        """Record an IP packet (e.g. one taken from NFQUEUE) wrapped in an Ethernet header."""
        ethertype = 0x86DD if len(packet) and packet[0] >> 4 == 6 else 0x0800
        self.write(dst_mac + src_mac + ethertype.to_bytes(2, "big") + bytes(packet), ts)

    def flush(self) -> None:
        with self._lock:
            if not self.closed:
                self._f.flush()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._f.flush()
            if self._owned:
                self._f.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_pcap(data: bytes | BinaryIO) -> list[tuple[float, bytes]]:
    """Parse a classic pcap (either byte order, µs or ns) into ``(ts, frame)`` pairs. Small
    helper for tests and tools; truncated trailing records are ignored."""
    buf = data if isinstance(data, bytes) else data.read()
    magic = buf[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<",
             b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if order is None:
        raise ValueError("not a pcap file")
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    rec = struct.Struct(order + "IIII")
    out: list[tuple[float, bytes]] = []
    off = _HDR.size
    while off + rec.size <= len(buf):
        sec, frac, incl, _ = rec.unpack_from(buf, off)
        off += rec.size
        if off + incl > len(buf):
            break
        out.append((sec + frac * scale, buf[off:off + incl]))
        off += incl
    return out


class PcapLink(Link):
    """Wrap any :class:`Link` and record both directions to ``writer``.

    Received frames are recorded as returned by the inner link, sent frames only when the inner
    link accepted them. ``clock`` stamps records (default ``time.time``)."""

    def __init__(self, inner: Link, writer: PcapWriter, clock: Callable[[], float] = time.time) -> None:
        super().__init__(inner.name, inner.mtu, inner.mac)
        self.inner = inner
        self.writer = writer
        self.clock = clock
        self.counters = inner.counters
        # Super-segments (usocket.wire.gso) go to the inner link as they are, and are recorded
        # whole, as tcpdump on the host records them.
        self.gso_max_size = inner.gso_max_size

    def fileno(self) -> int:
        return self.inner.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        batch = self.inner.recv_batch(max_frames)
        if batch:
            ts = self.clock()
            for frame, _ in batch:
                self.writer.write(frame, ts)
        return batch

    def send(self, frame: bytes) -> bool:
        ok = self.inner.send(frame)
        if ok:
            self.writer.write(frame, self.clock())
        return ok

    def send_batch(self, frames: Iterable[bytes]) -> int:
        return sum(1 for f in frames if self.send(f))

    def close(self) -> None:
        """Close the inner link; the writer belongs to the caller (it may be shared)."""
        self.inner.close()
        super().close()


__all__ = ["PcapWriter", "PcapLink", "read_pcap", "LINKTYPE_ETHERNET"]
