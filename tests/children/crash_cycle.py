"""Restarts a short-lived service over and over, as a crash-looping supervisor does.

python3 crash_cycle.py TAG LIFE[,LIFE...] GAP[,GAP...]

For every gap, for every life: starts `sleep LIFE<TAG>` (a sleep of LIFE seconds whose command line ends in
the digits of TAG, so a test can match exactly these instances), waits for it to exit, then waits GAP seconds.
Prints "ready" before the first instance and, at the end, one JSON line with every instance's pid.
"""
import json
import subprocess
import sys
import time

tag = sys.argv[1]
lives = [l for l in sys.argv[2].split(",")]
gaps = [float(g) for g in sys.argv[3].split(",")]
print("ready", flush=True)
pids = []
for gap in gaps:
    for life in lives:
        child = subprocess.Popen(["sleep", life + tag])
        pids.append(child.pid)
        child.wait()
        time.sleep(gap)
print(json.dumps({"pids": pids}), flush=True)
