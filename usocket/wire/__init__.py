"""Wire formats: pure parse/build functions over bytes, no state, no scapy.

Conventions (every module in this package follows them):

- ``parse_<thing>(buf)`` takes ``bytes`` or a ``memoryview`` and returns a small immutable
  value (a ``NamedTuple``); on malformed input it raises :class:`MalformedError` whose
  ``reason`` is a short ``snake_case`` word used as a drop counter key.
- ``build_<thing>(...)`` returns ``bytes``.
- Addresses are ``bytes`` on the wire side: 4 bytes for IPv4, 6 for MAC. Helpers to convert
  to and from text live in :mod:`usocket.wire.addr`.
"""


class MalformedError(ValueError):
    """A frame or header that violates its format. ``reason`` names the counter bumped."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
