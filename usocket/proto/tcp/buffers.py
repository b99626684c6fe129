"""TCP byte buffers: the send buffer, the receive buffer and the out-of-order queue (with SACK).

Every position here is a *stream offset*: an unbounded int, 0 for the first data byte of the
stream. The engine converts to and from 32-bit sequence numbers at the wire edge
(:mod:`.seq`), so nothing in this module knows about wrap-around.

These classes sit on the data path, so they are built for throughput in pure Python: no per-byte
loops, bytes copied once on the way in and once on the way out, every operation O(1) amortised
or O(log n) in the number of chunks or ranges, and plain attributes with ``__slots__``.

:class:`SendBuffer` -- bytes the application wrote and the peer has not acknowledged yet
(RFC 9293 3.10.2's send queue and 3.4's SND.UNA). Data is held as a list of chunks with their
start offsets:

- ``write`` copies what fits in ``capacity`` (``SO_SNDBUF``). Writes under ``COALESCE_BELOW``
  bytes go into an open *tail*: a ``bytearray`` allocated at its full size (4 KiB, doubling for
  each next tail up to ``CHUNK_SIZE``) and filled by slice assignment, so a stream of 10-byte
  writes does not become a chunk per write, and no tail is ever regrown (growing a bytearray
  by appending re-copies it as it is reallocated; that cost 2 us per 1448-byte write). A larger
  write first fills the open tail, then becomes chunks of its own of at most ``CHUNK_SIZE``.
  Each byte is copied exactly once; an immutable ``bytes`` of at most ``CHUNK_SIZE`` written
  whole is kept by reference, with no copy at all.
- ``read(offset, n)`` finds the chunk by a cursor remembered from the previous read (the
  sequential transmission of MSS-sized pieces hits it, or the next chunk, in O(1)), else by
  bisection (retransmissions far back, O(log n)). A piece inside one chunk is one slice; a piece
  across chunks is one ``b"".join`` of memoryview slices.
- ``ack(offset)`` moves ``start`` and drops the chunks wholly below it; dropped list slots are
  reclaimed in batches so the front removal is O(1) amortised. A chunk partly acknowledged
  stays whole until its last byte is acknowledged, so at most one ``CHUNK_SIZE`` chunk of
  acknowledged bytes is held beyond ``capacity``. Shrinking ``capacity`` never drops data; it
  only makes ``free`` 0 until enough is acknowledged.

:class:`ReceiveBuffer` -- in-order bytes waiting for the application (``SO_RCVBUF``; RCV.NXT is
its end). A deque of chunks and the read position in the first one. ``push`` keeps a ``bytes``
by reference and copies anything else once; pushes under ``RX_COALESCE_BELOW`` bytes are
appended to a ``bytearray`` tail of up to ``RX_TAIL_SIZE`` bytes, so one-byte segments do not
become one object each. ``read``/``read_into`` copy once out (a read of exactly one whole ``bytes``
chunk returns that chunk with no copy); ``peek`` leaves the data in place (``MSG_PEEK``). The
buffer always accepts: the advertised window is what bounds it, and the engine computes that
window from ``free``.

:class:`OutOfOrderQueue` -- data received above RCV.NXT, held until the gap below it is filled
(RFC 9293 3.10.7.4: segments beyond RCV.NXT but inside the window are kept, "for later
processing"), and the SACK blocks the receiver reports about it (RFC 2018):

- Held data is a sorted list of disjoint, non-adjacent *ranges* (a segment touching or
  overlapping ranges merges them into one), each a deque of ``bytes`` pieces. Where a new
  segment overlaps bytes already held, the held bytes are kept and only the holes are copied
  from the segment (Linux keeps the first copy too). A merge moves the pieces of the smaller
  side onto the larger one, so a byte is moved O(log n) times at most; a range whose pieces
  average under ``COMPACT_AVERAGE`` bytes (a flood of tiny segments) is joined into one piece,
  which bounds the per-piece memory overhead. The common case -- in-order data arriving above
  a single hole -- extends the highest range in O(1). Finding the ranges a segment touches is a
  bisection; creating, merging and popping ranges is a list insert or delete, a memmove of at
  most ``max_ranges`` pointers.
- ``pop(next_offset)`` hands back the range covering RCV.NXT, trimmed to start there, in one
  join; ranges wholly below it are dropped.
- Limits: never more than ``max_bytes`` held nor ``max_ranges`` ranges. Data that does not fit
  is refused when all its new bytes lie above everything held; otherwise it is stored and room
  is made by dropping bytes from the highest offsets, as Linux's ``tcp_prune_ofo_queue`` drops
  from the tail of the queue: lower data is nearer to delivery and worth more. (Dropping data
  that was SACKed is reneging, which RFC 2018 section 8 allows; the sender keeps it until it is
  cumulatively acknowledged.)
- SACK (RFC 2018 section 4): the first block is the range containing the segment that triggered
  the ACK; then the other ranges in the order they were last updated, most recent first, which
  is what repeating "the most recently reported SACK blocks" amounts to, with merged blocks
  (subsets of the first) and delivered ones gone. The recency order is a dict used as an LRU,
  so reporting ``limit`` blocks costs O(limit). A fully duplicate segment stores nothing and
  ``add`` returns False, but it still moves its range to the front, as Linux does
  (``tcp_data_queue_ofo`` reaches ``tcp_sack_new_ofo_skb`` for it); the D-SACK block of RFC
  2883 is the engine's business. A refused segment changes nothing.
"""
from __future__ import annotations

import builtins
from bisect import bisect_left, bisect_right
from collections import deque

Buffer = bytes | bytearray | memoryview

# Send chunks: writes below COALESCE_BELOW bytes fill a preallocated bytearray tail (TAIL_MIN bytes,
# doubling for each next tail up to CHUNK_SIZE); larger writes are cut into CHUNK_SIZE chunks.
CHUNK_SIZE = 65536
COALESCE_BELOW = 4096
TAIL_MIN = 4096  # the first tail's size (>= COALESCE_BELOW); each next one doubles, up to CHUNK_SIZE
# Receive side: segments below RX_COALESCE_BELOW coalesce into a tail of up to RX_TAIL_SIZE.
RX_COALESCE_BELOW = 1024
RX_TAIL_SIZE = 16384
# Out-of-order ranges with more than COMPACT_MIN_PIECES pieces averaging under COMPACT_AVERAGE
# bytes are joined into one piece.
COMPACT_MIN_PIECES = 16
COMPACT_AVERAGE = 256


def _byte_view(data: Buffer) -> memoryview:
    """A flat unsigned-byte memoryview of ``data`` (any C-contiguous buffer)."""
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if mv.ndim != 1 or mv.itemsize != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


# -- send buffer -------------------------------------------------------------------------------
class SendBuffer:
    """Bytes the application wrote that are not yet acknowledged.

    ``start`` is the offset of the oldest byte held (everything below it is acknowledged),
    ``end`` the offset just past the newest; ``capacity`` may be changed at any time.
    """

    __slots__ = ("capacity", "start", "end", "_chunks", "_starts", "_head", "_cur", "_tail", "_tail_size")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.start = 0
        self.end = 0
        self._chunks: list[bytes | bytearray] = []
        self._starts: list[int] = []  # stream offset of each chunk's first byte
        self._head = 0  # index of the first live chunk (slots below are dead, reclaimed in batches)
        self._cur = 0  # index of the chunk the last read ended in
        # The last chunk while small writes may still fill it: preallocated, its bytes from
        # end - _starts[-1] on are not data yet. A chunk is closed only once full.
        self._tail: bytearray | None = None
        self._tail_size = TAIL_MIN  # size of the next tail: doubles up to CHUNK_SIZE

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def free(self) -> int:
        """Room left for ``write``: ``max(0, capacity - len)``."""
        free = self.capacity - self.end + self.start
        return free if free > 0 else 0

    def __repr__(self) -> str:
        return f"<SendBuffer [{self.start}, {self.end}) capacity={self.capacity}>"

    def write(self, data: Buffer) -> int:
        """Append up to ``free`` bytes of ``data`` (copied) and return how many were taken."""
        if type(data) is bytes:
            size = len(data)
        else:
            data = _byte_view(data)
            size = data.nbytes
        n = self.capacity - self.end + self.start
        if size < n:
            n = size
        if n <= 0:
            return 0
        end = self.end
        tail = self._tail
        pos = 0  # bytes of data placed so far
        if tail is not None:  # fill the open tail first
            fill = end - self._starts[-1]
            room = len(tail) - fill
            if n < room:
                tail[fill:fill + n] = data if n == size else memoryview(data)[:n]
                self.end = end + n
                return n
            tail[fill:] = memoryview(data)[:room]
            self._tail = None
            pos = room
            if pos == n:
                self.end = end + n
                return n
        chunks = self._chunks
        starts = self._starts
        rest = n - pos
        if rest < COALESCE_BELOW:  # a new tail
            tsize = self._tail_size
            self._tail_size = tsize * 2 if tsize < CHUNK_SIZE else CHUNK_SIZE
            tail = bytearray(tsize)
            tail[:rest] = memoryview(data)[pos:n] if pos or n < size else data
            starts.append(end + pos)
            chunks.append(tail)
            self._tail = tail
        elif not pos and rest == size and rest <= CHUNK_SIZE and type(data) is bytes:
            starts.append(end)
            chunks.append(data)  # immutable: kept by reference, no copy
        else:
            mv = memoryview(data)
            for i in range(pos, n, CHUNK_SIZE):
                k = n - i if n - i < CHUNK_SIZE else CHUNK_SIZE
                starts.append(end + i)
                chunks.append(mv[i:i + k].tobytes())
        self.end = end + n
        return n

    def read(self, offset: int, n: int) -> bytes:
        """The bytes ``[offset, min(offset + n, end))``.

        Raises ``ValueError`` if ``offset`` is below ``start`` (already acknowledged and
        released) or above ``end``.
        """
        if offset < self.start or offset > self.end:
            raise ValueError(f"offset {offset} outside the send buffer [{self.start}, {self.end}]")
        stop = offset + n
        if stop > self.end:
            stop = self.end
        if stop <= offset:
            return b""
        chunks = self._chunks
        starts = self._starts
        i = self._cur
        cs = starts[i]
        if not (cs <= offset < cs + len(chunks[i])):
            i += 1
            if i < len(chunks) and starts[i] <= offset < starts[i] + len(chunks[i]):
                cs = starts[i]
            else:
                i = bisect_right(starts, offset, self._head) - 1
                cs = starts[i]
        c = chunks[i]
        a = offset - cs
        b = stop - cs
        if b <= len(c):  # within one chunk
            self._cur = i
            return c[a:b] if type(c) is bytes else memoryview(c)[a:b].tobytes()
        parts: list[memoryview] = [memoryview(c)[a:]]
        while True:
            i += 1
            c = chunks[i]
            b = stop - starts[i]
            if b <= len(c):
                parts.append(memoryview(c)[:b])
                break
            parts.append(memoryview(c))
        self._cur = i
        return b"".join(parts)

    def ack(self, offset: int) -> int:
        """Release everything below ``offset`` (clamped to ``[start, end]``); return the count."""
        old = self.start
        if offset <= old:
            return 0
        if offset > self.end:
            offset = self.end
        self.start = offset
        chunks = self._chunks
        starts = self._starts
        h = self._head
        last = len(chunks) - 1
        while h < last and starts[h + 1] <= offset:
            h += 1
        if offset == self.end:  # everything acknowledged: start afresh
            chunks.clear()
            starts.clear()
            self._tail = None
            self._tail_size = TAIL_MIN
            h = self._cur = 0
        elif h >= 32 and 2 * h >= len(chunks):  # reclaim dead slots in batches: O(1) amortised
            del chunks[:h]
            del starts[:h]
            self._cur -= h
            h = 0
        if self._cur < h:
            self._cur = h
        self._head = h
        return offset - old


# -- receive buffer ----------------------------------------------------------------------------
class ReceiveBuffer:
    """In-order bytes waiting for the application. ``capacity`` is ``SO_RCVBUF``."""

    __slots__ = ("capacity", "_chunks", "_off", "_len", "_tail")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._chunks: deque[bytes | bytearray] = deque()
        self._off = 0  # read position inside the first chunk
        self._len = 0
        self._tail: bytearray | None = None  # the last chunk while small pushes may extend it

    def __len__(self) -> int:
        return self._len

    @property
    def free(self) -> int:
        """``max(0, capacity - len)``: what the receive window may offer."""
        free = self.capacity - self._len
        return free if free > 0 else 0

    def __repr__(self) -> str:
        return f"<ReceiveBuffer {self._len} bytes capacity={self.capacity}>"

    def push(self, data: Buffer) -> None:
        """Append ``data`` (copied, or kept by reference when it is an immutable ``bytes``)."""
        if type(data) is bytes:
            n = len(data)
        else:
            data = _byte_view(data)
            n = data.nbytes
        if not n:
            return
        if n < RX_COALESCE_BELOW:
            tail = self._tail
            if tail is not None and len(tail) < RX_TAIL_SIZE:
                tail += data
            else:
                self._tail = bytearray(data)
                self._chunks.append(self._tail)
        else:
            self._tail = None
            self._chunks.append(data if type(data) is bytes else bytes(data))
        self._len += n

    def discard(self, n: int) -> int:
        """Drop up to ``n`` bytes from the front without copying them; returns the count."""
        n = min(max(n, 0), self._len)
        left = n
        chunks = self._chunks
        while left:
            c = chunks[0]
            avail = len(c) - self._off
            if left < avail:
                self._off += left
                break
            left -= avail
            chunks.popleft()
            self._off = 0
            if c is self._tail:
                self._tail = None
        self._len -= n
        return n

    def read(self, n: int, peek: bool = False) -> bytes:
        """Up to ``n`` bytes from the front; ``peek`` leaves them in the buffer."""
        if n < 0:
            raise ValueError("negative read size")
        if n > self._len:
            n = self._len
        if not n:
            return b""
        chunks = self._chunks
        off = self._off
        c = chunks[0]
        avail = len(c) - off
        if n <= avail:  # within the first chunk
            if type(c) is bytes:
                out = c if n == avail and not off else c[off:off + n]
            else:
                out = memoryview(c)[off:off + n].tobytes()
            if not peek:
                self._len -= n
                if n == avail:
                    chunks.popleft()
                    self._off = 0
                    if c is self._tail:
                        self._tail = None
                else:
                    self._off = off + n
            return out
        parts: list[memoryview] = [memoryview(c)[off:]]
        left = n - avail
        k = 0
        it = iter(chunks)  # chunks[k] would be O(k) in a deque
        next(it)
        for c in it:
            k += 1
            if left <= len(c):
                parts.append(memoryview(c)[:left])
                break
            parts.append(memoryview(c))
            left -= len(c)
        out = b"".join(parts)
        del parts  # release the views: the tail bytearray must stay resizable
        if not peek:
            self._consume(k, left)
        return out

    def read_into(self, buf: bytearray | memoryview, peek: bool = False) -> int:
        """Copy as many bytes as fit into ``buf`` (a writable buffer); return the count."""
        dst = _byte_view(buf)
        n = dst.nbytes
        if n > self._len:
            n = self._len
        if not n:
            return 0
        off = self._off
        pos = 0
        k = -1
        for c in self._chunks:
            k += 1
            take = len(c) - off
            if take >= n - pos:
                take = n - pos
                dst[pos:n] = memoryview(c)[off:off + take]
                break
            dst[pos:pos + take] = memoryview(c)[off:]
            pos += take
            off = 0
        if not peek:
            self._consume(k, off + take)
        return n

    def _consume(self, k: int, used: int) -> None:
        """Drop chunks ``[0, k)`` and ``used`` bytes of chunk ``k`` (the read position in it)."""
        chunks = self._chunks
        taken = -self._off
        for _ in range(k):
            taken += len(chunks.popleft())
        c = chunks[0]
        taken += used
        if used == len(c):
            chunks.popleft()
            used = 0
            if c is self._tail:
                self._tail = None
        if not chunks:
            self._tail = None
        self._off = used
        self._len -= taken

    def clear(self) -> int:
        """Drop everything; return how many bytes were dropped."""
        n = self._len
        self._chunks.clear()
        self._off = 0
        self._len = 0
        self._tail = None
        return n


# -- out-of-order queue ------------------------------------------------------------------------
class _Range:
    """A run of contiguous held bytes ``[start, end)``, as pieces in order."""

    __slots__ = ("start", "end", "pieces")

    def __init__(self, start: int, end: int, pieces: deque[bytes]) -> None:
        self.start = start
        self.end = end
        self.pieces = pieces

    def __repr__(self) -> str:
        return f"<_Range [{self.start}, {self.end}) in {len(self.pieces)} pieces>"


class OutOfOrderQueue:
    """Data received above the next expected byte, held until the gap fills, and its SACK blocks.

    ``max_bytes`` and ``max_ranges`` may be changed at any time; lowering them drops data from
    the highest offsets at once.
    """

    __slots__ = ("_max_bytes", "_max_ranges", "_starts", "_ranges", "_recent", "_bytes")

    def __init__(self, max_bytes: int, max_ranges: int = 2048) -> None:
        self._max_bytes = max_bytes
        self._max_ranges = max_ranges
        self._starts: list[int] = []  # start of each range, sorted
        self._ranges: list[_Range] = []  # parallel to _starts
        self._recent: dict[_Range, None] = {}  # every range, least recently updated first
        self._bytes = 0

    @property
    def max_bytes(self) -> int:
        """Most bytes held at once."""
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self._max_bytes = value
        self._prune()

    @property
    def max_ranges(self) -> int:
        """Most ranges held at once."""
        return self._max_ranges

    @max_ranges.setter
    def max_ranges(self, value: int) -> None:
        self._max_ranges = value
        self._prune()

    @property
    def bytes(self) -> int:
        """Bytes held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._ranges)

    @property
    def highest(self) -> int | None:
        """End offset of the highest range, None when empty."""
        return self._ranges[-1].end if self._ranges else None

    def ranges(self) -> list[tuple[int, int]]:
        """The held ranges as ``(start, end)``, lowest first (for inspection and tests)."""
        return [(r.start, r.end) for r in self._ranges]

    def __repr__(self) -> str:
        return f"<OutOfOrderQueue {self._bytes} bytes in {len(self._ranges)} ranges>"

    def clear(self) -> None:
        """Drop everything."""
        self._starts.clear()
        self._ranges.clear()
        self._recent.clear()
        self._bytes = 0

    def add(self, offset: int, data: Buffer) -> bool:
        """Store the segment ``data`` at ``offset``; False when nothing new was stored.

        Merges with overlapping and adjacent ranges (bytes already held win), enforces the
        limits (see the module docstring), and makes the range it landed in the first SACK
        block.
        """
        if type(data) is bytes:
            n = len(data)
        else:
            data = _byte_view(data)
            n = data.nbytes
        if not n:
            return False
        end = offset + n
        ranges = self._ranges
        recent = self._recent
        if ranges:
            top = ranges[-1]
            if offset == top.end:  # the common case: extends the highest range
                if self._bytes + n > self._max_bytes:
                    return False  # above everything held: refused
                pieces = top.pieces
                pieces.append(data if type(data) is bytes else bytes(data))
                top.end = end
                self._bytes += n
                if len(pieces) > COMPACT_MIN_PIECES and len(pieces) * COMPACT_AVERAGE > end - top.start:
                    top.pieces = deque((b"".join(pieces),))
                del recent[top]
                recent[top] = None
                return True
        starts = self._starts
        i = bisect_left(starts, offset)
        if i and ranges[i - 1].end >= offset:
            i -= 1
        j = bisect_right(starts, end, i)  # ranges[i:j] overlap or touch [offset, end]
        if i == j:  # touches nothing: a new range
            if self._bytes + n > self._max_bytes or len(ranges) >= self._max_ranges:
                if i == len(ranges):
                    return False  # above everything held: refused
                over = True
            else:
                over = False
            r = _Range(offset, end, deque((data if type(data) is bytes else bytes(data),)))
            starts.insert(i, offset)
            ranges.insert(i, r)
            recent[r] = None
            self._bytes += n
            if over:
                self._prune()
                return bool(ranges) and ranges[-1].end > offset
            return True
        # The holes of [offset, end) between the touched ranges: the only bytes taken from data.
        holes: list[tuple[int, int]] = []
        pos = offset
        for k in range(i, j):
            r = ranges[k]
            if r.start > pos:
                holes.append((pos, r.start))
            if r.end > pos:
                pos = r.end
        if end > pos:
            holes.append((pos, end))
        if not holes:  # a duplicate: nothing new, but it is the latest segment for SACK
            r = ranges[i]
            del recent[r]
            recent[r] = None
            return False
        new = 0
        for a, b in holes:
            new += b - a
        over = self._bytes + new > self._max_bytes or len(ranges) - (j - i) + 1 > self._max_ranges
        if over and holes[0][0] >= ranges[-1].end:
            return False  # every new byte lies above everything held: refused
        # Merge ranges[i:j] and the holes into the range with the most pieces (small onto large).
        base = i
        for k in range(i + 1, j):
            if len(ranges[k].pieces) > len(ranges[base].pieces):
                base = k
        merged = ranges[base]
        pieces = merged.pieces
        first = ranges[i]
        last = ranges[j - 1]
        mv = data if isinstance(data, memoryview) else memoryview(data)
        whole: bytes | None = None  # the segment itself, when it is exactly the one hole
        if type(data) is bytes and len(holes) == 1 and holes[0][0] == offset and holes[0][1] == end:
            whole = data
        # Pieces below the base range, prepended from the highest down.
        below: list[bytes] = []
        if offset < first.start:
            below.append(whole if whole is not None else bytes(mv[:first.start - offset]))
        for k in range(i, base):
            r = ranges[k]
            below.extend(r.pieces)
            below.append(bytes(mv[r.end - offset:ranges[k + 1].start - offset]))
            del recent[r]
        pieces.extendleft(reversed(below))
        for k in range(base + 1, j):
            r = ranges[k]
            pieces.append(bytes(mv[ranges[k - 1].end - offset:r.start - offset]))
            pieces.extend(r.pieces)
            del recent[r]
        if end > last.end:
            pieces.append(whole if whole is not None else bytes(mv[last.end - offset:]))
        merged.start = offset if offset < first.start else first.start
        merged.end = end if end > last.end else last.end
        if len(pieces) > COMPACT_MIN_PIECES and len(pieces) * COMPACT_AVERAGE > merged.end - merged.start:
            merged.pieces = deque((b"".join(pieces),))
        ranges[i:j] = [merged]
        starts[i:j] = [merged.start]
        del recent[merged]
        recent[merged] = None
        self._bytes += new
        if over:
            self._prune()
            return bool(ranges) and ranges[-1].end > holes[0][0]
        return True

    def _prune(self) -> None:
        """Drop from the highest offsets until both limits hold."""
        ranges = self._ranges
        starts = self._starts
        recent = self._recent
        while len(ranges) > self._max_ranges:
            r = ranges.pop()
            starts.pop()
            del recent[r]
            self._bytes -= r.end - r.start
        excess = self._bytes - self._max_bytes
        while excess > 0 and ranges:
            r = ranges[-1]
            size = r.end - r.start
            if size <= excess:
                ranges.pop()
                starts.pop()
                del recent[r]
                self._bytes -= size
                excess -= size
                continue
            pieces = r.pieces
            cut = excess
            while len(pieces[-1]) <= cut:
                cut -= len(pieces.pop())
            if cut:
                p = pieces.pop()
                pieces.append(p[:len(p) - cut])
            r.end -= excess
            self._bytes -= excess
            excess = 0

    def pop(self, next_offset: int) -> builtins.bytes | None:
        """Remove and return the data of the range covering ``next_offset``, from there on.

        Ranges wholly below ``next_offset`` are dropped; None when the lowest range starts
        above it (or nothing is held). A range covers ``next_offset`` when it starts at or
        before it and ends after it; the caller loops until None.
        """
        ranges = self._ranges
        while ranges:
            r = ranges[0]
            if r.start > next_offset:
                return None
            del ranges[0]
            del self._starts[0]
            del self._recent[r]
            self._bytes -= r.end - r.start
            if r.end <= next_offset:
                continue
            pieces = r.pieces
            skip = next_offset - r.start
            parts: list[bytes | memoryview] = []
            while skip:
                p = pieces[0]
                if len(p) <= skip:
                    pieces.popleft()
                    skip -= len(p)
                else:
                    parts.append(memoryview(p)[skip:])
                    pieces.popleft()
                    break
            if not parts and len(pieces) == 1:
                return pieces[0]
            parts.extend(pieces)
            return b"".join(parts)
        return None

    def sack_blocks(self, limit: int = 4) -> list[tuple[int, int]]:
        """Up to ``limit`` SACK blocks ``(start, end)``, latest segment's range first (RFC 2018 4)."""
        out: list[tuple[int, int]] = []
        if limit <= 0:
            return out
        for r in reversed(self._recent):
            out.append((r.start, r.end))
            if len(out) >= limit:
                break
        return out
