"""Run a function inside a network namespace (for creating sockets there).

A socket belongs to the namespace it was created in for its whole life, so the stack creates
its link, NFQUEUE and port-reservation sockets in a short-lived thread that has entered the
namespace with ``setns(2)``, then uses them from any thread. ``netns=None`` runs in place, and
so does a named namespace that the calling thread is already in (a program started with
``ip netns exec NS`` and ``USOCKET_NETNS=NS``): :func:`in_netns` compares the inodes of
``/proc/thread-self/ns/net`` and ``/var/run/netns/NAME`` (two ``stat`` calls, ~5 us), which
saves a thread and a ``setns`` per call, or an ``ip netns exec`` process per command.
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


SELF_NETNS = "/proc/thread-self/ns/net"


def in_netns(netns: str) -> bool:
    """True when the calling thread's network namespace is the one named ``netns``."""
    try:
        mine = os.stat(SELF_NETNS)
        named = os.stat(netns_path(netns))
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn()`` with the calling context's network namespace set to ``netns`` (in place
    when it is None or already the calling thread's namespace)."""
    if netns is None or in_netns(netns):
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
    """``argv`` prefixed to run inside ``netns`` (unchanged for ``None`` or the calling thread's
    own namespace)."""
    return (["ip", "netns", "exec", netns] if netns and not in_netns(netns) else []) + argv


def run(netns: str | None, argv: list[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ns_cmd(netns, argv), check=check, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
