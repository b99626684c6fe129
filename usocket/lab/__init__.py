"""The lab: network namespaces with the Linux kernel's own servers as the peer of the stack.

``Lab`` (see :mod:`usocket.lab.netlab`) builds a client and a server namespace joined by a veth
pair; :mod:`usocket.lab.servers` holds the servers and the bulk-pattern helpers tests check
transfers with. ``python -m usocket.lab up`` builds one by hand, ``... cleanup`` removes stale ones.
"""
from __future__ import annotations

from .netlab import Lab, LabError
from .servers import bulk_pattern, bulk_request, bulk_sha256, parse_sink_reply

__all__ = ["Lab", "LabError", "bulk_pattern", "bulk_request", "bulk_sha256", "parse_sink_reply"]
