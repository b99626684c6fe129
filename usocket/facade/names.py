"""Name resolution for the facade (placeholder: see the full module)."""
from __future__ import annotations

from ..resolver import Resolver


def gethostbyname(name: str) -> str:
    return Resolver().gethostbyname(name)
