"""A token bucket driven by an external clock (sans-IO), shared by the layers that rate-limit."""
from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; rate and burst are passed on each call so
    the owner's (overridable) attributes are always the ones in force."""

    __slots__ = ("tokens", "last")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(float(burst), self.tokens + max(0.0, now - self.last) * rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
