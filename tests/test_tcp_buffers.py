"""TCP byte buffers: SendBuffer, ReceiveBuffer, OutOfOrderQueue (merging, limits, SACK blocks).

Exact behaviour of each method at its edges, then hypothesis properties: a random byte string
cut into random segments, reordered and duplicated, comes out of OutOfOrderQueue + pop +
ReceiveBuffer exactly (with and without tight limits), and SendBuffer follows a bytes model
through random writes, reads, acks and capacity changes. Some tests shrink the chunk
constants (monkeypatch) so that small data crosses many chunk boundaries.
"""
from __future__ import annotations

import array
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usocket.proto.tcp import buffers
from usocket.proto.tcp.buffers import OutOfOrderQueue, ReceiveBuffer, SendBuffer

DATA = bytes(random.Random(7).randbytes(300_000))


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 16 bytes, tails from 8 bytes, coalescing below 8: boundaries everywhere."""
    monkeypatch.setattr(buffers, "CHUNK_SIZE", 16)
    monkeypatch.setattr(buffers, "COALESCE_BELOW", 8)
    monkeypatch.setattr(buffers, "TAIL_MIN", 8)
    monkeypatch.setattr(buffers, "RX_COALESCE_BELOW", 8)
    monkeypatch.setattr(buffers, "RX_TAIL_SIZE", 16)


# -- SendBuffer ------------------------------------------------------------------------------
def test_send_write_read_basics() -> None:
    sb = SendBuffer(100)
    assert (sb.start, sb.end, len(sb), sb.free) == (0, 0, 0, 100)
    assert sb.read(0, 10) == b""
    assert sb.write(b"hello ") == 6
    assert sb.write(bytearray(b"wor")) == 3
    assert sb.write(memoryview(b"ld")) == 2
    assert (sb.start, sb.end, len(sb), sb.free) == (0, 11, 11, 89)
    assert sb.read(0, 11) == b"hello world"
    assert sb.read(0, 1000) == b"hello world"
    assert sb.read(4, 3) == b"o w"
    assert sb.read(11, 5) == b""  # offset == end: nothing, no error
    assert sb.read(3, 0) == b""
    assert sb.write(b"") == 0
    assert isinstance(sb.read(0, 5), bytes)


def test_send_write_is_bounded_by_capacity() -> None:
    sb = SendBuffer(10)
    assert sb.write(b"0123456789abcdef") == 10
    assert sb.free == 0
    assert sb.write(b"x") == 0
    assert sb.read(0, 100) == b"0123456789"
    assert sb.ack(4) == 4
    assert sb.free == 4
    assert sb.write(memoryview(b"abcdefgh")) == 4
    assert sb.read(4, 100) == b"456789abcd"
    assert (sb.start, sb.end) == (4, 14)


def test_send_write_copies_the_callers_buffer() -> None:
    sb = SendBuffer(1 << 20)
    small = bytearray(b"small")
    big = bytearray(DATA[:10_000])
    sb.write(small)
    sb.write(memoryview(big))
    small[:] = b"XXXXX"
    big[:] = bytes(len(big))
    assert sb.read(0, 5) == b"small"
    assert sb.read(5, 10_000) == DATA[:10_000]


def test_send_write_counts_bytes_of_wide_buffers() -> None:
    sb = SendBuffer(1000)
    words = array.array("I", [1, 2, 3])
    assert sb.write(memoryview(words)) == 12  # format "I": 3 items, 12 bytes
    assert sb.read(0, 12) == words.tobytes()
    assert sb.write(memoryview(words.tobytes()).cast("H")) == 12  # a memoryview of 2-byte items
    assert len(sb) == 24


def test_send_read_rejects_offsets_outside_the_buffer() -> None:
    sb = SendBuffer(100)
    sb.write(b"abcdefgh")
    sb.ack(3)
    with pytest.raises(ValueError):
        sb.read(2, 1)  # acknowledged and released
    with pytest.raises(ValueError):
        sb.read(9, 1)  # beyond end
    assert sb.read(3, 2) == b"de"
    assert sb.read(8, 2) == b""


def test_send_ack_in_the_middle_of_chunks(tiny_chunks: None) -> None:
    sb = SendBuffer(1000)
    for piece in (DATA[:5], DATA[5:40], DATA[40:41], DATA[41:100]):
        sb.write(piece)
    assert sb.ack(7) == 7  # inside a chunk
    assert sb.read(7, 20) == DATA[7:27]
    assert sb.ack(7) == 0
    assert sb.ack(3) == 0  # below start: nothing
    assert sb.ack(33) == 26
    assert sb.read(33, 1000) == DATA[33:100]
    assert sb.ack(10_000) == 67  # clamped to end
    assert (sb.start, sb.end, len(sb)) == (100, 100, 0)
    with pytest.raises(ValueError):
        sb.read(99, 1)
    sb.write(DATA[100:130])  # writing after everything was acknowledged
    assert sb.read(100, 30) == DATA[100:130]
    assert sb.read(110, 3) == DATA[110:113]


def test_send_every_read_across_chunk_boundaries(tiny_chunks: None) -> None:
    """Small and big writes over 16-byte chunks: every (offset, n) reads the right bytes."""
    sb = SendBuffer(10_000)
    sizes = [3, 3, 3, 40, 1, 7, 2, 16, 17, 5, 33, 1, 1, 1, 60]
    pos = 0
    for size in sizes:
        assert sb.write(DATA[pos:pos + size]) == size
        pos += size
    assert len(sb._chunks) > 10  # the boundaries this test is about
    for start in (0, 5, 21):
        sb.ack(start)
        for off in range(start, pos + 1):
            for n in (0, 1, 2, 7, 15, 16, 17, 31, 50, 1000):
                assert sb.read(off, n) == DATA[off:min(off + n, pos)], (start, off, n)


def test_send_reads_sequential_and_far_back(tiny_chunks: None) -> None:
    sb = SendBuffer(10_000)
    sb.write(DATA[:2000])
    for off in range(0, 2000, 13):  # transmission: increasing offsets
        assert sb.read(off, 13) == DATA[off:min(off + 13, 2000)]
    for off in (5, 1900, 0, 977, 16, 15, 1999):  # retransmissions anywhere
        assert sb.read(off, 40) == DATA[off:min(off + 40, 2000)]


def test_send_capacity_changes_never_drop_data() -> None:
    sb = SendBuffer(100)
    assert sb.write(DATA[:80]) == 80
    sb.capacity = 50  # shrink below what is held
    assert sb.free == 0
    assert len(sb) == 80
    assert sb.read(0, 80) == DATA[:80]
    assert sb.write(b"x") == 0
    sb.ack(40)  # 40 left: 10 free
    assert sb.free == 10
    assert sb.write(DATA[80:100]) == 10
    sb.capacity = 1000
    assert sb.free == 950
    assert sb.write(DATA[90:100]) == 10
    assert sb.read(40, 100) == DATA[40:90] + DATA[90:100]
    sb.capacity = 0
    assert sb.free == 0 and sb.write(b"abc") == 0


def test_send_small_writes_coalesce_and_big_writes_are_chunked() -> None:
    sb = SendBuffer(1 << 30)
    for i in range(1000):
        sb.write(DATA[i * 10:i * 10 + 10])
    assert len(sb._chunks) <= 3  # 4 KiB, 8 KiB tails: not a chunk per write
    assert sb.read(0, 10_000) == DATA[:10_000]
    sb.ack(sb.end)
    piece = DATA[:40_000]
    sb.write(piece)
    assert sb._chunks[-1] is piece  # immutable bytes: kept, not copied
    sb.write(memoryview(DATA)[:200_000])
    assert [len(c) for c in sb._chunks[1:]] == [65536, 65536, 65536, 3392]
    assert sb.read(10_000, 240_000) == DATA[:40_000] + DATA[:200_000]


def test_send_a_big_write_fills_the_open_tail_first() -> None:
    sb = SendBuffer(1 << 20)
    sb.write(b"abc")
    sb.write(DATA[:10_000])
    assert len(sb._chunks[0]) == buffers.TAIL_MIN  # the tail, full
    assert sb.read(0, 10_003) == b"abc" + DATA[:10_000]
    sb.write(b"xy")
    assert sb.read(10_000, 100) == DATA[9_997:10_000] + b"xy"


SIZES = st.one_of(st.integers(0, 20), st.integers(0, 3000))


class SendModel:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.start = 0
        self.data = bytearray()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from("wwwrraac"), st.one_of(SIZES, st.integers(0, 10**6)),
                              st.integers(0, 2)), max_size=60),
       capacity=st.sampled_from([0, 7, 100, 5000, 300_000]))
def test_send_buffer_matches_a_bytes_model(monkeypatch: pytest.MonkeyPatch, ops: list[tuple[str, int, int]],
                                           capacity: int) -> None:
    for constants in ((16, 8, 8), (65536, 4096, 4096)):  # tiny chunks, then the real ones
        for name, value in zip(("CHUNK_SIZE", "COALESCE_BELOW", "TAIL_MIN"), constants, strict=True):
            monkeypatch.setattr(buffers, name, value)
        sb = SendBuffer(capacity)
        model = SendModel(capacity)
        src = 0
        for op, x, kind in ops:
            held = len(model.data)
            if op == "w":
                size = [x % 10, x % 300, x % 150_000][kind]
                data = DATA[src % 100_000:src % 100_000 + size]
                kinds: list[bytes | bytearray | memoryview] = [data, bytearray(data), memoryview(data)]
                arg = kinds[(x >> 3) % 3]
                n = sb.write(arg)
                assert n == max(0, min(size, model.capacity - held))
                if isinstance(arg, bytearray):
                    arg[:] = bytes(len(arg))  # the caller reuses its buffer
                model.data += data[:n]
                src += n
            elif op == "r":
                off = model.start + (x % (held + 1))
                n = [x % 20, x % 2000, x][kind]
                assert sb.read(off, n) == bytes(model.data[off - model.start:off - model.start + n])
            elif op == "a":
                target = model.start - 5 + x % (held + 10)
                released = max(0, min(target, model.start + held) - model.start)
                assert sb.ack(target) == released
                del model.data[:released]
                model.start += released
            else:
                model.capacity = sb.capacity = [0, 50, 10**6][kind]
            assert (sb.start, sb.end, len(sb)) == (model.start, model.start + len(model.data), len(model.data))
            assert sb.free == max(0, model.capacity - len(model.data))
        assert sb.read(sb.start, len(sb)) == bytes(model.data)


# -- ReceiveBuffer ---------------------------------------------------------------------------
def test_receive_push_and_read() -> None:
    rb = ReceiveBuffer(100)
    assert (len(rb), rb.free) == (0, 100)
    assert rb.read(10) == b""
    rb.push(b"hello ")
    rb.push(bytearray(b"wor"))
    rb.push(memoryview(b"ld!"))
    rb.push(b"")
    assert (len(rb), rb.free) == (12, 88)
    assert rb.read(0) == b""
    assert rb.read(5) == b"hello"
    assert rb.read(3) == b" wo"
    assert rb.read(100) == b"rld!"
    assert rb.read(1) == b""
    assert len(rb) == 0
    with pytest.raises(ValueError):
        rb.read(-1)


def test_receive_always_accepts_and_free_floors_at_zero() -> None:
    rb = ReceiveBuffer(10)
    rb.push(DATA[:25])
    assert (len(rb), rb.free) == (25, 0)
    rb.capacity = 30
    assert rb.free == 5
    assert rb.read(100) == DATA[:25]


def test_receive_push_copies_mutable_data() -> None:
    rb = ReceiveBuffer(1 << 20)
    small = bytearray(b"abc")
    big = bytearray(DATA[:5000])
    rb.push(small)
    rb.push(memoryview(big))
    small[:] = b"xyz"
    big[:] = bytes(5000)
    assert rb.read(10_000) == b"abc" + DATA[:5000]


def test_receive_peek_leaves_data(tiny_chunks: None) -> None:
    rb = ReceiveBuffer(1000)
    for k in range(0, 99, 9):
        rb.push(DATA[k:k + 9])
    rb.push(DATA[99:200])
    assert rb.read(50, peek=True) == DATA[:50]
    assert rb.read(3, peek=True) == DATA[:3]
    assert len(rb) == 200
    assert rb.read(7) == DATA[:7]
    assert rb.read(1000, peek=True) == DATA[7:200]
    assert rb.read(20) == DATA[7:27]
    assert len(rb) == 173


def test_receive_reads_across_chunks(tiny_chunks: None) -> None:
    sizes = [1, 2, 30, 5, 5, 5, 17, 1, 100, 3]
    for n in (1, 2, 3, 7, 16, 17, 40, 1000):
        rb = ReceiveBuffer(1000)
        pos = 0
        for size in sizes:
            rb.push(DATA[pos:pos + size])
            pos += size
        got = bytearray()
        while chunk := rb.read(n):
            assert len(chunk) == min(n, pos - len(got))
            got += chunk
        assert bytes(got) == DATA[:pos]


def test_receive_read_into(tiny_chunks: None) -> None:
    rb = ReceiveBuffer(1000)
    rb.push(DATA[:10])
    rb.push(DATA[10:50])
    rb.push(DATA[50:53])
    buf = bytearray(7)
    assert rb.read_into(memoryview(buf)) == 7  # a short buffer: filled
    assert buf == DATA[:7]
    assert rb.read_into(memoryview(buf), peek=True) == 7
    assert buf == DATA[7:14]
    assert len(rb) == 46
    big = bytearray(100)
    assert rb.read_into(memoryview(big)[10:60]) == 46  # a slice, larger than what is held
    assert big[10:56] == DATA[7:53] and big[:10] == bytes(10) and big[56:] == bytes(44)
    assert len(rb) == 0
    assert rb.read_into(memoryview(big)) == 0
    assert rb.read_into(memoryview(bytearray(0))) == 0
    rb.push(DATA[:12])
    assert rb.read_into(buf) == 7  # a bytearray works too
    assert rb.read(100) == DATA[7:12]


def test_receive_clear() -> None:
    rb = ReceiveBuffer(1000)
    rb.push(b"abc")
    rb.push(DATA[:3000])
    rb.read(2)
    assert rb.clear() == 3001
    assert len(rb) == 0 and rb.read(10) == b""
    rb.push(b"xy")
    assert rb.read(10) == b"xy"
    assert rb.clear() == 0


def test_receive_a_drained_tail_is_not_extended() -> None:
    rb = ReceiveBuffer(100)
    rb.push(b"abc")  # a small push: the open tail
    assert rb.read(3) == b"abc"
    rb.push(b"def")
    assert rb.read(10) == b"def"
    rb.push(b"gh")
    buf = bytearray(2)
    assert rb.read_into(buf) == 2 and buf == b"gh"
    rb.push(b"ij")
    assert rb.read(10) == b"ij"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from("pprri"), SIZES, st.booleans()), max_size=60))
def test_receive_buffer_matches_a_bytes_model(tiny_chunks: None, ops: list[tuple[str, int, bool]]) -> None:
    """Pushes (bytes or bytearray), reads, peeks and read_into against a bytearray."""
    rb = ReceiveBuffer(1000)
    model = bytearray()
    src = 0
    for op, x, flag in ops:
        if op == "p":
            data = DATA[src % 100_000:src % 100_000 + x]
            rb.push(bytearray(data) if flag else data)
            model += data
            src += x
        elif op == "r":
            assert rb.read(x, peek=flag) == bytes(model[:x])
            if not flag:
                del model[:x]
        else:
            buf = bytearray(x)
            n = rb.read_into(memoryview(buf), peek=flag)
            assert n == min(len(buf), len(model))
            assert buf[:n] == model[:n]
            if not flag:
                del model[:n]
        assert len(rb) == len(model)
    assert rb.read(len(rb)) == bytes(model)


# -- OutOfOrderQueue: storing and merging ----------------------------------------------------
def check_queue(q: OutOfOrderQueue, source: bytes = DATA) -> None:
    """Invariants: sorted, disjoint, non-adjacent ranges whose pieces are the source's bytes."""
    spans = q.ranges()
    assert all(a < b for a, b in spans)
    assert all(spans[k][1] < spans[k + 1][0] for k in range(len(spans) - 1))
    assert q.bytes == sum(b - a for a, b in spans)
    assert len(q) == len(spans)
    assert q.highest == (spans[-1][1] if spans else None)
    for r in q._ranges:  # the bytes held
        assert b"".join(r.pieces) == source[r.start:r.end]
    assert q.bytes <= q.max_bytes and len(q) <= q.max_ranges


def seg(a: int, b: int) -> bytes:
    return DATA[a:b]


def test_ooo_add_to_empty_and_disjoint() -> None:
    q = OutOfOrderQueue(10_000)
    assert (q.bytes, len(q), q.highest, q.ranges(), q.sack_blocks()) == (0, 0, None, [], [])
    assert q.add(100, seg(100, 200))
    assert q.add(300, memoryview(seg(300, 350)))
    assert q.add(10, bytearray(seg(10, 20)))
    assert q.ranges() == [(10, 20), (100, 200), (300, 350)]
    assert (q.bytes, len(q), q.highest) == (160, 3, 350)
    assert not q.add(500, b"")
    check_queue(q)


@pytest.mark.parametrize(("new", "expect"), [
    ((90, 150), [(90, 200)]),  # overlaps the left end
    ((150, 250), [(100, 250)]),  # overlaps the right end
    ((50, 250), [(50, 250)]),  # covers it
    ((80, 100), [(80, 200)]),  # adjacent on the left
    ((200, 230), [(100, 230)]),  # adjacent on the right
    ((60, 80), [(60, 80), (100, 200)]),  # apart below
    ((201, 230), [(100, 200), (201, 230)]),  # one byte apart above
])
def test_ooo_merge_with_one_range(new: tuple[int, int], expect: list[tuple[int, int]]) -> None:
    q = OutOfOrderQueue(10_000)
    q.add(100, seg(100, 200))
    assert q.add(new[0], seg(*new))
    assert q.ranges() == expect
    check_queue(q)


@pytest.mark.parametrize("new", [(100, 200), (120, 130), (100, 101), (199, 200), (150, 200)])
def test_ooo_duplicate_inside_a_range_is_not_stored(new: tuple[int, int]) -> None:
    q = OutOfOrderQueue(10_000)
    q.add(100, seg(100, 200))
    assert not q.add(new[0], seg(*new))
    assert q.ranges() == [(100, 200)] and q.bytes == 100


def test_ooo_merges_several_ranges() -> None:
    q = OutOfOrderQueue(10_000)
    for a, b in [(100, 110), (120, 130), (140, 150), (160, 170), (300, 310)]:
        q.add(a, seg(a, b))
    assert q.add(105, seg(105, 145))  # bridges three ranges, overlapping both outer ones
    assert q.ranges() == [(100, 150), (160, 170), (300, 310)]
    assert q.add(150, seg(150, 160))  # exactly the hole: adjacent on both sides
    assert q.ranges() == [(100, 170), (300, 310)]
    assert q.add(0, seg(0, 400))  # covers everything
    assert q.ranges() == [(0, 400)]
    assert q.bytes == 400
    check_queue(q)


def test_ooo_keeps_the_bytes_already_held() -> None:
    q = OutOfOrderQueue(10_000)
    q.add(10, b"A" * 10)  # [10, 20)
    q.add(30, b"B" * 10)  # [30, 40)
    assert q.add(5, b"x" * 40)  # [5, 45): only the holes are taken from it
    assert q.pop(5) == b"x" * 5 + b"A" * 10 + b"x" * 10 + b"B" * 10 + b"x" * 5
    q.add(0, b"C" * 10)
    assert not q.add(0, b"D" * 10)
    assert q.add(0, b"E" * 11)
    assert q.pop(0) == b"C" * 10 + b"E"


def test_ooo_merges_onto_the_range_with_most_pieces() -> None:
    """Reverse-order arrival: each segment lands left of a growing range (no quadratic copy)."""
    q = OutOfOrderQueue(1 << 20)
    for k in range(99, -1, -1):
        assert q.add(1000 + 10 * k, seg(1000 + 10 * k, 1010 + 10 * k))
    assert q.ranges() == [(1000, 2000)]
    check_queue(q)
    assert q.pop(1000) == seg(1000, 2000)


def test_ooo_tiny_pieces_are_compacted() -> None:
    q = OutOfOrderQueue(1 << 20)
    for k in range(1, 2000):
        q.add(k, seg(k, k + 1))  # one byte at a time, appending to the highest range
    assert q.ranges() == [(1, 2000)]
    assert len(q._ranges[0].pieces) <= 2 * buffers.COMPACT_MIN_PIECES
    for k in range(3000, 2000, -2):
        q.add(k, seg(k, k + 1))
    for k in range(2001, 3000, 2):
        q.add(k, seg(k, k + 1))  # fills the one-byte holes: merges of tiny pieces
    assert q.ranges() == [(1, 2000), (2001, 3001)]
    assert len(q._ranges[1].pieces) <= 2 * buffers.COMPACT_MIN_PIECES
    check_queue(q)


# -- OutOfOrderQueue: pop --------------------------------------------------------------------
def test_ooo_pop() -> None:
    q = OutOfOrderQueue(10_000)
    assert q.pop(0) is None
    q.add(100, seg(100, 150))
    q.add(200, seg(200, 250))
    q.add(300, seg(300, 350))
    assert q.pop(99) is None  # the lowest range starts above
    assert q.ranges() == [(100, 150), (200, 250), (300, 350)]
    assert q.pop(100) == seg(100, 150)  # exactly at the start
    assert q.pop(150) is None
    assert q.pop(220) == seg(220, 250)  # trimmed to begin at next_offset
    assert q.ranges() == [(300, 350)] and q.bytes == 50
    q.add(400, seg(400, 410))
    assert q.pop(360) is None  # [300, 350) lies entirely below: dropped
    assert q.ranges() == [(400, 410)] and q.bytes == 10
    assert q.pop(409) == seg(409, 410)
    q.add(500, seg(500, 510))
    q.add(600, seg(600, 610))
    assert q.pop(510) is None  # a range ending exactly at next_offset is below it: dropped
    assert q.ranges() == [(600, 610)]
    assert q.pop(610) is None
    assert q.pop(10_000) is None and q.bytes == 0 and len(q) == 0 and q.highest is None
    assert q.sack_blocks() == []


def test_ooo_pop_trims_across_pieces() -> None:
    q = OutOfOrderQueue(10_000)
    for k in range(10):
        q.add(100 + 10 * k, bytearray(seg(100 + 10 * k, 110 + 10 * k)))
    q.add(50, seg(50, 100))
    for start in (50, 99, 100, 137, 199):
        q2 = OutOfOrderQueue(10_000)
        for a, b in [(50, 100), (100, 110), (110, 200)]:
            q2.add(a, seg(a, b))
        got = q2.pop(start)
        assert got == seg(start, 200) and isinstance(got, bytes)
    got = q.pop(125)
    assert got == seg(125, 200) and isinstance(got, bytes)


def test_ooo_pop_loop_with_receive_buffer() -> None:
    q = OutOfOrderQueue(10_000)
    rb = ReceiveBuffer(10_000)
    q.add(10, seg(10, 20))
    q.add(5, seg(5, 12))
    q.add(30, seg(30, 40))
    rb.push(seg(0, 5))
    nxt = 5
    while (data := q.pop(nxt)) is not None:
        rb.push(data)
        nxt += len(data)
    assert nxt == 20 and q.ranges() == [(30, 40)]
    assert rb.read(100) == seg(0, 20)


# -- OutOfOrderQueue: limits -----------------------------------------------------------------
def test_ooo_max_bytes_refuses_data_above_everything() -> None:
    q = OutOfOrderQueue(100)
    assert q.add(0, seg(0, 60))
    assert not q.add(60, seg(60, 101))  # extends the highest range past the limit
    assert not q.add(200, seg(200, 241))  # a new range above everything
    assert not q.add(50, seg(50, 101))  # overlaps the top, but every new byte is above it
    assert q.ranges() == [(0, 60)] and q.bytes == 60
    assert q.sack_blocks() == [(0, 60)]  # refused segments do not count as received
    assert q.add(60, seg(60, 100))  # exactly up to the limit
    assert q.bytes == 100
    check_queue(q)


def test_ooo_max_bytes_drops_from_the_top_for_lower_data() -> None:
    q = OutOfOrderQueue(100)
    q.add(500, seg(500, 560))
    q.add(700, seg(700, 740))
    assert q.add(100, seg(100, 130))  # below: the top range is trimmed by 30
    assert q.ranges() == [(100, 130), (500, 560), (700, 710)]
    assert q.add(200, seg(200, 240))  # drops [700, 710) and 30 bytes of [500, 560)
    assert q.ranges() == [(100, 130), (200, 240), (500, 530)]
    assert q.bytes == 100
    check_queue(q)
    assert q.sack_blocks() == [(200, 240), (100, 130), (500, 530)]


def test_ooo_lower_data_wins_even_inside_a_range() -> None:
    q = OutOfOrderQueue(1000)
    q.add(1000, seg(1000, 2000))
    assert q.add(0, seg(0, 1500))  # the union is [0, 2000): its lowest 1000 bytes are kept
    assert q.ranges() == [(0, 1000)]
    check_queue(q)
    q = OutOfOrderQueue(300)
    q.add(0, seg(0, 300))
    assert not q.add(250, seg(250, 400))  # every new byte above the top: refused
    q = OutOfOrderQueue(300)
    q.add(0, seg(0, 100))
    q.add(200, seg(200, 400))
    assert q.add(150, seg(150, 1000))  # new bytes [150, 200) lie below the top: stored
    assert q.ranges() == [(0, 100), (150, 350)]
    check_queue(q)


def test_ooo_max_ranges() -> None:
    q = OutOfOrderQueue(10_000, max_ranges=3)
    for k in range(3):
        assert q.add(100 * k, seg(100 * k, 100 * k + 10))
    assert not q.add(1000, seg(1000, 1010))  # a fourth range above everything: refused
    assert q.add(210, seg(210, 220))  # extends a range: no new range, fine
    assert q.add(50, seg(50, 60))  # a fourth range below the top: the top one goes
    assert q.ranges() == [(0, 10), (50, 60), (100, 110)]
    assert q.add(10, seg(10, 50))  # merges three ranges into one
    assert q.ranges() == [(0, 60), (100, 110)]
    assert q.add(300, seg(300, 310))
    check_queue(q)
    assert len(q) == 3


def test_ooo_lowering_the_limits_prunes_at_once() -> None:
    q = OutOfOrderQueue(10_000)
    for k in range(5):
        q.add(100 * k, seg(100 * k, 100 * k + 50))
    q.max_ranges = 4
    assert q.ranges() == [(0, 50), (100, 150), (200, 250), (300, 350)]
    q.max_bytes = 120
    assert q.ranges() == [(0, 50), (100, 150), (200, 220)]
    assert q.bytes == 120
    check_queue(q)
    assert q.sack_blocks(10) == [(200, 220), (100, 150), (0, 50)]
    q.max_bytes = 0
    assert q.ranges() == [] and q.bytes == 0 and q.sack_blocks() == []
    assert not q.add(5, b"x")
    q.max_bytes = 10
    assert q.add(5, b"x")


def test_ooo_clear() -> None:
    q = OutOfOrderQueue(10_000)
    q.add(10, b"abc")
    q.add(20, b"def")
    q.clear()
    assert (q.bytes, len(q), q.highest, q.ranges(), q.sack_blocks()) == (0, 0, None, [], [])
    assert q.add(20, b"xyz") and q.pop(20) == b"xyz"


# -- OutOfOrderQueue: SACK blocks ------------------------------------------------------------
def receive(q: OutOfOrderQueue, rb: ReceiveBuffer, nxt: int, offset: int, data: bytes) -> int:
    """What the engine does with one segment: deliver in order, queue above; the new RCV.NXT."""
    if offset + len(data) <= nxt:
        return nxt
    if offset > nxt:
        q.add(offset, data)
        return nxt
    data = data[nxt - offset:]
    rb.push(data)
    nxt += len(data)
    while (more := q.pop(nxt)) is not None:
        rb.push(more)
        nxt += len(more)
    return nxt


def test_sack_rfc2018_section7_case2() -> None:
    """RFC 2018 section 7 case 2: the first of eight 500-byte segments from 5000 is lost."""
    q, rb, nxt = OutOfOrderQueue(1 << 20), ReceiveBuffer(1 << 20), 5000
    for s in range(5500, 9000, 500):
        nxt = receive(q, rb, nxt, s, DATA[s:s + 500])
        assert nxt == 5000
        assert q.sack_blocks() == [(5500, s + 500)]


def test_sack_rfc2018_section7_case3() -> None:
    """RFC 2018 section 7 case 3 (the rules of section 4): segments 2, 4, 6, 8 are lost."""
    q, rb, nxt = OutOfOrderQueue(1 << 20), ReceiveBuffer(1 << 20), 5000
    table = [  # triggering segment, ACK, SACK blocks
        (5000, 5500, []),
        (6000, 5500, [(6000, 6500)]),
        (7000, 5500, [(7000, 7500), (6000, 6500)]),
        (8000, 5500, [(8000, 8500), (7000, 7500), (6000, 6500)]),
        (6500, 5500, [(6000, 7500), (8000, 8500)]),  # the 4th arrives: two blocks left
        (5500, 7500, [(8000, 8500)]),  # the 2nd arrives: the ACK jumps, one block left
    ]
    for s, ack, blocks in table:
        nxt = receive(q, rb, nxt, s, DATA[s:s + 500])
        assert nxt == ack
        assert q.sack_blocks(3) == blocks
    assert rb.read(10_000) == DATA[5000:7500]


def test_sack_order_is_by_most_recent_update() -> None:
    q = OutOfOrderQueue(1 << 20)
    for s in (100, 300, 500, 700, 900):
        q.add(s, seg(s, s + 50))
    assert q.sack_blocks() == [(900, 950), (700, 750), (500, 550), (300, 350)]  # at most 4
    assert q.sack_blocks(2) == [(900, 950), (700, 750)]
    assert q.sack_blocks(0) == []
    assert q.sack_blocks(10) == [(900, 950), (700, 750), (500, 550), (300, 350), (100, 150)]
    q.add(150, seg(150, 160))  # extends the oldest range: it becomes the first block
    assert q.sack_blocks(3) == [(100, 160), (900, 950), (700, 750)]
    q.add(550, seg(550, 700))  # merges [500, 550) and [700, 750)
    assert q.sack_blocks(10) == [(500, 750), (100, 160), (900, 950), (300, 350)]
    assert not q.add(920, seg(920, 930))  # a duplicate is still the latest segment (as Linux)
    assert q.sack_blocks(2) == [(900, 950), (500, 750)]
    assert not q.add(5000, seg(5000, 5000))  # empty: nothing happens
    assert q.sack_blocks(1) == [(900, 950)]
    q.pop(100)  # delivered ranges are no longer reported
    assert q.sack_blocks(10) == [(900, 950), (500, 750), (300, 350)]


# -- properties: reassembly through OutOfOrderQueue + ReceiveBuffer ---------------------------
def segments(rng: random.Random, lo: int, hi: int, sizes: list[int]) -> list[tuple[int, int]]:
    """[lo, hi) cut into consecutive pieces of sizes drawn from ``sizes``."""
    out = []
    pos = lo
    while pos < hi:
        end = min(hi, pos + rng.choice(sizes))
        out.append((pos, end))
        pos = end
    return out


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 6000), seed=st.integers(0, 2**32), passes=st.integers(1, 3),
       dup=st.floats(0, 1), kinds=st.sampled_from(["bytes", "bytearray", "memoryview"]))
def test_reassembly_reproduces_the_stream(size: int, seed: int, passes: int, dup: float, kinds: str) -> None:
    """Several differently cut copies of a stream, shuffled and duplicated, rebuild it exactly."""
    rng = random.Random(seed)
    source = rng.randbytes(size)
    segs: list[tuple[int, int]] = []
    for _ in range(passes):
        segs += segments(rng, 0, size, [1, 2, 7, 100, 536, 1448, 3000])
    segs += [s for s in segs if rng.random() < dup]
    rng.shuffle(segs)
    q, rb, nxt = OutOfOrderQueue(1 << 20), ReceiveBuffer(1 << 20), 0
    wrap = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kinds]
    for a, b in segs:
        nxt = receive(q, rb, nxt, a, wrap(source[a:b]))  # type: ignore[operator]
        check_queue(q, source)
        assert len(rb) == nxt
        blocks = q.sack_blocks(4)
        assert len(set(blocks)) == len(blocks) <= 4
        assert set(blocks) <= set(q.ranges())
        assert all(start > nxt for start, _ in blocks)
    assert nxt == size and len(q) == 0 and q.bytes == 0
    assert rb.read(size + 1) == source


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 4000), seed=st.integers(0, 2**32), max_bytes=st.integers(0, 3000),
       max_ranges=st.integers(1, 6))
def test_reassembly_under_tight_limits(size: int, seed: int, max_bytes: int, max_ranges: int) -> None:
    """Limits never exceeded, add() tells the truth, and retransmissions still complete the stream."""
    rng = random.Random(seed)
    source = rng.randbytes(size)
    q, rb, nxt = OutOfOrderQueue(max_bytes, max_ranges), ReceiveBuffer(1 << 20), 0
    for _ in range(size + 5):  # each round delivers at least the segment at RCV.NXT
        if nxt == size:
            break
        segs = segments(rng, nxt, size, [1, 5, 64, 500, 1448])
        segs += [s for s in segs if rng.random() < 0.3]
        rng.shuffle(segs)
        for a, b in segs:
            if a > nxt:
                before = mask(q)
                stored = q.add(a, source[a:b])
                after = mask(q)
                new = [i for i in range(a, b) if i in after and i not in before]
                if stored:
                    assert new
                else:
                    assert after <= before  # nothing new: refused or fully duplicate
                check_queue(q, source)
            else:
                nxt = receive(q, rb, nxt, a, source[a:b])
                check_queue(q, source)
    assert nxt == size
    assert rb.read(size + 1) == source


def mask(q: OutOfOrderQueue) -> set[int]:
    return {i for a, b in q.ranges() for i in range(a, b)}
