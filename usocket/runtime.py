"""The edge: one stack thread per process that owns the link, the diversion and the clock.

The :class:`usocket.stack.Stack` is sans-IO; :class:`Runtime` runs it for real. The stack thread
waits in ``select()`` on the link, the NFQUEUE descriptor (shared mode) and an ``eventfd`` that
user threads write to when they hand it work (``call``/``call_soon``). Every touch of stack state
happens on that thread, so the protocol code needs no locks. User threads block on their own
conditions (see :mod:`usocket.dgram`), never by busy-waiting.

``get_runtime()`` returns the process-wide runtime, started lazily from
:func:`usocket.config.discover` at first use and stopped at interpreter exit.
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from .config import SHARED, StackConfig, discover
from .stack import FlowObserver, Stack

log = logging.getLogger("usocket")
T = TypeVar("T")


class Runtime:
    """Runs a :class:`Stack` on a real link in a background thread.

    ``link``: a :class:`usocket.link.base.Link`; by default a ``PacketLink`` on ``config.iface``
    (inside ``config.netns``) with the BPF filter for the mode. ``divert``: in shared mode a
    :class:`usocket.divert.Diverter` is created unless one is given (or ``divert=False``).
    ``pcap``: a path or :class:`usocket.link.pcap.PcapWriter` recording every frame.
    """

    stack_class: type[Stack] = Stack

    def __init__(self, config: StackConfig | None = None, *, link: Any = None, divert: Any = None,
                 pcap: Any = None, stack_class: type[Stack] | None = None) -> None:
        self.config = config if config is not None else discover()
        if stack_class is not None:
            self.stack_class = stack_class
        self._link = link
        self._divert_arg = divert
        self._pcap_arg = pcap
        self.link: Any = None
        self.divert: Any = None
        self.pcap: Any = None
        self._own_pcap: Any = None
        self.stack: Stack | None = None
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...], Future[Any] | None]] = (
            collections.deque())
        self._wake_fd = -1
        self._thread: threading.Thread | None = None
        self._running = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Runtime:
        with self._lock:
            if self._thread is not None:
                return self
            try:
                self._open()
            except BaseException:
                self._close_resources()
                raise
            self._running = True
            self._thread = threading.Thread(target=self._run, name="usocket-stack", daemon=True)
            self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    def _open(self) -> None:
        cfg = self.config
        from .wire.addr import ip_ntoa

        flows: FlowObserver | None = None
        ports = None
        if cfg.mode == SHARED and self._divert_arg is not False:
            from .divert import Diverter, KernelPortAllocator

            self.divert = self._divert_arg or Diverter(local_ip=ip_ntoa(cfg.address), netns=cfg.netns)
            self.divert.start()
            flows = self.divert
            ports = KernelPortAllocator(netns=cfg.netns, local_ip=ip_ntoa(cfg.address))
        if self._link is None:
            from .link import bpf
            from .link.packet import PacketLink

            if cfg.mode == SHARED:
                prog = bpf.shared_mode_filter(cfg.address)
            else:
                prog = bpf.own_mode_filter(cfg.address, _broadcast(cfg.address, cfg.prefix_len))
            self._link = PacketLink(cfg.iface, netns=cfg.netns, bpf=prog)
        self.link = self._link
        if self._pcap_arg is not None:
            from .link.pcap import PcapLink, PcapWriter

            if isinstance(self._pcap_arg, PcapWriter):
                self.pcap = self._pcap_arg
            else:  # a path: the writer is ours to close
                self.pcap = self._own_pcap = PcapWriter(self._pcap_arg)
            self.link = PcapLink(self._link, self.pcap)
        self.stack = self.stack_class(cfg, ports=ports, flows=flows, now=time.monotonic())
        if self.divert is not None:
            self.stack.counters.adopt("divert", self.divert.c)
        if hasattr(self._link, "counters"):
            self.stack.counters.adopt("link", self._link.counters)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, remove diversion rules, close the link. Idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._running = False
        if thread is not None:
            self._wake()
            if thread is not threading.current_thread():
                thread.join(timeout)
        self._close_resources()

    def _close_resources(self) -> None:
        for closer in (self.divert, self.link if self.link is not None else self._link):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # noqa: BLE001 - best effort at shutdown
                    log.exception("usocket: error while closing %r", closer)
        self.divert = None
        if self._own_pcap is not None:
            self._own_pcap.close()
            self._own_pcap = None
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to the stack thread -------------------------------------------------------------
    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the stack thread soon; from any thread; never blocks."""
        self._calls.append((fn, args, None))
        self._wake()

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` on the stack thread and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        if not self._running:
            raise RuntimeError("usocket runtime is not running")
        fut: Future[T] = Future()
        self._calls.append((fn, args, fut))
        self._wake()
        return fut.result(timeout)

    def _wake(self) -> None:
        if self._wake_fd >= 0:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        stack = self.stack
        assert stack is not None
        sel = selectors.DefaultSelector()
        try:
            link = self.link
            sel.register(link.fileno(), selectors.EVENT_READ, "link")
            sel.register(self._wake_fd, selectors.EVENT_READ, "wake")
            if self.divert is not None:
                sel.register(self.divert.fileno(), selectors.EVENT_READ, "divert")
        except BaseException as exc:  # noqa: BLE001
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        divert_handler = self._divert_handler
        calls = self._calls
        monotonic = time.monotonic
        while self._running:
            deadline = stack.poll_at()
            timeout = None if deadline is None else max(0.0, deadline - monotonic())
            try:
                events = sel.select(timeout)
            except InterruptedError:
                continue
            now = monotonic()
            stack.now = now
            try:
                for key, _ in events:
                    what = key.data
                    if what == "link":
                        for frame, csum_ok in link.recv_batch(64):
                            stack.receive_frame(frame, now, csum_ok)
                    elif what == "divert":
                        self.divert.read(divert_handler, 64)
                    else:
                        try:
                            os.eventfd_read(self._wake_fd)
                        except BlockingIOError:
                            pass
                while calls:
                    fn, args, fut = calls.popleft()
                    if fut is None:
                        fn(*args)
                    elif fut.set_running_or_notify_cancel():
                        try:
                            fut.set_result(fn(*args))
                        except BaseException as exc:  # noqa: BLE001 - handed to the caller
                            fut.set_exception(exc)
                stack.poll(monotonic())
                out = stack.take_output()
                if out:
                    link.send_batch(out)
            except Exception:  # noqa: BLE001 - the stack thread must survive anything
                stack.counters.layer("runtime")["errors"] += 1
                log.exception("usocket: error in the stack thread")
        sel.close()
        # Fail any caller still waiting.
        while calls:
            _, _, fut = calls.popleft()
            if fut is not None and fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("usocket runtime stopped"))

    def _divert_handler(self, packet: bytes) -> bool:
        stack = self.stack
        assert stack is not None
        if not stack.owns_ip_packet(packet):
            return False
        if self.pcap is not None:  # packets from the queue never crossed the link: record them too
            self.pcap.write_ip(packet, time.time(), dst_mac=self.config.mac)
        stack.receive_ip(packet, stack.now)
        return True


def _broadcast(address: bytes, prefix_len: int) -> bytes:
    from .wire.addr import prefix_mask

    a = int.from_bytes(address, "big")
    return (a | (~prefix_mask(prefix_len) & 0xFFFFFFFF)).to_bytes(4, "big")


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime, created from the system/environment and started at first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            rt = Runtime()
            rt.start()
            atexit.register(rt.stop)
            _runtime = rt
        return _runtime


def set_runtime(rt: Runtime | None) -> Runtime | None:
    """Install ``rt`` as the process-wide runtime (tests, embedding); returns the previous one."""
    global _runtime
    with _runtime_lock:
        prev, _runtime = _runtime, rt
        return prev
