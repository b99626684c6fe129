"""PcapWriter and PcapLink: files that scapy's rdpcap and tshark both read as written."""
from __future__ import annotations

import io
import os
import select
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from usocket.link.memory import MemoryNetwork, link_pair
from usocket.link.pcap import PcapLink, PcapWriter, read_pcap


def frames(n: int) -> list[bytes]:
    return [bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") /
                  IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=1000 + i, dport=53) / (b"q" * i))
            for i in range(n)]


def tshark_count(path: Path) -> int:
    out = subprocess.run(["tshark", "-r", str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "HOME": str(path.parent)}).stdout
    return len(out.splitlines())


def test_written_file_reads_back_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"
    sent = frames(25)
    with PcapWriter(path) as w:
        for i, f in enumerate(sent):
            w.write(f, 1_700_000_000 + i * 0.25)
        assert w.count == 25
    pkts = rdpcap(str(path))
    assert [bytes(p) for p in pkts] == sent
    assert [float(p.time) for p in pkts] == pytest.approx([1_700_000_000 + i * 0.25 for i in range(25)])
    assert pkts[3][UDP].sport == 1003
    assert [f for _, f in read_pcap(path.read_bytes())] == sent
    if shutil.which("tshark"):
        assert tshark_count(path) == 25


def test_timestamps_round_to_microseconds() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf)
    w.write(b"\x00" * 14, 1.9999999)
    w.write(b"\x00" * 14, 3.0000004)
    w.write(b"\x00" * 14, -5.0)
    w.close()
    raw = buf.getvalue()
    assert struct.unpack_from("IHHiIII", raw) == (0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    recs = [struct.unpack_from("IIII", raw, 24 + i * 30) for i in range(3)]
    assert [(s, u) for s, u, _, _ in recs] == [(2, 0), (3, 0), (0, 0)]
    assert not buf.closed, "a file object passed in is not closed"
    with pytest.raises(ValueError):
        w.write(b"\x00" * 14, 1.0)


def test_snaplen_truncates_but_keeps_original_length() -> None:
    buf = io.BytesIO()
    with PcapWriter(buf, snaplen=100) as w:
        w.write(b"\x01" * 1000, 0.0)
    _, _, incl, orig = struct.unpack_from("IIII", buf.getvalue(), 24)
    assert (incl, orig) == (100, 1000) and len(buf.getvalue()) == 24 + 16 + 100


def test_write_ip_wraps_in_ethernet(tmp_path: Path) -> None:
    path = tmp_path / "ip.pcap"
    ip = bytes(IP(src="10.9.0.1", dst="10.9.0.2") / UDP(dport=7) / b"nfq")
    with PcapWriter(path) as w:
        w.write_ip(ip, 10.0, src_mac=b"\x02" * 6, dst_mac=b"\x04" * 6)
        w.write_ip(memoryview(ip), 11.0)
    pkts = rdpcap(str(path))
    assert pkts[0][Ether].src == "02:02:02:02:02:02" and pkts[0][Ether].type == 0x0800
    assert bytes(pkts[0][IP]) == ip and bytes(pkts[1][IP]) == ip
    if shutil.which("tshark"):
        assert tshark_count(path) == 2


def test_flush_policy(tmp_path: Path) -> None:
    path = tmp_path / "f.pcap"
    w = PcapWriter(path, flush_interval=1.0)
    w.write(b"\x00" * 60, 100.0)
    w.write(b"\x00" * 60, 100.5)
    assert path.stat().st_size < 24 + 2 * 76, "buffered within the interval"
    w.write(b"\x00" * 60, 101.0)
    assert path.stat().st_size == 24 + 3 * 76, "flushed once a second of timestamps passed"
    w.close()
    every = PcapWriter(tmp_path / "e.pcap", flush_interval=0)
    every.write(b"\x00" * 60, 0.0)
    assert (tmp_path / "e.pcap").stat().st_size == 24 + 76
    every.close()


def test_concurrent_writers_produce_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    sent = frames(8)
    with PcapWriter(path) as w:
        def work(k: int) -> None:
            for i in range(300):
                w.write(sent[(k + i) % 8], k + i / 1000)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    got = read_pcap(path.read_bytes())
    assert len(got) == 1200 and all(f in sent for _, f in got)


def test_pcap_link_records_both_directions(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    a, b = link_pair()
    ticks = iter(range(100, 200))
    with PcapWriter(path) as w, PcapLink(a, w, clock=lambda: float(next(ticks))) as rec, b:
        assert rec.fileno() == a.fileno() and rec.mac == a.mac and rec.mtu == a.mtu
        out = frames(3)
        assert rec.send_batch(out[:2]) == 2
        b.send(out[2])
        select.select([rec], [], [], 2.0)
        assert [f for f, _ in rec.recv_batch()] == [out[2]]
        assert rec.counters is a.counters and a.counters["tx"] == 2
    assert a.closed
    got = rdpcap(str(path))
    assert [bytes(p) for p in got] == out and [float(p.time) for p in got] == [100.0, 101.0, 102.0]
    if shutil.which("tshark"):
        assert tshark_count(path) == 3


def test_memory_network_pcap(tmp_path: Path) -> None:
    path = tmp_path / "net.pcap"

    class Sender:
        def __init__(self) -> None:
            self.out = frames(4)

        def receive_frame(self, frame: bytes, now: float, csum_ok: bool = False) -> None:
            pass

        def take_output(self) -> list[bytes]:
            out, self.out = self.out, []
            return out

        def poll(self, now: float) -> int:
            return 0

        def poll_at(self) -> float | None:
            return None

    with PcapWriter(path) as w:
        net = MemoryNetwork(pcap=w, loss=0.5, seed=2)
        net.attach(Sender())
        net.attach(Sender())
        net.run_for(1.0)
    assert net.counters["drop.loss"] > 0, "lost frames are still in the capture (recorded as sent)"
    assert len(rdpcap(str(path))) == net.counters["tx"] == 8
    if shutil.which("tshark"):
        assert tshark_count(path) == 8
