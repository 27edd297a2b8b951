"""Runtime metrics as the Go, .NET and Java instrumentations name them, sent with the real OpenTelemetry
Python SDK (OTLP/gRPC) under resources that claim those runtimes through telemetry.sdk.language, in phases
the test paces.

python runtimes.py --endpoint http://127.0.0.1:PORT

Phase 1: the Go app's first round. Phase 2 (after a line on stdin): the .NET app's first round and a JVM
app whose jvm.gc.duration is in milliseconds. Phase 3 (after another line): the Go and .NET second rounds,
then the ground truth as one JSON line. Phase 4 (after another line): every provider shuts down, which
exports once more with nothing new. Each phase ends with a line "phase N".
"""
import argparse
import json
import math
import sys

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

p = argparse.ArgumentParser()
p.add_argument("--endpoint", required=True)
a = p.parse_args()


def app(service, language):
    # Resource(...) rather than Resource.create(...): the SDK's defaults would say python.
    resource = Resource({"service.name": service, "telemetry.sdk.language": language})
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=a.endpoint, insecure=True),
                                           export_interval_millis=3_600_000)
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    return mp, mp.get_meter("vitals-runtime-profiles")


def flush(*providers):
    for mp in providers:
        if not mp.force_flush(30_000):
            sys.exit(3)


def phase(n):
    print("phase %d" % n, flush=True)


def wait():
    if not sys.stdin.readline():
        sys.exit(4)


SCHED_BOUNDS = [0.0001, 0.001, 0.01, 0.1]


def bucket_bound(v):
    """The upper bound of the bucket v falls in (the highest finite one above the last)."""
    return next((b for b in SCHED_BOUNDS if v <= b), SCHED_BOUNDS[-1])


def statistics(values):
    """p50, p90, p99 and max of raw values, each as the bound of the bucket the k-th smallest value lies in."""
    s = sorted(values)
    out = {}
    for name, q in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]:
        k = max(1, math.ceil(round(q * len(s), 9)))
        out[name] = bucket_bound(s[k - 1])
    return out


# Go: scheduling latency (cumulative histogram) and GC pauses.
go, gm = app("go-app", "go")
sched = gm.create_histogram("go.schedule.duration", unit="s", explicit_bucket_boundaries_advisory=SCHED_BOUNDS)
go_pause = gm.create_histogram("go.memory.gc.pause.duration", unit="s",
                               explicit_bucket_boundaries_advisory=[0.0001, 0.001, 0.01])
round1 = [0.05] * 50
round2 = [0.00005] * 95 + [0.005] * 4 + [0.05]
go_pauses = [0.0002, 0.0003, 0.002]
for v in round1:
    sched.record(v)
for v in go_pauses:
    go_pause.record(v)
flush(go)
phase(1)
wait()

# .NET: pause time as a counter (no count), thread pool figures.
dotnet, dm = app("dotnet-app", "dotnet")
pause_time = dm.create_counter("dotnet.gc.pause.time", unit="s")
dm.create_observable_up_down_counter("dotnet.thread_pool.thread.count", unit="{thread}",
                                     callbacks=[lambda o: [Observation(12)]])
dm.create_observable_up_down_counter("dotnet.thread_pool.queue.length", unit="{work_item}",
                                     callbacks=[lambda o: [Observation(3)]])
pause_time.add(0.25)
# Java with its GC durations recorded in milliseconds.
jvm, jm = app("jvm-ms-app", "java")
gc = jm.create_histogram("jvm.gc.duration", unit="ms", explicit_bucket_boundaries_advisory=[10, 100, 1000])
jvm_pauses = {"G1 Young Generation": [5, 20], "G1 Old Generation": [500]}
for name, values in jvm_pauses.items():
    for v in values:
        gc.record(v, {"jvm.gc.name": name, "jvm.gc.action": "end of GC"})
flush(dotnet, jvm)
phase(2)
wait()

for v in round2:
    sched.record(v)
pause_time.add(0.125)
flush(go, dotnet)
phase(3)
json.dump({
    "sched_round1": statistics(round1),
    "sched_round2": statistics(round2),
    "sched_cumulative": statistics(round1 + round2),
    "go_pause_seconds": sum(go_pauses),
    "go_pauses": len(go_pauses),
    "dotnet_pause_round1": 0.25,
    "dotnet_pause_total": 0.375,
    "dotnet_threads": 12,
    "dotnet_queue": 3,
    "jvm_ms": {k: [sum(v) / 1000, len(v)] for k, v in jvm_pauses.items()},
    "jvm_max_bound": 1.0,
    "go_max_bound": 0.01,
}, sys.stdout)
print(flush=True)
wait()
# Shutting down exports once more: Go's cumulative histogram again, with no new observation.
for mp in (go, dotnet, jvm):
    mp.shutdown()
phase(4)
