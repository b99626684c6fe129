"""Per-layer packet counters.

Each layer gets a plain ``dict[str, int]`` (a ``defaultdict(int)``) and bumps keys on its hot
path: ``c["rx"] += 1``. Drops are counted as ``"drop.<reason>"`` so tests can use the counters
as oracles (PyTCP style) and ``usocket --stats`` can print them.
"""
from __future__ import annotations

from collections import defaultdict


class Counters:
    def __init__(self) -> None:
        self._layers: dict[str, defaultdict[str, int]] = {}

    def layer(self, name: str) -> defaultdict[str, int]:
        """The live counter dict of one layer (created on first use)."""
        try:
            return self._layers[name]
        except KeyError:
            d: defaultdict[str, int] = defaultdict(int)
            self._layers[name] = d
            return d

    def adopt(self, name: str, counters: dict[str, int]) -> None:
        """Show a counter dict kept by someone else (e.g. the diversion) as layer ``name``."""
        self._layers[name] = counters  # type: ignore[assignment]

    def __getitem__(self, name: str) -> defaultdict[str, int]:
        return self.layer(name)

    def get(self, layer: str, key: str) -> int:
        d = self._layers.get(layer)
        return d.get(key, 0) if d is not None else 0

    def drops(self, layer: str | None = None) -> dict[str, int]:
        """``{"layer.drop.reason": n}`` for one layer or all of them."""
        out: dict[str, int] = {}
        for name, d in self._layers.items():
            if layer is not None and name != layer:
                continue
            for k, v in d.items():
                if k.startswith("drop.") and v:
                    out[f"{name}.{k}"] = v
        return out

    def snapshot(self) -> dict[str, dict[str, int]]:
        """A deep copy, safe to read from another thread (best effort while the stack runs)."""
        return {name: dict(d) for name, d in list(self._layers.items())}

    def format(self) -> str:
        lines = []
        for name, d in sorted(self.snapshot().items()):
            items = " ".join(f"{k}={v}" for k, v in sorted(d.items()) if v)
            lines.append(f"{name:>9}: {items}")
        return "\n".join(lines)
