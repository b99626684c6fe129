"""Cost of introspection: the socket table of 1000 connections, the control endpoint's start and
one query. No root needed:

    .venv/bin/python -m benchmarks.introspect_cost
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time

sys.path.insert(0, "tests")  # the packet harness lives with the tests

from tcp_harness import ACK, SYN, Net, Peer  # noqa: E402

from usocket.config import StackConfig  # noqa: E402
from usocket.control import ControlServer, query_path  # noqa: E402
from usocket.introspect import format_table  # noqa: E402
from usocket.link.memory import link_pair  # noqa: E402
from usocket.runtime import Runtime  # noqa: E402


def table_cost(n: int = 1000) -> None:
    net = Net()
    net.listen(80, backlog=4096)
    for i in range(n):
        p = Peer(net, stack_port=80, port=20000 + i)
        p.send(flags=SYN)
        p.expect(flags=SYN | ACK)
        p.send(flags=ACK)
    t0 = time.process_time()
    for _ in range(10):
        rows = net.stack.sockets()
    t1 = time.process_time()
    for _ in range(10):
        format_table(rows)
    t2 = time.process_time()
    print(f"{len(rows)} rows: sockets() {(t1 - t0) * 100:.1f} ms CPU, format_table {(t2 - t1) * 100:.1f} ms CPU")


def control_cost() -> None:
    end, other = link_pair()
    rt = Runtime(StackConfig(address=bytes([10, 0, 0, 1]), prefix_len=24), link=end, divert=False).start()
    d = tempfile.mkdtemp()  # mode 0700, as the endpoint requires
    starts = []
    for i in range(20):
        t = time.perf_counter()
        server = ControlServer(rt, path=f"{d}/{i}.sock").start()
        starts.append(time.perf_counter() - t)
        server.close()
    server = ControlServer(rt, path=f"{d}/q.sock").start()
    queries = []
    for _ in range(50):
        t = time.perf_counter()
        query_path(server.path)
        queries.append(time.perf_counter() - t)
    server.close()
    rt.stop()
    other.close()
    print(f"ControlServer.start: median {statistics.median(starts) * 1e3:.2f} ms wall; "
          f"one query (empty stack): median {statistics.median(queries) * 1e3:.2f} ms wall")


if __name__ == "__main__":
    table_cost()
    control_cost()
