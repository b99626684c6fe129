"""Blocking name resolution through the stack's DNS stub resolver (for user threads).

The resolver itself (:mod:`usocket.proto.dns`) is sans-IO and runs on the stack thread; this
module hands it a lookup and waits for the callback. Failures raise the stdlib's exceptions
(``socket.gaierror`` / ``socket.herror``) with the codes glibc would give.
"""
from __future__ import annotations

import socket as _socket
import threading
from typing import Any

from .proto.dns import DnsError, DnsResult
from .runtime import Runtime, RuntimeStopped, get_runtime


class Resolver:
    def __init__(self, runtime: Runtime | None = None) -> None:
        self._rt = runtime if runtime is not None else get_runtime()

    def _wait(self, start: Any, *args: Any) -> DnsResult:
        done = threading.Event()
        box: list[Any] = []

        def callback(result: Any) -> None:
            box.append(result)
            done.set()

        unregister = self._rt.on_stop(done.set)  # a stopping runtime abandons its lookups
        try:
            try:
                self._rt.call(start, *args, callback)
            except RuntimeStopped:
                pass
            done.wait()
        finally:
            unregister()
        if not box:
            raise _socket.gaierror(_socket.EAI_AGAIN, "Temporary failure in name resolution")
        result = box[0]
        if isinstance(result, DnsError):
            raise result
        return result

    def resolve(self, name: str) -> DnsResult:
        """The A records of ``name`` as a :class:`DnsResult`; ``DnsError`` on failure."""
        stack = self._rt.stack
        assert stack is not None
        return self._wait(stack.dns.resolve, name)

    def gethostbyname(self, name: str) -> str:
        if name == "":
            return "0.0.0.0"
        if name == "<broadcast>":
            return "255.255.255.255"
        try:
            return str(self.resolve(name).values[0])
        except DnsError as e:
            raise e.as_gaierror() from None

    def gethostbyname_ex(self, name: str) -> tuple[str, list[str], list[str]]:
        try:
            r = self.resolve(name)
        except DnsError as e:
            raise e.as_gaierror() from None
        aliases = [a for a in getattr(r, "aliases", ()) if a != r.canonical]
        return r.canonical, aliases, [str(v) for v in r.values]

    def gethostbyaddr(self, ip: str) -> tuple[str, list[str], list[str]]:
        stack = self._rt.stack
        assert stack is not None
        try:
            _socket.inet_aton(ip)
        except OSError:
            ip = self.gethostbyname(ip)  # like glibc: a name is resolved first
        try:
            r = self._wait(stack.dns.resolve_ptr, ip)
        except DnsError as e:
            raise e.as_herror() from None
        names = [str(v) for v in r.values]
        return names[0], names[1:], [ip]


def gethostbyname(name: str) -> str:
    return Resolver().gethostbyname(name)
