"""The queue reader: inbound packets of the stack's flows, taken from the kernel (shared mode).

:class:`Diverter` is the stack's :class:`usocket.stack.FlowObserver`. For each flow the stack
opens it adds an iptables NFQUEUE rule (:mod:`usocket.divert.rules`); the kernel then queues
those packets to this process instead of handing them to its own TCP/UDP, and :meth:`read`
gives each one to a handler whose answer becomes the verdict: True (the stack's) -> DROP, so
the kernel never answers with RST or ICMP port unreachable; False -> ACCEPT, the kernel
handles it as if no rule existed. Packets arrive checksum-verified, GSO-segmented and
defragmented (INPUT comes after reassembly).

Built on the ``netfilterqueue`` package with two additions it lacks: the copy range is raised
to the kernel's maximum (the package clamps it to 4016 bytes and reads with a 4 KiB buffer,
which would cut a reassembled UDP datagram) by a NFQNL_MSG_CONFIG message sent on the
package's own netlink socket, and packets are read with ``run_socket`` through a reader whose
buffer holds 64 KiB. The kernel caps the copy range at 65531 bytes (NFQNL_MAX_COPY_RANGE), so
an IPv4 packet of 65532-65535 bytes (a UDP datagram of 65504+ bytes) arrives cut short: it
is counted as ``truncated`` and still handed over (its IPv4 total length exceeds its size).

Fail-open: the rules carry ``--queue-bypass``, so a dead or absent reader never black-holes
anything. ``fail_open=True`` additionally sets NFQA_CFG_F_FAIL_OPEN (a live reader whose queue
overflows lets the excess through to the kernel); it is off by default because the excess
belongs to the stack's flows and the kernel would answer it with RST/port unreachable, while
a drop is recovered by retransmission.

Lifecycle: rules are removed by :meth:`close`, at interpreter exit (atexit; also after
KeyboardInterrupt) and on SIGTERM (a handler is installed from the main thread when SIGTERM
has its default action, after which the process still dies of SIGTERM; a program's own handler
is left alone, and its exit removes them). :meth:`start` first removes rules left by dead processes.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import struct
import threading
import weakref
from collections import defaultdict, deque
from collections.abc import Callable
from types import FrameType
from typing import Any

from .. import _stdsocket as socket  # the kernel's module even after the hijacker swaps sys.modules["socket"]
from ..netns import run_in_netns
from ..stack import FlowObserver
from . import rules as _rules
from .rules import FlowRules, Remote

Handler = Callable[[bytes], bool]

# nfnetlink / nfnetlink_queue constants (linux/netfilter/nfnetlink_queue.h)
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1
NFQNL_COPY_PACKET = 2
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
_CONFIG_SEQ = 0x75730001
RECV_BUFFER = 65535 + 4096  # a whole 64 KiB packet plus the netlink/NFQA headers


def _nla(kind: int, payload: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(payload), kind) + payload
    return attr + b"\0" * (-len(attr) % 4)


def config_message(queue_num: int, copy_range: int, max_len: int, flags: int = 0, mask: int = 0,
                   seq: int = _CONFIG_SEQ) -> bytes:
    """A NFQNL_MSG_CONFIG request (with ACK) setting copy mode/range, queue length and flags."""
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue_num)  # nfgenmsg: family, version, res_id
    body += _nla(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET))
    body += _nla(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", max_len))
    if mask:
        body += _nla(NFQA_CFG_MASK, struct.pack("!I", mask)) + _nla(NFQA_CFG_FLAGS, struct.pack("!I", flags))
    msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def default_queue_num(pid: int) -> int:
    """First queue number tried by process ``pid`` (1024..65023, spread by pid)."""
    return 1024 + pid % 64000


class _Reader:
    """What ``NetfilterQueue.run_socket`` reads from: a 64 KiB ``recv`` with a packet budget.

    ``run_socket`` calls ``recv`` until it raises EAGAIN; we also raise it when the budget of
    the current :meth:`Diverter.read` is spent, so one call never starves the stack's timers.
    """

    def __init__(self, sock: socket.socket, counters: dict[str, int]) -> None:
        self.sock = sock
        self.c = counters
        self.buf = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buf)
        self.budget = 0
        self.pending: deque[bytes] = deque()  # messages read while waiting for a config ACK
        self.stopped = False

    def recv(self, _bufsize: int) -> bytes:
        if self.budget <= 0 or self.stopped:
            raise BlockingIOError(errno.EAGAIN, "budget spent")
        self.budget -= 1
        if self.pending:
            return self.pending.popleft()
        while True:
            try:
                n = self.sock.recv_into(self.buf, RECV_BUFFER, socket.MSG_DONTWAIT)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped messages: socket overran
                    self.c["enobufs"] += 1
                    continue
                raise
            return bytes(self.view[:n])


_live: weakref.WeakSet[Diverter] = weakref.WeakSet()  # for the process-wide SIGTERM handler
_sigterm_state: dict[str, Any] = {"installed": False, "previous": signal.SIG_DFL}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    for div in list(_live):
        with contextlib.suppress(Exception):
            div.close()
    previous = _sigterm_state["previous"]
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # die of SIGTERM, as without us
    os.kill(os.getpid(), signal.SIGTERM)


def install_sigterm_handler() -> bool:
    """Make SIGTERM remove the rules of every open Diverter first (main thread only).

    Installed only when SIGTERM has its default action (the process would die without running
    exit handlers: the rules go, then it dies of SIGTERM as before). A handler the program set is
    left alone: it may finish its work after SIGTERM, over the diverted flows, and its exit runs
    the normal clean-up. Ignored, or set outside Python: left alone. A handler that says it closes
    usocket itself (a ``usocket_graceful`` attribute: the hijacker's, which lets closing
    connections finish before the rules go) counts as installed. True if installed now or before.
    """
    if _sigterm_state["installed"]:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if getattr(current, "usocket_graceful", False):  # the hijacker's: it finishes the runtime itself
        return True
    if current is not signal.SIG_DFL:
        return False
    _sigterm_state["previous"] = current
    signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm_state["installed"] = True
    return True


class Diverter(FlowObserver):
    """Diverts the stack's flows from the kernel into an NFQUEUE and reads them.

    ``start()`` then ``select`` on ``fileno()`` and ``read(handler)``; ``close()`` when done.
    Counters (``self.c``; the runtime may pass ``stack.counters.layer("divert")``): ``rx``
    packets in, ``dropped`` (ours), ``accepted`` (not ours), ``errors`` (handler raised:
    accepted), ``enobufs`` (kernel dropped queue messages), ``truncated`` (over the copy range),
    ``rules.errors`` (a rule deletion failed at close).
    """

    rules_class = FlowRules
    queue_tries = 64

    def __init__(self, local_ip: str | bytes, netns: str | None = None, *, queue_num: int | None = None,
                 max_queue_len: int = 8192, rcvbuf: int = 16 << 20, copy_range: int = 65535,
                 fail_open: bool = False, handle_signals: bool = True,
                 counters: dict[str, int] | None = None) -> None:
        self.local_ip = local_ip if isinstance(local_ip, str) else socket.inet_ntoa(local_ip)
        self.netns = netns
        self.requested_queue = queue_num
        self.max_queue_len = max_queue_len
        self.rcvbuf = rcvbuf
        self.copy_range = copy_range
        self.fail_open = fail_open
        self.handle_signals = handle_signals
        self.c: dict[str, int] = counters if counters is not None else defaultdict(int)
        self.queue_num: int | None = None
        self.rules: FlowRules | None = None
        self.last_error: BaseException | None = None
        self._nfq: Any = None
        self._sock: socket.socket | None = None
        self._reader: _Reader | None = None
        self._handler: Handler | None = None
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Diverter:
        """Remove dead owners' rules, bind a queue in ``netns``, create the chain and jump."""
        with self._lock:
            if self._nfq is not None or self._closed:
                raise RuntimeError("Diverter already started" if not self._closed else "Diverter closed")
            _rules.cleanup(self.netns)
            run_in_netns(self.netns, self._open_queue)
            assert self.queue_num is not None
            self.rules = self.rules_class(self.local_ip, self.queue_num, netns=self.netns)
            _live.add(self)
            atexit.register(self.close)
            if self.handle_signals:
                install_sigterm_handler()
            try:
                self.rules.start()
            except BaseException:
                self.close()
                raise
        return self

    def _queue_candidates(self) -> list[int]:
        if self.requested_queue is not None:
            return [self.requested_queue]
        first = default_queue_num(self._pid)
        return [1024 + (first - 1024 + i) % 64000 for i in range(self.queue_tries)]

    def _open_queue(self) -> None:
        """Runs inside ``netns``: open the netlink socket and bind the first free queue."""
        from netfilterqueue import NetfilterQueue

        nfq = NetfilterQueue()
        last: OSError | None = None
        for q in self._queue_candidates():
            try:
                nfq.bind(q, self._on_packet, max_len=self.max_queue_len, sock_len=self.rcvbuf)
            except OSError as exc:  # EBUSY: another process owns this queue number
                last = exc
                continue
            sock = socket.socket(fileno=os.dup(nfq.get_fd()))
            try:
                self._reader = _Reader(sock, self.c)
                self._configure(sock, q)
            except BaseException:
                sock.close()
                nfq.unbind()
                raise
            self._nfq, self._sock, self.queue_num = nfq, sock, q
            return
        raise OSError(errno.EBUSY, f"no free NFQUEUE number ({last})")

    def _configure(self, sock: socket.socket, queue_num: int) -> None:
        """Raise the copy range past the package's 4016-byte limit (and set flags); wait for ACK."""
        mask = NFQA_CFG_F_FAIL_OPEN
        flags = NFQA_CFG_F_FAIL_OPEN if self.fail_open else 0
        sock.sendto(config_message(queue_num, self.copy_range, self.max_queue_len, flags, mask), (0, 0))
        sock.settimeout(2.0)
        try:
            while True:
                data = sock.recv(RECV_BUFFER)
                _, kind, _, seq, _ = struct.unpack_from("=IHHII", data)
                if kind == NLMSG_ERROR and seq == _CONFIG_SEQ:
                    (err,) = struct.unpack_from("=i", data, 16)
                    if err:
                        raise OSError(-err, f"NFQUEUE config: {os.strerror(-err)}")
                    return
                assert self._reader is not None
                self._reader.pending.append(data)  # a packet already: hand it over later
        finally:
            sock.settimeout(None)

    def close(self) -> None:
        """Remove every rule of this diverter, unbind the queue. Idempotent, any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._reader is not None:
                self._reader.stopped = True
            if os.getpid() == self._pid:  # a forked child must not remove its parent's rules
                if self.rules is not None:
                    try:
                        self.rules.remove_all()
                    except Exception as exc:  # noqa: BLE001 - closing must go on
                        self.c["rules.errors"] += 1
                        self.last_error = exc
                if self._nfq is not None:
                    with contextlib.suppress(Exception):
                        self._nfq.unbind()
            if self._sock is not None:
                self._sock.close()
            self._nfq = self._sock = None
        _live.discard(self)
        atexit.unregister(self.close)

    def __enter__(self) -> Diverter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush_rules(self, timeout: float | None = 10.0) -> bool:
        """Wait until rules of closed flows are really gone (they are deleted in the background)."""
        rules = self.rules
        return rules.flush(timeout) if rules is not None else True

    @property
    def closed(self) -> bool:
        return self._closed

    # -- reading --------------------------------------------------------------------------------
    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("Diverter is not started or closed")
        return self._sock.fileno()

    def read(self, handler: Handler, max_packets: int = 64) -> int:
        """Give up to ``max_packets`` queued packets to ``handler`` without blocking.

        ``handler(packet)`` gets the IPv4 packet and returns True if the stack owns it (the
        kernel never sees it) or False (the kernel gets it). Returns the number of packets.
        """
        with self._lock:
            if self._nfq is None or self._reader is None:
                return 0
            before = self.c["rx"]
            self._handler = handler
            self._reader.budget = max_packets
            self._nfq.run_socket(self._reader)
            return self.c["rx"] - before

    def _on_packet(self, pkt: Any) -> None:
        """netfilterqueue callback: one packet in, exactly one verdict out."""
        self.c["rx"] += 1
        ours = False
        try:
            handler = self._handler
            data = pkt.get_payload()
            if len(data) >= 4 and (data[2] << 8 | data[3]) > len(data):
                self.c["truncated"] += 1
            ours = bool(handler(data)) if handler is not None else False
        except Exception as exc:  # noqa: BLE001 - bad input never kills the stack
            self.c["errors"] += 1
            self.last_error = exc
            ours = False
        except BaseException:  # KeyboardInterrupt...: still give the packet a verdict
            with contextlib.suppress(Exception):
                pkt.accept()
            raise
        try:
            if ours:
                pkt.drop()
                self.c["dropped"] += 1
            else:
                pkt.accept()
                self.c["accepted"] += 1
        except RuntimeError:  # queue unbound meanwhile (closed from a signal handler)
            self.c["errors"] += 1

    # -- FlowObserver ---------------------------------------------------------------------------
    def flow_opened(self, proto: int, local_port: int, remote: Remote) -> None:
        with self._lock:
            if self.rules is None or self._closed:
                raise OSError(errno.ENOTCONN, "Diverter is not running")
            self.rules.add(proto, local_port, remote)

    def flow_closed(self, proto: int, local_port: int, remote: Remote) -> None:
        with self._lock:
            if self.rules is None or self._closed:
                return
            try:
                self.rules.remove(proto, local_port, remote)
            except Exception as exc:  # noqa: BLE001 - closing a flow must not fail
                self.c["rules.errors"] += 1
                self.last_error = exc
