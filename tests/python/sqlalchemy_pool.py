"""A SQLAlchemy app whose connection pool runs full, instrumented by opentelemetry-instrumentation-sqlalchemy.

python sqlalchemy_pool.py --endpoint http://127.0.0.1:PORT --db postgresql://... [--seconds S] [--workers N]

A QueuePool of 5 connections with no overflow serves N worker threads that each hold a connection for
0.5 s at a time (`select pg_sleep(0.5)`), so with N > 5 the pool stays full and N - 5 workers wait. The
pool's own counters are the ground truth: every 100 ms the app samples `pool.checkedout()` and the number
of workers inside `engine.connect()`; the summary is printed as one JSON object on stdout when it ends.
Pool metrics reach vitals only through the instrumentation (`db.client.connections.usage`, unit
`connections`) and the SDK's OTLP/HTTP exporter. With --report-pool NAME the app also reports the pool's own
figures as the semantic conventions' `db.client.connection.count` (by state), `.max` and `.pending_requests`
under pool name NAME, read from `engine.pool` and the waiting workers when the SDK collects.
"""
import argparse
import json
import sys
import threading
import time

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from sqlalchemy import create_engine, text

p = argparse.ArgumentParser()
p.add_argument("--endpoint", required=True)
p.add_argument("--db", required=True)
p.add_argument("--seconds", type=float, default=10.0)
p.add_argument("--workers", type=int, default=8)
p.add_argument("--report-pool", default="")
a = p.parse_args()

reader = PeriodicExportingMetricReader(
    OTLPMetricExporter(endpoint=a.endpoint + "/v1/metrics"), export_interval_millis=500
)
mp = MeterProvider(resource=Resource.create({"service.name": "pool-app"}), metric_readers=[reader])
engine = create_engine(a.db, pool_size=5, max_overflow=0, pool_timeout=30, pool_logging_name="orders")
SQLAlchemyInstrumentor().instrument(engine=engine, meter_provider=mp)

lock = threading.Lock()
waiting = 0

if a.report_pool:
    from opentelemetry.metrics import Observation

    meter = mp.get_meter("pool-app")
    at = {"db.client.connection.pool.name": a.report_pool}

    def count(_options):
        used = engine.pool.checkedout()
        return [Observation(used, {**at, "db.client.connection.state": "used"}),
                Observation(engine.pool.checkedin(), {**at, "db.client.connection.state": "idle"})]

    meter.create_observable_up_down_counter("db.client.connection.count", [count], unit="{connection}")
    meter.create_observable_up_down_counter(
        "db.client.connection.max", [lambda _o: [Observation(engine.pool.size(), at)]], unit="{connection}")
    meter.create_observable_up_down_counter(
        "db.client.connection.pending_requests", [lambda _o: [Observation(waiting, at)]], unit="{request}")
stop = time.monotonic() + a.seconds


def worker():
    global waiting
    while time.monotonic() < stop:
        with lock:
            waiting += 1
        conn = engine.connect()
        with lock:
            waiting -= 1
        try:
            conn.execute(text("select pg_sleep(0.5)"))
        finally:
            conn.close()


threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.workers)]
for t in threads:
    t.start()
print("started", flush=True, file=sys.stderr)
samples = []
while time.monotonic() < stop:
    with lock:
        samples.append((engine.pool.checkedout(), waiting))
    time.sleep(0.1)
for t in threads:
    t.join(timeout=5)
mp.force_flush(10_000)
full = sum(1 for used, _ in samples if used == 5)
print(json.dumps({
    "samples": len(samples),
    "full_share": full / max(len(samples), 1),
    "mean_waiting": sum(w for _, w in samples) / max(len(samples), 1),
    "max_used": max((u for u, _ in samples), default=0),
    "pool_size": engine.pool.size(),
}), flush=True)
mp.shutdown()
