"""Cost of introspection: the socket table of 1000 connections, the control endpoint start and
one query. Run from the worktree: .venv/bin/python notes/introspect_cost.py"""
import sys, time, os
sys.path.insert(0, "tests")
from tcp_harness import Net, Peer, SYN, ACK
from usocket.introspect import format_table
net = Net()
net.listen(80, backlog=4096)
for i in range(1000):
    p = Peer(net, stack_port=80, port=20000 + i)
    p.send(flags=SYN); p.expect(flags=SYN | ACK); p.send(flags=ACK)
t = time.process_time(); 
for _ in range(10): rows = net.stack.sockets()
t1 = time.process_time(); 
for _ in range(10): txt = format_table(rows)
t2 = time.process_time()
print(f"{len(rows)} rows: sockets() {(t1-t)/10*1000:.1f} ms CPU, format_table {(t2-t1)/10*1000:.1f} ms CPU")
# control server start/close cost
from usocket.config import StackConfig
from usocket.link.memory import link_pair
from usocket.runtime import Runtime
from usocket.control import ControlServer, query_path
end, other = link_pair()
rt = Runtime(StackConfig(address=bytes([10,0,0,1]), prefix_len=24), link=end, divert=False).start()
import tempfile
D = tempfile.mkdtemp()  # mode 0700
ts=[]
for i in range(20):
    a=time.perf_counter(); s=ControlServer(rt, path=f"{D}/{i}.sock").start(); b=time.perf_counter(); s.close(); ts.append(b-a)
print(f"ControlServer.start: median {sorted(ts)[10]*1e3:.2f} ms wall")
s=ControlServer(rt, path=f"{D}/q.sock").start()
qs=[]
for i in range(50):
    a=time.perf_counter(); query_path(s.path); qs.append(time.perf_counter()-a)
print(f"query (empty stack) median {sorted(qs)[25]*1e3:.2f} ms wall")
s.close(); rt.stop(); other.close()
