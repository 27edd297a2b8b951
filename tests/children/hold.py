"""A test target that holds known resources, then prints "ready" and waits to be killed.

--alloc-mib N   allocate and touch N MiB
--fds K         open K extra file descriptors on /dev/null
--threads T     run T threads in total (T-1 extra, sleeping)
--spin S        burn CPU for S seconds before settling
--nofile N      lower RLIMIT_NOFILE to N first
--listen B      listen on a loopback TCP port with backlog B and print "port N" before "ready"
"""
import argparse
import os
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--alloc-mib", type=int, default=0)
p.add_argument("--fds", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--spin", type=float, default=0.0)
p.add_argument("--exit-after", type=float, default=0.0)
p.add_argument("--nofile", type=int, default=0)
p.add_argument("--listen", type=int, default=0)
a = p.parse_args()

if a.nofile:
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (a.nofile, a.nofile))
if a.listen:
    import socket
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(a.listen)
    print("port", srv.getsockname()[1], flush=True)

block = bytearray(a.alloc_mib * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(a.fds)]
stop = threading.Event()
threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(a.threads - 1)]
for t in threads:
    t.start()
end = time.monotonic() + a.spin
x = 0
while time.monotonic() < end:
    x += 1
print("ready", flush=True)
if a.exit_after > 0:
    time.sleep(a.exit_after)
    sys.exit(0)
while True:
    time.sleep(3600)
