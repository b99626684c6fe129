"""The hacking examples (examples/hack_*.py), run as examples/README.md says: in the lab, hijacked.

Each test runs an example with :class:`usocket.lab.run.LabRunner` (one lab per mode for the
module, the client namespace's kernel TCP/UDP egress REJECTed) and checks its output against
what the kernel on the other side saw: the peer's echo check, the SYN-ACKs the peer captured and
the stack's own pcap (read by tshark), p0f's verdict on each OS personality, and the datagrams
the kernel's echo server reassembled from odd fragments.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hijack_helpers import example

from usocket.lab.run import LabRunner, RunResult

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent




def peer_output(result: RunResult) -> str:
    return "".join(p.stdout for p in result.peers)


def test_echo_server_as_callback_applications(runner: LabRunner) -> None:
    result = example(runner, "hack_echo_app.py", "7007",
                     peers=["python3 examples/peer_check.py echo {client_ip}:7007 300000"])
    out = peer_output(result)
    assert "tcp echo ok: 300000 bytes" in out and "udp echo ok" in out, result.output
    served = re.search(r"served: tcp_connections=(\d+) tcp_bytes=(\d+) udp_datagrams=(\d+)", result.stdout)
    assert served is not None, result.output
    # the runner's readiness probe is one more (empty) connection
    assert int(served.group(2)) == 300000 and int(served.group(3)) == 1 and int(served.group(1)) >= 1


def test_fixed_isn_server_seen_by_the_peer_and_in_the_stacks_pcap(runner: LabRunner, tmp_path: Path) -> None:
    pcap = tmp_path / "isn.pcap"
    result = example(runner, "hack_fixed_isn.py", "7008", "0x0badf00d", hijack_opts=[f"--pcap={pcap}"],
                     peers=["python3 examples/peer_check.py synack {client_ip}:7008 3"])
    seqs = re.findall(r"SYN-ACK from [\d.]+:7008: seq=(0x[0-9a-f]{8})", peer_output(result))
    assert seqs == ["0x0badf00d"] * 3, result.output
    fields = subprocess.run(["tshark", "-r", str(pcap), "-Y", "tcp.flags.syn==1 && tcp.flags.ack==1",
                             "-T", "fields", "-e", "tcp.seq_raw"], capture_output=True, text=True, check=True)
    values = fields.stdout.split()
    assert len(values) >= 3 and set(values) == {str(0x0BADF00D)}, fields.stdout


@pytest.mark.skipif(shutil.which("p0f") is None, reason="p0f is not installed (apt-get install p0f)")
def test_os_personalities_fool_p0f(runner: LabRunner) -> None:
    result = example(runner, "hack_personality.py", "linux", "macos", "windows")
    verdicts = dict(re.findall(r"^(\w+): p0f says os=([^\n]*?) raw_sig=", result.stdout, re.MULTILINE))
    assert verdicts == {"linux": "Linux 3.11 and newer",
                        "macos": "MacOS X 10.9 or newer (sometimes iPhone or iPad)",
                        "windows": "Windows 7 or 8"}, result.output
    assert result.stdout.count("(echo ok)") == 3


def test_os_personalities_without_p0f_print_the_syns_values(runner: LabRunner) -> None:
    result = example(runner, "hack_personality.py", "--no-p0f", "windows", "linux")
    assert "windows: SYN ttl=128 window=8192 (no p0f) (echo ok)" in result.stdout, result.output
    assert "linux: SYN ttl=64 window=29200 (no p0f) (echo ok)" in result.stdout, result.output


def test_what_linux_reassembles_from_odd_fragments(runner: LabRunner) -> None:
    result = example(runner, "hack_fragments.py")
    lines = {line.split("[")[0].strip(): line.split("->")[-1].strip() for line in result.stdout.splitlines()
             if "->" in line}
    whole = "echoed AAAAAAAABBBBBBBBCCCCCCCCDDDDDDDDEEEEEEEE"
    dropped = "no reply: the kernel discarded the datagram"
    assert lines == {
        "in order, 8-byte fragments": whole,
        "reverse order": whole,
        "random order": whole,
        "a fragment sent twice": whole,
        "exact duplicate with other bytes, sent first": "echoed AAAAAAAAxxxxxxxxxxxxxxxxDDDDDDDDEEEEEEEE",
        "duplicate with other bytes, after completion": whole,
        "partial overlap": dropped,
        "a fragment missing": dropped,
    }, result.output
