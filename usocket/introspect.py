"""Introspection: a netstat/ss-like table of a stack's sockets, and its per-layer counters.

:func:`sockets` reads a :class:`~usocket.stack.Stack` and returns one :class:`SocketRow` per TCP
connection or listener and per UDP endpoint. It reads protocol state, so it must run on the
stack thread: ``stack.sockets()`` there, ``runtime.sockets()`` (or ``usocket.netstat()``) from
any other thread, which go through :meth:`usocket.runtime.Runtime.call` so the table is one
consistent snapshot. :func:`format_table` prints rows as ``ss -tuna`` does (``info=True``: with
``ss -tni``'s second line per TCP socket); :func:`format_counters` prints counters.

Units: byte counts and windows in bytes (``cwnd`` and ``ssthresh`` too, where ``ss`` counts
segments), times in seconds (the table shows milliseconds). ``recv_q``/``send_q`` follow ``ss``:
for a connection, bytes received and not yet taken by the application / bytes sent and not yet
acknowledged (plus unsent bytes); for a listener, connections waiting in the accept queue / the
backlog. For a socket of the socket facade these count what the stack holds: bytes already
moved into the socket's ``AF_UNIX`` pair (see :mod:`usocket.facade.bridge`) are not included.

Rows are plain dataclasses; :meth:`SocketRow.to_dict` / :meth:`SocketRow.from_dict` carry them
through JSON (the control endpoint of :mod:`usocket.control`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .proto.tcp.congestion import INFINITE_SSTHRESH
from .proto.tcp.connection import LISTEN, TcpConnection
from .proto.udp import UdpEndpoint
from .wire.addr import ip_ntoa

if TYPE_CHECKING:
    from .stack import Stack


@dataclass
class SocketRow:
    """One socket of the stack. TCP-only fields are None for UDP endpoints (and for
    listeners, which have no peer)."""

    proto: str  # "tcp" or "udp"
    state: str  # a TCP state name (ESTABLISHED, LISTEN...); UDP: "UNCONN" or "ESTAB", as ss says
    local: str  # "ip:port"
    remote: str  # "ip:port", "*:*" when none
    recv_q: int
    send_q: int
    pid: int  # the process the stack runs in
    fd: int | None = None  # the application's descriptor (socket facade), None when unknown/closed
    orphan: bool = False  # closed by the application, the stack finishes it alone
    kind: str = ""  # the class of the connection or endpoint (e.g. FacadeConnection)
    # TCP
    mss: int | None = None
    snd_wnd: int | None = None  # the peer's advertised window (scaled)
    rcv_wnd: int | None = None  # what we advertise
    srtt: float | None = None  # smoothed RTT (None before the first sample)
    rttvar: float | None = None
    rto: float | None = None
    min_rtt: float | None = None
    cwnd: int | None = None  # bytes
    ssthresh: int | None = None  # bytes; None while infinite (before the first loss)
    congestion: str | None = None
    in_flight: int | None = None  # RFC 6675 pipe
    retransmits: int | None = None  # segments retransmitted over the connection's life
    retrans_out: int | None = None  # retransmitted bytes not yet acknowledged
    lost: int | None = None  # bytes marked lost, not yet acknowledged
    sacked: int | None = None
    rtx_retries: int | None = None  # consecutive RTOs (or zero-window probes) now
    segs_in: int | None = None
    segs_out: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    options: list[str] = field(default_factory=list)  # negotiated: ts, sack, wscale:S,R
    timer: str | None = None  # the next armed timer: rtx, persist, tlp, delack, keepalive, timewait, fin2
    timer_in: float | None = None  # seconds until it fires
    backlog: int | None = None  # listener

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SocketRow:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _addr(ip: bytes | None, port: int) -> str:
    if ip is None:
        return "*:*"
    return f"{ip_ntoa(ip) if any(ip) else '0.0.0.0'}:{port if port else '*'}"


_TIMERS = (("rtx_deadline", "rtx"), ("tlp_deadline", "tlp"), ("delack_deadline", "delack"),
           ("ka_deadline", "keepalive"), ("tw_deadline", "timewait"), ("fin2_deadline", "fin2"))


def tcp_row(conn: TcpConnection, now: float, pid: int) -> SocketRow:
    """The row of one TCP connection or listener (stack thread)."""
    st = conn.state
    common = dict(proto="tcp", state=st.name, local=_addr(conn.local_ip, conn.local_port),
                  pid=pid, orphan=bool(conn.orphan), kind=type(conn).__name__)
    if st == LISTEN:
        return SocketRow(remote="*:*", recv_q=len(conn.accept_queue), send_q=conn.backlog,
                         backlog=conn.backlog, **common)  # type: ignore[arg-type]
    cc = conn.cc
    rtt = conn.rtt
    timer = timer_in = None
    best: float | None = None
    for attr, name in _TIMERS:
        d = getattr(conn, attr, None)
        if d is not None and (best is None or d < best):
            best, timer = d, name
    if timer == "rtx" and conn.persist:
        timer = "persist"
    if best is not None:
        timer_in = max(0.0, best - now)
    opts = [o for o, on in (("ts", conn.ts_ok), ("sack", conn.sack_ok)) if on]
    if conn.ws_ok:
        opts.append(f"wscale:{conn.snd_wscale},{conn.rcv_wscale}")
    srtt = getattr(rtt, "srtt", None)
    return SocketRow(
        remote=_addr(conn.remote_ip, conn.remote_port), recv_q=len(conn.rcvbuf), send_q=len(conn.sndbuf),
        mss=conn.mss, snd_wnd=conn.snd_wnd, rcv_wnd=max(0, conn.rcv_adv - conn.rcv_nxt),
        srtt=srtt, rttvar=rtt.rttvar if srtt is not None else None, rto=rtt.rto,
        min_rtt=conn.min_rtt or None,
        cwnd=cc.cwnd if cc is not None else None,
        ssthresh=cc.ssthresh if cc is not None and cc.ssthresh < INFINITE_SSTHRESH else None,
        congestion=conn.congestion, in_flight=conn.in_flight if conn.established else 0,
        retransmits=conn.retransmits, retrans_out=conn.retrans_bytes, lost=conn.lost_bytes,
        sacked=conn.sacked_bytes, rtx_retries=conn.rtx_retries, segs_in=conn.segs_in,
        segs_out=conn.segs_out, bytes_acked=conn.bytes_acked, bytes_received=conn.bytes_received,
        options=opts, timer=timer, timer_in=timer_in, **common)  # type: ignore[arg-type]


def udp_row(ep: UdpEndpoint, pid: int) -> SocketRow:
    """The row of one UDP endpoint (stack thread)."""
    connected = ep.remote_ip is not None
    return SocketRow(proto="udp", state="ESTAB" if connected else "UNCONN",
                     local=_addr(ep.local_ip, ep.local_port),
                     remote=_addr(ep.remote_ip, ep.remote_port) if connected else "*:*",
                     recv_q=ep.queued_bytes, send_q=0, pid=pid, kind=type(ep).__name__)


def sockets(stack: Stack) -> list[SocketRow]:
    """Every TCP connection and listener and every bound UDP endpoint of ``stack``, TCP first,
    each sorted by local then remote address. Stack thread only; ``fd`` is filled in where the
    socket facade can tell (its descriptor's inode, looked up in ``/proc/self/fd``)."""
    pid = os.getpid()
    now = stack.now
    rows: list[tuple[SocketRow, Any]] = []
    tcp = getattr(stack, "tcp", None)
    if tcp is not None:
        for conn in tcp.connections():
            rows.append((tcp_row(conn, now, pid), conn))
    udp = getattr(stack, "udp", None)
    if udp is not None:
        for ep in udp.endpoints():
            rows.append((udp_row(ep, pid), ep))
    _fill_fds(rows)
    rows.sort(key=lambda r: (r[0].proto, _sort_key(r[0].local), _sort_key(r[0].remote)))
    return [r for r, _ in rows]


def _sort_key(addr: str) -> tuple[int, ...]:
    host, _, port = addr.rpartition(":")
    try:
        return (*(int(x) for x in host.split(".")), int(port) if port.isdigit() else 0)
    except ValueError:
        return (0,)


def _fill_fds(rows: list[tuple[SocketRow, Any]]) -> None:
    """Map each facade socket (an object with ``bridge.ino``) to the application's lowest
    descriptor on that inode. One pass over ``/proc/self/fd``, only when such a socket exists."""
    want: dict[int, list[SocketRow]] = {}
    for row, obj in rows:
        bridge = getattr(obj, "bridge", None)
        ino = getattr(bridge, "ino", None)
        if ino is not None and not getattr(bridge, "gone", False):
            want.setdefault(ino, []).append(row)
    if not want:
        return
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in sorted(names, key=lambda n: int(n) if n.isdigit() else -1):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if not link.startswith("socket:["):
            continue
        ino = int(link[8:-1])
        for row in want.pop(ino, ()):
            row.fd = int(name)
        if not want:
            return


# ------------------------------------------------------------------------------------ formatting
def _ms(t: float | None) -> str:
    return "-" if t is None else f"{t * 1000:.3g}"


def tcp_info_line(r: SocketRow) -> str:
    """The ``ss -i`` style detail of a TCP connection: one line of ``key:value`` words."""
    parts: list[str] = []
    if r.congestion:
        parts.append(r.congestion)
    parts += r.options
    if r.rto is not None:
        parts.append(f"rto:{_ms(r.rto)}")
    if r.srtt is not None:
        parts.append(f"rtt:{_ms(r.srtt)}/{_ms(r.rttvar)}")
    if r.min_rtt is not None:
        parts.append(f"minrtt:{_ms(r.min_rtt)}")
    parts.append(f"mss:{r.mss}")
    if r.cwnd is not None:
        parts.append(f"cwnd:{r.cwnd}")
    if r.ssthresh is not None:
        parts.append(f"ssthresh:{r.ssthresh}")
    parts += [f"snd_wnd:{r.snd_wnd}", f"rcv_wnd:{r.rcv_wnd}", f"bytes_acked:{r.bytes_acked}",
              f"bytes_received:{r.bytes_received}", f"segs_out:{r.segs_out}", f"segs_in:{r.segs_in}",
              f"unacked:{r.in_flight}"]
    parts.append(f"retrans:{r.rtx_retries}/{r.retransmits}")
    if r.lost:
        parts.append(f"lost:{r.lost}")
    if r.sacked:
        parts.append(f"sacked:{r.sacked}")
    if r.timer is not None:
        parts.append(f"timer:({r.timer},{_ms(r.timer_in)}ms,{r.rtx_retries})")
    return " ".join(parts)


def format_table(rows: list[SocketRow], info: bool = True) -> str:
    """Rows as ``ss -tuna`` prints them (``info``: a ``ss -i`` detail line under each TCP
    connection). The last column is the owner: ``pid=N,fd=M`` (``orphan`` once closed)."""
    head = ("Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", "Process")
    table: list[tuple[str, ...]] = []
    details: list[str | None] = []
    for r in rows:
        owner = f"pid={r.pid}" + (f",fd={r.fd}" if r.fd is not None else "") + (",orphan" if r.orphan else "")
        table.append((r.proto, r.state, str(r.recv_q), str(r.send_q), r.local, r.remote, owner))
        details.append(tcp_info_line(r) if info and r.proto == "tcp" and r.state != "LISTEN" else None)
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(head)]

    def line(cells: tuple[str, ...]) -> str:
        cols = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in (2, 3) else c.ljust(w) for i, (c, w) in cols).rstrip()

    out = [line(head)]
    for cells, detail in zip(table, details, strict=True):
        out.append(line(cells))
        if detail:
            out.append("\t " + detail)
    return "\n".join(out)


def format_counters(snapshot: dict[str, dict[str, int]], all_keys: bool = False) -> str:
    """Counters as ``layer: key=value ...`` lines (zero values left out unless ``all_keys``)."""
    lines = []
    for name, d in sorted(snapshot.items()):
        items = " ".join(f"{k}={v}" for k, v in sorted(d.items()) if v or all_keys)
        if items:
            lines.append(f"{name:>9}: {items}")
    return "\n".join(lines)


__all__ = ["SocketRow", "sockets", "tcp_row", "udp_row", "format_table", "format_counters", "tcp_info_line"]
