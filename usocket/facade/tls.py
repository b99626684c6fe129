"""TLS on usocket sockets: an ``ssl.SSLSocket`` that is also a usocket socket.

``SSLContext.wrap_socket`` builds its ``SSLSocket`` on the *descriptor* of the socket it is given
through the stdlib ``socket.socket`` constructor and detaches that socket. On a usocket socket the
result would be a plain stdlib socket on the application end of the AF_UNIX pair: ``connect``
(wrap first, connect after, as the ssl documentation's client does) would go to the pair, and
``getpeername``/``getsockname``/``setsockopt``/``getsockopt`` would answer for the pair.

:class:`SSLSocket` puts the facade's ``socket`` under ``ssl.SSLSocket`` in the MRO, so the
``super()`` calls of ``ssl.SSLSocket`` reach the facade: its constructor finds the bridge of the
descriptor (the registry, by inode), and everything that is not TLS record I/O is answered by the
stack. On any other descriptor the facade falls through to the stdlib, so the class can replace
``ssl.SSLContext.sslsocket_class`` for every context in the process.
"""
from __future__ import annotations

import ssl

from .sockets import socket


class SSLSocket(ssl.SSLSocket, socket):  # type: ignore[misc]  # typeshed: the bases differ in signatures
    """``ssl.SSLSocket`` over a usocket socket (or, unchanged, over a kernel one)."""


def install() -> None:
    """Make every ``SSLContext`` build :class:`SSLSocket` (idempotent)."""
    ssl.SSLContext.sslsocket_class = SSLSocket
