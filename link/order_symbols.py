#!/usr/bin/env python3
"""Writes link/idle-symbol-order.txt: the functions an idle vitals runs, hottest first, then the ones only
start-up ran. build.rs hands the file to the linker (lld's --symbol-ordering-file), which lays those
functions out first and together, so the pages of code a sidecar keeps mapped while idle are few.

How: the release binary runs under valgrind's callgrind on a sleeping process with default settings; once
it answers, one scrape and the probes are sent, the counts so far are dumped (start-up), then CYCLES
cycles of a scrape and both probes 10 s apart run before SIGTERM (the steady state).

  cargo build --release && python3 link/order_symbols.py [CYCLES]

Needs valgrind (callgrind_control comes with it). Names are mangled symbols, whose hashes depend on the
build's profile and features, not on the source: `cargo bench` builds the binary it measures with the
bench profile and the dev-dependencies' features, so the same functions of that build are listed too,
found by their names without the hashes (built in target/order-bench). A function renamed is left out of the order
until the file is written again.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "vitals")
OUT = os.path.join(ROOT, "link", "idle-symbol-order.txt")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
            r.read()
        return True
    except OSError:
        return False


def self_costs(path, binary):
    """Function name -> self cost (instructions) of the functions of `binary` in a callgrind dump."""
    names, objects = {}, {}
    ob, fn, out = None, None, {}
    header = re.compile(r"^(c?ob|c?fn|c?fi|c?fl|fe)=\((\d+)\)(?: (.*))?$")
    after_call = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = header.match(line)
        if m:
            kind, i, name = m.groups()
            table = objects if kind in ("ob", "cob") else names if kind in ("fn", "cfn") else None
            if table is not None and name is not None:
                table[i] = name
            if kind == "ob":
                ob = objects.get(i)
            elif kind == "fn":
                fn = names.get(i)
            continue
        if line.startswith("calls="):
            after_call = True  # the next cost line is the call's inclusive cost, not self cost
            continue
        if fn and ob == binary and line[:1] in "0123456789+-*":
            parts = line.split()
            if after_call:
                after_call = False
                continue
            if len(parts) >= 2 and parts[1].isdigit():
                out[fn] = out.get(fn, 0) + int(parts[1])
    return out


def symbols(binary):
    out = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if len(line.split()) == 3]


def stem(name):
    """A mangled name without what depends on the build: the legacy hash, v0 crate disambiguators, and the
    suffix thin LTO gives a promoted local symbol."""
    name = re.sub(r"\.llvm\.\d+$", "", name)
    name = re.sub(r"17h[0-9a-f]{16}E$", "E", name)
    return re.sub(r"Cs[0-9A-Za-z]+_", "Cs_", name)


def main():
    cycles = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    tmp = tempfile.mkdtemp(prefix="vitals-order-")
    target = subprocess.Popen(["sleep", "3600"])
    port = free_port()
    out_file = os.path.join(tmp, "callgrind.out")
    vg = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out_file}",
         BIN, "--pid", str(target.pid), "--metrics-addr", f"127.0.0.1:{port}",
         "--otlp-grpc-addr", f"127.0.0.1:{free_port()}", "--otlp-http-addr", f"127.0.0.1:{free_port()}",
         "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not get(port, "/healthz"):
            if time.time() > deadline or vg.poll() is not None:
                sys.exit("vitals under valgrind did not answer /healthz")
            time.sleep(1)
        for p in ("/metrics", "/healthz", "/readyz"):
            get(port, p)
        subprocess.run(["callgrind_control", "-d", str(vg.pid)], check=True, stdout=subprocess.DEVNULL)
        for _ in range(cycles):
            time.sleep(10)
            for p in ("/metrics", "/healthz", "/readyz"):
                get(port, p)
        vg.send_signal(signal.SIGTERM)
        vg.wait(timeout=120)
    finally:
        if vg.poll() is None:
            vg.kill()
        target.kill()
    dumps = sorted(f for f in os.listdir(tmp) if f.startswith("callgrind.out"))
    start = self_costs(os.path.join(tmp, "callgrind.out.1"), BIN)
    steady = self_costs(out_file, BIN)
    order = sorted((f for f in steady if steady[f] > 0), key=lambda f: -steady[f])
    seen = set(order)
    order += sorted((f for f in start if f not in seen and start[f] > 0), key=lambda f: -start[f])
    # The same functions in a bench-profile build, in the same order after the release build's.
    built = subprocess.run(
        # A target directory of its own: in target/ a fresh bench-profile build reports the path the
        # release build last wrote.
        ["cargo", "bench", "--no-run", "--bench", "idle", "--message-format=json",
         "--target-dir", os.path.join(ROOT, "target", "order-bench")],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    bench_bin = next(m["executable"] for m in map(json.loads, built.splitlines())
                     if m.get("reason") == "compiler-artifact" and m.get("executable")
                     and m["target"]["name"] == "vitals" and "bin" in m["target"]["kind"])
    by_stem = {}
    for name in symbols(bench_bin):
        by_stem.setdefault(stem(name), []).append(name)
    listed = set(order)
    bench = [n for f in order for n in by_stem.get(stem(f), []) if n not in listed]
    with open(OUT, "w") as f:
        f.write("\n".join(order + list(dict.fromkeys(bench))) + "\n")
    print(f"{len(seen)} steady-state functions, {len(order) - len(seen)} start-up only, "
          f"{len(set(bench))} bench-profile names -> {OUT} ({dumps})")


if __name__ == "__main__":
    main()
