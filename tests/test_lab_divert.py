"""The shared-mode receive path end to end: a download through the NFQUEUE reader, in the lab.

The kernel peer's TCP sends GSO super-packets over the veth; the queue asks for them whole
(NFQA_CFG_F_GSO), so far fewer queue messages than wire-size segments reach the stack, each with
a partial checksum the stack must not verify (NFQA_SKB_CSUMNOTREADY), and the data stays intact.
"""
from __future__ import annotations

import hashlib

import pytest

from usocket.facade.sockets import socket_on
from usocket.lab.servers import bulk_request, bulk_sha256

pytestmark = pytest.mark.lab

SIZE = 16 << 20


@pytest.fixture
def mode() -> str:
    return "shared"


def test_shared_download_comes_as_gso_packets_with_partial_checksums(lab, runtime) -> None:
    with socket_on(runtime) as s:
        s.settimeout(30)
        s.connect((lab.server_ip, lab.ports["bulk_source"]))
        mss = runtime.call(s.connection.info)["mss"]  # what the peer's wire segments carry
        s.sendall(bulk_request(SIZE))
        h, n = hashlib.sha256(), 0
        while data := s.recv(1 << 20):
            h.update(data)
            n += len(data)
    assert n == SIZE and h.hexdigest() == bulk_sha256(SIZE)
    counters = runtime.call(runtime.stack.counters.snapshot)
    div, tcp = counters["divert"], counters["tcp"]
    segments = SIZE // mss
    assert div.get("gso", 0) > 0 and div.get("csum_not_ready", 0) > 0, div
    assert div["rx"] < segments // 4, (div["rx"], segments)  # ~45 segments per GSO packet at best
    assert div["dropped"] == div["rx"] and div.get("accepted", 0) == 0, div  # all of them the stack's
    assert div["verdict_sends"] <= div["reads"], div  # one send per read call, not per packet
    assert not any(k.startswith("drop.") and v for k, v in tcp.items()), tcp  # no checksum drop
    assert div.get("errors", 0) == div.get("nl_errors", 0) == div.get("truncated", 0) == 0, div
