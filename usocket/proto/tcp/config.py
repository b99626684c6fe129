"""The TCP layer's tunables, with Linux's defaults (``net.ipv4.tcp_*``) unless said otherwise.

Change them on ``stack.tcp.config`` before connections are made; per-connection knobs (socket
options) live on the connection itself and start from these values.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TcpConfig:
    # TIME_WAIT lasts 2*MSL; Linux fixes it at 60 s (TCP_TIMEWAIT_LEN).
    msl: float = 30.0
    # Retry limits (tcp_syn_retries, tcp_synack_retries, tcp_retries2). Linux turns retries2
    # into a time budget; here it is a count of RTO expiries for the same segment.
    syn_retries: int = 6
    synack_retries: int = 5
    retries2: int = 15
    # RTO bounds (RFC 6298 with Linux's 200 ms floor, TCP_RTO_MIN/MAX, initial TCP_TIMEOUT_INIT).
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 120.0
    # Delayed ACKs: Linux starts at TCP_ATO_MIN (40 ms) and stays below TCP_DELACK_MAX (200 ms).
    delack: float = 0.04
    # Buffers. Linux autotunes; here the send buffer is fixed and the receive window grows from
    # ``rcvbuf`` towards ``rcvbuf_max`` while the application keeps up (tcp_rmem[1], tcp_rmem[2]).
    sndbuf: int = 1 << 20
    rcvbuf: int = 131072
    rcvbuf_max: int = 4 << 20
    # Options offered in a SYN / accepted in a SYN (tcp_window_scaling, tcp_timestamps, tcp_sack).
    window_scaling: bool = True
    timestamps: bool = True
    sack: bool = True
    # The MSS assumed when the peer sends none (RFC 9293 3.7.1 / RFC 1122: 536).
    default_mss: int = 536
    congestion: str = "cubic"
    # Keepalive (off unless SO_KEEPALIVE): tcp_keepalive_time/intvl/probes.
    keepalive_time: float = 7200.0
    keepalive_intvl: float = 75.0
    keepalive_probes: int = 9
    # How long an orphaned connection (closed by the application) waits in FIN_WAIT_2.
    fin_timeout: float = 60.0
    # SYN queue bound per listener (tcp_max_syn_backlog; Linux also caps by somaxconn).
    max_syn_backlog: int = 256
    somaxconn: int = 4096
    # RFC 5961 challenge ACKs per second for the whole layer (tcp_challenge_ack_limit).
    challenge_ack_limit: int = 1000
    # Quick ACKs at the start of a connection (Linux TCP_MAX_QUICKACKS).
    quickacks: int = 16
    # Time-based loss detection (RACK, RFC 8985 6.2) and tail loss probes (TLP, RFC 8985 7):
    # Linux has both on by default (tcp_recovery=1, tcp_early_retrans=3).
    rack: bool = True
    tlp: bool = True
    # Segmentation offload (Linux TSO/GSO): new data goes to the link as super-segments of
    # several MSS when the link cuts them (``stack.gso_max_size > 0``, set by the runtime).
    tso: bool = True
    # Segments the out-of-order queue may hold (its byte bound is the receive buffer).
    ooo_max_ranges: int = 2048
    # Seconds a closed connection's diversion flow stays (shared mode): the peer's late
    # segments get the stack's RST rather than the host kernel's.
    closed_flow_grace: float = 3.0
    # Seconds a closed listener's port stays diverted (shared mode): SYNs and segments already
    # queued for it get the stack's RST rather than the host kernel's. Short, since a kernel
    # socket may take the port once the stack let it go.
    closed_listener_grace: float = 0.5

    @property
    def time_wait(self) -> float:
        return 2 * self.msl
