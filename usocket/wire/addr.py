"""Address conversions between wire bytes and text."""
from __future__ import annotations

import socket as _socket

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ANY_IP = b"\x00\x00\x00\x00"
BROADCAST_IP = b"\xff\xff\xff\xff"


def ip_aton(text: str) -> bytes:
    return _socket.inet_aton(text) if text.count(".") == 3 else _socket.inet_pton(_socket.AF_INET, text)


def ip_ntoa(raw: bytes) -> str:
    return _socket.inet_ntoa(raw)


def mac_aton(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return raw


def mac_ntoa(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def prefix_mask(prefix_len: int) -> int:
    return (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF if prefix_len else 0


def same_subnet(a: bytes, b: bytes, prefix_len: int) -> bool:
    m = prefix_mask(prefix_len)
    return (int.from_bytes(a, "big") & m) == (int.from_bytes(b, "big") & m)
