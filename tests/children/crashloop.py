"""A supervisor that restarts a short-lived service in real memory cgroups, some instances OOM-killed.

python3 crashloop.py --pidfile PATH --instances 6 --life 0.4 --layout shared|fresh [--remove-after 0.3]

Each instance joins a memory cgroup limited to 48 MiB before it starts (cgroup v1 memory controller or
cgroup v2, whichever the machine has), lives --life seconds, then odd-numbered instances allocate 200 MB and
are OOM-killed by the kernel, even ones exit with status 1. "shared": all instances in one cgroup; "fresh":
a new cgroup per instance under one parent, the old one removed --remove-after seconds after its instance
died (as a container runtime does). Prints ground truth as JSON: each instance's pid and how it ended, and
the kernel's oom_kill counts.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--pidfile", required=True)
p.add_argument("--instances", type=int, default=6)
p.add_argument("--life", type=float, default=0.4)
p.add_argument("--layout", choices=["shared", "fresh"], default="shared")
p.add_argument("--remove-after", type=float, default=0.3)
a = p.parse_args()

LIMIT = 48 << 20
V1 = os.path.isdir("/sys/fs/cgroup/memory")
base = "/sys/fs/cgroup/memory" if V1 else "/sys/fs/cgroup"
parent = os.path.join(base, "vitals-test-crashloop-%d" % os.getpid())


def make(path):
    os.mkdir(path)
    if V1:
        open(os.path.join(path, "memory.limit_in_bytes"), "w").write(str(LIMIT))
        # Swap would let the allocation succeed slowly instead of being killed.
        try:
            open(os.path.join(path, "memory.memsw.limit_in_bytes"), "w").write(str(LIMIT))
        except OSError:
            pass
    else:
        open(os.path.join(path, "memory.max"), "w").write(str(LIMIT))
        open(os.path.join(path, "memory.swap.max"), "w").write("0")


def oom_kills(path):
    name = "memory.oom_control" if V1 else "memory.events"
    for line in open(os.path.join(path, name)):
        k, v = line.split()
        if k == "oom_kill":
            return int(v)
    return 0


def remove(path):
    # A cgroup goes away once its last task has been reaped; rmdir may need a moment.
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.01)


os.mkdir(parent)
if not V1:
    open(os.path.join(parent, "cgroup.subtree_control"), "w").write("+memory")
shared = os.path.join(parent, "svc")
if a.layout == "shared":
    make(shared)

SERVICE = (
    "import sys, time\n"
    "time.sleep(%f)\n"
    "if sys.argv[1] == 'oom':\n"
    "    held = bytearray(200_000_000)\n"
    "    time.sleep(5)\n"
    "sys.exit(1)\n" % a.life
)

instances = []
kills_seen = 0
pending_removal = []
try:
    for i in range(a.instances):
        cg = shared if a.layout == "shared" else os.path.join(parent, "inst-%d" % i)
        if a.layout == "fresh":
            make(cg)
        procs = os.path.join(cg, "cgroup.procs")
        mode = "oom" if i % 2 == 0 else "exit"
        child = subprocess.Popen(
            [sys.executable, "-c", SERVICE, mode],
            preexec_fn=lambda procs=procs: open(procs, "w").write(str(os.getpid())),
        )
        tmp = a.pidfile + ".tmp"
        open(tmp, "w").write("%d\n" % child.pid)
        os.replace(tmp, a.pidfile)
        rc = child.wait()
        kills = oom_kills(cg)
        instances.append({"pid": child.pid, "returncode": rc, "mode": mode, "cgroup_oom_kills": kills})
        if a.layout == "fresh":
            pending_removal.append((time.monotonic() + a.remove_after, cg))
        for due, path in list(pending_removal):
            if time.monotonic() >= due:
                remove(path)
                pending_removal.remove((due, path))
    time.sleep(max([0.0] + [due - time.monotonic() for due, _ in pending_removal]))
    for _, path in pending_removal:
        remove(path)
    # Leave time for vitals to see the last exit before the cgroups go.
    time.sleep(0.5)
    total = oom_kills(shared) if a.layout == "shared" else sum(x["cgroup_oom_kills"] for x in instances)
    print(json.dumps({
        "cgroup": "v1" if V1 else "v2",
        "instances": instances,
        "oom_killed": sum(1 for x in instances if x["returncode"] == -9),
        "oom_kill_total": total,
        "parent_oom_kills": None if V1 else oom_kills(parent),
    }))
finally:
    for path in [shared] + [os.path.join(parent, "inst-%d" % i) for i in range(a.instances)]:
        if os.path.isdir(path):
            remove(path)
    remove(parent)
