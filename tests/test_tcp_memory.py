"""Memory per connection is proportional to the bytes it holds, not to its buffer limits.

1000 connections must fit in 100 MB with the interpreter and the stack (issue 6), so nothing is
preallocated at SO_SNDBUF/SO_RCVBUF size: the buffers start empty and grow with the data, as
Linux's do. Measured with tracemalloc (Python heap) on objects, never with RSS.
"""
from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tcp_harness import Net

from usocket.proto.tcp.buffers import TAIL_MIN, OutOfOrderQueue, ReceiveBuffer, SendBuffer

MiB = 1 << 20


@pytest.fixture
def traced() -> Iterator[Callable[[Callable[[], Any]], tuple[Any, int]]]:
    """``heap(fn)`` -> (fn's result, bytes of Python heap it left allocated)."""
    tracemalloc.start()

    def heap(fn: Callable[[], Any]) -> tuple[Any, int]:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        out = fn()
        gc.collect()
        return out, tracemalloc.get_traced_memory()[0] - before

    try:
        yield heap
    finally:
        tracemalloc.stop()


def test_empty_buffers_do_not_preallocate_their_capacity(traced: Any) -> None:
    bufs, size = traced(lambda: [(SendBuffer(4 * MiB), ReceiveBuffer(4 * MiB), OutOfOrderQueue(4 * MiB))
                                 for _ in range(100)])
    assert size / len(bufs) < 3000  # three empty buffers with 4 MiB limits: ~1.4 KB


def test_buffers_grow_with_the_data_and_shrink_when_it_goes(traced: Any) -> None:
    sb, rb = SendBuffer(4 * MiB), ReceiveBuffer(4 * MiB)
    _, size = traced(lambda: sb.write(b"x" * 10))
    assert 10 <= size <= TAIL_MIN + 512  # one small tail, not the capacity
    _, size = traced(lambda: sb.ack(10))
    assert size <= -TAIL_MIN  # acknowledged: the tail is gone
    data = bytes(range(256)) * 256  # 64 KiB
    _, size = traced(lambda: rb.push(data))
    assert size < 1024  # an immutable segment is kept by reference
    _, size = traced(lambda: [rb.push(b"y" * 100) for _ in range(100)])
    assert 10_000 <= size <= 20_000 + 512  # small segments share a tail sized by what arrived
    assert rb.read(len(data)) == data
    assert rb.read(10_000) == b"y" * 10_000
    assert len(rb) == 0


def test_an_idle_established_connection_is_small(traced: Any) -> None:
    """100 established connections with nothing in flight: a few KB each (their dict of
    state, the empty buffers and the estimators), whatever SO_SNDBUF/SO_RCVBUF say."""
    net = Net()
    net.established()  # warm up caches (templates, counters, interned strings)
    conns, size = traced(lambda: [net.established() for _ in range(100)])
    assert all(c.sndbuf.capacity >= 64 * 1024 and c.rcvbuf_max >= 64 * 1024 for c, _ in conns)
    per_conn = size / len(conns)
    assert per_conn < 16 * 1024, per_conn


def test_a_connection_gives_back_what_it_received(traced: Any) -> None:
    net = Net()
    conn, peer = net.established()
    chunk = bytes(1000)

    def receive_and_read() -> None:
        for _ in range(64):
            peer.send(flags=0x10, payload=chunk)
        assert conn.recv(1 << 20) == chunk * 64
        net.advance(1.0)  # cancelled timers leave the heap at their deadline
        peer.take()  # the harness's records of the ACKs are not the connection's memory
        peer.got.clear()
        net.log.clear()

    _, size = traced(receive_and_read)
    assert size < 8 * 1024, size  # 64 KB went through; at most bookkeeping stays
