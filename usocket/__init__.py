"""usocket: a TCP/IP stack in user space behind the stdlib socket API."""
from __future__ import annotations

__version__ = "0.1.0"
