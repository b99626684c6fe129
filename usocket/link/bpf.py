"""Hand-assembled classic BPF socket filters for :class:`usocket.link.packet.PacketLink`.

A filter runs in the kernel for every frame the interface sees, so frames the stack does not
want never wake the Python thread. Only the two programs the stack needs are built here (no
libpcap/tcpdump at run time); :func:`run_filter` is a small interpreter of classic BPF used to
re-filter frames that were queued before a filter was attached and, in the tests, to check these
programs against what ``tcpdump -dd`` compiles for the same expression.

A program is a list of ``(code, jt, jf, k)`` tuples, the ``struct sock_filter`` fields.
Both filters first reject frames whose VLAN tag the NIC stripped into metadata (they belong to
another VLAN; the stack is untagged); the kernel tells this through an ancillary load.
"""
from __future__ import annotations

import ctypes
import operator
import struct
from collections.abc import Callable, Mapping, Sequence

from .. import _stdsocket as socket  # the kernel's module even after the hijacker swaps sys.modules["socket"]

Instr = tuple[int, int, int, int]
Program = list[Instr]

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27

# Opcode fields (linux/filter.h, linux/bpf_common.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

SKF_AD_OFF = -0x1000
SKF_AD_VLAN_TAG_PRESENT = 48
VLAN_PRESENT_K = (SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT) & 0xFFFFFFFF

#: ``ret`` value that keeps the whole frame (what tcpdump uses; above any GSO packet size).
ACCEPT_ALL = 0x40000

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
IPPROTO_ICMP = 1


def assemble(lines: Sequence[tuple[object, ...]]) -> Program:
    """Resolve symbolic jumps. Each line is ``(code, jt, jf, k)`` or ``("label:",)``; ``jt``
    and ``jf`` may be a label name (a forward jump) or an int offset."""
    labels: dict[str, int] = {}
    body: list[tuple[object, ...]] = []
    for line in lines:
        if len(line) == 1:
            labels[str(line[0]).rstrip(":")] = len(body)
        else:
            body.append(line)
    prog: Program = []
    for pc, (code, jt, jf, k) in enumerate(body):
        def rel(target: object, pc: int = pc) -> int:
            if isinstance(target, int):
                return target
            off = labels[str(target)] - pc - 1
            if not 0 <= off <= 255:
                raise ValueError(f"jump to {target!r} out of range")
            return off
        prog.append((int(code), rel(jt), rel(jf), int(k) & 0xFFFFFFFF))  # type: ignore[call-overload]
    return prog


def _head(accept_arp: bool = True) -> list[tuple[object, ...]]:
    """Reject NIC-stripped VLAN frames, accept ARP, continue only with IPv4."""
    lines: list[tuple[object, ...]] = [
        (LD | W | ABS, 0, 0, VLAN_PRESENT_K),
        (JMP | JEQ | K, 0, "drop", 0),  # tag present: drop
        (LD | H | ABS, 0, 0, 12),
    ]
    if accept_arp:
        lines.append((JMP | JEQ | K, "accept", 0, ETH_P_ARP))
    lines.append((JMP | JEQ | K, 0, "drop", ETH_P_IP))
    return lines


_TAIL: list[tuple[object, ...]] = [("accept:",), (RET | K, 0, 0, ACCEPT_ALL), ("drop:",), (RET | K, 0, 0, 0)]


def shared_mode_filter(ip: bytes) -> Program:
    """ARP, or IPv4 ICMP addressed to ``ip``. (In shared mode TCP/UDP come from NFQUEUE.)

    Same verdicts as ``tcpdump -dd 'arp or (icmp and dst host IP)'`` on untagged frames."""
    dst = int.from_bytes(ip, "big")
    return assemble(_head() + [
        (LD | B | ABS, 0, 0, 23),            # IPv4 protocol
        (JMP | JEQ | K, 0, "drop", IPPROTO_ICMP),
        (LD | W | ABS, 0, 0, 30),            # IPv4 destination
        (JMP | JEQ | K, "accept", "drop", dst),
    ] + _TAIL)


def own_mode_filter(ip: bytes, broadcast: bytes | None = None) -> Program:
    """ARP, or IPv4 addressed to ``ip``, 255.255.255.255 or the subnet ``broadcast``.

    Same verdicts as ``tcpdump -dd 'arp or (ip and (dst host IP or dst host 255.255.255.255
    or dst host BCAST))'`` on untagged frames."""
    targets = [int.from_bytes(ip, "big"), 0xFFFFFFFF]
    if broadcast is not None and int.from_bytes(broadcast, "big") not in targets:
        targets.append(int.from_bytes(broadcast, "big"))
    lines = _head() + [(LD | W | ABS, 0, 0, 30)]
    for i, t in enumerate(targets):
        lines.append((JMP | JEQ | K, "accept", "drop" if i == len(targets) - 1 else 0, t))
    return assemble(lines + _TAIL)


def pack_program(program: Program) -> bytes:
    """The program as an array of ``struct sock_filter``."""
    return b"".join(struct.pack("HBBI", *ins) for ins in program)


def attach_filter(sock: socket.socket, program: Program) -> None:
    """Attach ``program`` to ``sock`` (SO_ATTACH_FILTER); replaces any previous filter."""
    if not 0 < len(program) <= 4096:
        raise ValueError("a classic BPF program has 1..4096 instructions")
    buf = ctypes.create_string_buffer(pack_program(program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies buf


def detach_filter(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:  # ENOENT: no filter attached
        pass


def parse_dd(text: str) -> Program:
    """Parse ``tcpdump -dd`` output (``{ 0x28, 0, 0, 0x0000000c },`` lines) into a program."""
    prog: Program = []
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("{") and line.endswith("}"):
            code, jt, jf, k = (int(v.strip(), 0) for v in line[1:-1].split(","))
            prog.append((code, jt, jf, k))
    return prog


_ALU_OPS: dict[int, Callable[[int, int], int]] = {
    0x00: operator.add, 0x10: operator.sub, 0x20: operator.mul, 0x30: operator.floordiv,
    0x40: operator.or_, 0x50: operator.and_, 0x60: lambda a, s: a << (s & 31),
    0x70: lambda a, s: a >> (s & 31), 0x80: lambda a, s: -a, 0x90: operator.mod, 0xA0: operator.xor,
}


def run_filter(program: Program, frame: bytes, ancillary: Mapping[int, int] | None = None) -> int:
    """Interpret ``program`` on ``frame`` like the kernel does; returns the number of bytes to
    keep (0 = drop). Out-of-range loads drop. Ancillary loads (``k >= SKF_AD_OFF``) read
    ``ancillary[k - SKF_AD_OFF]`` (default 0: e.g. "no VLAN tag")."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(frame)
    mask = 0xFFFFFFFF
    while pc < len(program):
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls in (LD, LDX):
            mode, size = code & 0xE0, code & 0x18
            if mode == IMM:
                val = k
            elif mode == LEN:
                val = n
            elif mode == MEM:
                val = mem[k & 15]
            elif mode == MSH:
                if k >= n:
                    return 0
                val = (frame[k] & 0x0F) * 4
            else:
                off = k if mode == ABS else (x + k) & mask
                if off >= (SKF_AD_OFF & mask):
                    val = (ancillary or {}).get(off - (SKF_AD_OFF & mask), 0)
                else:
                    width = {W: 4, H: 2, B: 1}[size]
                    if off + width > n:
                        return 0
                    val = int.from_bytes(frame[off:off + width], "big")
            if cls == LD:
                a = val
            else:
                x = val
        elif cls == ST:
            mem[k & 15] = a
        elif cls == STX:
            mem[k & 15] = x
        elif cls == ALU:
            op, src = code & 0xF0, (x if code & X else k)
            if op in (0x30, 0x90) and src == 0:
                return 0  # division by zero aborts with 0
            a = _ALU_OPS[op](a, src) & mask
        elif cls == JMP:
            op, src = code & 0xF0, (x if code & X else k)
            if op == JA:
                pc += k
                continue
            cond = {JEQ: a == src, JGT: a > src, JGE: a >= src, JSET: bool(a & src)}[op]
            pc += jt if cond else jf
        elif cls == RET:
            return a if code & RET_A else k
        elif cls == MISC:
            if code & 0xF8 == TXA:
                a = x
            else:
                x = a
    return 0
