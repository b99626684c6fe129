"""The Internet checksum (RFC 1071), fast in pure Python.

``int.from_bytes(data) % 0xFFFF`` equals the end-around-carry sum of the 16-bit words, because
2**16 == 1 (mod 2**16 - 1); it runs in C and is ~30x faster than a per-word loop. The only
difference from the folded sum is that a non-zero sum congruent to 0 is 0xFFFF, not 0.
"""
from __future__ import annotations

Buffer = bytes | bytearray | memoryview


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """The folded 16-bit one's complement sum of ``data`` (odd length padded with a zero byte)
    plus ``initial`` (any non-negative partial sum). Returns 0..0xFFFF; 0 only if all is zero."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    v = int.from_bytes(data, "big") + initial
    if not v:
        return 0
    return v % 0xFFFF or 0xFFFF


def checksum(data: Buffer, initial: int = 0) -> int:
    """The checksum field value for ``data`` whose own checksum field is zero."""
    return ~ones_sum(data, initial) & 0xFFFF


def verify(data: Buffer, initial: int = 0) -> bool:
    """True when ``data``, checksum field included, sums to all ones."""
    return ones_sum(data, initial) == 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo header for TCP/UDP (pass as ``initial``)."""
    return ones_sum(src + dst + bytes((0, proto)) + length.to_bytes(2, "big"))
