"""The ICMPv4 layer: echo, errors in (to the transports) and errors out (RFC 792, RFC 1122).

Received messages always have their checksum verified. Then:

- echo request: answered in own mode (in shared mode the host kernel answers for the shared
  address) without DF, as Linux; requests to a broadcast address are ignored
  (``echo_ignore_broadcasts``, as Linux).
- echo reply: handed to the listener registered for its identifier
  (:meth:`IcmpLayer.register_echo_listener`); :meth:`IcmpLayer.send_echo` sends requests.
- destination unreachable, time exceeded, parameter problem: the quoted datagram must be one
  we sent; the error becomes an :class:`IcmpError` (table below) and goes to the error handler
  of the quoted datagram's protocol (:meth:`IcmpLayer.register_error_handler`).
- "fragmentation needed" (RFC 1191) also lowers the path MTU, but only when the quoted datagram
  belongs to a local endpoint (:meth:`IcmpLayer.owns_quoted`: the transport in
  ``stack.transports`` for its protocol says it ``owns`` the flow, or an echo listener has its
  identifier), as Linux, which updates the PMTU through the socket the error is about: otherwise
  anyone who can guess our address could shrink our packets to 552 bytes for ten minutes. The
  next-hop MTU is believed from 68 up (RFC 791's minimum: a smaller one is bogus and the error
  is dropped), then clamped to ``ipv4.min_pmtu`` (552, as Linux); an MTU of 0 from a pre-RFC 1191
  router is guessed from the plateau table.
- source quench (RFC 6633), redirect (we are not a router with a table to fix), timestamps,
  router discovery: ignored and counted.

Errno and hard/soft flag (Linux ``icmp_err_convert``, the same as RFC 1122 4.2.3.9 / RFC 5927
except where noted). ``hard`` errors should abort a connection; soft ones are only remembered
(reported if the connection then times out). What a transport does with them depends on its
state (Linux TCP aborts a connection in SYN-SENT on any error, for instance):

====================================  ===============  =====
type/code                             errno            hard
====================================  ===============  =====
3/0 net unreachable                   ENETUNREACH      no
3/1 host unreachable                  EHOSTUNREACH     no
3/2 protocol unreachable              ENOPROTOOPT      yes
3/3 port unreachable                  ECONNREFUSED     yes
3/4 fragmentation needed (+ ``mtu``)  EMSGSIZE         no (PMTU signal, RFC 1191; RFC 1122 said hard)
3/5 source route failed               EOPNOTSUPP       no
3/6 net unknown                       ENETUNREACH      yes
3/7 host unknown                      EHOSTDOWN        yes
3/8 source host isolated              ENONET           yes
3/9 net administratively prohibited   ENETUNREACH      yes
3/10 host administratively prohibited EHOSTUNREACH     yes
3/11 net unreachable for TOS          ENETUNREACH      no
3/12 host unreachable for TOS         EHOSTUNREACH     no
3/13 communication prohibited         EHOSTUNREACH     yes
3/14 host precedence violation        EHOSTUNREACH     yes
3/15 precedence cutoff                EHOSTUNREACH     yes
11/* time exceeded                    EHOSTUNREACH     no
12/* parameter problem                EPROTO           yes
====================================  ===============  =====

Sending errors (:meth:`IcmpLayer.send_error`, own mode only) follows RFC 1122 3.2.2: never about
an ICMP error (or unknown ICMP type), a datagram sent to a broadcast or multicast address or
received in a link-layer broadcast/multicast frame (``stack.ethernet.rx_link_broadcast``; Linux
answers only ``PACKET_HOST`` frames), a non-initial fragment, or a datagram whose source is not
a unicast host (0/8, 127/8, multicast, class E, broadcast). The error quotes as much of the
datagram as keeps it within 576 bytes and is rate limited like Linux: a global token bucket
(``error_rate``/s, burst ``error_burst``) and one per destination (``error_rate_per_dest``/s,
burst ``error_burst_per_dest``); errors to ourselves are not limited. Suppressed errors are
counted as ``error_suppressed.<reason>``.
"""
from __future__ import annotations

import errno as E
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.ratelimit import TokenBucket
from ..wire import MalformedError
from ..wire.icmp import (
    DEST_UNREACH,
    ECHO_REPLY,
    ECHO_REQUEST,
    ERROR_TYPES,
    FRAG_NEEDED,
    PARAM_PROBLEM,
    REDIRECT,
    SOURCE_QUENCH,
    TIME_EXCEEDED,
    IcmpMessage,
    build_echo,
    build_error,
    build_icmp,
    parse_icmp,
    parse_quote,
)
from ..wire.ipv4 import PROTO_ICMP, IPv4Header, parse_ipv4_quoted

if TYPE_CHECKING:
    from ..stack import Stack


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error (received, or generated locally e.g. for an unresolvable next hop),
    as handed to the transport layer that owns the offending datagram."""

    type: int
    code: int
    errno: int  # the errno a socket reports (RFC 1122 / Linux icmp_err_convert mapping)
    hard: bool  # hard errors abort a connection attempt; soft ones are only remembered
    origin: bytes  # 4-byte address of the host/router that reported it
    mtu: int | None = None  # "fragmentation needed": the path MTU now in effect to the destination


ErrorHandler = Callable[[IcmpError, IPv4Header, bytes], Any]
ReplyHandler = Callable[[IPv4Header, IcmpMessage], Any]

# Destination unreachable code -> (errno, hard): Linux net/ipv4/icmp.c icmp_err_convert.
UNREACH_ERRORS: tuple[tuple[int, bool], ...] = (
    (E.ENETUNREACH, False), (E.EHOSTUNREACH, False), (E.ENOPROTOOPT, True), (E.ECONNREFUSED, True),
    (E.EMSGSIZE, False), (E.EOPNOTSUPP, False), (E.ENETUNREACH, True), (E.EHOSTDOWN, True),
    (E.ENONET, True), (E.ENETUNREACH, True), (E.EHOSTUNREACH, True), (E.ENETUNREACH, False),
    (E.EHOSTUNREACH, False), (E.EHOSTUNREACH, True), (E.EHOSTUNREACH, True), (E.EHOSTUNREACH, True),
)

# RFC 1191 section 7: common MTUs, to guess a path MTU from a "fragmentation needed" without one.
MTU_PLATEAUS = (32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)
MIN_MTU = 68  # RFC 791: every link carries 68-byte datagrams; a smaller next-hop MTU is bogus
NR_ICMP_TYPES = 18  # types above this are unknown to Linux: never answered with an error


class IcmpLayer:
    """ICMPv4 for a host. Counters: layer ``"icmp"``."""

    name = "icmp"
    echo_ignore_broadcasts = True
    error_rate = 1000.0  # Linux icmp_msgs_per_sec
    error_burst = 50  # Linux icmp_msgs_burst
    error_rate_per_dest = 1.0  # Linux icmp_ratelimit (1000 ms)
    error_burst_per_dest = 6  # Linux XRLIM_BURST_FACTOR
    max_rate_peers = 1024
    error_limit = 576  # bytes of an error datagram, IP header included

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.c = stack.counters.layer(self.name)
        self.error_handlers: dict[int, ErrorHandler] = {PROTO_ICMP: self._echo_error}
        self.echo_listeners: dict[int, tuple[ReplyHandler, ErrorHandler | None]] = {}
        self._global_bucket = TokenBucket(self.error_burst, stack.now)
        self._peer_buckets: dict[bytes, TokenBucket] = {}
        stack.ipv4.register(PROTO_ICMP, self.receive)

    # -- registration --------------------------------------------------------------------------
    def register_error_handler(self, proto: int, fn: ErrorHandler) -> None:
        """Errors about datagrams of ``proto`` go to ``fn(error, offending_ip_header,
        offending_l4)``, ``offending_l4`` being the quoted start of the transport header."""
        self.error_handlers[proto] = fn

    def unregister_error_handler(self, proto: int) -> None:
        self.error_handlers.pop(proto, None)

    def register_echo_listener(self, ident: int, on_reply: ReplyHandler,
                               on_error: ErrorHandler | None = None) -> None:
        """Echo replies with identifier ``ident`` go to ``on_reply(ip_header, message)``, and
        errors quoting our echo requests with it to ``on_error(error, ip_header, quoted_icmp)``."""
        self.echo_listeners[ident] = (on_reply, on_error)

    def unregister_echo_listener(self, ident: int) -> None:
        self.echo_listeners.pop(ident, None)

    # -- receive -------------------------------------------------------------------------------
    def receive(self, ip_header: IPv4Header, payload: bytes, csum_ok: bool) -> None:
        """An ICMP message for us. The checksum is always verified (ICMP is never offloaded)."""
        c = self.c
        c["rx"] += 1
        try:
            msg = parse_icmp(payload)
        except MalformedError as e:
            c["drop." + e.reason] += 1
            return
        ipv4 = self.stack.ipv4
        if ipv4.is_broadcast(ip_header.dst) or ipv4.is_multicast(ip_header.dst):
            if msg.type != ECHO_REQUEST or self.echo_ignore_broadcasts:
                c["drop.broadcast"] += 1
                return
        t = msg.type
        if t == ECHO_REQUEST:
            self.handle_echo_request(ip_header, msg)
        elif t == ECHO_REPLY:
            self.handle_echo_reply(ip_header, msg)
        elif t in (DEST_UNREACH, TIME_EXCEEDED, PARAM_PROBLEM):
            self.handle_error(ip_header, msg)
        elif t == SOURCE_QUENCH:
            c["ignored.source_quench"] += 1
        elif t == REDIRECT:
            c["ignored.redirect"] += 1
        else:
            c["ignored.other"] += 1

    def handle_echo_request(self, ip_header: IPv4Header, msg: IcmpMessage) -> None:
        """Answer a ping (own mode), echoing identifier, sequence, data and TOS."""
        if not self.stack.own_mode:
            self.c["ignored.echo_shared_mode"] += 1
            return
        reply = build_icmp(ECHO_REPLY, 0, msg.rest, msg.data)
        try:
            self.stack.ipv4.send(ip_header.src, PROTO_ICMP, reply, tos=ip_header.tos, df=False)
        except OSError:
            self.c["drop.reply_unroutable"] += 1
            return
        self.c["tx_echo_reply"] += 1

    def handle_echo_reply(self, ip_header: IPv4Header, msg: IcmpMessage) -> None:
        listener = self.echo_listeners.get(msg.ident)
        if listener is None:
            self.c["drop.echo_reply_unmatched"] += 1
            return
        self.c["rx_echo_reply"] += 1
        listener[0](ip_header, msg)

    def handle_error(self, ip_header: IPv4Header, msg: IcmpMessage) -> None:
        """Turn a received error into an :class:`IcmpError` for the owning transport."""
        c = self.c
        try:
            quoted, l4 = parse_quote(msg)
        except MalformedError as e:
            c["drop.quote_" + e.reason] += 1
            return
        if quoted.src != self.stack.config.address:
            c["drop.quote_not_ours"] += 1
            return
        if quoted.frag_offset:
            c["drop.quote_fragment"] += 1  # no transport header to find the owner with
            return
        mtu = None
        if msg.type == DEST_UNREACH and msg.code == FRAG_NEEDED:
            mtu = self.frag_needed(quoted, l4, msg.mtu)
            if mtu is None:
                return
        error = self.make_error(msg.type, msg.code, origin=ip_header.src, mtu=mtu)
        if error is None:
            c["drop.bad_code"] += 1
            return
        c["rx_error"] += 1
        self.deliver_error(error, quoted, l4)

    def frag_needed(self, quoted: IPv4Header, l4: bytes, reported: int) -> int | None:
        """Apply a "fragmentation needed" about ``quoted`` reporting next-hop MTU ``reported``:
        lower the path MTU if the flow is ours (RFC 1191 rules, see the module docstring).
        Return the path MTU now in effect, or ``None`` when the message is bogus (dropped)."""
        ipv4 = self.stack.ipv4
        if reported == 0:
            reported = self.plateau_below(quoted.total_length)
        elif reported < MIN_MTU:
            self.c["drop.frag_needed_bad_mtu"] += 1
            return None
        if not self.owns_quoted(quoted, l4):
            self.c["pmtu_ignored.not_owned"] += 1
            return ipv4.path_mtu(quoted.dst)
        return ipv4.update_pmtu(quoted.dst, reported)

    def owns_quoted(self, quoted: IPv4Header, l4: bytes) -> bool:
        """Whether the datagram quoted by an error belongs to a local endpoint: the transport
        registered in ``stack.transports`` for its protocol ``owns(local_port, remote_ip,
        remote_port)`` it, or it is an echo request of a registered echo listener."""
        if quoted.frag_offset or len(l4) < 4:
            return False
        if quoted.proto == PROTO_ICMP:
            ident = int.from_bytes(l4[4:6], "big")
            return len(l4) >= 8 and l4[0] == ECHO_REQUEST and ident in self.echo_listeners
        layer = getattr(self.stack, "transports", {}).get(quoted.proto)
        if layer is None:
            return False
        sport, dport = int.from_bytes(l4[0:2], "big"), int.from_bytes(l4[2:4], "big")
        return bool(layer.owns(sport, quoted.dst, dport))

    @staticmethod
    def plateau_below(size: int) -> int:
        """RFC 1191's guess of the path MTU that refused a ``size``-byte datagram."""
        for p in MTU_PLATEAUS:
            if p < size:
                return p
        return MTU_PLATEAUS[-1]

    def make_error(self, type_: int, code: int, origin: bytes, mtu: int | None = None) -> IcmpError | None:
        """The :class:`IcmpError` for an ICMP type/code (see the table), ``None`` if unknown."""
        if type_ == DEST_UNREACH:
            if code >= len(UNREACH_ERRORS):
                return None
            err, hard = UNREACH_ERRORS[code]
        elif type_ == TIME_EXCEEDED:
            err, hard = E.EHOSTUNREACH, False
        elif type_ == PARAM_PROBLEM:
            err, hard = E.EPROTO, True
        else:
            return None
        return IcmpError(type_, code, err, hard, origin, mtu)

    def deliver_error(self, error: IcmpError, offending: IPv4Header, l4: bytes) -> None:
        """Hand an error (received or local) to the transport owning ``offending``."""
        fn = self.error_handlers.get(offending.proto)
        if fn is None:
            self.c["drop.no_error_handler"] += 1
            return
        self.c["errors_delivered"] += 1
        fn(error, offending, l4)

    def _echo_error(self, error: IcmpError, offending: IPv4Header, l4: bytes) -> None:
        """Default handler for errors about our ICMP: route them to the echo listener."""
        if len(l4) >= 8 and l4[0] == ECHO_REQUEST:
            listener = self.echo_listeners.get(int.from_bytes(l4[4:6], "big"))
            if listener is not None and listener[1] is not None:
                listener[1](error, offending, l4)
                return
        self.c["drop.echo_error_unmatched"] += 1

    # -- send ----------------------------------------------------------------------------------
    def send_echo(self, dst: bytes, ident: int, seq: int, data: bytes = b"", **ip_opts: Any) -> None:
        """Send an echo request (``ip_opts``: ``ttl``, ``tos``, ``df``, ``frag_size`` ... of
        :meth:`IPv4Layer.send`). Raises what ``ipv4.send`` raises."""
        self.stack.ipv4.send(dst, PROTO_ICMP, build_echo(ident, seq, data), **ip_opts)
        self.c["tx_echo_request"] += 1

    def suppress_reason(self, offending: IPv4Header, l4: bytes) -> str | None:
        """Why RFC 1122 3.2.2 forbids an error about this datagram (``None``: allowed)."""
        ipv4 = self.stack.ipv4
        if offending.frag_offset:
            return "fragment"
        if offending.proto == PROTO_ICMP and (not l4 or l4[0] > NR_ICMP_TYPES or l4[0] in ERROR_TYPES):
            return "icmp_error"
        if ipv4.is_broadcast(offending.dst) or ipv4.is_multicast(offending.dst):
            return "broadcast"
        if getattr(self.stack.ethernet, "rx_link_broadcast", False):
            return "link_broadcast"
        src = offending.src
        if src[0] == 0 or src[0] == 127 or src[0] >= 224 or ipv4.is_broadcast(src):
            return "bad_source"
        return None

    def rate_allow(self, dst: bytes) -> bool:
        """Take a token for an error to ``dst`` (global bucket, then per destination)."""
        if self.stack.ipv4.is_local(dst):
            return True
        now = self.stack.now
        if not self._global_bucket.take(now, self.error_rate, self.error_burst):
            return False
        peers = self._peer_buckets
        bucket = peers.get(dst)
        if bucket is None:
            if len(peers) >= self.max_rate_peers:
                del peers[next(iter(peers))]
            bucket = peers[dst] = TokenBucket(self.error_burst_per_dest, now)
        return bucket.take(now, self.error_rate_per_dest, self.error_burst_per_dest)

    def send_error(self, type_: int, code: int, ip_packet: bytes, *, rest: int = 0) -> bool:
        """Send an error of ``type_``/``code`` about ``ip_packet`` (the offending datagram from
        its IP header on: ``ip_header.raw + payload``) back to its source, if allowed (own mode,
        RFC 1122 rules, rate limit). ``rest`` is the type-specific word (next-hop MTU for
        "fragmentation needed", ``pointer << 24`` for parameter problem). True when sent."""
        c = self.c
        if not self.stack.own_mode:
            c["error_suppressed.shared_mode"] += 1
            return False
        try:
            offending, l4 = parse_ipv4_quoted(ip_packet, l4_min=0)
        except MalformedError:
            c["error_suppressed.malformed"] += 1
            return False
        reason = self.suppress_reason(offending, l4)
        if reason is not None:
            c["error_suppressed." + reason] += 1
            return False
        if not self.rate_allow(offending.src):
            c["error_rate_limited"] += 1
            return False
        msg = build_error(type_, code, ip_packet, rest=rest, limit=self.error_limit)
        try:
            self.stack.ipv4.send(offending.src, PROTO_ICMP, msg, tos=0xC0 | (offending.tos & 0x1E), df=False)
        except OSError:
            c["drop.error_unroutable"] += 1
            return False
        c["tx_error"] += 1
        return True
