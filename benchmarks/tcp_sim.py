"""TCP over the simulated network: two whole stacks, a bulk transfer both ways at once, loss.

    .venv/bin/python -m benchmarks.tcp_sim [--size BYTES] [--out FILE.json] [--congestion cubic]
        [--seed N] [--bandwidth BITS_PER_S] [--latency S] [--queue-bytes N]

:func:`run_transfer` builds two :class:`~usocket.stack.Stack` objects in own mode on one
:class:`~usocket.link.memory.MemoryNetwork` (virtual clock, seeded faults applied to every
frame in both directions, so data segments and ACKs alike are lost, duplicated, reordered and
corrupted). Stack A connects to a listener on stack B; each side then writes ``size`` bytes and
reads everything the other side sends, both directions at the same time. A side that has
written everything half-closes (``shutdown(SHUT_WR)``, its FIN follows the data); a side that
has also read the peer's EOF closes. Both received streams are checked by sha256 against what
was sent, and both connections must end cleanly: one side in TIME_WAIT and the other CLOSED
through LAST_ACK, or both in TIME_WAIT after a simultaneous close, then everything CLOSED once
TIME_WAIT (2*MSL) has passed, with no error on either side and no RST sent or received before
both applications were done. (A RST after that is legitimate: a duplicated segment that the
network delivers after its connection has closed draws a RST from the closed side (RFC 9293
3.10.7.1), and the peer's TIME_WAIT accepts it and ends early, as Linux does with its default
``tcp_rfc1337=0``.)

The applications are run the way a program on a non-blocking socket runs: after every event of
the network (a frame delivered or a timer fired) each side writes what its send buffer takes
and reads everything readable, so the receiver always keeps up and its window can grow to
``rcvbuf_max``.

Goodput per direction is the stream size divided by the virtual time from ``connect()`` to the
receiver reading EOF (handshake and ARP included). Nothing is asserted here: the result is a
dict, and ``main()`` prints a Markdown table for loss 0/1/5/10/20 % (reordering and
duplication at half the loss rate, corruption at a tenth of it: :func:`fault_mix`) and writes
the results as JSON; it exits 1 when a run failed. The test suite
(``tests/test_tcp_sim.py``) asserts on the same dicts.

The bottleneck queue (``queue_bytes``, per direction) defaults to 8 MiB, more than the largest
receive window (``rcvbuf_max``, 4 MiB), so the queue never overflows: every loss in a run is a
loss the fault model chose, and a run at 0 % loss must not retransmit anything. Pass a smaller
``queue_bytes`` to make the senders find the bottleneck by tail drops instead.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any, TypedDict

from usocket.config import OWN, StackConfig
from usocket.link.memory import MemoryNetwork
from usocket.proto.tcp.connection import CLOSED, ESTABLISHED, TIME_WAIT, TcpConnection, TcpState
from usocket.stack import Stack
from usocket.wire.addr import ip_aton, mac_aton

A_IP, B_IP = "10.9.1.1", "10.9.1.2"
A_MAC, B_MAC = "02:00:00:00:0c:01", "02:00:00:00:0c:02"
PORT = 5001
WRITE_CHUNK = 256 * 1024  # the most one send() call is offered
READ_CHUNK = 1 << 20
LOSS_RATES = (0.0, 0.01, 0.05, 0.10, 0.20)


class FaultMix(TypedDict):
    """Keyword arguments of :func:`run_transfer` that set the random faults."""

    loss: float
    reorder: float
    duplicate: float
    corrupt: float


def fault_mix(loss: float) -> FaultMix:
    """The fault settings of the standard sweep at ``loss``: reordering and duplication at half
    the loss rate, corruption at a tenth of it (none at all at 0 % loss)."""
    return {"loss": loss, "reorder": loss / 2, "duplicate": loss / 2, "corrupt": loss / 10}


class TransferError(RuntimeError):
    """The transfer did not finish (stall, livelock, wall-time limit); ``result`` has what was
    measured so far, with the connections' ``info()``."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class _Side:
    """One application: writes ``data``, reads the peer's stream into a sha256, half-closes
    when it has written everything, closes when it has also read EOF."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.view = memoryview(data)
        self.size = len(data)
        self.conn: TcpConnection | None = None
        self.sent = 0
        self.received = 0
        self.hasher = hashlib.sha256()
        self.eof_at: float | None = None
        self.shut = False
        self.closed = False
        self.error: str | None = None
        self.states: list[str] = []

    def pump(self, now: float) -> None:
        conn = self.conn
        if conn is None:
            return
        state = conn.state
        if not self.states or self.states[-1] != state.name:
            self.states.append(state.name)
        if self.closed or self.error is not None:
            return
        try:
            if state in (ESTABLISHED, TcpState.CLOSE_WAIT):
                while self.sent < self.size and conn.send_space:
                    n = conn.send(self.view[self.sent:self.sent + WRITE_CHUNK])
                    if not n:
                        break
                    self.sent += n
                if self.sent == self.size and not self.shut:
                    conn.shutdown(1)
                    self.shut = True
            while self.eof_at is None:
                data = conn.recv(READ_CHUNK)
                if data is None:
                    break
                if not data:
                    self.eof_at = now
                    break
                self.received += len(data)
                self.hasher.update(data)
            if self.shut and self.eof_at is not None:
                conn.close()
                self.closed = True
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        state = conn.state
        if self.states[-1] != state.name:
            self.states.append(state.name)


def _stack(name: str, ip: str, mac: str, rng: random.Random, congestion: str) -> Stack:
    stack = Stack(StackConfig(iface=name, mac=mac_aton(mac), address=ip_aton(ip), mode=OWN), rng=rng)
    stack.tcp.config.congestion = congestion
    return stack


def _conn_stats(stack: Stack, conn: TcpConnection | None) -> dict[str, Any]:
    c = stack.counters.snapshot().get("tcp", {})
    out: dict[str, Any] = {
        "retransmits": conn.retransmits if conn is not None else 0,
        "rto": c.get("rto", 0),
        "fast_retransmit": c.get("fast_retransmit", 0),
    }
    if conn is not None:
        out["info"] = conn.info()
    return out


def run_transfer(loss: float, *, seed: int = 1, size: int = 10 << 20, reorder: float = 0.0,
                 duplicate: float = 0.0, corrupt: float = 0.0, latency: float = 0.001,
                 bandwidth: float | None = 100e6, congestion: str = "cubic",
                 queue_bytes: int = 8 << 20, timeout: float = 600.0, wall_limit: float | None = None,
                 drain: float | None = None, network: Callable[..., MemoryNetwork] = MemoryNetwork) -> dict[str, Any]:
    """Send ``size`` bytes A->B and B->A at once over a faulty simulated link; see the module
    docstring. ``latency`` is one way, in seconds; ``bandwidth`` in bits/s per direction
    (``None``: unlimited). ``timeout`` bounds the virtual time, ``wall_limit`` the real time
    (seconds); either raises :class:`TransferError`. ``drain`` is how long (virtual seconds)
    to keep running after both applications closed, to see TIME_WAIT end (default: 2*MSL + 1).
    ``network`` builds the network from :class:`MemoryNetwork`'s arguments (a subclass can drop
    chosen frames, say).

    Returns a dict: ``ok`` (both streams arrived intact and both connections ended cleanly),
    ``virtual_time`` (connect to both sides done), ``goodput_ab``/``goodput_ba`` (bytes per
    virtual second), ``retransmits``, ``rto``, ``fast_retransmit`` (both sides), ``wall_time``,
    per-side details under ``a``/``b`` (hash match, states seen, final state, info()), the
    network's fault counters under ``net`` and every layer's counters under ``counters``.
    """
    wall0 = time.perf_counter()
    net = network(seed=seed, latency=latency, bandwidth=bandwidth, loss=loss, duplicate=duplicate,
                  reorder=reorder, corrupt=corrupt, queue_bytes=queue_bytes)
    a = _stack("a0", A_IP, A_MAC, random.Random(seed * 2 + 1), congestion)
    b = _stack("b0", B_IP, B_MAC, random.Random(seed * 2 + 2), congestion)
    net.attach(a, name="A")
    net.attach(b, name="B")
    data_ab = random.Random(seed * 1000 + 1).randbytes(size)
    data_ba = random.Random(seed * 1000 + 2).randbytes(size)
    side_a = _Side("A", data_ab)
    side_b = _Side("B", data_ba)

    listener = b.tcp.open()
    b.tcp.bind(listener, b"\0\0\0\0", PORT)
    b.tcp.listen(listener, 8)
    client = a.tcp.open()
    side_a.conn = client
    start = net.now
    a.tcp.connect(client, ip_aton(B_IP), PORT)

    events = [0]
    check_every = 4096

    def progress() -> bool:
        now = net.now
        if side_b.conn is None and listener.state == TcpState.LISTEN:
            child = b.tcp.accept(listener)
            if child is not None:
                side_b.conn = child
                b.tcp.close(listener)  # one connection is all this server takes
        side_a.pump(now)
        side_b.pump(now)
        events[0] += 1
        if wall_limit is not None and events[0] % check_every == 0 and time.perf_counter() - wall0 > wall_limit:
            raise _WallLimit
        if side_a.error or side_b.error:
            return True
        return side_a.closed and side_b.closed and _settled(side_a) and _settled(side_b)

    error: str | None = None
    try:
        finished = net.run_until(progress, timeout)
    except _WallLimit:
        finished = False
        error = f"wall-time limit of {wall_limit} s hit at virtual t={net.now:.3f}"
    except RuntimeError as exc:  # the network's livelock detector
        finished = False
        error = str(exc)
    if not finished and error is None:
        error = f"stalled: not done after {timeout} s of virtual time"
    elif side_a.error or side_b.error:
        error = f"application error: A: {side_a.error}, B: {side_b.error}"
    done_at = net.now
    states_at_done = (side_a.conn.state.name if side_a.conn else None,
                      side_b.conn.state.name if side_b.conn else None)
    rst_at_done = sum(st.counters.get("tcp", "tx.rst") + st.counters.get("tcp", "rx.rst") for st in (a, b))
    if error is None:  # let TIME_WAIT run out: everything must then be gone
        net.run_for(drain if drain is not None else a.tcp.config.time_wait + 1.0)
    wall = time.perf_counter() - wall0

    def side_report(side: _Side, stack: Stack, sent: bytes) -> dict[str, Any]:
        rep = _conn_stats(stack, side.conn)
        rep.update({
            "sent": side.sent,
            "received": side.received,
            "hash_ok": side.received == size and side.hasher.digest() == hashlib.sha256(sent).digest(),
            "eof_at": side.eof_at,
            "states": side.states,
            "state_when_done": states_at_done[0 if side is side_a else 1],
            "final_state": side.conn.state.name if side.conn else None,
            "error": side.error or (side.conn.error if side.conn else 0) or None,
            "conns_left": len(stack.tcp.conns),
        })
        return rep

    rep_a = side_report(side_a, a, data_ba)  # A receives B's stream
    rep_b = side_report(side_b, b, data_ab)
    goodput_ab = size / (side_b.eof_at - start) if side_b.eof_at else 0.0
    goodput_ba = size / (side_a.eof_at - start) if side_a.eof_at else 0.0
    counters = {"A": a.counters.snapshot(), "B": b.counters.snapshot()}
    clean = error is None and not rst_at_done and _clean_close(rep_a, rep_b)
    result: dict[str, Any] = {
        "ok": bool(error is None and rep_a["hash_ok"] and rep_b["hash_ok"] and clean),
        "error": error,
        "clean_close": clean,
        "rst_before_done": rst_at_done,
        "loss": loss, "reorder": reorder, "duplicate": duplicate, "corrupt": corrupt,
        "latency": latency, "bandwidth": bandwidth, "queue_bytes": queue_bytes,
        "congestion": congestion, "seed": seed, "size": size,
        "virtual_time": done_at - start,
        "goodput_ab": goodput_ab,
        "goodput_ba": goodput_ba,
        "retransmits": rep_a["retransmits"] + rep_b["retransmits"],
        "rto": rep_a["rto"] + rep_b["rto"],
        "fast_retransmit": rep_a["fast_retransmit"] + rep_b["fast_retransmit"],
        "wall_time": wall,
        "events": events[0],
        "a": rep_a,
        "b": rep_b,
        "net": dict(net.counters),
        "counters": counters,
    }
    if error is not None:
        raise TransferError(error, result)
    return result


class _WallLimit(Exception):
    pass


def _settled(side: _Side) -> bool:
    conn = side.conn
    return conn is not None and conn.state in (CLOSED, TIME_WAIT)


def _clean_close(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """When both applications are done: one side in TIME_WAIT and the other CLOSED through
    LAST_ACK, or both in TIME_WAIT (simultaneous close, through CLOSING or straight from
    FIN_WAIT_1); everything CLOSED once TIME_WAIT ran out; no error on either side."""
    done = (a["state_when_done"], b["state_when_done"])
    if done == ("TIME_WAIT", "TIME_WAIT"):
        pass
    elif done == ("TIME_WAIT", "CLOSED"):
        if "LAST_ACK" not in b["states"]:
            return False
    elif done == ("CLOSED", "TIME_WAIT"):
        if "LAST_ACK" not in a["states"]:
            return False
    else:
        return False
    if a["final_state"] != "CLOSED" or b["final_state"] != "CLOSED" or a["conns_left"] or b["conns_left"]:
        return False
    return not (a["error"] or b["error"])


# -- the sweep ------------------------------------------------------------------------------------
def sweep(size: int, *, seed: int = 1, congestion: str = "cubic", rates: tuple[float, ...] = LOSS_RATES,
          **kw: Any) -> list[dict[str, Any]]:
    """:func:`run_transfer` at each loss rate with :func:`fault_mix`; a failed run is kept with
    ``ok`` False and its ``error``."""
    rows = []
    for loss in rates:
        try:
            rows.append(run_transfer(seed=seed, size=size, congestion=congestion, **fault_mix(loss), **kw))
        except TransferError as exc:
            rows.append(exc.result)
    return rows


def _mbit(bps: float) -> str:
    return f"{bps * 8 / 1e6:.1f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`sweep` (or any :func:`run_transfer` results) as a Markdown table."""
    if not rows:
        return ""
    r0 = rows[0]
    bw = f"{r0['bandwidth'] / 1e6:g} Mbit/s" if r0["bandwidth"] else "unlimited"
    lines = [
        f"TCP over the simulated network: {r0['size'] / (1 << 20):g} MiB each way at once, {bw} each "
        f"way, {r0['latency'] * 1e3:g} ms one-way latency, seed {r0['seed']}; reorder and duplicate "
        "at half the loss rate, corruption at a tenth, in both directions.",
        "",
        "| cc | loss | reorder | dup | corrupt | virtual s | A->B Mbit/s | B->A Mbit/s | retransmits | "
        "fast rtx | RTOs | frames lost | ok | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['congestion']} | {r['loss'] * 100:g} % | {r['reorder'] * 100:g} % | {r['duplicate'] * 100:g} % "
            f"| {r['corrupt'] * 100:g} % | {r['virtual_time']:.2f} | {_mbit(r['goodput_ab'])} "
            f"| {_mbit(r['goodput_ba'])} | {r['retransmits']} | {r['fast_retransmit']} | {r['rto']} "
            f"| {r['net'].get('drop.loss', 0) + r['net'].get('drop.queue', 0)} "
            f"| {'yes' if r['ok'] else 'NO: ' + str(r['error'] or 'bad close')} | {r['wall_time']:.1f} |")
    return "\n".join(lines) + "\n"


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return json.loads(json.dumps(rows, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tcp_sim", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=10 << 20, help="bytes each way (default 10 MiB)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--congestion", default="cubic", help="congestion control (cubic, reno)")
    ap.add_argument("--bandwidth", type=float, default=100e6, help="bits/s each way (0: unlimited)")
    ap.add_argument("--latency", type=float, default=0.001, help="one-way latency, seconds")
    ap.add_argument("--queue-bytes", type=int, default=8 << 20, help="bottleneck queue per direction, bytes")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    rows = []
    for loss in LOSS_RATES:
        try:
            row = run_transfer(seed=args.seed, size=args.size, congestion=args.congestion,
                               bandwidth=args.bandwidth or None, latency=args.latency,
                               queue_bytes=args.queue_bytes, **fault_mix(loss))
        except TransferError as exc:
            row = exc.result
        rows.append(row)
        print(f"loss {loss * 100:g} %: {'ok' if row['ok'] else 'FAILED ' + str(row['error'])}, "
              f"{row['wall_time']:.1f} s wall", file=sys.stderr, flush=True)
    print(format_table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(_jsonable(rows), f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
