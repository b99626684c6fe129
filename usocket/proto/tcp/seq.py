"""32-bit sequence number arithmetic (RFC 9293 3.4, RFC 1982 serial numbers).

The engine keeps positions as unbounded offsets from the ISN (``u = seq - iss``), so its
comparisons are plain integer comparisons. These helpers are the only place where a wire value
is turned into an offset: relative to a reference offset whose wire value is known, a 32-bit
value maps to the nearest offset (within +-2**31), which is exactly RFC 1982 ordering.
"""
from __future__ import annotations

MASK = 0xFFFFFFFF
HALF = 0x80000000


def seq_diff(a: int, b: int) -> int:
    """``a - b`` for 32-bit sequence numbers, as a signed value in [-2**31, 2**31)."""
    return ((a - b + HALF) & MASK) - HALF


def seq_lt(a: int, b: int) -> bool:
    return seq_diff(a, b) < 0


def seq_le(a: int, b: int) -> bool:
    return seq_diff(a, b) <= 0


def seq_gt(a: int, b: int) -> bool:
    return seq_diff(a, b) > 0


def seq_ge(a: int, b: int) -> bool:
    return seq_diff(a, b) >= 0


def to_offset(value: int, ref_offset: int, base: int) -> int:
    """The offset whose wire value ``(base + offset) & MASK`` is ``value``, nearest to
    ``ref_offset``."""
    return ref_offset + seq_diff(value, (base + ref_offset) & MASK)
