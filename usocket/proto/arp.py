"""ARP (RFC 826) with a Linux-like neighbour cache, sans-IO.

Neighbour states (Linux's NUD_* names, ``ip neigh`` shows the same words):

- ``INCOMPLETE``: resolving. Outgoing packets wait in a bounded per-address queue (the oldest is
  dropped on overflow, so the latest is always kept); a broadcast request goes out every
  :attr:`~ArpLayer.retrans_time` up to :attr:`~ArpLayer.mcast_probes` times, then the entry
  ``FAILED``: the queued packets are dropped and the IPv4 layer is told through
  ``stack.ipv4.on_neighbor_unreachable(next_hop, payloads)`` (if it has that method).
- ``REACHABLE``: confirmed less than :attr:`~ArpLayer.reachable_time` ago (by a reply to us or by
  :meth:`~ArpLayer.confirm` from an upper layer). Becomes ``STALE`` lazily, without a timer.
- ``STALE``: the MAC is still used. The first use moves it to ``DELAY``; if nothing confirms it
  within :attr:`~ArpLayer.delay_first_probe_time` it goes to ``PROBE``: unicast requests to the
  cached MAC (up to :attr:`~ArpLayer.ucast_probes`), then ``FAILED``.
- ``PERMANENT``: added by :meth:`~ArpLayer.add_static`; never expires, never overridden.
- ``FAILED``: kept only so that retrying a dead address is rate limited per target; the next
  packet restarts resolution.

Learning follows RFC 826's merge rule with Linux's ``arp_accept=0``: a packet updates an existing
entry for its sender; a new entry is created only from a request aimed at our address (as
``STALE``), never from an unsolicited reply or gratuitous ARP. A different MAC does not replace a
valid entry within :attr:`~ArpLayer.locktime` of its last update (so the first of competing
replies wins). ARP that claims our own address from another MAC is a conflict: counted, ignored,
and in own mode our address is defended by one announcement per
:attr:`~ArpLayer.defend_interval` (RFC 5227 §2.4).

Replies to requests for our address (and to RFC 5227 probes for it) are sent in own mode only;
in shared mode the kernel owns the address and answers itself.

Bounds: at most :attr:`~ArpLayer.max_entries` dynamic entries (unused ``STALE``/``FAILED``
entries are evicted first), :attr:`~ArpLayer.pending_max` queued packets per address, requests
limited per target (:attr:`~ArpLayer.request_min_interval`) and globally by a token bucket
(:attr:`~ArpLayer.request_rate`, :attr:`~ArpLayer.request_burst`). A garbage collector runs every
:attr:`~ArpLayer.gc_interval` while dynamic entries exist and removes ``STALE``/``FAILED`` entries
unused for :attr:`~ArpLayer.gc_stale_time`. Every timing and limit is a class attribute.

Counters (layer ``"arp"``): ``rx``, ``rx.request``, ``rx.reply``, ``rx.probe``, ``rx.other``,
``tx.request``, ``tx.probe`` (unicast refresh), ``tx.reply``, ``tx.announce``, ``learned``,
``updated``, ``resolved``, ``resolve_failed``, ``locked``, ``conflict``, ``static_mismatch``,
``evicted``, ``gc``, ``ratelimited.global``, ``ratelimited.target``, and drops: the codec's
reasons, ``drop.bad_sha``, ``drop.own_sha``, ``drop.bad_spa``, ``drop.bad_tpa``,
``drop.unsolicited``, ``drop.pending_overflow``, ``drop.unresolved`` (queued packets of a failed
resolution), ``drop.evicted_pending``, ``drop.cache_full``, ``drop.bad_next_hop``.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from ..core.ratelimit import TokenBucket
from ..core.timers import Timer
from ..wire import MalformedError
from ..wire.addr import ANY_IP, BROADCAST_IP, ZERO_MAC, prefix_mask, same_subnet
from ..wire.arp import OP_REPLY, OP_REQUEST, ArpPacket, build_arp, parse_arp
from ..wire.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ipv4_multicast_mac,
    is_unicast_mac,
)

if TYPE_CHECKING:
    from ..stack import Stack

Payload = bytes | bytearray | memoryview

INCOMPLETE = "INCOMPLETE"
REACHABLE = "REACHABLE"
STALE = "STALE"
DELAY = "DELAY"
PROBE = "PROBE"
FAILED = "FAILED"
PERMANENT = "PERMANENT"
_VALID = frozenset((REACHABLE, STALE, DELAY, PROBE, PERMANENT))  # states with a usable MAC


class NeighborInfo(NamedTuple):
    """A snapshot of one cache entry (see :meth:`ArpLayer.entries`); times are stack times."""

    ip: bytes
    mac: bytes | None
    state: str
    updated: float  # last change of the binding (creation, new MAC, state change by the network)
    confirmed: float  # last reachability confirmation (-inf if never)
    used: float  # last time we sent through it (-inf if never)
    pending: int  # packets waiting for resolution


class _Entry:
    __slots__ = ("ip", "mac", "state", "updated", "confirmed", "used", "probes", "timer",
                 "pending", "pending_bytes", "last_request")

    def __init__(self, ip: bytes, state: str, now: float) -> None:
        self.ip = ip
        self.mac: bytes | None = None
        self.state = state
        self.updated = now
        self.confirmed = float("-inf")
        self.used = float("-inf")
        self.probes = 0
        self.timer: Timer | None = None
        self.pending: deque[tuple[int, bytes]] | None = None
        self.pending_bytes = 0
        self.last_request = float("-inf")

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ArpLayer:
    """Address resolution for IPv4 over Ethernet; see the module docstring for the behaviour."""

    reachable_time: float = 30.0  # Linux base_reachable_time
    delay_first_probe_time: float = 5.0  # STALE entry in use -> unicast probe after this
    retrans_time: float = 1.0  # between requests for one address
    mcast_probes: int = 3  # broadcast requests before giving up on an INCOMPLETE entry
    ucast_probes: int = 3  # unicast requests before giving up on a PROBE entry
    locktime: float = 1.0  # a valid entry keeps its MAC this long after an update
    gc_interval: float = 30.0
    gc_stale_time: float = 60.0  # STALE/FAILED entries unused this long are collected
    max_entries: int = 1024  # dynamic + static entries; only add_static may exceed it
    # Packets queued per unresolved address (at least the latest is kept), bounded like Linux's
    # unres_qlen / unres_qlen_bytes so that a fragmented 64 KB datagram survives resolution, and
    # in total across all addresses so a flood of unresolvable next hops stays bounded.
    pending_max: int = 101
    pending_max_bytes: int = 212992
    pending_total_max_bytes: int = 4 << 20
    request_min_interval: float = 1.0  # per target
    request_rate: float = 50.0  # global token bucket: requests per second ...
    request_burst: float = 100.0  # ... and bucket depth
    defend_interval: float = 10.0  # RFC 5227 DEFEND_INTERVAL

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.c = stack.counters.layer("arp")
        self._cache: dict[bytes, _Entry] = {}
        self._pending_bytes = 0  # bytes queued for resolution, all entries
        self._gc_timer: Timer | None = None
        self._bucket = TokenBucket(self.request_burst, stack.now)
        self._last_defend = float("-inf")
        stack.ethernet.register(ETHERTYPE_ARP, self.receive)

    # ==================================================================== output (IPv4 -> link)
    def output(self, next_hop_ip: bytes, ethertype: int, payload: Payload) -> None:
        """Send ``payload`` to the host ``next_hop_ip`` on our link, resolving its MAC first."""
        e = self._cache.get(next_hop_ip)
        if e is not None:
            now = self.stack.now
            state = e.state
            if (state == REACHABLE and now < e.confirmed + self.reachable_time) or state == PERMANENT:
                e.used = now
                self.stack.ethernet.send(e.mac, ethertype, payload)  # type: ignore[arg-type]
            else:
                self._output_slow(e, ethertype, payload)
            return
        mac = self.special_mac(next_hop_ip)
        if mac is not None:
            self.stack.ethernet.send(mac, ethertype, payload)
            return
        if not self.resolvable(next_hop_ip):
            self.c["drop.bad_next_hop"] += 1
            return
        e = self._create(next_hop_ip, INCOMPLETE)
        if e is None:
            self.c["drop.cache_full"] += 1
            return
        e.used = self.stack.now
        self._enqueue(e, ethertype, payload)
        self._start_resolution(e)

    def _output_slow(self, e: _Entry, ethertype: int, payload: Payload) -> None:
        state = self._age(e)
        e.used = self.stack.now
        self._touch(e)
        if state in _VALID:
            if state == STALE:  # Linux: first use of a STALE entry starts reachability checking
                e.state = DELAY
                e.cancel_timer()
                e.timer = self.stack.call_later(self.delay_first_probe_time, self._delay_expired, e)
            self.stack.ethernet.send(e.mac, ethertype, payload)  # type: ignore[arg-type]
        elif state == INCOMPLETE:
            self._enqueue(e, ethertype, payload)
        else:  # FAILED: try again
            self._enqueue(e, ethertype, payload)
            self._start_resolution(e)

    def special_mac(self, ip: bytes) -> bytes | None:
        """The MAC of a next hop that needs no resolution (broadcast, multicast), else None."""
        if ip == BROADCAST_IP:
            return BROADCAST_MAC
        if ip[0] & 0xF0 == 0xE0:
            return ipv4_multicast_mac(ip)
        cfg = self.stack.config
        if cfg.prefix_len <= 30:  # /31 and /32 have no broadcast address (RFC 3021)
            host = ~prefix_mask(cfg.prefix_len) & 0xFFFFFFFF
            if int.from_bytes(ip, "big") == int.from_bytes(cfg.address, "big") | host:
                return BROADCAST_MAC
        return None

    def resolvable(self, ip: bytes) -> bool:
        """Whether ARP may be asked about ``ip`` (not 0/8, not loopback, not our own address)."""
        return len(ip) == 4 and ip[0] != 0 and ip[0] != 127 and ip != self.stack.config.address

    def _enqueue(self, e: _Entry, ethertype: int, payload: Payload) -> None:
        q = e.pending
        if q is None:
            q = e.pending = deque()
        data = payload if isinstance(payload, bytes) else bytes(payload)  # keeps a GsoPacket whole
        q.append((ethertype, data))
        e.pending_bytes += len(data)
        self._pending_bytes += len(data)
        # Drop the oldest until within bounds; the latest packet is always kept.
        while len(q) > 1 and (len(q) > max(1, self.pending_max) or e.pending_bytes > self.pending_max_bytes
                              or self._pending_bytes > self.pending_total_max_bytes):
            _, old = q.popleft()
            e.pending_bytes -= len(old)
            self._pending_bytes -= len(old)
            self.c["drop.pending_overflow"] += 1
        if self._pending_bytes > self.pending_total_max_bytes:
            # Every address is down to one packet and the total is still over: refuse this one.
            q.pop()
            e.pending_bytes -= len(data)
            self._pending_bytes -= len(data)
            self.c["drop.pending_overflow"] += 1

    def _take_pending(self, e: _Entry) -> deque[tuple[int, bytes]] | tuple[()]:
        """Detach the entry's pending queue (to send or drop it), keeping the byte totals right."""
        pending = e.pending
        e.pending = None
        self._pending_bytes -= e.pending_bytes
        e.pending_bytes = 0
        return pending if pending is not None else ()

    # ==================================================================== resolution
    def resolve(self, ip: bytes) -> None:
        """Start resolving ``ip`` now if it is not known (e.g. the gateway, ahead of traffic)."""
        if self.special_mac(ip) is not None or not self.resolvable(ip):
            return
        e = self._cache.get(ip)
        if e is None:
            e = self._create(ip, INCOMPLETE)
            if e is None:
                self.c["drop.cache_full"] += 1
                return
            self._start_resolution(e)
        elif e.state == FAILED:
            self._start_resolution(e)

    def _start_resolution(self, e: _Entry) -> None:
        e.cancel_timer()
        e.state = INCOMPLETE
        e.mac = None
        e.probes = 0
        earliest = e.last_request + self.request_min_interval
        if self.stack.now < earliest:
            self.c["ratelimited.target"] += 1
            e.timer = self.stack.timers.call_at(earliest, self._probe, e)
        else:
            self._probe(e)

    def _probe(self, e: _Entry) -> None:
        """Send the next request for ``e`` (INCOMPLETE: broadcast; PROBE: unicast) or give up."""
        e.timer = None
        if self._cache.get(e.ip) is not e:
            return
        if e.state == INCOMPLETE:
            limit, dst = self.mcast_probes, BROADCAST_MAC
        elif e.state == PROBE:
            limit, dst = self.ucast_probes, e.mac  # type: ignore[assignment]
        else:
            return
        if e.probes >= limit:
            self._fail(e)
            return
        e.probes += 1
        e.last_request = self.stack.now
        if self.send_request(e.ip, dst):
            self.c["tx.request" if dst == BROADCAST_MAC else "tx.probe"] += 1
        e.timer = self.stack.call_later(self.retrans_time, self._probe, e)

    def _delay_expired(self, e: _Entry) -> None:
        e.timer = None
        if self._cache.get(e.ip) is e and e.state == DELAY:
            e.state = PROBE
            e.probes = 0
            self._probe(e)

    def _fail(self, e: _Entry) -> None:
        pending = self._take_pending(e)
        e.state = FAILED
        e.mac = None
        e.updated = self.stack.now
        self.c["resolve_failed"] += 1
        if pending:
            self.c["drop.unresolved"] += len(pending)
            self.neighbor_unreachable(e.ip, [p for et, p in pending if et == ETHERTYPE_IPV4])

    def neighbor_unreachable(self, ip: bytes, payloads: list[bytes]) -> None:
        """Resolution of ``ip`` failed with IPv4 ``payloads`` queued: tell the IPv4 layer."""
        report = getattr(self.stack.ipv4, "on_neighbor_unreachable", None)
        if payloads and report is not None:
            report(ip, payloads)

    def send_request(self, target_ip: bytes, dst_mac: bytes = BROADCAST_MAC) -> bool:
        """Send one who-has ``target_ip`` unless the global token bucket is empty."""
        if not self._take_token():
            self.c["ratelimited.global"] += 1
            return False
        cfg = self.stack.config
        self.stack.ethernet.send(dst_mac, ETHERTYPE_ARP,
                                 build_arp(OP_REQUEST, cfg.mac, cfg.address, ZERO_MAC, target_ip))
        return True

    def _take_token(self) -> bool:
        return self._bucket.take(self.stack.now, self.request_rate, self.request_burst)

    # ==================================================================== input
    def receive(self, payload: Payload, csum_ok: bool) -> None:
        """One ARP packet from the Ethernet layer: validate, learn, answer."""
        c = self.c
        c["rx"] += 1
        try:
            p = parse_arp(payload)
        except MalformedError as exc:
            c["drop." + exc.reason] += 1
            return
        cfg = self.stack.config
        if not is_unicast_mac(p.sha):
            c["drop.bad_sha"] += 1
            return
        if p.sha == cfg.mac:
            c["drop.own_sha"] += 1
            return
        if p.spa != ANY_IP and not self.valid_sender(p.spa):
            c["drop.bad_spa"] += 1
            return
        if p.tpa[0] & 0xF0 == 0xE0 or p.tpa[0] == 127:  # as Linux's arp_process
            c["drop.bad_tpa"] += 1
            return
        c["rx.request" if p.op == OP_REQUEST else "rx.reply"] += 1
        if p.spa == cfg.address:
            self.on_conflict(p)
            return
        if p.spa == ANY_IP:
            self.on_probe(p)
            return
        for_us = p.tpa == cfg.address
        e = self._cache.get(p.spa)
        if e is not None:
            self._merge(e, p.sha, reachable=for_us and p.op == OP_REPLY)
        elif for_us and p.op == OP_REQUEST:
            self._learn(p.spa, p.sha)
        elif p.op == OP_REPLY or p.spa == p.tpa:
            c["drop.unsolicited"] += 1  # arp_accept=0: replies/gratuitous ARP create nothing
        else:
            c["rx.other"] += 1  # someone else's request about someone else
        if for_us and p.op == OP_REQUEST:
            self.answer(p)

    def valid_sender(self, ip: bytes) -> bool:
        """Whether ``ip`` can be a sender address (not multicast, broadcast, loopback, 0/8)."""
        return not (ip[0] & 0xF0 == 0xE0 or ip[0] == 127 or ip[0] == 0 or ip == BROADCAST_IP
                    or self.special_mac(ip) is not None)

    def answer(self, p: ArpPacket) -> None:
        """Reply to a request for our address (own mode only: otherwise the kernel answers)."""
        if not self.stack.own_mode:
            return
        cfg = self.stack.config
        reply = build_arp(OP_REPLY, cfg.mac, cfg.address, p.sha, p.spa)
        self.stack.ethernet.send(p.sha, ETHERTYPE_ARP, reply)
        self.c["tx.reply"] += 1

    def on_probe(self, p: ArpPacket) -> None:
        """An RFC 5227 probe (sender 0.0.0.0): never learned; one for our address is answered
        (own mode), as Linux does, so the prober sees the address is taken."""
        self.c["rx.probe"] += 1
        if p.op == OP_REQUEST and p.tpa == self.stack.config.address:
            self.answer(p)

    def on_conflict(self, p: ArpPacket) -> None:
        """Another MAC claims our address: count, ignore, and in own mode defend (rate limited)."""
        self.c["conflict"] += 1
        now = self.stack.now
        if self.stack.own_mode and now - self._last_defend >= self.defend_interval:
            self._last_defend = now
            self.announce()

    def announce(self) -> None:
        """Broadcast a gratuitous ARP for our address (own mode), e.g. after it changes."""
        if not self.stack.own_mode:
            return
        cfg = self.stack.config
        self.stack.ethernet.send(BROADCAST_MAC, ETHERTYPE_ARP,
                                 build_arp(OP_REQUEST, cfg.mac, cfg.address, ZERO_MAC, cfg.address))
        self.c["tx.announce"] += 1

    def _learn(self, ip: bytes, mac: bytes) -> None:
        cfg = self.stack.config
        if not same_subnet(ip, cfg.address, cfg.prefix_len):
            self.c["rx.off_subnet"] += 1  # would never be used as a next hop: not cached
            return
        e = self._create(ip, STALE)
        if e is not None:
            e.mac = mac
            self.c["learned"] += 1

    def _merge(self, e: _Entry, mac: bytes, reachable: bool) -> None:
        """RFC 826 merge of (``e.ip``, ``mac``) into an existing entry, Linux-style."""
        if e.state == PERMANENT:
            if mac != e.mac:
                self.c["static_mismatch"] += 1
            return
        now = self.stack.now
        state = self._age(e)
        if e.mac is not None and mac != e.mac and state in _VALID and now - e.updated < self.locktime:
            self.c["locked"] += 1
            return
        if reachable:
            new = REACHABLE
        elif mac == e.mac and state in _VALID:
            return  # same binding, nothing confirmed: keep the state (Linux keeps it too)
        else:
            new = STALE
        self._set(e, new, mac)

    def _set(self, e: _Entry, state: str, mac: bytes) -> None:
        now = self.stack.now
        old = e.state
        if mac != e.mac or state != old:
            e.updated = now
        e.mac = mac
        e.state = state
        if state == REACHABLE:
            e.confirmed = now
        e.cancel_timer()
        if old == INCOMPLETE:
            self.c["resolved"] += 1
            for ethertype, payload in self._take_pending(e):
                self.stack.ethernet.send(mac, ethertype, payload)
        else:
            self.c["updated"] += 1

    # ==================================================================== cache management
    def _age(self, e: _Entry) -> str:
        """``e.state`` after lazy expiry of REACHABLE."""
        if e.state == REACHABLE and self.stack.now >= e.confirmed + self.reachable_time:
            e.state = STALE
        return e.state

    def _touch(self, e: _Entry) -> None:
        """Move ``e`` to the young end of the cache (eviction scans from the old end)."""
        cache = self._cache
        del cache[e.ip]
        cache[e.ip] = e

    def _create(self, ip: bytes, state: str) -> _Entry | None:
        if len(self._cache) >= self.max_entries and not self._evict():
            return None
        e = self._cache[ip] = _Entry(ip, state, self.stack.now)
        if self._gc_timer is None:
            self._gc_timer = self.stack.call_later(self.gc_interval, self.gc)
        return e

    def _evict(self) -> bool:
        """Make room for one entry: the oldest unused STALE/FAILED one, else the oldest dynamic
        resolved one, else the oldest INCOMPLETE one. False if every entry is static."""
        victim = None
        for accept in ((STALE, FAILED), (REACHABLE, STALE, DELAY, PROBE, FAILED), (INCOMPLETE,)):
            victim = next((e for e in self._cache.values() if self._age(e) in accept), None)
            if victim is not None:
                break
        if victim is None:
            return False
        self.c["evicted"] += 1
        self._remove(victim)
        return True

    def _remove(self, e: _Entry) -> None:
        if self._cache.get(e.ip) is e:
            del self._cache[e.ip]
        e.cancel_timer()
        pending = self._take_pending(e)
        if pending:
            self.c["drop.evicted_pending"] += len(pending)

    def gc(self) -> None:
        """Remove STALE/FAILED entries unused for :attr:`gc_stale_time` (runs periodically)."""
        if self._gc_timer is not None:
            self._gc_timer.cancel()
            self._gc_timer = None
        now = self.stack.now
        dynamic = False
        for e in list(self._cache.values()):
            state = self._age(e)
            if state == PERMANENT:
                continue
            if state in (STALE, FAILED) and now - max(e.used, e.updated) >= self.gc_stale_time:
                self._remove(e)
                self.c["gc"] += 1
            else:
                dynamic = True
        if dynamic:
            self._gc_timer = self.stack.call_later(self.gc_interval, self.gc)

    # ==================================================================== public helpers
    def lookup(self, ip: bytes) -> bytes | None:
        """The MAC packets to ``ip`` would go to right now, or None if unresolved (no side effect
        on the state machine)."""
        mac = self.special_mac(ip)
        if mac is not None:
            return mac
        e = self._cache.get(ip)
        return e.mac if e is not None and self._age(e) in _VALID else None

    def confirm(self, ip: bytes) -> None:
        """Upper-layer proof that ``ip`` is reachable (Linux ``neigh_confirm``: e.g. TCP saw new
        data acknowledged): a resolved dynamic entry becomes REACHABLE without any ARP."""
        e = self._cache.get(ip)
        if e is not None and e.mac is not None and self._age(e) in (REACHABLE, STALE, DELAY, PROBE):
            if e.state == REACHABLE:
                e.confirmed = self.stack.now
            else:
                self._set(e, REACHABLE, e.mac)

    def add_static(self, ip: bytes, mac: bytes) -> None:
        """A PERMANENT entry (like ``ip neigh replace IP lladdr MAC nud permanent``); packets
        waiting for ``ip`` are sent at once. Static entries may exceed :attr:`max_entries`."""
        if len(ip) != 4 or not is_unicast_mac(mac):
            raise ValueError("add_static needs a 4-byte IPv4 address and a unicast 6-byte MAC")
        e = self._cache.get(ip)
        if e is None:
            e = self._cache[ip] = _Entry(ip, PERMANENT, self.stack.now)
            e.mac = bytes(mac)
            return
        self._set(e, PERMANENT, bytes(mac))

    def delete(self, ip: bytes) -> bool:
        """Forget ``ip`` (static or not); queued packets are dropped. True if it was known."""
        e = self._cache.get(ip)
        if e is None:
            return False
        self._remove(e)
        return True

    def flush(self, static: bool = False) -> None:
        """Forget every dynamic entry (and static ones too with ``static=True``)."""
        for e in list(self._cache.values()):
            if static or e.state != PERMANENT:
                self._remove(e)

    def entries(self) -> list[NeighborInfo]:
        """A snapshot of the cache, in eviction order (least recently used first)."""
        return [NeighborInfo(e.ip, e.mac, self._age(e), e.updated, e.confirmed, e.used,
                             len(e.pending) if e.pending else 0) for e in list(self._cache.values())]

    def __len__(self) -> int:
        return len(self._cache)
