"""A heap of one-shot timers driven by an externally supplied clock (sans-IO)."""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Timer:
    """A scheduled call. ``cancel()`` is O(1); cancelled entries are skipped lazily."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<Timer at {self.when:.6f} {getattr(self.callback, '__qualname__', self.callback)}{state}>"


class Timers:
    """One-shot timers ordered by deadline.

    ``run(now)`` fires every timer whose deadline is ``<= now`` in deadline order (ties in
    scheduling order). A callback may schedule new timers, including ones already due; they
    run in the same call.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run(self, now: float) -> int:
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            timer.cancelled = True  # one-shot: a later cancel() is a harmless no-op
            timer.callback(*timer.args)
            fired += 1
        return fired

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)
