"""A test target whose resident memory follows a known shape, with anonymous mmaps so freed memory really
leaves the RSS (malloc would keep it).

--rate MIB      grow by this many MiB per second (kept)
--saw MIB       every 2 s, map MIB more, hold it 1 s, unmap it (a GC-like sawtooth)
--base MIB      hold this much from the start
--warmup S      grow at --rate only for the first S seconds, then hold (a cache warming up)
--square MIB    hold MIB more for the first half of every --period seconds, nothing the second half
--ramp MIB      map memory steadily up to MIB over every --period seconds, then unmap it all (a slow sawtooth)
--period S      period of --square and --ramp (default 10)
Prints "ready" once the base is held, then runs until killed.
"""
import argparse
import mmap
import time

p = argparse.ArgumentParser()
p.add_argument("--rate", type=float, default=0.0)
p.add_argument("--saw", type=int, default=0)
p.add_argument("--base", type=int, default=32)
p.add_argument("--warmup", type=float, default=0.0)
p.add_argument("--square", type=int, default=0)
p.add_argument("--ramp", type=int, default=0)
p.add_argument("--period", type=float, default=10.0)
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
square = None
ramp, ramp_held, ramp_cycle = [], 0.0, 0
tick = 0
while True:
    time.sleep(0.1)
    tick += 1
    now = time.monotonic() - start
    want = a.rate * (min(now, a.warmup) if a.warmup > 0 else now)
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
    if a.square:
        high = (now % a.period) < a.period / 2
        if high and square is None:
            square = touched(a.square)
        elif not high and square is not None:
            square.close()
            square = None
    if a.ramp:
        cycle = int(now // a.period)
        if cycle != ramp_cycle:
            for m in ramp:
                m.close()
            ramp, ramp_held, ramp_cycle = [], 0.0, cycle
        want_ramp = a.ramp * (now % a.period) / a.period
        if want_ramp - ramp_held >= 0.25:
            ramp.append(touched(want_ramp - ramp_held))
            ramp_held = want_ramp
