"""The IPv4 layer: validation, delivery, routing, fragmentation and reassembly (host only).

Receive (:meth:`IPv4Layer.receive`): parse and validate (drops counted as ``drop.<reason>``),
accept only datagrams for us (our address, the limited broadcast, our subnet's broadcast: no
forwarding), drop martian sources, skip options, reassemble fragments, then hand
``(header, payload, csum_ok)`` to the handler registered for the protocol. A protocol without a
handler gets an ICMP protocol unreachable (own mode).

Send (:meth:`IPv4Layer.send`): route (on-link, else the gateway, else ``ENETUNREACH``), pick an
identification, fragment over the path MTU, and give each packet to ``stack.arp.output``.
Datagrams to our own address are looped back to the receive path on a zero-delay timer.

Policies and limits are class attributes, so a subclass or an instance can change them:

- DF: ``df=True`` forbids fragmentation (too big -> ``OSError(EMSGSIZE)``); ``df=False`` allows
  it; ``df=None`` (default) is Linux's ``IP_PMTUDISC_WANT``: DF set on datagrams that fit the
  path MTU, larger ones fragmented without DF.
- Identification: a counter per destination (kept for ``max_ident_peers`` destinations, oldest
  forgotten), each starting at a random value from ``stack.rng``. Unpredictable to off-path
  hosts, unique per destination for 65536 datagrams (RFC 6864), and no global counter that
  would let a third party count our traffic (idle scans).
- Path MTU: "fragmentation needed" errors lower a per-destination MTU (:meth:`update_pmtu`,
  never below ``min_pmtu`` = 552 as Linux, forgotten after ``pmtu_expires`` = 600 s).
- Reassembly: fragments are keyed by (src, dst, proto, ident) and may arrive in any order;
  exact duplicates are accepted. Overlaps whose bytes differ follow ``overlap_policy``:
  ``"drop"`` (default; RFC 5722's spirit, what Linux does): the whole datagram is discarded,
  and later fragments of it too until its timeout; ``"first"``: bytes received first win;
  ``"last"``: bytes received last win. A datagram not complete ``reasm_timeout`` (30 s) after
  its first fragment arrived is dropped, with ICMP time exceeded (fragment reassembly) if its
  first fragment was received (own mode). Memory is bounded: a fragment reaching beyond 65535
  bytes is dropped; a datagram may hold ``max_fragments`` pieces; at most
  ``max_reassemblies`` datagrams and ``max_reasm_bytes`` bytes (each piece charged
  ``frag_overhead`` extra) are buffered, the oldest reassembly evicted beyond that.
"""
from __future__ import annotations

import errno
import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..wire import MalformedError
from ..wire.addr import BROADCAST_IP, prefix_mask
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

OVERLAP_DROP = "drop"
OVERLAP_FIRST = "first"
OVERLAP_LAST = "last"
OVERLAP_POLICIES = (OVERLAP_DROP, OVERLAP_FIRST, OVERLAP_LAST)


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
    """One datagram being reassembled: non-overlapping pieces sorted by offset.

    ``add`` merges a fragment according to an overlap policy; it returns ``False`` when bytes
    differ in an overlap under the ``"drop"`` policy (the caller then discards the datagram).
    """

    __slots__ = ("key", "starts", "chunks", "received", "total", "first", "first_packet",
                 "deadline", "dead", "cost")

    def __init__(self, key: tuple[bytes, bytes, int, int]) -> None:
        self.key = key
        self.starts: list[int] = []  # offsets of the pieces, ascending
        self.chunks: list[bytes] = []  # their bytes
        self.received = 0  # payload bytes held (no overlaps, so coverage)
        self.total: int | None = None  # payload length, known once the last fragment came
        self.first: IPv4Header | None = None  # header of the offset-0 fragment
        self.first_packet = b""  # its start (header + data), quoted by a time exceeded
        self.deadline = 0.0  # when it is given up (first fragment's arrival + timeout)
        self.dead = False  # discarded after a conflicting overlap: later fragments dropped
        self.cost = 0  # bytes charged against the layer's memory cap

    def add(self, offset: int, data: bytes, policy: str) -> bool:
        starts, chunks = self.starts, self.chunks
        end = offset + len(data)
        lo = bisect_right(starts, offset) - 1
        if lo < 0 or starts[lo] + len(chunks[lo]) <= offset:
            lo += 1
        hi = bisect_left(starts, end)
        conflict = False
        for j in range(lo, hi):
            s, c = starts[j], chunks[j]
            a, b = max(s, offset), min(s + len(c), end)
            if c[a - s:b - s] != data[a - offset:b - offset]:
                conflict = True
                break
        if conflict and policy == OVERLAP_DROP:
            return False
        new: list[tuple[int, bytes]] = []
        if conflict and policy == OVERLAP_LAST:
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
        removed = chunks[lo:hi]
        self.received += sum(len(c) for _, c in new) - sum(len(c) for c in removed)
        starts[lo:hi] = [s for s, _ in new]
        chunks[lo:hi] = [c for _, c in new]
        return True

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
    overlap_policy = OVERLAP_DROP
    reasm_timeout = 30.0
    max_reassemblies = 64
    max_reasm_bytes = 4 * 1024 * 1024
    max_fragments = 256  # pieces per datagram: 65535 bytes over a 576-byte MTU is 118
    frag_overhead = 64  # bytes charged per held piece (object overhead), so tiny pieces cost
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
        if not self.accept_destination(hdr.dst):
            c["drop.not_for_us"] += 1
            return
        if not looped and self.is_martian_source(hdr.src, hdr.dst):
            c["drop.martian_source"] += 1
            return
        if hdr.mf or hdr.frag_offset:
            done = self.reassemble(hdr, payload)
            if done is None:
                return
            hdr, payload = done
            csum_ok = False  # a reassembled transport checksum was never checked by anyone
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

    # -- reassembly ----------------------------------------------------------------------------
    def reassemble(self, hdr: IPv4Header, payload: bytes | bytearray | memoryview
                   ) -> tuple[IPv4Header, bytes] | None:
        """Add one fragment; return the whole datagram when this one completed it."""
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
        key = (hdr.src, hdr.dst, hdr.proto, hdr.ident)
        r = self._reasm.get(key)
        if r is None:
            while len(self._reasm) >= max(1, self.max_reassemblies):
                self._evict_oldest()
            r = self.new_reassembly(key)
        if r.dead:
            c["drop.frag_discarded_datagram"] += 1
            return None
        if not hdr.mf:
            if (r.total is not None and r.total != end) or r.end > end:
                c["drop.frag_inconsistent"] += 1
                self._kill(r)
                return None
            r.total = end
        elif r.total is not None and end > r.total:
            c["drop.frag_inconsistent"] += 1
            self._kill(r)
            return None
        data = bytes(payload)
        before_pieces, before_bytes = len(r.chunks), r.received
        if not r.add(offset, data, self.overlap_policy):
            c["drop.frag_overlap"] += 1
            self._kill(r)
            return None
        if len(r.chunks) > self.max_fragments:
            c["drop.frag_too_many"] += 1
            self._kill(r)
            return None
        if r.received == before_bytes and len(r.chunks) == before_pieces:
            c["rx_frag_duplicate"] += 1
        if offset == 0 and (r.first is None or self.overlap_policy == OVERLAP_LAST):
            r.first = hdr
            r.first_packet = hdr.raw + data[:576]
        self._charge(r)
        if self._reasm.get(r.key) is not r:  # evicted by the memory cap
            return None
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
        return full, data

    def new_reassembly(self, key: tuple[bytes, bytes, int, int]) -> Reassembly:
        r = Reassembly(key)
        r.deadline = self.stack.now + self.reasm_timeout
        self._reasm[key] = r
        if self._reasm_timer is None:
            self._reasm_timer = self.stack.timers.call_at(r.deadline, self._expire_due)
        return r

    def _charge(self, r: Reassembly) -> None:
        cost = r.received + len(r.chunks) * self.frag_overhead
        self._reasm_bytes += cost - r.cost
        r.cost = cost
        while self._reasm_bytes > self.max_reasm_bytes and self._reasm:
            self._evict_oldest()

    def _release(self, r: Reassembly) -> None:
        self._reasm_bytes -= r.cost
        r.cost = 0
        r.starts, r.chunks = [], []

    def _remove(self, r: Reassembly) -> None:
        if self._reasm.get(r.key) is r:
            del self._reasm[r.key]
        self._release(r)

    def _kill(self, r: Reassembly) -> None:
        """Discard a datagram's bytes but remember it until its timeout, to drop its stragglers."""
        r.dead = True
        self._release(r)

    def _evict_oldest(self) -> None:
        r = next(iter(self._reasm.values()))
        self.c["reasm_evicted"] += 1
        self._remove(r)

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
        if r.dead:
            return
        self.c["reasm_timeout"] += 1
        if r.first is not None and self.stack.own_mode:
            self.stack.icmp.send_error(11, 1, r.first_packet)

    @property
    def reassemblies(self) -> int:
        """Datagrams currently being reassembled (or remembered as discarded)."""
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
        m = prefix_mask(cfg.prefix_len)
        if (dst == BROADCAST_IP or self.is_multicast(dst)
                or (int.from_bytes(dst, "big") & m) == (int.from_bytes(cfg.address, "big") & m)):
            return dst
        if cfg.gateway:
            return cfg.gateway
        raise _oserror(errno.ENETUNREACH)

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
             df: bool | None = None, ident: int | None = None, frag_size: int | None = None) -> None:
        """Send one datagram of ``proto`` carrying ``payload`` to ``dst``.

        Raises ``OSError(ENETUNREACH)`` (no route), ``OSError(EMSGSIZE)`` (over 65535 bytes, or
        over the path MTU with ``df=True``). ``frag_size`` forces fragments carrying that many
        payload bytes (a multiple of 8; a tool's knob), whatever the size of the datagram.
        """
        if len(dst) != 4:
            raise ValueError("IPv4 addresses are 4 bytes")
        cfg = self.stack.config
        next_hop = self.route(dst)
        plen = len(payload)
        if plen + MIN_HEADER > MAX_DATAGRAM:
            raise _oserror(errno.EMSGSIZE, f"{plen} bytes")
        local = self.is_local(dst)
        mtu = MAX_DATAGRAM if local else self.path_mtu(dst)
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
