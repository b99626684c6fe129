"""The edge: one stack thread per process that owns the link, the diversion and the clock.

The :class:`usocket.stack.Stack` is sans-IO; :class:`Runtime` runs it for real. The stack thread
waits in ``epoll`` on the link, the NFQUEUE descriptor (shared mode), the socket facade's pair
ends (:meth:`Runtime.watch`) and an ``eventfd`` that user threads write to when they hand it
work (``call``/``call_soon``). Every touch of stack state happens on that thread, so the
protocol code needs no locks. User threads block on their own descriptors (see
:mod:`usocket.facade.bridge`) or conditions, never by busy-waiting; :meth:`Runtime.on_stop` lets
them be woken when the runtime goes away.

Lifecycle: ``start()`` once (a stopped runtime is not restarted: build a new one), ``stop()``
any number of times. Stopping runs :meth:`usocket.stack.Stack.shutdown` on the stack thread
(endpoints closed, ports released), then the thread closes the diversion (its iptables rules go)
and the link. An exception anywhere in one loop pass is counted and logged; the pass still
runs every queued call, the timers and the output.

``get_runtime()`` returns the process-wide runtime, started lazily from
:func:`usocket.config.discover` at first use and stopped at interpreter exit (and forgotten in a
forked child, which must start its own).
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from .config import SHARED, StackConfig, discover
from .introspect import SocketRow
from .stack import FlowObserver, Stack

log = logging.getLogger("usocket")
T = TypeVar("T")


class RuntimeStopped(RuntimeError):
    """The runtime is not running (never started, stopped, or lost in a fork)."""


class Runtime:
    """Runs a :class:`Stack` on a real link in a background thread.

    ``link``: a :class:`usocket.link.base.Link`; by default a ``PacketLink`` on ``config.iface``
    (inside ``config.netns``) with the BPF filter for the mode. ``divert``: in shared mode a
    :class:`usocket.divert.Diverter` is created unless one is given (or ``divert=False``).
    ``pcap``: a path or :class:`usocket.link.pcap.PcapWriter` recording every frame.
    ``control``: open the control endpoint (:mod:`usocket.control`, what ``python -m usocket ss
    PID`` asks) while running; ``None`` (the default) follows ``USOCKET_CONTROL=1``, a path
    string serves on that socket file. The hijacker turns it on unless ``USOCKET_CONTROL=0``.
    ``stack_class``: the stack to run, a :class:`Stack` subclass or any callable called as
    ``stack_class(config, ports=..., flows=..., now=...)`` returning a stack (e.g. a hand-built
    one: ``functools.partial(Stack.build, layers=[...])``, see :mod:`usocket.hack`).
    """

    stack_class: Callable[..., Stack] = Stack

    def __init__(self, config: StackConfig | None = None, *, link: Any = None, divert: Any = None,
                 pcap: Any = None, stack_class: Callable[..., Stack] | None = None,
                 control: bool | str | None = None) -> None:
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
        self._state = "new"  # new -> running -> stopped
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop_callbacks: list[Callable[[], None]] = []
        self._finish_callbacks: list[Callable[[], None]] = []
        self._epoll: Any = None
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._control_arg = control
        self.control: Any = None  # the ControlServer while running

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        t = self._thread
        return self._state == "running" and t is not None and t.is_alive()

    def start(self) -> Runtime:
        with self._lock:
            if self._state == "running":
                return self
            if self._state == "stopped":
                raise RuntimeStopped("a stopped usocket runtime cannot be restarted; create a new one")
            _raise_nofile_limit()
            try:
                self._open()
            except BaseException:
                self._state = "stopped"
                self._close_resources()
                raise
            self._state = "running"
            self._thread = threading.Thread(target=self._run, name="usocket-stack", daemon=True)
            self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            with self._lock:
                self._state = "stopped"
            self._fail_pending()
            self._close_resources()
            raise self._start_error
        self._open_control()
        return self

    def _open_control(self) -> None:
        """The control endpoint, if wanted; a failure is logged, never raised (it is optional)."""
        want = self._control_arg
        if want is None:
            from .control import enabled

            want = bool(enabled())
        if not want:
            return
        try:
            from .control import ControlServer

            server = ControlServer(self, path=want if isinstance(want, str) else None).start()
        except Exception as exc:  # noqa: BLE001 - introspection must never break the program
            log.debug("usocket: no control endpoint: %s", exc)
            return
        self.control = server
        self.on_stop(server.close)

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
        self.stack.gso_max_size = getattr(self.link, "gso_max_size", 0)  # TCP segmentation offload
        if self.divert is not None:
            self.stack.counters.adopt("divert", self.divert.c)
        if hasattr(self._link, "counters"):
            self.stack.counters.adopt("link", self._link.counters)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    stop_grace = 2.0  # seconds stop() lets closing TCP connections finish their FIN exchange

    def stop(self, timeout: float = 10.0, grace: float | None = None) -> None:
        """Stop the thread: endpoints closed, diversion rules removed, link closed. Idempotent.
        First, TCP connections that are closing get up to ``grace`` seconds (default
        :attr:`stop_grace`) to finish, so the peer's last FIN/ACK reaches the stack rather than
        the host kernel (which would answer it with a RST once the diversion is gone).
        The stack thread does the closing itself once its loop has ended, so nothing is closed
        under its feet; if it does not end within ``timeout`` it still closes when it does."""
        self._stop(timeout, grace, drain=False)

    def _stop(self, timeout: float, grace: float | None, drain: bool) -> None:
        self._wait_closing(self.stop_grace if grace is None else grace, drain)
        with self._lock:
            if self._state != "running":
                if self._state == "new":
                    self._state = "stopped"
                return
            self._state = "stopped"
            thread = self._thread
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("usocket: the stack thread did not stop within %.1f s", timeout)
        self._run_stop_callbacks()

    def finish(self, grace: float | None = None, timeout: float = 10.0) -> None:
        """Stop as a process exit does for kernel sockets (what ``get_runtime()`` registers with
        atexit): the :meth:`on_finish` callbacks run on the stack thread first (the socket facade
        closes every socket the application still holds, as the kernel closes a dying process's
        descriptors: what it wrote is sent, then FIN, or RST when received data was left
        unread), then :meth:`stop` with its ``grace`` for those closes to complete (in both
        modes: with an own address, nobody else would deliver what is still unsent)."""
        if self.running:
            with self._lock:
                callbacks, self._finish_callbacks = self._finish_callbacks, []
            for cb in callbacks:
                try:
                    self.call(cb, timeout=timeout)
                except Exception:  # noqa: BLE001 - stop anyway
                    log.exception("usocket: error in a finish callback")
        self._stop(timeout, grace, drain=True)

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` on the stack thread when :meth:`finish` is called (once)."""
        with self._lock:
            self._finish_callbacks.append(callback)

    def _wait_closing(self, grace: float, drain: bool = False) -> None:
        # A shared address has a kernel that would answer the peer's late segments; an own one
        # (drain, from finish) has nobody else to send what the closed sockets still hold.
        if grace <= 0 or not self.running or threading.current_thread() is self._thread \
                or (self.config.mode != SHARED and not drain):
            return
        stack = self.stack
        tcp = getattr(stack, "tcp", None)
        if tcp is None:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                if not self.call(tcp.closing, timeout=grace):
                    return
            except Exception:  # noqa: BLE001 - stopped meanwhile, or a broken stack: stop anyway
                return
            time.sleep(0.02)

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` (from the stopping thread) when the runtime stops, so a user thread
        blocked on its own condition can notice. Returns a function that unregisters it."""
        with self._lock:
            stopped = self._state == "stopped"
            if not stopped:
                self._stop_callbacks.append(callback)
        if stopped:
            callback()

        def remove() -> None:
            with self._lock:
                if callback in self._stop_callbacks:
                    self._stop_callbacks.remove(callback)

        return remove

    def _run_stop_callbacks(self) -> None:
        with self._lock:
            callbacks, self._stop_callbacks = self._stop_callbacks, []
        for cb in callbacks:
            try:
                cb()
            except Exception:  # noqa: BLE001
                log.exception("usocket: error in a stop callback")

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
        with self._lock:  # _wake() reads the fd under the lock: no write into a reused number
            fd, self._wake_fd = self._wake_fd, -1
        if fd >= 0:
            os.close(fd)

    # -- talking to the stack thread -------------------------------------------------------------
    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the stack thread soon; from any thread; never blocks.
        Dropped silently when the runtime is not running."""
        with self._lock:
            if self._state != "running":
                return
            self._post((fn, args, None))

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` on the stack thread and return its result (or raise its exception).
        Raises :class:`RuntimeStopped` if the runtime is not running or stops meanwhile."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        fut: Future[T] = Future()
        with self._lock:
            if self._state != "running" or self._thread is None or not self._thread.is_alive():
                raise RuntimeStopped("usocket runtime is not running")
            self._post((fn, args, fut))
        return fut.result(timeout)

    def _post(self, call: tuple[Any, ...]) -> None:
        """Queue a call (with ``_lock`` held); wake the stack thread only when the queue was
        empty: the loop drains the whole queue in every pass (``_run_calls`` loops until it
        is empty), so a call queued behind another one is run by the pass that the first
        one's wake-up starts, and a second eventfd write would only cost a system call and
        a spare loop pass."""
        calls = self._calls
        calls.append(call)
        if len(calls) == 1:
            self._signal()

    def _wake(self) -> None:
        with self._lock:
            self._signal()

    def _signal(self) -> None:
        """Write the stack thread's eventfd (with ``_lock`` held)."""
        if self._wake_fd >= 0:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass

    def _fail_pending(self) -> None:
        while self._calls:
            _, _, fut = self._calls.popleft()
            if fut is not None and fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeStopped("usocket runtime stopped"))

    # -- introspection -----------------------------------------------------------------------------
    def sockets(self, timeout: float | None = 5.0) -> list[SocketRow]:
        """The stack's socket table (:meth:`usocket.stack.Stack.sockets`), read on the stack
        thread so that it is one consistent snapshot; any thread."""
        return self.call(lambda: self._running_stack().sockets(), timeout=timeout)

    def counters(self, timeout: float | None = 5.0) -> dict[str, dict[str, int]]:
        """A snapshot of the per-layer counters, taken on the stack thread; any thread."""
        return self.call(lambda: self._running_stack().counters.snapshot(), timeout=timeout)

    def _running_stack(self) -> Stack:
        if self.stack is None:
            raise RuntimeStopped("usocket runtime is not running")
        return self.stack

    # -- descriptors watched by the stack thread ---------------------------------------------------
    def watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        """Watch ``fd`` for ``events`` (``select.EPOLL*`` bits) and call ``handler(events)`` on
        the stack thread when they occur. Stack thread only (the socket facade's bridges)."""
        self._handlers[fd] = handler
        self._epoll.register(fd, events)

    def rewatch(self, fd: int, events: int) -> None:
        """Change the events ``fd`` is watched for (stack thread only)."""
        self._epoll.modify(fd, events)

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (stack thread only; before the descriptor is closed)."""
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        stack = self.stack
        assert stack is not None
        link = self.link
        ep = self._epoll = select.epoll()
        handlers = self._handlers = {}
        try:
            self.watch(link.fileno(), select.EPOLLIN, self._on_link)
            self.watch(self._wake_fd, select.EPOLLIN, self._on_wake)
            if self.divert is not None:
                self.watch(self.divert.fileno(), select.EPOLLIN, self._on_divert)
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._start_error = exc
            ep.close()
            self._started.set()
            return
        self._started.set()
        errors = stack.counters.layer("runtime")
        try:
            while self._state == "running":
                deadline = stack.poll_at()
                timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    events = ep.poll(timeout)
                except InterruptedError:
                    continue
                now = time.monotonic()
                stack.now = now
                for fd, ev in events:
                    handler = handlers.get(fd)
                    if handler is None:
                        continue
                    try:
                        handler(ev)
                    except Exception:  # noqa: BLE001 - the stack thread survives anything
                        errors["errors"] += 1
                        log.exception("usocket: error handling events of fd %d", fd)
                self._run_calls(errors)
                self._tick(stack, link, errors)
        finally:
            try:
                with self._lock:
                    self._state = "stopped"
                self._run_calls(errors)  # calls queued before stop() still run
                try:
                    stack.shutdown()
                    self._tick(stack, link, errors)
                except Exception:  # noqa: BLE001
                    log.exception("usocket: error while shutting the stack down")
                self._fail_pending()
            finally:
                ep.close()
                handlers.clear()
                self._close_resources()
                self._run_stop_callbacks()

    def _on_link(self, events: int) -> None:
        stack = self.stack
        assert stack is not None
        link = self.link
        now = stack.now
        for frame, csum_ok in link.recv_batch(64):
            try:
                stack.receive_frame(frame, now, csum_ok)
            except Exception:  # noqa: BLE001 - one bad frame must not cost the batch
                stack.counters.layer("runtime")["errors"] += 1
                log.exception("usocket: error processing a frame")
        if getattr(link, "eof", False):
            self.unwatch(link.fileno())
            log.error("usocket: link %s reached end of file; no more frames", link.name)

    def _on_divert(self, events: int) -> None:
        self.divert.read(self._divert_handler, 64)

    def _on_wake(self, events: int) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _run_calls(self, errors: Any) -> None:
        calls = self._calls
        while calls:
            fn, args, fut = calls.popleft()
            if fut is None:
                try:
                    fn(*args)
                except Exception:  # noqa: BLE001
                    errors["errors"] += 1
                    log.exception("usocket: error in a call_soon function")
            elif fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)

    @staticmethod
    def _tick(stack: Stack, link: Any, errors: Any) -> None:
        try:
            stack.poll(time.monotonic())
        except Exception:  # noqa: BLE001
            errors["errors"] += 1
            log.exception("usocket: error in a timer")
        out = stack.take_output()
        if out:
            link.send_batch(out)

    def _divert_handler(self, packet: bytes, csum_ok: bool = False) -> bool:
        stack = self.stack
        assert stack is not None
        if not stack.owns_ip_packet(packet):
            return False
        if self.pcap is not None:  # packets from the queue never crossed the link: record them too
            self.pcap.write_ip(packet, time.time(), dst_mac=self.config.mac)
        stack.receive_ip(packet, stack.now, csum_ok)
        return True


NOFILE_WANTED = 65536


def _raise_nofile_limit() -> None:
    """Each socket of the facade holds two descriptors (its socketpair's ends): raise the soft
    RLIMIT_NOFILE towards the hard limit (at most :data:`NOFILE_WANTED`) so that a thousand
    sockets fit. A process that set its own lower limit on purpose keeps it if it is above 4096."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
        if soft != resource.RLIM_INFINITY and soft < 4096 and want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


def _broadcast(address: bytes, prefix_len: int) -> bytes:
    from .wire.addr import prefix_mask

    a = int.from_bytes(address, "big")
    return (a | (~prefix_mask(prefix_len) & 0xFFFFFFFF)).to_bytes(4, "big")


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
# Keyword arguments for the Runtime that get_runtime() creates (the hijacker sets ``pcap``).
default_options: dict[str, Any] = {}


def get_runtime() -> Runtime:
    """The process-wide runtime, created from the system/environment (and
    :data:`default_options`) and started at first use; at interpreter exit :meth:`Runtime.finish`
    closes what the program left open, as process exit does for kernel sockets."""
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime._state == "stopped":
            if os.environ.get("USOCKET_DEFAULT_RUNTIME") == "0":
                raise RuntimeStopped("no usocket runtime installed and USOCKET_DEFAULT_RUNTIME=0 forbids "
                                     "starting the default one (tests: use a runtime fixture)")
            rt = Runtime(**default_options)
            rt.start()
            atexit.register(rt.finish)
            _runtime = rt
        return _runtime


def set_runtime(rt: Runtime | None) -> Runtime | None:
    """Install ``rt`` as the process-wide runtime (tests, embedding); returns the previous one."""
    global _runtime
    with _runtime_lock:
        prev, _runtime = _runtime, rt
        return prev


def _forget_after_fork() -> None:
    # The stack thread does not exist in a forked child; its sockets and rules are the parent's.
    global _runtime, _runtime_lock
    _runtime = None
    _runtime_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
