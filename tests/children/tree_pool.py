"""A multiprocessing.Pool(4) of real worker processes, for the process-tree tests.

python3 tree_pool.py burn SECONDS   every worker burns SECONDS of CPU time (however busy the machine), then
                                    the pool idles until killed
python3 tree_pool.py leak           worker 0 maps and touches 1 MiB more every second (kept); the other
                                    three hold 16 MiB each and stay flat; runs until killed
Prints one JSON line {"workers": [pids]} once every worker runs its task, then "ready".
"""
import json
import mmap
import multiprocessing
import os
import sys
import time

MIB = 1 << 20


def touched(n):
    m = mmap.mmap(-1, n)
    for off in range(0, n, 4096):
        m[off] = 1
    return m


def burn(args):
    index, seconds, started = args
    started.put(os.getpid())
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1
    return x


def leak(args):
    index, _, started = args
    held = [touched(16 * MIB)]
    started.put(os.getpid())
    while True:
        time.sleep(1.0)
        if index == 0:
            held.append(touched(MIB))


if __name__ == "__main__":
    mode = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    manager = multiprocessing.Manager()
    started = manager.Queue()
    pool = multiprocessing.Pool(4)
    task = burn if mode == "burn" else leak
    result = pool.map_async(task, [(i, seconds, started) for i in range(4)])
    workers = sorted(started.get(timeout=30) for _ in range(4))
    print(json.dumps({"workers": workers, "manager": manager._process.pid}), flush=True)
    print("ready", flush=True)
    if mode == "burn":
        result.wait()
    while True:
        time.sleep(1)
