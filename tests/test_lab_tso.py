"""TCP segmentation offload on a real veth: uploads leave as super-segments through the
AF_PACKET link (``PACKET_VNET_HDR``), and the kernel hands the peer what TCP expects.

Two cases. With the veth's offloads on (the default, as in a container) the super-segments
cross the pair whole, checksum partial, and the peer's kernel TCP takes them as they are (it
trusts a partial checksum from a local device): only the data's hash can judge them. With TSO
and checksum offload turned off on the stack's veth, the kernel cuts each one in software and
completes every checksum before the wire, so the capture at the peer shows real MTU-sized
segments whose checksums both this test and tshark verify.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest
from lab_runtime import stack_ip
from test_lab_tcp import upload

from usocket.link.pcap import read_pcap
from usocket.wire.ipv4 import parse_ipv4
from usocket.wire.tcp import parse_tcp

pytestmark = pytest.mark.lab

SIZE = 8 << 20


@pytest.mark.parametrize("offload", ["veth_offload_on", "kernel_cuts"])
def test_upload_with_tso_arrives_intact_and_wire_segments_are_valid(lab, runtime, mode, offload):
    assert runtime.stack.gso_max_size > 0  # the AF_PACKET link offers segmentation offload
    if offload == "kernel_cuts":
        lab.run(lab.client_ns, ["ethtool", "-K", lab.client_if, "tso", "off", "tx", "off"])
    src = stack_ip(lab, mode)
    # -B: a 64 MB capture buffer, so that tcpdump keeps up with the burst (options after the
    # filter words are fine: tcpdump's getopt permutes them).
    with lab.capture(lab.server_ns, lab.server_if, f"-B 65536 tcp and src host {src}") as path:
        upload(runtime, lab, SIZE)  # the sink checks size and sha256
    assert runtime.stack.counters.get("ipv4", "tx_gso") > 0
    assert runtime.stack.counters.get("runtime", "errors") == 0
    with open(path, "rb") as f:
        frames = [frame for _, frame in read_pcap(f)]
    data = 0
    for frame in frames:
        hdr, l4 = parse_ipv4(frame[14:])  # verifies the IPv4 header checksum
        seg = parse_tcp(bytes(l4), hdr.src, hdr.dst, verify=offload == "kernel_cuts")
        data += len(seg.payload)
    # The sink checked every byte; the capture may miss some packets on a loaded machine
    # (tcpdump's kernel buffer overflows), but it must have seen most of the upload.
    assert data >= SIZE // 2
    biggest = max(len(f) for f in frames)
    if offload == "kernel_cuts":
        assert biggest <= 14 + lab.mtu
        if shutil.which("tshark"):
            bad = subprocess.run(
                ["tshark", "-r", path, "-n", "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                 "-Y", "tcp.checksum.status != 1 || ip.checksum.status != 1",  # 1: verified good
                 "-T", "fields", "-e", "frame.number"],
                capture_output=True, text=True, timeout=120)
            assert bad.returncode == 0, bad.stderr
            assert bad.stdout.split() == [], f"tshark flags frames {bad.stdout.split()[:20]}"
    else:
        assert biggest > 14 + lab.mtu  # the veth passed super-segments to the peer whole
