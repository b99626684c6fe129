"""A deterministic in-process Ethernet for tests: virtual time, seeded faults, no I/O.

:class:`MemoryNetwork` joins any number of *nodes* on one switched segment. A node is anything
with ``receive_frame(frame, now, csum_ok)``, ``take_output() -> list[bytes]``, ``poll(now)`` and
``poll_at() -> float | None``: a :class:`usocket.stack.Stack`, or a small fake in tests.

The event loop (:meth:`MemoryNetwork.run_until`, :meth:`MemoryNetwork.run_for`) never sleeps:
it jumps the :class:`VirtualClock` straight to the next event, the earliest of the next frame
delivery and the earliest node timer, handles it, gathers every node's output and repeats.
Ties go to frames (in send order), then to timers (in attach order), so a run with the same
seed and inputs replays exactly.

Switching: destination MAC lookup with learning from source MACs (bounded table), broadcast,
multicast and unknown unicast flooded to every other port, never back out of the sender's port.

Faults (:class:`Faults`) are applied per delivered copy of a frame, drawing from the network's
seeded RNG: loss, duplication, reordering (a frame is held back ``reorder_delay * U[1, 2)`` so
later frames overtake it), corruption (one random bit flipped after the Ethernet header, so the
frame still reaches its target and the L3/L4 checksums must catch it), plus latency and
bandwidth (serialisation delay per directed pair, with a bounded queue). Which settings apply
to a frame from port A to port B, most specific first: ``set_path(A, B)``, B's
``rx_faults``, A's ``tx_faults``, the network's defaults. Counters say what happened so tests
know: ``tx``, ``delivered``, ``flooded``, ``duplicated``, ``corrupted``, ``reordered``,
``drop.loss``, ``drop.queue``...

:func:`link_pair` is the real-time counterpart: two :class:`Link` objects joined by an AF_UNIX
``SOCK_SEQPACKET`` socketpair, for joining two stacks through the threaded runtime without root.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import _stdsocket as socket  # the kernel's module even after the hijacker swaps sys.modules["socket"]
from .base import MAX_FRAME, Link, errno_reason
from .pcap import PcapWriter


class VirtualClock:
    """Virtual time in seconds; only ever moves forward. Call it to read it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_to(self, when: float) -> None:
        if when > self.now:
            self.now = when

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now + seconds)


class Node(Protocol):
    def receive_frame(self, frame: bytes, now: float, csum_ok: bool = ...) -> Any: ...
    def take_output(self) -> list[bytes]: ...
    def poll(self, now: float) -> Any: ...
    def poll_at(self) -> float | None: ...


@dataclass
class Faults:
    """Properties of a path. ``bandwidth`` is in bits/s (``None``: infinite); ``queue_bytes``
    bounds what may wait for serialisation (tail drop beyond it)."""

    latency: float = 0.001
    bandwidth: float | None = None
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    reorder_delay: float = 0.002
    queue_bytes: int = 1 << 20

    def replace(self, **changes: Any) -> Faults:
        return dataclasses.replace(self, **changes)


class Port:
    """A node's attachment to a :class:`MemoryNetwork` (the handle ``attach`` returns).

    ``tx_faults``/``rx_faults`` override the network's defaults for frames this node sends /
    receives (``None``: inherit). ``counters`` has this port's ``tx`` and ``rx``."""

    def __init__(self, net: MemoryNetwork, node: Node, name: str, tx_faults: Faults | None,
                 rx_faults: Faults | None) -> None:
        self.net = net
        self.node = node
        self.name = name
        self.tx_faults = tx_faults
        self.rx_faults = rx_faults
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.attached = True

    def detach(self) -> None:
        self.net.detach(self)

    def __repr__(self) -> str:
        return f"<Port {self.name}>"


Observer = Callable[[bytes, Port, Port, float], None]


class MemoryNetwork:
    """One switched Ethernet segment in virtual time. Keyword arguments after ``seed`` are the
    default :class:`Faults`; ``observer(frame, src_port, dst_port, now)`` is told of every
    delivery (after faults); ``pcap`` records every frame once, as sent, at send time;
    ``csum_ok`` is what deliveries pass to ``receive_frame``."""

    #: consecutive events at one instant before the loop declares a livelock
    max_steps_per_instant = 1_000_000

    def __init__(self, seed: int = 0, latency: float = 0.001, bandwidth: float | None = None,
                 loss: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0, corrupt: float = 0.0,
                 *, reorder_delay: float = 0.002, queue_bytes: int = 1 << 20,
                 clock: VirtualClock | None = None, observer: Observer | None = None,
                 pcap: PcapWriter | None = None, csum_ok: bool = False,
                 max_in_flight: int = 100_000, max_macs: int = 4096) -> None:
        self.faults = Faults(latency, bandwidth, loss, duplicate, reorder, corrupt, reorder_delay,
                             queue_bytes)
        self.rng = random.Random(seed)
        self.clock = clock if clock is not None else VirtualClock()
        self.observers: list[Observer] = [observer] if observer is not None else []
        self.pcap = pcap
        self.csum_ok = csum_ok
        self.max_in_flight = max_in_flight
        self.max_macs = max_macs
        self.ports: list[Port] = []
        self.counters: defaultdict[str, int] = defaultdict(int)
        self._events: list[tuple[float, int, Port, bytes, Port]] = []
        self._seq = itertools.count()
        self._paths: dict[tuple[Port, Port], Faults] = {}
        self._busy: dict[tuple[Port, Port], float] = {}
        self._macs: dict[bytes, Port] = {}
        self._instant = (-1.0, 0)

    # -- topology ----------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.now

    def attach(self, node: Node, *, name: str | None = None, mac: bytes | None = None,
               tx_faults: Faults | None = None, rx_faults: Faults | None = None) -> Port:
        """Plug ``node`` in. ``mac`` pre-seeds the switch table (otherwise learnt)."""
        port = Port(self, node, name or f"port{len(self.ports)}", tx_faults, rx_faults)
        self.ports.append(port)
        if mac is not None:
            self._learn(mac, port)
        return port

    def detach(self, port: Port) -> None:
        """Unplug ``port``: frames in flight to it are dropped, its MACs forgotten."""
        if port.attached:
            port.attached = False
            self.ports.remove(port)
            for mac in [m for m, p in self._macs.items() if p is port]:
                del self._macs[mac]

    def set_path(self, src: Port, dst: Port, faults: Faults | None) -> None:
        """Override the faults of frames from ``src`` to ``dst`` (``None`` removes it)."""
        if faults is None:
            self._paths.pop((src, dst), None)
        else:
            self._paths[(src, dst)] = faults

    def faults_for(self, src: Port, dst: Port) -> Faults:
        f = self._paths.get((src, dst))
        if f is None:
            f = dst.rx_faults or src.tx_faults or self.faults
        return f

    def add_observer(self, fn: Observer) -> None:
        self.observers.append(fn)

    # -- sending -------------------------------------------------------------------------------------
    def transmit(self, src: Port, frame: bytes) -> None:
        """Put ``frame`` on the wire from ``src`` now (also usable to inject crafted frames)."""
        c = self.counters
        now = self.clock.now
        frame = bytes(frame)
        c["tx"] += 1
        src.counters["tx"] += 1
        if self.pcap is not None:
            self.pcap.write(frame, now)
        if len(frame) < 14:
            c["drop.runt"] += 1
            return
        dst_mac = frame[:6]
        if not frame[6] & 1:
            self._learn(frame[6:12], src)
        if dst_mac[0] & 1:
            c["broadcast"] += 1
            targets = [p for p in self.ports if p is not src]
        else:
            port = self._macs.get(dst_mac)
            if port is None:
                c["flooded"] += 1
                targets = [p for p in self.ports if p is not src]
            elif port is src:
                c["drop.hairpin"] += 1
                return
            else:
                targets = [port]
        for dst in targets:
            self.schedule(src, dst, frame, now)

    def _learn(self, mac: bytes, port: Port) -> None:
        table = self._macs
        if table.get(mac) is port:
            return
        table.pop(mac, None)
        if len(table) >= self.max_macs:
            del table[next(iter(table))]  # forget the oldest entry
        table[mac] = port

    def schedule(self, src: Port, dst: Port, frame: bytes, now: float) -> None:
        """Apply the path's faults to one copy of ``frame`` and queue its delivery."""
        f = self.faults_for(src, dst)
        c = self.counters
        rnd = self.rng.random
        if f.loss and rnd() < f.loss:
            c["drop.loss"] += 1
            return
        at = now
        if f.bandwidth:
            key = (src, dst)
            start = max(now, self._busy.get(key, now))
            if (start - now) * f.bandwidth / 8 + len(frame) > f.queue_bytes:
                c["drop.queue"] += 1
                return
            at = start + len(frame) * 8 / f.bandwidth
            self._busy[key] = at
        at += f.latency
        copies = 1
        if f.duplicate and rnd() < f.duplicate:
            copies = 2
            c["duplicated"] += 1
        for _ in range(copies):
            if len(self._events) >= self.max_in_flight:
                c["drop.overflow"] += 1
                return
            data, when = frame, at
            if f.corrupt and rnd() < f.corrupt:
                data = self.corrupt_frame(frame)
                c["corrupted"] += 1
            if f.reorder and rnd() < f.reorder:
                when += f.reorder_delay * (1.0 + rnd())
                c["reordered"] += 1
            heapq.heappush(self._events, (when, next(self._seq), dst, data, src))

    def corrupt_frame(self, frame: bytes) -> bytes:
        """Flip one random bit after the Ethernet header (anywhere in a header-only frame)."""
        start = 14 if len(frame) > 14 else 0
        pos = self.rng.randrange(start, len(frame))
        buf = bytearray(frame)
        buf[pos] ^= 1 << self.rng.randrange(8)
        return bytes(buf)

    # -- the event loop --------------------------------------------------------------------------
    def collect(self) -> None:
        """Take every node's pending output and put it on the wire."""
        for port in list(self.ports):
            for frame in port.node.take_output():
                self.transmit(port, frame)

    @property
    def in_flight(self) -> int:
        return len(self._events)

    def idle(self) -> bool:
        """True when no frame is in flight (timers may still be pending)."""
        return not self._events

    def next_event(self) -> tuple[float, Port | None] | None:
        """``(when, port)`` of the next event: a delivery (``port`` None) or a node timer."""
        best: tuple[float, Port | None] | None = (self._events[0][0], None) if self._events else None
        for port in self.ports:
            t = port.node.poll_at()
            if t is not None and (best is None or t < best[0]):
                best = (t, port)
        return best

    def step(self, deadline: float) -> bool:
        """Handle the next event if it is due by ``deadline``; False when there is none."""
        self.collect()
        ev = self.next_event()
        if ev is None or ev[0] > deadline:
            return False
        self.clock.advance_to(ev[0])
        now = self.clock.now
        when, count = self._instant
        self._instant = (now, count + 1 if when == now else 0)
        if self._instant[1] > self.max_steps_per_instant:
            raise RuntimeError(f"memory network livelock at t={now}: events keep coming at one instant")
        port = ev[1]
        if port is None:
            _, _, dst, frame, src = heapq.heappop(self._events)
            self.deliver(src, dst, frame, now)
        else:
            port.node.poll(now)
        self.collect()
        return True

    def deliver(self, src: Port, dst: Port, frame: bytes, now: float) -> None:
        if not dst.attached:
            self.counters["drop.detached"] += 1
            return
        self.counters["delivered"] += 1
        dst.counters["rx"] += 1
        for fn in self.observers:
            fn(frame, src, dst, now)
        dst.node.receive_frame(frame, now, self.csum_ok)

    def run_until(self, predicate: Callable[[], object], timeout: float) -> bool:
        """Run events until ``predicate()`` is true (checked before the first and after every
        event): True; or until ``timeout`` virtual seconds passed: False, with the clock at
        the deadline."""
        deadline = self.clock.now + timeout
        self.collect()
        if predicate():
            return True
        while self.step(deadline):
            if predicate():
                return True
        self.clock.advance_to(deadline)
        return bool(predicate())

    def run_for(self, seconds: float) -> int:
        """Run every event due in the next ``seconds``; the clock ends at that deadline.
        Returns the number of events handled."""
        deadline = self.clock.now + seconds
        n = 0
        while self.step(deadline):
            n += 1
        self.clock.advance_to(deadline)
        return n


# -- a real Link pair over a socketpair ----------------------------------------------------------------
class PairLink(Link):
    """One end of :func:`link_pair`. ``faults`` (loss, duplicate, reorder, corrupt; latency
    and bandwidth are ignored: no timers here) apply to frames this end sends, with its own
    seeded RNG. A reordered frame is held back until the next frame is sent (or :meth:`flush`).
    Fault outcomes are counted as ``fault.<kind>``; the frame still counts as sent."""

    def __init__(self, sock: socket.socket, name: str, mac: bytes, mtu: int, faults: Faults,
                 seed: int, csum_ok: bool) -> None:
        super().__init__(name, mtu, mac)
        self.sock = sock
        self.faults = faults
        self.rng = random.Random(seed)
        self.csum_ok = csum_ok
        self._held: bytes | None = None
        self.eof = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        c = self.counters
        while len(out) < max_frames:
            try:
                frame = self.sock.recv(MAX_FRAME)
            except BlockingIOError:
                break
            except OSError as exc:
                c["drop.rx_" + errno_reason(exc)] += 1
                break
            if not frame:  # the peer closed: stays readable forever, so say so (the runtime unregisters)
                self.eof = True
                break
            c["rx"] += 1
            out.append((frame, self.csum_ok))
        return out

    def send(self, frame: bytes) -> bool:
        f, rnd, c = self.faults, self.rng.random, self.counters
        if f.loss and rnd() < f.loss:
            c["fault.loss"] += 1
            c["tx"] += 1
            return True
        copies = [frame]
        if f.duplicate and rnd() < f.duplicate:
            c["fault.duplicate"] += 1
            copies.append(frame)
        ok = False
        for data in copies:
            if f.corrupt and rnd() < f.corrupt and len(data) > 14:
                buf = bytearray(data)
                buf[self.rng.randrange(14, len(buf))] ^= 1 << self.rng.randrange(8)
                data = bytes(buf)
                c["fault.corrupt"] += 1
            if f.reorder and self._held is None and rnd() < f.reorder:
                c["fault.reorder"] += 1
                self._held = data
                ok = True
                continue
            ok = self._write(data) or ok
            self.flush()
        if ok:
            c["tx"] += 1
        return ok

    def flush(self) -> None:
        """Send a frame held back for reordering."""
        held, self._held = self._held, None
        if held is not None:
            self._write(held)

    def _write(self, data: bytes) -> bool:
        try:
            self.sock.send(data)
            return True
        except BlockingIOError:
            self.counters["drop.tx_busy"] += 1
        except OSError as exc:  # EPIPE/ECONNRESET: the other end is closed; EMSGSIZE
            self.counters["drop.tx_" + errno_reason(exc)] += 1
        return False

    def close(self) -> None:
        if not self.closed:
            self.sock.close()
        super().close()


def link_pair(*, seed: int = 0, loss: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0,
              corrupt: float = 0.0, mtu: int = 1500,
              macs: tuple[bytes, bytes] = (b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"),
              names: tuple[str, str] = ("pair0", "pair1"), csum_ok: bool = False,
              bufsize: int = 4 << 20) -> tuple[PairLink, PairLink]:
    """Two linked :class:`PairLink` ends. The faults apply in both directions (each end has its
    own RNG seeded from ``seed``); change ``end.faults`` for one direction only."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    faults = Faults(latency=0.0, loss=loss, duplicate=duplicate, reorder=reorder, corrupt=corrupt)
    ends = []
    for i, sock in enumerate((a, b)):
        sock.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, bufsize)
        ends.append(PairLink(sock, names[i], macs[i], mtu, faults.replace(), seed * 2 + i, csum_ok))
    return ends[0], ends[1]
