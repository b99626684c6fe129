"""RFC 9293 3.4.1 / RFC 6528: the initial sequence number is a 4 µs clock plus a keyed hash of
the 4-tuple (MUST-8, SHLD-1), so an outsider cannot compute it (MUST-9)."""
from __future__ import annotations

from usocket.proto.tcp.isn import IsnGenerator

A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def test_isn_has_a_clock_component_ticking_every_4_microseconds() -> None:
    gen = IsnGenerator(secret=b"k" * 16)
    first = gen(A, 1000, B, 80, 10.0)
    assert (gen(A, 1000, B, 80, 11.0) - first) % 2**32 == 250_000
    assert (gen(A, 1000, B, 80, 10.000004) - first) % 2**32 == 1


def test_isn_depends_on_a_secret_key_and_the_four_tuple() -> None:
    one, two = IsnGenerator(secret=b"a" * 16), IsnGenerator(secret=b"b" * 16)
    assert one(A, 1000, B, 80, 5.0) != two(A, 1000, B, 80, 5.0)
    isns = {one(A, port, B, 80, 5.0) for port in range(1000, 1100)}
    assert len(isns) == 100  # every tuple its own offset
    assert IsnGenerator().secret != IsnGenerator().secret  # a fresh random key per stack
