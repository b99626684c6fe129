"""The IPv4 layer: validation, delivery, routing, fragmentation and reassembly (host only).

Receive (:meth:`IPv4Layer.receive`): parse and validate (drops counted as ``drop.<reason>``),
accept only datagrams for us (our address, the limited broadcast, our subnet's broadcast: no
forwarding), drop martians (sources no host may use; loopback and 0.0.0.0/8 destinations, which
never travel on a wire), skip options, reassemble fragments, then hand ``(header, payload,
csum_ok)`` to the handler registered for the protocol. A protocol without a handler gets an ICMP
protocol unreachable (own mode).

Send (:meth:`IPv4Layer.send`): refuse loopback (127.0.0.0/8) and "this network" (0.0.0.0/8)
destinations with ``OSError(ENETUNREACH)`` (RFC 1122 3.2.1.3: they must never leave a host; the
socket facade hands loopback traffic to the kernel), route (on-link, else the gateway, else
``ENETUNREACH``), pick an identification, fragment over the path MTU, and give each packet to
``stack.arp.output``. Datagrams to our own address are looped back to the receive path on a
zero-delay timer.

Policies and limits are class attributes, so a subclass or an instance can change them:

- DF: ``df=True`` forbids fragmentation (too big -> ``OSError(EMSGSIZE)``); ``df=False`` allows
  it; ``df=None`` (default) is Linux's ``IP_PMTUDISC_WANT``: DF set on datagrams that fit the
  path MTU, larger ones fragmented without DF.
- Identification: a counter per destination (kept for ``max_ident_peers`` destinations, oldest
  forgotten), each starting at a random value from ``stack.rng``. Unpredictable to off-path
  hosts, unique per destination for 65536 datagrams (RFC 6864), and no global counter that
  would let a third party count our traffic (idle scans).
- Path MTU: "fragmentation needed" errors about our own flows lower a per-destination MTU
  (:meth:`update_pmtu`, never below ``min_pmtu`` = 552 as Linux, forgotten after
  ``pmtu_expires`` = 600 s); :mod:`usocket.proto.icmp` decides which errors are believed.
- Link-layer broadcast: while a datagram is handled, ``stack.ethernet.rx_link_broadcast`` says
  whether its frame went to a group MAC address (ICMP reads it: no error is ever sent about such
  a frame, RFC 1122 3.2.2). A reassembled datagram counts as received the way its first fragment
  was, as in Linux (the reassembled skb is the first fragment's), and so does the time exceeded
  sent when it expires. ``drop_unicast_in_l2_multicast`` (off by default, like the Linux sysctl
  of that name) drops unicast-IP datagrams that came in such frames (RFC 1122 3.3.6's SHOULD).

Reassembly. Fragments are keyed by (src, dst, proto, ident) and may arrive in any order.
Overlaps follow ``overlap_policy``:

- ``"linux"`` (default): exactly Linux's rules since 2018 (``inet_frag_queue_insert``: RFC 5722
  as amended by erratum 3089, applied to IPv4 too; ``tests/test_ipv4.py`` compares hundreds of
  fragment sequences with what the running kernel delivers). Received data is held as *runs*: a fragment
  starting exactly where the highest run ends extends that run, any other new fragment starts a
  run of its own (adjacent runs are never merged). A fragment lying entirely within one run is a
  duplicate and ignored whatever its bytes (``rx_frag_duplicate``); one touching received data
  in any other way (a partial overlap, or spanning two runs even if they are adjacent) discards
  the whole datagram (``drop.frag_overlap``). As in Linux, a discarded datagram is forgotten:
  later fragments with its key start a new reassembly, which normally times out.
- ``"first"`` / ``"last"``, for testing tools (mimicking other stacks, evasion studies):
  overlaps are merged, the bytes received first (``"first"``) or last (``"last"``) winning.

A fragment contradicting the datagram's known end discards the datagram (as Linux), and so does
one more piece than ``max_fragments`` (256; a cap Linux does not have: 65535 bytes over a 576-byte
MTU are 118 fragments). A datagram not complete ``reasm_timeout`` (30 s) after its first fragment
arrived is dropped, with an ICMP time exceeded (fragment reassembly) if its first fragment was
received (own mode). A fragment reaching beyond 65535 bytes is dropped.

Reassembly memory, Linux's policy (since 4.17, 2018): each held fragment is charged its payload plus
``frag_overhead`` (256 bytes, standing for the skb truesize overhead Linux charges, and for our
own objects); each reassembly ``queue_overhead`` plus the copy of its first fragment's start kept
for the time exceeded. While the total charge is above ``max_reasm_bytes`` (4 MiB, Linux's
``ipfrag_high_thresh``) every fragment is refused (``drop.reasm_mem_full``), so no reassembly
starts or grows until completions or the 30 s timeout free memory; ``max_reassemblies`` (8192)
is a backstop on their number, beyond which new ones are refused too (``drop.reasm_too_many``).
Nothing is ever evicted to make room: a datagram half-way through cannot be destroyed by a flood
of one-fragment datagrams (it used to take 64 of them); stalling reassembly takes one charge of
about 4 MiB (some 8000 tiny fragments) renewed every 30 s, the price Linux puts on it.
"""
from __future__ import annotations

import errno
import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..wire import MalformedError
from ..wire.addr import BROADCAST_IP, prefix_mask
from ..wire.gso import gso_packet
from ..wire.gso import segment as gso_segment
from ..wire.ipv4 import (
    MAX_DATAGRAM,
    MIN_HEADER,
    PROTO_ICMP,
    IPv4Header,
    IPv4Template,
    parse_ipv4,
    parse_ipv4_quoted,
    reassembled_header,
)

if TYPE_CHECKING:
    from ..stack import Stack

ETHERTYPE_IPV4 = 0x0800
Handler = Callable[[IPv4Header, bytes, bool], Any]

OVERLAP_LINUX = "linux"
OVERLAP_FIRST = "first"
OVERLAP_LAST = "last"
OVERLAP_POLICIES = (OVERLAP_LINUX, OVERLAP_FIRST, OVERLAP_LAST)

# What Reassembly.add did with a fragment (Linux's IPFRAG_OK / IPFRAG_DUP / IPFRAG_OVERLAP).
FRAG_OK = 0
FRAG_DUP = 1
FRAG_OVERLAP = 2


def _oserror(code: int, detail: str = "") -> OSError:
    msg = os.strerror(code)
    return OSError(code, f"{msg} ({detail})" if detail else msg)


class Fragment(NamedTuple):
    """One outgoing fragment: payload bytes at ``offset`` (bytes, multiple of 8), ``more``
    = the MF flag."""

    offset: int
    data: bytes
    more: bool


class Reassembly:
    """One datagram being reassembled: disjoint pieces of payload sorted by offset.

    Under the ``"linux"`` policy the pieces are the fragments as received and ``run_starts`` /
    ``run_ends`` delimit the runs they form (see the module docstring); under ``"first"`` /
    ``"last"`` the pieces are what is left of each fragment after merging. :meth:`add` returns
    ``FRAG_OK``, ``FRAG_DUP`` (nothing new: the fragment is ignored) or ``FRAG_OVERLAP`` (the
    caller discards the datagram).
    """

    __slots__ = ("key", "starts", "chunks", "run_starts", "run_ends", "received", "total", "first",
                 "first_packet", "first_link_broadcast", "deadline", "cost")

    def __init__(self, key: tuple[bytes, bytes, int, int]) -> None:
        self.key = key
        self.starts: list[int] = []  # offsets of the pieces, ascending
        self.chunks: list[bytes] = []  # their bytes
        self.run_starts: list[int] = []  # "linux": where each run starts, ascending
        self.run_ends: list[int] = []  # ... and ends
        self.received = 0  # payload bytes held (pieces are disjoint, so coverage)
        self.total: int | None = None  # payload length, known once the last fragment came
        self.first: IPv4Header | None = None  # header of the offset-0 fragment
        self.first_packet = b""  # its start (header + data), quoted by a time exceeded
        self.first_link_broadcast = False  # whether the offset-0 fragment came by link broadcast
        self.deadline = 0.0  # when it is given up (first fragment's arrival + timeout)
        self.cost = 0  # bytes charged against the layer's memory threshold

    def add(self, offset: int, data: bytes, policy: str) -> int:
        """Add a fragment's payload at ``offset`` under overlap ``policy``."""
        if policy == OVERLAP_LINUX:
            return self.add_linux(offset, data)
        if policy == OVERLAP_FIRST or policy == OVERLAP_LAST:
            return self.add_merge(offset, data, last_wins=policy == OVERLAP_LAST)
        raise ValueError(f"unknown overlap policy {policy!r}, not one of {OVERLAP_POLICIES}")

    def add_linux(self, offset: int, data: bytes) -> int:
        """Linux ``inet_frag_queue_insert``: runs, duplicates ignored, any other overlap fatal."""
        rs, re_ = self.run_starts, self.run_ends
        end = offset + len(data)
        if not rs:
            rs.append(offset)
            re_.append(end)
        elif end > re_[-1]:  # the common case: beyond everything held
            if offset < re_[-1]:
                return FRAG_OVERLAP
            if offset == re_[-1]:
                re_[-1] = end  # extends the last run
            else:
                rs.append(offset)
                re_.append(end)
        else:
            i = bisect_right(rs, offset) - 1  # the run starting at or before offset
            if i >= 0 and offset < re_[i]:  # starts inside run i
                return FRAG_DUP if end <= re_[i] else FRAG_OVERLAP
            i += 1
            if i < len(rs) and rs[i] < end:  # reaches into the next run
                return FRAG_OVERLAP
            rs.insert(i, offset)  # a run of its own, even if adjacent to others
            re_.insert(i, end)
        j = bisect_right(self.starts, offset)
        self.starts.insert(j, offset)
        self.chunks.insert(j, data)
        self.received += len(data)
        return FRAG_OK

    def add_merge(self, offset: int, data: bytes, last_wins: bool) -> int:
        """Merge overlaps: held bytes win (``last_wins=False``) or the new ones do."""
        starts, chunks = self.starts, self.chunks
        end = offset + len(data)
        lo = bisect_right(starts, offset) - 1
        if lo < 0 or starts[lo] + len(chunks[lo]) <= offset:
            lo += 1
        hi = bisect_left(starts, end)
        new: list[tuple[int, bytes]] = []
        replace = last_wins and any(
            chunks[j][max(starts[j], offset) - starts[j]:min(starts[j] + len(chunks[j]), end) - starts[j]]
            != data[max(starts[j], offset) - offset:min(starts[j] + len(chunks[j]), end) - offset]
            for j in range(lo, hi))
        if replace:
            # The new bytes replace whatever they overlap; keep the remnants either side.
            if starts[lo] < offset:
                new.append((starts[lo], chunks[lo][:offset - starts[lo]]))
            new.append((offset, data))
            tail_s, tail_c = starts[hi - 1], chunks[hi - 1]
            if tail_s + len(tail_c) > end:
                new.append((end, tail_c[end - tail_s:]))
        else:
            # Keep what we have and fill the gaps with the new bytes.
            pos = offset
            for j in range(lo, hi):
                s = starts[j]
                if s > pos:
                    new.append((pos, data[pos - offset:s - offset]))
                new.append((s, chunks[j]))
                pos = max(pos, s + len(chunks[j]))
            if pos < end:
                new.append((pos, data[pos - offset:]))
        added = sum(len(c) for _, c in new) - sum(len(c) for c in chunks[lo:hi])
        if not added and not replace:
            return FRAG_DUP
        self.received += added
        starts[lo:hi] = [s for s, _ in new]
        chunks[lo:hi] = [c for _, c in new]
        return FRAG_OK

    @property
    def end(self) -> int:
        """End offset of the highest piece held."""
        return self.starts[-1] + len(self.chunks[-1]) if self.starts else 0

    @property
    def complete(self) -> bool:
        return self.total is not None and self.first is not None and self.received == self.total

    def assemble(self) -> bytes:
        return b"".join(self.chunks)


class IPv4Layer:
    """IPv4 for a host. Counters: layer ``"ipv4"``."""

    name = "ipv4"
    overlap_policy = OVERLAP_LINUX
    reasm_timeout = 30.0
    max_reasm_bytes = 4 * 1024 * 1024  # Linux ipfrag_high_thresh
    frag_overhead = 256  # bytes charged per held fragment on top of its payload
    queue_overhead = 256  # bytes charged per reassembly
    max_reassemblies = 8192  # backstop on their number
    max_fragments = 256  # pieces per datagram: 65535 bytes over a 576-byte MTU is 118
    drop_unicast_in_l2_multicast = False  # Linux sysctl net.ipv4.conf.*.drop_unicast_in_l2_multicast
    max_ident_peers = 1024
    min_pmtu = 552
    pmtu_expires = 600.0
    max_pmtu_entries = 1024
    max_templates = 256

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.c = stack.counters.layer(self.name)
        self.protocols: dict[int, Handler] = {}
        self._reasm: dict[tuple[bytes, bytes, int, int], Reassembly] = {}  # creation order
        self._reasm_bytes = 0
        self._reasm_timer: Any = None
        self._idents: dict[bytes, int] = {}
        self._pmtu: dict[bytes, tuple[int, float]] = {}
        self._templates: dict[tuple[bytes, bytes, int, int, int], IPv4Template] = {}
        self._net_key: tuple[bytes, int] | None = None
        self._subnet_bcast = b""
        # route(): next hop by destination, valid for the (address, prefix, gateway) it was
        # computed under (the configuration may change at run time: checked per call)
        self._routes: dict[bytes, bytes] = {}
        self._routes_for: tuple[bytes, int, bytes | None] | None = None
        stack.ethernet.register(ETHERTYPE_IPV4, self.receive)

    # -- registration --------------------------------------------------------------------------
    def register(self, proto: int, handler: Handler) -> None:
        """Deliver datagrams of protocol ``proto`` to ``handler(ip_header, payload, csum_ok)``."""
        self.protocols[proto] = handler

    def unregister(self, proto: int) -> None:
        self.protocols.pop(proto, None)

    # -- address classification ----------------------------------------------------------------
    def _net(self) -> bytes:
        """Our subnet's directed broadcast (b"" for /31 and /32), cached per configuration."""
        cfg = self.stack.config
        key = (cfg.address, cfg.prefix_len)
        if key != self._net_key:
            self._net_key = key
            if cfg.prefix_len >= 31:
                self._subnet_bcast = b""
            else:
                host = ~prefix_mask(cfg.prefix_len) & 0xFFFFFFFF
                self._subnet_bcast = (int.from_bytes(cfg.address, "big") | host).to_bytes(4, "big")
        return self._subnet_bcast

    def is_local(self, addr: bytes) -> bool:
        """Our own address."""
        return addr == self.stack.config.address

    def is_broadcast(self, addr: bytes) -> bool:
        """The limited broadcast or our subnet's directed broadcast."""
        return addr == BROADCAST_IP or addr == self._net()

    @staticmethod
    def is_multicast(addr: bytes) -> bool:
        return addr[0] & 0xF0 == 0xE0

    @staticmethod
    def is_martian_destination(addr: bytes) -> bool:
        """Loopback (127.0.0.0/8) or "this network" (0.0.0.0/8): never on a wire (RFC 1122
        3.2.1.3), neither sent nor accepted."""
        return addr[0] == 127 or addr[0] == 0

    def is_martian_source(self, src: bytes, dst: bytes = b"") -> bool:
        """A source no host may use (RFC 1122 3.2.1.3, Linux ``martian_source``): this network
        (0/8, except 0.0.0.0 to the limited broadcast, as DHCP clients send), loopback, multicast,
        class E and broadcast addresses, and our own address arriving from outside."""
        first = src[0]
        if first == 0:
            return not (src == b"\0\0\0\0" and dst == BROADCAST_IP)
        return (first == 127 or first >= 224 or src == self._net()
                or src == self.stack.config.address)

    def accept_destination(self, dst: bytes) -> bool:
        """Whether a datagram to ``dst`` is ours to receive (no forwarding, no multicast groups)."""
        return dst == self.stack.config.address or self.is_broadcast(dst)

    # -- receive -------------------------------------------------------------------------------
    def receive(self, packet: bytes | memoryview, csum_ok: bool) -> None:
        """A datagram from the link (or NFQUEUE). Never raises on bad input."""
        self._input(packet, csum_ok, looped=False)

    def _loopback(self, packet: bytes) -> None:
        self.c["rx_loopback"] += 1
        self._input(packet, True, looped=True)

    def _input(self, packet: bytes | memoryview, csum_ok: bool, looped: bool) -> None:
        c = self.c
        c["rx"] += 1
        try:
            hdr, payload = parse_ipv4(packet)
        except MalformedError as e:
            c["drop." + e.reason] += 1
            return
        if hdr.dst != self.stack.config.address and not self.accept_destination(hdr.dst):
            c["drop.martian_destination" if self.is_martian_destination(hdr.dst) else "drop.not_for_us"] += 1
            return
        if not looped and self.is_martian_source(hdr.src, hdr.dst):
            c["drop.martian_source"] += 1
            return
        if (self.drop_unicast_in_l2_multicast and self.link_broadcast()
                and hdr.dst == self.stack.config.address):
            c["drop.unicast_in_l2_multicast"] += 1
            return
        if hdr.mf or hdr.frag_offset:
            done = self.reassemble(hdr, payload)
            if done is None:
                return
            hdr, data, first_link_broadcast = done
            # A reassembled transport checksum was never checked by anyone: csum_ok=False.
            if first_link_broadcast != self.link_broadcast():
                self.as_received(first_link_broadcast, self.deliver, hdr, data, False)
            else:
                self.deliver(hdr, data, False)
            return
        self.deliver(hdr, payload if type(payload) is bytes else bytes(payload), csum_ok)

    def deliver(self, hdr: IPv4Header, payload: bytes, csum_ok: bool) -> None:
        """Hand a whole datagram to its protocol handler, or answer protocol unreachable."""
        handler = self.protocols.get(hdr.proto)
        if handler is None:
            self.c["drop.no_protocol"] += 1
            if self.stack.own_mode and hdr.dst == self.stack.config.address:
                self.stack.icmp.send_error(3, 2, hdr.raw + payload)
            return
        self.c["delivered"] += 1
        handler(hdr, payload, csum_ok)

    def link_broadcast(self) -> bool:
        """Whether the frame being handled went to a link-layer broadcast/multicast address."""
        return bool(getattr(self.stack.ethernet, "rx_link_broadcast", False))

    def as_received(self, link_broadcast: bool, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` as if handling a frame that was (or was not) a link broadcast: for a
        reassembled datagram (its first fragment's frame) and its time exceeded (from a timer)."""
        eth = self.stack.ethernet
        saved = getattr(eth, "rx_link_broadcast", False)
        eth.rx_link_broadcast = link_broadcast
        try:
            fn(*args)
        finally:
            eth.rx_link_broadcast = saved

    # -- reassembly ----------------------------------------------------------------------------
    def reassemble(self, hdr: IPv4Header, payload: bytes | bytearray | memoryview
                   ) -> tuple[IPv4Header, bytes, bool] | None:
        """Add one fragment. When it completes its datagram, return ``(header, payload,
        first_link_broadcast)``: the whole datagram, and whether its first fragment came in a
        link-layer broadcast frame (the datagram is then handled as such, as in Linux)."""
        c = self.c
        c["fragments_rx"] += 1
        offset, n = hdr.frag_offset, len(payload)
        end = offset + n
        if n == 0:
            c["drop.frag_empty"] += 1
            return None
        if hdr.mf and n & 7:
            c["drop.frag_misaligned"] += 1
            return None
        if end + hdr.header_len > MAX_DATAGRAM:
            c["drop.frag_too_big"] += 1
            return None
        if self._reasm_bytes > self.max_reasm_bytes:  # Linux checks before even looking up
            c["drop.reasm_mem_full"] += 1
            return None
        key = (hdr.src, hdr.dst, hdr.proto, hdr.ident)
        r = self._reasm.get(key)
        if r is None:
            if len(self._reasm) >= self.max_reassemblies:
                c["drop.reasm_too_many"] += 1
                return None
            r = self.new_reassembly(key)
        if not hdr.mf:
            if (r.total is not None and r.total != end) or r.end > end:
                c["drop.frag_inconsistent"] += 1
                self._remove(r)
                return None
            r.total = end
        elif r.total is not None and end > r.total:
            c["drop.frag_inconsistent"] += 1
            self._remove(r)
            return None
        data = bytes(payload)
        result = r.add(offset, data, self.overlap_policy)
        if result == FRAG_OVERLAP:
            c["drop.frag_overlap"] += 1
            self._remove(r)
            return None
        if result == FRAG_DUP:
            c["rx_frag_duplicate"] += 1  # never a new reassembly's first fragment: nothing to free
            return None
        if len(r.chunks) > self.max_fragments:
            c["drop.frag_too_many"] += 1
            self._remove(r)
            return None
        if offset == 0 and (r.first is None or self.overlap_policy == OVERLAP_LAST):
            r.first = hdr
            r.first_packet = hdr.raw + data[:576]
            r.first_link_broadcast = self.link_broadcast()
        self._charge(r)
        if not r.complete:
            return None
        data, first = r.assemble(), r.first
        self._remove(r)
        assert first is not None
        try:
            full = reassembled_header(first, len(data))
        except ValueError:
            c["drop.frag_too_big"] += 1
            return None
        c["reassembled"] += 1
        return full, data, r.first_link_broadcast

    def new_reassembly(self, key: tuple[bytes, bytes, int, int]) -> Reassembly:
        r = Reassembly(key)
        r.deadline = self.stack.now + self.reasm_timeout
        self._reasm[key] = r
        if self._reasm_timer is None:
            self._reasm_timer = self.stack.timers.call_at(r.deadline, self._expire_due)
        return r

    def reasm_cost(self, r: Reassembly) -> int:
        """What ``r`` is charged against ``max_reasm_bytes`` (see the module docstring)."""
        return self.queue_overhead + len(r.first_packet) + r.received + len(r.chunks) * self.frag_overhead

    def _charge(self, r: Reassembly) -> None:
        cost = self.reasm_cost(r)
        self._reasm_bytes += cost - r.cost
        r.cost = cost

    def _remove(self, r: Reassembly) -> None:
        """Forget a reassembly (completed, discarded or expired) and free its charge."""
        if self._reasm.get(r.key) is r:
            del self._reasm[r.key]
        self._reasm_bytes -= r.cost
        r.cost = 0
        r.starts, r.chunks, r.run_starts, r.run_ends = [], [], [], []

    def _expire_due(self) -> None:
        """The one reassembly timer: expire every datagram past its deadline, then re-arm for
        the oldest left. Reassemblies are kept in creation order with equal timeouts, so one
        timer serves them all and a flood of fragments cannot pile up cancelled timers."""
        self._reasm_timer = None
        now = self.stack.now
        while self._reasm:
            r = next(iter(self._reasm.values()))
            if r.deadline > now:
                self._reasm_timer = self.stack.timers.call_at(r.deadline, self._expire_due)
                return
            self._expire(r)

    def _expire(self, r: Reassembly) -> None:
        self._remove(r)
        self.c["reasm_timeout"] += 1
        if r.first is not None and self.stack.own_mode:
            self.as_received(r.first_link_broadcast, self.stack.icmp.send_error, 11, 1, r.first_packet)

    @property
    def reassemblies(self) -> int:
        """Datagrams currently being reassembled."""
        return len(self._reasm)

    @property
    def reassembly_bytes(self) -> int:
        """Bytes charged against ``max_reasm_bytes``."""
        return self._reasm_bytes

    # -- routing, identification, path MTU -----------------------------------------------------
    def route(self, dst: bytes) -> bytes:
        """The next hop for ``dst``: itself when on-link (our subnet, broadcast, multicast),
        else the gateway; ``OSError(ENETUNREACH)`` without one."""
        cfg = self.stack.config
        routes = self._routes
        hop = routes.get(dst)
        if hop is not None:
            key = self._routes_for
            if key is not None and key[0] is cfg.address and key[1] == cfg.prefix_len and key[2] is cfg.gateway:
                return hop
            routes.clear()
            self._routes_for = None
        m = prefix_mask(cfg.prefix_len)
        if (dst == BROADCAST_IP or self.is_multicast(dst)
                or (int.from_bytes(dst, "big") & m) == (int.from_bytes(cfg.address, "big") & m)):
            hop = dst
        elif cfg.gateway:
            hop = cfg.gateway
        else:
            raise _oserror(errno.ENETUNREACH)
        key = (cfg.address, cfg.prefix_len, cfg.gateway)
        if key != self._routes_for or len(routes) >= self.max_ident_peers:
            routes.clear()
            self._routes_for = key
        routes[dst] = hop
        return hop

    def next_ident(self, dst: bytes) -> int:
        """The identification for the next datagram to ``dst`` (see the module docstring)."""
        idents = self._idents
        value = idents.pop(dst, None)
        if value is None:
            if len(idents) >= self.max_ident_peers:
                del idents[next(iter(idents))]
            value = self.stack.rng.getrandbits(16)
        idents[dst] = (value + 1) & 0xFFFF  # re-inserted: most recently used last
        return value

    def path_mtu(self, dst: bytes) -> int:
        """The MTU towards ``dst``: the link's, or lower if an ICMP said so recently."""
        mtu = self.stack.config.mtu
        entry = self._pmtu.get(dst)
        if entry is not None:
            if entry[1] <= self.stack.now:
                del self._pmtu[dst]
            else:
                mtu = min(mtu, entry[0])
        return mtu

    def update_pmtu(self, dst: bytes, mtu: int) -> int:
        """Lower the path MTU to ``dst`` (clamped to ``min_pmtu``); return the one in effect."""
        mtu = max(mtu, self.min_pmtu)
        if mtu < self.path_mtu(dst):
            if dst not in self._pmtu and len(self._pmtu) >= self.max_pmtu_entries:
                del self._pmtu[next(iter(self._pmtu))]
            self._pmtu[dst] = (mtu, self.stack.now + self.pmtu_expires)
            self.c["pmtu_updated"] += 1
        return self.path_mtu(dst)

    def template(self, src: bytes, dst: bytes, proto: int, ttl: int, tos: int) -> IPv4Template:
        key = (src, dst, proto, ttl, tos)
        t = self._templates.get(key)
        if t is None:
            if len(self._templates) >= self.max_templates:
                self._templates.clear()
            t = self._templates[key] = IPv4Template(src, dst, proto, ttl, tos)
        return t

    # -- send ----------------------------------------------------------------------------------
    def send(self, dst: bytes, proto: int, payload: bytes | bytearray | memoryview, *,
             src: bytes | None = None, ttl: int | None = None, tos: int | None = None,
             df: bool | None = None, ident: int | None = None, frag_size: int | None = None,
             gso_size: int = 0) -> None:
        """Send one datagram of ``proto`` carrying ``payload`` to ``dst``.

        Raises ``OSError(ENETUNREACH)`` (no route, or a loopback / 0.0.0.0/8 destination, which
        must never leave the host), ``OSError(EMSGSIZE)`` (over 65535 bytes, or over the path MTU
        with ``df=True``). ``frag_size`` forces fragments carrying that many payload bytes (a
        multiple of 8; a tool's knob), whatever the size of the datagram.

        ``gso_size`` > 0: ``payload`` is a TCP super-segment with a partial checksum (see
        :mod:`usocket.wire.gso`), to be cut into segments of ``gso_size`` data bytes. It is not
        held to the path MTU (the pieces are) and goes to the link whole, DF set, as a
        :class:`~usocket.wire.gso.GsoPacket`; to this host's own addresses it is cut here.
        """
        if len(dst) != 4:
            raise ValueError("IPv4 addresses are 4 bytes")
        first = dst[0]
        if first == 127 or first == 0:  # is_martian_destination, inline (the hot path)
            self.c["drop.tx_martian_destination"] += 1
            raise _oserror(errno.ENETUNREACH, "loopback and 0.0.0.0/8 never leave the host")
        cfg = self.stack.config
        next_hop = self.route(dst)
        if gso_size:
            self._send_gso(next_hop, dst, proto, payload, src, ttl, tos, gso_size)
            return
        plen = len(payload)
        if plen + MIN_HEADER > MAX_DATAGRAM:
            raise _oserror(errno.EMSGSIZE, f"{plen} bytes")
        local = dst == cfg.address  # is_local
        mtu = MAX_DATAGRAM if local else self.path_mtu(dst) if self._pmtu else cfg.mtu
        if frag_size is not None:
            if frag_size <= 0 or frag_size & 7 or (not local and frag_size + MIN_HEADER > cfg.mtu):
                raise ValueError(f"frag_size {frag_size}: a positive multiple of 8 within the MTU")
        elif plen + MIN_HEADER > mtu and df:
            raise _oserror(errno.EMSGSIZE, f"{plen + MIN_HEADER} bytes over a {mtu}-byte path MTU")
        t = self.template(cfg.address if src is None else src, dst, proto,
                          cfg.default_ttl if ttl is None else ttl, 0 if tos is None else tos)
        if ident is None:
            ident = self.next_ident(dst)
        if frag_size is None and plen + MIN_HEADER <= mtu:
            packets = [t.build(payload, ident, df=df is not False)]
        else:
            size = frag_size if frag_size is not None else (mtu - MIN_HEADER) & ~7
            packets = [t.build(f.data, ident, df=bool(df), mf=f.more, frag_offset=f.offset)
                       for f in self.fragment(bytes(payload), size, dst=dst, proto=proto)]
            self.c["fragments_tx"] += len(packets)
        self.c["tx"] += 1
        if local:
            for p in packets:
                self.stack.call_later(0, self._loopback, p)
            return
        output = self.stack.arp.output
        for p in packets:
            output(next_hop, ETHERTYPE_IPV4, p)

    def _send_gso(self, next_hop: bytes, dst: bytes, proto: int, payload: bytes | bytearray | memoryview,
                  src: bytes | None, ttl: int | None, tos: int | None, gso_size: int) -> None:
        cfg = self.stack.config
        t = self.template(cfg.address if src is None else src, dst, proto,
                          cfg.default_ttl if ttl is None else ttl, 0 if tos is None else tos)
        packet = t.build(payload, self.next_ident(dst), df=True)
        if self.is_local(dst):
            for piece in gso_segment(gso_packet(packet, gso_size), l2_len=0):
                self.send(dst, proto, piece[20:], src=src, ttl=ttl, tos=tos, df=True)
            return
        self.c["tx"] += 1
        self.c["tx_gso"] += 1
        self.stack.arp.output(next_hop, ETHERTYPE_IPV4, gso_packet(packet, gso_size))

    def fragment(self, payload: bytes, size: int, *, dst: bytes, proto: int) -> list[Fragment]:
        """Split ``payload`` into fragments of ``size`` bytes (a multiple of 8), in order.

        Override to reorder, duplicate or overlap fragments (evasion and reassembly testing);
        every returned fragment is sent as is, with the datagram's identification.
        """
        n = len(payload)
        return [Fragment(off, payload[off:off + size], off + size < n) for off in range(0, n, size)]

    # -- called by ARP -------------------------------------------------------------------------
    def on_neighbor_unreachable(self, next_hop: bytes, payloads: list[bytes]) -> None:
        """ARP gave up on ``next_hop``: report host unreachable (type 3 code 1, EHOSTUNREACH)
        for each queued datagram to its transport, the way a received ICMP error is reported.
        Non-initial fragments carry no transport header and are skipped."""
        icmp = self.stack.icmp
        for packet in payloads:
            self.c["neighbor_unreachable"] += 1
            try:
                hdr, l4 = parse_ipv4_quoted(packet, l4_min=0)
            except MalformedError:
                continue
            if hdr.frag_offset:
                continue
            error = icmp.make_error(3, 1, origin=self.stack.config.address)
            if error is not None:
                icmp.deliver_error(error, hdr, l4)

    def __repr__(self) -> str:
        return f"<IPv4Layer reassemblies={len(self._reasm)} bytes={self._reasm_bytes}>"


__all__ = ["IPv4Layer", "Fragment", "Reassembly", "OVERLAP_POLICIES", "PROTO_ICMP", "ETHERTYPE_IPV4"]
