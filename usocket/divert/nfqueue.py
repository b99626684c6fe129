"""The queue reader: inbound packets of the stack's flows, taken from the kernel (shared mode).

:class:`Diverter` is the stack's :class:`usocket.stack.FlowObserver`. For each flow the stack
opens it adds an iptables NFQUEUE rule (:mod:`usocket.divert.rules`); the kernel then queues
those packets to this process instead of handing them to its own TCP/UDP, and :meth:`read`
gives each one to a handler whose answer becomes the verdict: True (the stack's) -> DROP, so
the kernel never answers with RST or ICMP port unreachable; False -> ACCEPT, the kernel
handles it as if no rule existed. Packets arrive defragmented (INPUT comes after reassembly).

The queue is read directly over a netlink socket (:mod:`usocket.divert.netlink` builds and
parses the messages; no libnetfilter_queue). It asks for GSO packets (NFQA_CFG_F_GSO): a
64 KB TCP super-packet that a veth peer or GRO made is queued as one message instead of ~45
segments, and its TCP/UDP checksum is left as the sender's partial sum; the kernel says so in
NFQA_SKB_INFO (NFQA_SKB_CSUMNOTREADY) and the handler is told not to verify it (the same
``csum_ok`` the AF_PACKET link gives for TP_STATUS_CSUMNOTREADY). Other packets arrive with the
checksum as on the wire and the stack verifies it. A kernel that refuses the flag gets a queue
without it (segmented packets, checksums completed). Limit: a UDP-GSO super-packet (a sender
on the same host using UDP_SEGMENT through a veth) also arrives whole, and its boundaries
between datagrams are not in the message (the kernel does not pass gso_size); it is dropped and
counted (``gso_unsupported``). Only TCP super-packets are handed over.

:meth:`read` reads up to its budget of messages per call (one ``recv_into`` each, into one
reused buffer), hands each packet over, then sends all verdicts in one ``sendto``: one
NFQNL_MSG_VERDICT_BATCH with the majority verdict up to the last id, preceded by single
verdicts for the exceptions.

The copy range is the kernel's maximum: it caps it at 65531 bytes (NFQNL_MAX_COPY_RANGE), so
an IPv4 packet of 65532-65535 bytes (a UDP datagram of 65504+ bytes) arrives cut short: it is
counted as ``truncated`` (the kernel adds NFQA_CAP_LEN) and still handed over (its IPv4 total
length exceeds its size). TCP super-packets stay below that (the kernel's GSO size goal is
64 KiB minus room for headers).

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
from . import netlink as nl
from . import rules as _rules
from .netlink import config_message
from .rules import FlowRules, Remote

Handler = Callable[[bytes, bool], bool]

__all__ = ["RECV_BUFFER", "Diverter", "Handler", "config_message", "default_queue_num", "install_sigterm_handler"]

RECV_BUFFER = 65535 + 4096  # a whole 64 KiB packet plus the netlink/NFQA headers
SO_RCVBUFFORCE = 33  # linux/asm-generic/socket.h (root may exceed net.core.rmem_max)
_SEQ = 0x75730001
IPPROTO_TCP = 6


def default_queue_num(pid: int) -> int:
    """First queue number tried by process ``pid`` (1024..65023, spread by pid)."""
    return 1024 + pid % 64000


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
    ``gso`` (packets that came as one GSO super-packet), ``gso_unsupported`` (a GSO packet that
    is not TCP: dropped), ``csum_not_ready`` (partial checksum: not verified by the stack),
    ``reads`` (netlink messages read), ``verdict_sends`` (verdict sends, one per :meth:`read`
    with packets), ``nl_errors`` (error replies from the kernel, malformed messages, a failed
    verdict send), ``rules.errors`` (a rule deletion failed at close). ``gso=False`` asks the
    kernel for wire-size packets with completed checksums instead of GSO packets.
    """

    rules_class = FlowRules
    queue_tries = 64

    def __init__(self, local_ip: str | bytes, netns: str | None = None, *, queue_num: int | None = None,
                 max_queue_len: int = 8192, rcvbuf: int = 16 << 20, copy_range: int = 65535,
                 fail_open: bool = False, gso: bool = True, handle_signals: bool = True,
                 counters: dict[str, int] | None = None) -> None:
        self.local_ip = local_ip if isinstance(local_ip, str) else socket.inet_ntoa(local_ip)
        self.netns = netns
        self.requested_queue = queue_num
        self.max_queue_len = max_queue_len
        self.rcvbuf = rcvbuf
        self.copy_range = copy_range
        self.fail_open = fail_open
        self.gso = gso
        self.handle_signals = handle_signals
        self.c: dict[str, int] = counters if counters is not None else defaultdict(int)
        self.queue_num: int | None = None
        self.rules: FlowRules | None = None
        self.last_error: BaseException | None = None
        self._sock: socket.socket | None = None
        self._buf = bytearray(RECV_BUFFER)
        self._pending: deque[bytes] = deque()  # messages read while waiting for a config ACK
        self._seq = _SEQ
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Diverter:
        """Remove dead owners' rules, bind a queue in ``netns``, create the chain and jump."""
        with self._lock:
            if self._started or self._closed:
                raise RuntimeError("Diverter already started" if not self._closed else "Diverter closed")
            self._started = True
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
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except OSError:  # not CAP_NET_ADMIN: capped by net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            last: OSError | None = None
            for q in self._queue_candidates():
                try:
                    self._request(sock, nl.bind_message(q, self._next_seq()))
                except OSError as exc:  # EPERM: another process owns this queue number
                    last = exc
                    continue
                self._configure(sock, q)
                self._sock, self.queue_num = sock, q
                return
            raise OSError(errno.EBUSY, f"no free NFQUEUE number ({last})")
        except BaseException:
            sock.close()
            raise

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _request(self, sock: socket.socket, message: bytes) -> None:
        """Send a request that asks an ACK and wait for it; raise the kernel's error."""
        seq = struct.unpack_from("=I", message, 8)[0]
        sock.sendto(message, (0, 0))
        sock.settimeout(2.0)
        try:
            while True:
                data = sock.recv(RECV_BUFFER)
                messages = nl.parse(data)
                for msg in messages:
                    if msg.kind == nl.NLMSG_ERROR and msg.seq == seq:
                        if msg.error:
                            raise OSError(-msg.error, f"NFQUEUE config: {os.strerror(-msg.error)}")
                        return
                if any(m.kind == nl.MSG_PACKET for m in messages):
                    self._pending.append(data)  # a packet already: hand it over later
        finally:
            sock.settimeout(None)

    def _configure(self, sock: socket.socket, queue_num: int) -> None:
        """Copy mode/range, queue length, flags: GSO packets whole (when ``gso``; without it if
        the kernel refuses the flag) and fail-open."""
        flags = nl.NFQA_CFG_F_FAIL_OPEN if self.fail_open else 0
        if self.gso:
            try:
                self._request(sock, config_message(queue_num, self.copy_range, self.max_queue_len,
                                                   flags | nl.NFQA_CFG_F_GSO,
                                                   nl.NFQA_CFG_F_FAIL_OPEN | nl.NFQA_CFG_F_GSO, self._next_seq()))
                return
            except OSError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                self.gso = False
        self._request(sock, config_message(queue_num, self.copy_range, self.max_queue_len, flags,
                                           nl.NFQA_CFG_F_FAIL_OPEN, self._next_seq()))

    def close(self) -> None:
        """Remove every rule of this diverter, unbind the queue. Idempotent, any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() == self._pid:  # a forked child must not remove its parent's rules
                if self.rules is not None:
                    try:
                        self.rules.remove_all()
                    except Exception as exc:  # noqa: BLE001 - closing must go on
                        self.c["rules.errors"] += 1
                        self.last_error = exc
                if self._sock is not None and self.queue_num is not None:
                    with contextlib.suppress(Exception):  # closing the socket unbinds too
                        self._sock.sendto(nl.bind_message(self.queue_num, self._next_seq(),
                                                          nl.NFQNL_CFG_CMD_UNBIND), (0, 0))
            if self._sock is not None:
                self._sock.close()
            self._sock = None
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

        ``handler(packet, csum_ok)`` gets the IPv4 packet (``csum_ok`` True: its TCP/UDP
        checksum field holds only the sender's partial sum, offloaded, so it must not be
        verified) and returns True if the stack owns it (the kernel never sees it) or False (the
        kernel gets it). Returns the number of packets. The verdicts of all packets read go to
        the kernel in one send at the end (see :func:`usocket.divert.netlink.verdicts_message`),
        also when ``handler`` raises. A :meth:`close` from a signal handler of this thread ends
        the loop at the next packet.
        """
        with self._lock:
            sock = self._sock
            if sock is None or self.queue_num is None:
                return 0
            c = self.c
            buf = self._buf
            verdicts: list[tuple[int, bool]] = []
            try:
                while len(verdicts) < max_packets and not self._closed:
                    if self._pending:
                        messages = nl.parse(self._pending.popleft())
                    else:
                        try:
                            n = sock.recv_into(buf, RECV_BUFFER, socket.MSG_DONTWAIT)
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            if exc.errno == errno.ENOBUFS:  # the kernel dropped messages: socket overran
                                c["enobufs"] += 1
                                continue
                            raise
                        messages = nl.parse(buf, n)
                    c["reads"] += 1
                    for msg in messages:
                        if msg.kind == nl.MSG_PACKET:
                            verdicts.append((msg.packet_id, self._give(handler, msg, verdicts)))
                        elif msg.error or msg.kind == nl.MALFORMED:
                            c["nl_errors"] += 1  # a verdict the kernel refused, or garbage
            finally:
                if verdicts:
                    self._send_verdicts(sock, verdicts)
            return len(verdicts)

    def _give(self, handler: Handler, msg: nl.Message, verdicts: list[tuple[int, bool]]) -> bool:
        """One packet to ``handler``: True if it is the stack's."""
        c = self.c
        c["rx"] += 1
        info = msg.skb_info
        if info:
            if info & nl.NFQA_SKB_GSO:
                c["gso"] += 1
            if info & nl.NFQA_SKB_CSUMNOTREADY:
                c["csum_not_ready"] += 1
        if msg.cap_len:
            c["truncated"] += 1
        try:
            payload = msg.payload
            if payload is None:
                return False
            if info & nl.NFQA_SKB_GSO and (len(payload) < 20 or payload[9] != IPPROTO_TCP):
                c["gso_unsupported"] += 1  # UDP-GSO: datagram bounds unknown here (see module doc)
                return True
            return bool(handler(bytes(payload), bool(info & nl.NFQA_SKB_CSUMNOTREADY)))
        except Exception as exc:  # noqa: BLE001 - bad input never kills the stack
            c["errors"] += 1
            self.last_error = exc
            return False
        except BaseException:  # KeyboardInterrupt...: still give the packet a verdict (ACCEPT)
            verdicts.append((msg.packet_id, False))
            raise

    def _send_verdicts(self, sock: socket.socket, verdicts: list[tuple[int, bool]]) -> None:
        assert self.queue_num is not None
        ours = sum(1 for _, o in verdicts if o)
        self.c["dropped"] += ours
        self.c["accepted"] += len(verdicts) - ours
        try:
            sock.sendto(nl.verdicts_message(self.queue_num, verdicts), (0, 0))
            self.c["verdict_sends"] += 1
        except OSError as exc:  # closed meanwhile, or refused: the packets stay queued until unbind
            self.c["nl_errors"] += 1
            self.last_error = exc

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
