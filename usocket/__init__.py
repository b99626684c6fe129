"""usocket: a TCP/IP stack in user space behind the stdlib socket API.

``import usocket as socket`` is a drop-in for the stdlib module: every public name of ``socket``
exists here, the constants, exceptions, enums and pure helpers being the stdlib's own objects;
``socket``/``SocketType`` create AF_INET stream and datagram sockets on the userland stack (other
families stay the kernel's), and the resolver functions ask the stack's DNS. The stack starts at
the first socket (see :func:`usocket.runtime.get_runtime`).
"""
from __future__ import annotations

if "_stdsocket" not in globals():  # importlib.reload under the hijacker: socket is usocket by then
    import socket as _stdsocket

__version__ = "0.1.0"

# Everything of the stdlib module first (identical objects), then ours over it.
for _name in dir(_stdsocket):
    if not _name.startswith("__"):
        globals()[_name] = getattr(_stdsocket, _name)
__all__ = list(_stdsocket.__all__)

from .facade import names as _names  # noqa: E402
from .facade.sockets import SocketType, socket  # noqa: E402, F401 - in __all__ (the stdlib's)

for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
    if hasattr(_names, _name):
        globals()[_name] = getattr(_names, _name)

from .facade import api as _api  # noqa: E402

_api.install(globals())

from .facade import tls as _tls  # noqa: E402

_tls.install()  # SSLContext.wrap_socket on a usocket socket: addresses, options, connect from the stack
del _name


import typing as _typing  # noqa: E402

if _typing.TYPE_CHECKING:
    from .introspect import SocketRow
    from .runtime import Runtime


def netstat(rt: Runtime | None = None) -> list[SocketRow]:
    """usocket's own addition to the module (not in the stdlib's ``__all__``): the socket table of
    the runtime ``rt`` (default: the process-wide one, which must be running), one
    :class:`usocket.introspect.SocketRow` per TCP connection/listener and UDP endpoint, read on
    the stack thread. ``usocket.introspect.format_table(rows)`` prints it as ``ss -tni`` would."""
    from . import runtime as _runtime

    r = rt if rt is not None else _runtime._runtime
    if r is None:
        raise _runtime.RuntimeStopped("no usocket runtime is running")
    return r.sockets()
