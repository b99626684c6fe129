"""Module-level helpers of the facade.

``create_connection``, ``create_server``, ``getfqdn`` and ``has_dualstack_ipv6`` are the stdlib's
own functions re-bound to the ``usocket`` module's namespace: the same code (so the same
behaviour, arguments and errors, version for version), but the ``socket``, ``getaddrinfo``,
``gethostbyaddr`` they call are usocket's. Copying the stdlib function itself would not do: it
looks those names up in the stdlib module and would build kernel sockets.
"""
from __future__ import annotations

import socket as _std
import types
from typing import Any


def rebind(fn: Any, namespace: dict[str, Any]) -> Any:
    """``fn`` with its global names looked up in ``namespace``."""
    new = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__doc__ = fn.__doc__
    new.__qualname__ = fn.__qualname__
    new.__module__ = namespace.get("__name__", "usocket")
    return new


REBOUND = ("create_connection", "create_server", "getfqdn", "has_dualstack_ipv6", "fromfd")


def install(namespace: dict[str, Any]) -> None:
    for name in REBOUND:
        namespace[name] = rebind(getattr(_std, name), namespace)
