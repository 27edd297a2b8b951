"""A test target whose resident memory follows a known shape, with anonymous mmaps so freed memory really
leaves the RSS (malloc would keep it).

--rate MIB      grow by this many MiB per second (kept)
--saw MIB       every 2 s, map MIB more, hold it 1 s, unmap it (a GC-like sawtooth)
--base MIB      hold this much from the start
Prints "ready" once the base is held, then runs until killed.
"""
import argparse
import mmap
import time

p = argparse.ArgumentParser()
p.add_argument("--rate", type=float, default=0.0)
p.add_argument("--saw", type=int, default=0)
p.add_argument("--base", type=int, default=32)
a = p.parse_args()
MIB = 1 << 20


def touched(mib):
    m = mmap.mmap(-1, max(1, int(mib * MIB)))
    for off in range(0, len(m), 4096):
        m[off] = 1
    return m


kept = [touched(a.base)]
print("ready", flush=True)
start = time.monotonic()
grown = 0.0
saw = None
tick = 0
while True:
    time.sleep(0.1)
    tick += 1
    now = time.monotonic() - start
    want = a.rate * now
    if want - grown >= 0.25:
        kept.append(touched(want - grown))
        grown = want
    if a.saw:
        phase = now % 2.0
        if phase < 1.0 and saw is None:
            saw = touched(a.saw)
        elif phase >= 1.0 and saw is not None:
            saw.close()
            saw = None
