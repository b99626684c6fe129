"""Shared-mode port reservations and namespace entry, against the kernel in the lab.

- A server socket with SO_REUSEADDR binds a port on which the host kernel still holds
  connections in TIME_WAIT (the kernel's own bind check allows it), while the kernel's
  programs still cannot take the port the stack holds.
- ``USOCKET_NETNS`` naming the namespace the thread is already in costs no thread, no
  ``setns`` and no ``ip netns exec``.
"""
from __future__ import annotations

import errno
import socket
import threading
from typing import Any

import pytest

from usocket.facade.sockets import socket_on
from usocket.netns import in_netns, ns_cmd, run_in_netns
from usocket.runtime import Runtime

pytestmark = pytest.mark.lab

PORT = 8931


def _kernel_time_wait(ip: str, port: int) -> None:
    """A connection on (ip, port) closed first by its server side: TIME_WAIT on that port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen()
    cli = socket.create_connection((ip, port), timeout=5)
    a, _ = srv.accept()
    a.close()
    assert cli.recv(1) == b""
    cli.close()
    srv.close()


def _kernel_bind(ip: str, port: int, reuse: bool) -> int:
    """errno of a kernel bind (0: it worked)."""
    s = socket.socket()
    try:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen()
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        s.close()


def test_reuseaddr_server_binds_over_kernel_time_wait(lab: Any) -> None:
    c, cip = lab.client_ns, lab.client_ip
    run_in_netns(c, lambda: _kernel_time_wait(cip, PORT))
    tw = lab.run(c, ["ss", "-tanH", "state", "time-wait"]).stdout
    assert f"{cip}:{PORT}" in tw, tw
    rt = Runtime(lab.stack_config("shared"))
    rt.start()
    try:
        plain = socket_on(rt)
        with pytest.raises(OSError) as ei:  # as on the kernel: TIME_WAIT blocks a plain bind
            plain.bind((cip, PORT))
        assert ei.value.errno == errno.EADDRINUSE
        plain.close()
        srv = socket_on(rt)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((cip, PORT))
        srv.listen()
        # the reservation still keeps the kernel's programs off the port, with or without reuse
        assert run_in_netns(c, lambda: _kernel_bind(cip, PORT, False)) == errno.EADDRINUSE
        assert run_in_netns(c, lambda: _kernel_bind(cip, PORT, True)) == errno.EADDRINUSE
        # and the port works: a kernel client in the peer namespace reaches the stack's server
        got: list[bytes] = []

        def serve() -> None:
            a, _ = srv.accept()
            a.sendall(b"hello")
            a.close()

        t = threading.Thread(target=serve)
        t.start()

        def fetch() -> None:
            with socket.create_connection((cip, PORT), timeout=10) as k:
                got.append(k.recv(100))

        run_in_netns(lab.server_ns, fetch)
        t.join(10)
        assert got == [b"hello"]
        srv.close()
    finally:
        rt.stop()


def test_named_netns_already_entered_runs_in_place(lab: Any) -> None:
    c = lab.client_ns
    assert not in_netns(c)
    assert ns_cmd(c, ["true"])[:3] == ["ip", "netns", "exec"]
    outer = threading.current_thread()
    assert run_in_netns(c, threading.current_thread) is not outer  # a thread that entered it

    def inside() -> tuple[bool, bool, list[str]]:
        me = threading.current_thread()
        same = run_in_netns(c, threading.current_thread) is me  # no second thread, no setns
        return in_netns(c), same, ns_cmd(c, ["true"])

    here, same, argv = run_in_netns(c, inside)
    assert here and same and argv == ["true"]
    assert not run_in_netns(c, lambda: in_netns(lab.server_ns))
