"""Exports known telemetry to vitals with the real OpenTelemetry Python SDK and prints the ground truth.

python send.py --transport grpc|http|json --endpoint http://127.0.0.1:PORT --scenario red|metrics|logs
               [--service NAME] [--gzip] [--spans N]

The ground truth (what was sent) is printed as one JSON object on stdout.
"""
import argparse
import json
import logging
import random
import sys
import time

from opentelemetry.sdk.resources import Resource

p = argparse.ArgumentParser()
p.add_argument("--transport", required=True, choices=["grpc", "http", "json"])
p.add_argument("--endpoint", required=True)
p.add_argument("--scenario", required=True, choices=["red", "metrics", "logs", "runtime", "latency"])
p.add_argument("--service", default="shop")
p.add_argument("--gzip", action="store_true")
p.add_argument("--spans", type=int, default=200)
a = p.parse_args()

resource = Resource.create({"service.name": a.service, "service.instance.id": "i-1", "deployment.environment": "test"})


def exporters():
    if a.transport == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc import _log_exporter as lg
        from opentelemetry.exporter.otlp.proto.grpc import metric_exporter as me
        from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as te
        from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
        kw = {"endpoint": a.endpoint, "insecure": True}
        if a.gzip:
            kw["compression"] = Compression.Gzip
        return te.OTLPSpanExporter(**kw), me.OTLPMetricExporter, lg.OTLPLogExporter(**kw), kw
    if a.transport == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.common.http import Compression
        from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
    if a.transport == "json":
        comp = Compression.GZIP if a.gzip else Compression.NONE
    else:
        comp = Compression.Gzip if a.gzip else Compression.NoCompression
    mk = lambda path: {"endpoint": a.endpoint + path, "compression": comp}
    return OTLPSpanExporter(**mk("/v1/traces")), OTLPMetricExporter, OTLPLogExporter(**mk("/v1/logs")), mk("/v1/metrics")


span_exporter, metric_exporter_cls, log_exporter, metric_kw = exporters()


def red():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(span_exporter, max_export_batch_size=64))
    tracer = tp.get_tracer("vitals-test")
    rng = random.Random(42)
    truth = {"requests": {}, "durations": {}, "ignored": 0, "trace_ids": []}
    t0 = 1_700_000_000_000_000_000
    for i in range(a.spans):
        route = "/users/{id}" if i % 3 else "/orders"
        # Log-uniform durations from 1 ms to 2 s.
        dur_ns = int(10 ** rng.uniform(6, 9.3))
        error = (i % 10 == 0)
        http_5xx = (i % 17 == 0)
        attrs = {"http.route": route, "http.request.method": "GET",
                 "http.response.status_code": 503 if http_5xx else 200}
        span = tracer.start_span("GET " + route, kind=SpanKind.SERVER, attributes=attrs, start_time=t0 + i * 10_000_000)
        if error:
            span.set_status(Status(StatusCode.ERROR, "boom"))
        span.end(end_time=t0 + i * 10_000_000 + dur_ns)
        truth["trace_ids"].append(format(span.get_span_context().trace_id, "032x"))
        outcome = "error" if (error or http_5xx) else "ok"
        key = route + "|" + outcome
        truth["requests"][key] = truth["requests"].get(key, 0) + 1
        truth["durations"].setdefault(route, []).append(dur_ns / 1e9)
        # A client span and an internal span: not requests, never counted.
        tracer.start_span("db", kind=SpanKind.CLIENT, start_time=t0).end(end_time=t0 + 1000)
        tracer.start_span("work", kind=SpanKind.INTERNAL, start_time=t0).end(end_time=t0 + 1000)
        truth["ignored"] += 2
    ok = tp.force_flush(30_000)
    tp.shutdown()
    truth["flushed"] = ok
    return truth


def metrics():
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View

    exporter = metric_exporter_cls(**metric_kw, preferred_temporality={Counter: AggregationTemporality.DELTA})
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    views = [View(instrument_name="latency.exp", aggregation=ExponentialBucketHistogramAggregation(max_size=40))]
    mp = MeterProvider(resource=resource, metric_readers=[reader], views=views)
    m = mp.get_meter("vitals-test")
    orders = m.create_counter("orders", unit="{order}", description="Orders placed")
    queue = m.create_up_down_counter("queue.size", unit="{item}")
    hist = m.create_histogram("http.server.request.duration", unit="s",
                              explicit_bucket_boundaries_advisory=[0.1, 0.5, 1.0])
    exph = m.create_histogram("latency.exp", unit="s")
    hostile = 'a"b\\c\nd}{,='
    m.create_observable_gauge("db.client.connection.usage.ratio", unit="1",
                              callbacks=[lambda o: [Observation(0.75, {"pool": hostile})]])
    # Two export rounds: delta counters must add up across them.
    orders.add(3, {"route": "/a"})
    queue.add(5)
    for v in [0.05, 0.2, 0.7, 3.0]:
        hist.record(v, {"http.route": "/a"})
    for v in [1, 2, 4, 100]:
        exph.record(v)
    ok1 = mp.force_flush(30_000)
    orders.add(4, {"route": "/a"})
    orders.add(1, {"route": hostile})
    queue.add(-2)
    ok2 = mp.force_flush(30_000)
    mp.shutdown()
    return {"flushed": ok1 and ok2, "orders_a": 7, "orders_hostile": 1, "hostile": hostile, "queue": 3,
            "hist_count": 4, "hist_sum": 3.95, "hist_le": {"0.1": 1, "0.5": 2, "1": 3, "+Inf": 4},
            "exp_count": 4, "exp_sum": 107, "gauge": 0.75}


def logs():
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=lp)
    log = logging.getLogger("vitals-test")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    for _ in range(3):
        log.info("hello")
    for _ in range(2):
        log.warning("careful")
    log.error("broken")
    ok = lp.force_flush(30_000)
    lp.shutdown()
    return {"flushed": ok, "info": 3, "warn": 2, "error": 1}


def runtime():
    """JVM GC pauses and DB pools as the semantic conventions name them, with known values."""
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(metric_exporter_cls(**metric_kw), export_interval_millis=3_600_000)
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    m = mp.get_meter("vitals-runtime-test")
    gc = m.create_histogram("jvm.gc.duration", unit="s", explicit_bucket_boundaries_advisory=[0.01, 0.1, 1, 10])
    pauses = {"G1 Young Generation": [0.01, 0.02, 0.03], "G1 Old Generation": [0.5]}
    concurrent = {"G1 Concurrent GC": [2.0, 3.0]}
    for name, values in list(pauses.items()) + list(concurrent.items()):
        for v in values:
            gc.record(v, {"jvm.gc.name": name, "jvm.gc.action": "end of minor GC"})
    pool = {"db.client.connection.pool.name": "orders-db"}
    m.create_observable_up_down_counter("db.client.connection.count", unit="{connection}", callbacks=[lambda o: [
        Observation(7, {**pool, "db.client.connection.state": "used"}),
        Observation(3, {**pool, "db.client.connection.state": "idle"})]])
    m.create_observable_up_down_counter("db.client.connection.max", unit="{connection}", callbacks=[lambda o: [Observation(10, pool)]])
    m.create_observable_up_down_counter("db.client.connection.pending_requests", unit="{request}", callbacks=[lambda o: [Observation(2, pool)]])
    legacy = {"pool.name": "legacy"}
    m.create_observable_up_down_counter("db.client.connections.usage", unit="{connection}", callbacks=[lambda o: [
        Observation(4, {**legacy, "state": "used"}), Observation(1, {**legacy, "state": "idle"})]])
    m.create_observable_up_down_counter("db.client.connections.max", unit="{connection}", callbacks=[lambda o: [Observation(8, legacy)]])
    ok = mp.force_flush(30_000)
    mp.shutdown()
    return {"flushed": ok, "pauses": {k: [sum(v), len(v)] for k, v in pauses.items()}, "concurrent": list(concurrent),
            "db_used": 7, "db_max": 10, "db_pending": 2}


def latency():
    """--spans SERVER spans on one route with log-normal durations (median 80 ms, sigma 0.7, seed 7), and
    the same durations recorded into two exponential histogram metrics: checkout.duration once,
    http.server.request.duration twice (two exports 2.5 s apart); the durations are the truth."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(span_exporter, max_queue_size=a.spans + 1024,
                                             max_export_batch_size=512, schedule_delay_millis=200))
    tracer = tp.get_tracer("vitals-test")
    reader = PeriodicExportingMetricReader(metric_exporter_cls(**metric_kw), export_interval_millis=3_600_000)
    views = [View(instrument_name=n, aggregation=ExponentialBucketHistogramAggregation())
             for n in ("checkout.duration", "http.server.request.duration")]
    mp = MeterProvider(resource=resource, metric_readers=[reader], views=views)
    hist = mp.get_meter("vitals-test").create_histogram("checkout.duration", unit="s")
    # The app's own HTTP server histogram, exponential: what the dashboards fall back to without spans.
    http_hist = mp.get_meter("vitals-test").create_histogram("http.server.request.duration", unit="s")
    rng = random.Random(7)
    t0 = 1_700_000_000_000_000_000
    durations = []
    for i in range(a.spans):
        dur_ns = max(1000, int(rng.lognormvariate(-2.5257, 0.7) * 1e9))
        attrs = {"http.route": "/checkout", "http.request.method": "POST", "http.response.status_code": 200}
        span = tracer.start_span("POST /checkout", kind=SpanKind.SERVER, attributes=attrs, start_time=t0 + i * 1000)
        span.end(end_time=t0 + i * 1000 + dur_ns)
        durations.append(dur_ns / 1e9)
        hist.record(dur_ns / 1e9, {"http.route": "/checkout"})
        http_hist.record(dur_ns / 1e9, {"http.route": "/checkout"})
    ok = tp.force_flush(60_000) and mp.force_flush(30_000)
    # The same durations once more into http.server.request.duration, exported after a pause a scrape every
    # second sees: its rate over any window that holds both exports is exactly these durations.
    time.sleep(2.5)
    for d in durations:
        http_hist.record(d, {"http.route": "/checkout"})
    ok = ok and mp.force_flush(30_000)
    tp.shutdown()
    mp.shutdown()
    return {"flushed": ok, "durations": durations}


truth = {"red": red, "metrics": metrics, "logs": logs, "runtime": runtime, "latency": latency}[a.scenario]()
json.dump(truth, sys.stdout)
sys.exit(0 if truth.get("flushed") else 3)
