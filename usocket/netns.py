"""Run a function inside a network namespace (for creating sockets there).

A socket belongs to the namespace it was created in for its whole life, so the stack creates
its link, NFQUEUE and port-reservation sockets in a short-lived thread that has entered the
namespace with ``setns(2)``, then uses them from any thread. ``netns=None`` runs in place.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn()`` with the calling context's network namespace set to ``netns``."""
    if netns is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns({netns}): {os.strerror(e)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    t = threading.Thread(target=target, name=f"usocket-netns-{netns}")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def ns_cmd(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` prefixed to run inside ``netns`` (unchanged for ``None``)."""
    return (["ip", "netns", "exec", netns] if netns else []) + argv


def run(netns: str | None, argv: list[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ns_cmd(netns, argv), check=check, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
