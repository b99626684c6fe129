"""Blocking name resolution through the stack's DNS stub resolver (for user threads).

The resolver itself (:mod:`usocket.proto.dns`) is sans-IO and runs on the stack thread; this
module hands it a lookup and waits for the callback. Failures raise the stdlib's exceptions
(``socket.gaierror`` / ``socket.herror``) with the codes glibc would give.
"""
from __future__ import annotations

import threading
from typing import Any

from .proto.dns import DnsError, DnsResult
from .runtime import Runtime, get_runtime


class Resolver:
    def __init__(self, runtime: Runtime | None = None) -> None:
        self._rt = runtime if runtime is not None else get_runtime()

    def _wait(self, start: Any, *args: Any) -> DnsResult:
        done = threading.Event()
        box: list[Any] = []

        def callback(result: Any) -> None:
            box.append(result)
            done.set()

        stack = self._rt.stack
        assert stack is not None
        self._rt.call(start, *args, callback)
        done.wait()
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
        try:
            return str(self.resolve(name).values[0])
        except DnsError as e:
            raise e.as_gaierror() from None

    def gethostbyname_ex(self, name: str) -> tuple[str, list[str], list[str]]:
        try:
            r = self.resolve(name)
        except DnsError as e:
            raise e.as_gaierror() from None
        aliases = [name] if r.canonical != name else []
        return r.canonical, aliases, [str(v) for v in r.values]

    def gethostbyaddr(self, ip: str) -> tuple[str, list[str], list[str]]:
        stack = self._rt.stack
        assert stack is not None
        try:
            r = self._wait(stack.dns.resolve_ptr, ip)
        except DnsError as e:
            raise e.as_herror() from None
        names = [str(v) for v in r.values]
        return names[0], names[1:], [ip]


def gethostbyname(name: str) -> str:
    return Resolver().gethostbyname(name)
