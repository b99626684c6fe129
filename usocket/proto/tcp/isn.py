"""Initial sequence numbers per RFC 6528: ``ISN = M + F(localip, localport, remoteip,
remoteport, secretkey)`` where M is a timer ticking every 4 microseconds and F a keyed hash.

F is BLAKE2s keyed with a per-stack random secret (RFC 6528 suggests MD5; any keyed PRF
will do, Linux uses SipHash). M comes from the stack's clock (``now``), never the wall clock.
"""
from __future__ import annotations

import hashlib
import os

from .seq import MASK


class IsnGenerator:
    """Callable ``(local_ip, local_port, remote_ip, remote_port, now) -> isn``."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret if secret is not None else os.urandom(16)

    def __call__(self, local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int,
                 now: float) -> int:
        h = hashlib.blake2s(local_ip + local_port.to_bytes(2, "big") + remote_ip
                            + remote_port.to_bytes(2, "big"), key=self.secret, digest_size=4)
        return (int(now * 250_000) + int.from_bytes(h.digest(), "big")) & MASK
