"""A TAP device link: the stack is the far end of a virtual Ethernet cable whose near end is
a kernel interface (``/dev/net/tun``, ``IFF_TAP | IFF_NO_PI``).

Each ``read`` of the descriptor returns one whole frame the kernel transmitted on the device;
each ``write`` injects one frame as if received from the wire. No offloads are negotiated, so
the kernel hands over frames with complete checksums, never larger than the device MTU
(``csum_ok`` is False: the stack verifies them).

The kernel's interface has its own MAC (``kernel_mac``); the stack, being another host on that
cable, uses ``mac`` (a random locally administered address unless given). The device is created
if it does not exist and then removed on :meth:`TapLink.close`; an existing (persistent) device
is only attached to and left in place.
"""
from __future__ import annotations

import fcntl
import os
import struct

from .. import _stdsocket as socket  # the kernel's module even after the hijacker swaps sys.modules["socket"]
from ..netns import run_in_netns
from .base import MAX_FRAME, Link, errno_reason

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927


def random_mac() -> bytes:
    """A random unicast, locally administered MAC address."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return bytes(raw)


def _ifreq(name: str, fmt: str = "", *vals: object) -> bytes:
    body = struct.pack(fmt, *vals) if fmt else b""
    return struct.pack("16s", name.encode()) + body.ljust(24, b"\x00")


class TapLink(Link):
    """A TAP device ``name`` (``"usltap%d"`` lets the kernel number it) in ``netns``.

    ``up=True`` brings the kernel's side of the device up (addresses are the caller's business).
    """

    def __init__(self, name: str, netns: str | None = None, *, mac: bytes | None = None,
                 up: bool = True) -> None:
        super().__init__(name, mac=mac if mac is not None else random_mac())
        self.netns = netns
        self.fd, self.name, self.created, self.mtu, self.kernel_mac = run_in_netns(
            netns, lambda: self._open(name, up))

    @staticmethod
    def _open(name: str, up: bool) -> tuple[int, str, bool, int, bytes]:
        """Runs inside the namespace: open/create the device and read its properties."""
        try:
            socket.if_nametoindex(name)
            created = False
        except OSError:
            created = True
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            res = fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, "H", IFF_TAP | IFF_NO_PI))
            actual = res[:16].rstrip(b"\x00").decode()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                mtu = struct.unpack_from("i", fcntl.ioctl(s, SIOCGIFMTU, _ifreq(actual)), 16)[0]
                hw = fcntl.ioctl(s, SIOCGIFHWADDR, _ifreq(actual))[18:24]
                if up:
                    flags = struct.unpack_from("H", fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(actual)), 16)[0]
                    fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq(actual, "H", flags | IFF_UP))
        except BaseException:
            os.close(fd)
            raise
        return fd, actual, created, int(mtu), bytes(hw)

    def fileno(self) -> int:
        return self.fd

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        c = self.counters
        while len(out) < max_frames:
            try:
                frame = os.read(self.fd, MAX_FRAME)
            except BlockingIOError:
                break
            except OSError as exc:
                c["drop.rx_" + errno_reason(exc)] += 1
                break
            if len(frame) < 14:
                c["drop.runt"] += 1
                continue
            c["rx"] += 1
            out.append((frame, False))
        return out

    def send(self, frame: bytes) -> bool:
        try:
            os.write(self.fd, frame)
        except BlockingIOError:
            self.counters["drop.tx_busy"] += 1
            return False
        except OSError as exc:  # EIO: the kernel's side is down; EINVAL: bad size
            self.counters["drop.tx_" + errno_reason(exc)] += 1
            return False
        self.counters["tx"] += 1
        return True

    def close(self) -> None:
        """Detach; a device this link created disappears with its last descriptor."""
        if not self.closed:
            if self.created:
                try:
                    fcntl.ioctl(self.fd, TUNSETPERSIST, 0)  # in case someone made it persistent
                except OSError:
                    pass
            os.close(self.fd)
        super().close()
