"""Exports one batch of spans over and over with the real OpenTelemetry Python SDK's OTLP/HTTP exporter
and prints how each export went, as a client under test would see it.

python export_loop.py --endpoint http://127.0.0.1:PORT --seconds S [--every 0.25] [--timeout 5]

Prints one JSON object: {"ok": N, "failed": N, "latencies": [seconds per export]}.
"""
import argparse
import json
import logging
import sys
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

p = argparse.ArgumentParser()
p.add_argument("--endpoint", required=True)
p.add_argument("--seconds", type=float, required=True)
p.add_argument("--every", type=float, default=0.25)
p.add_argument("--timeout", type=float, default=5.0)
a = p.parse_args()
logging.disable(logging.CRITICAL)

memory = InMemorySpanExporter()
tp = TracerProvider(resource=Resource.create({"service.name": "probe-starvation"}))
tp.add_span_processor(SimpleSpanProcessor(memory))
tracer = tp.get_tracer("vitals-test")
for i in range(20):
    tracer.start_span("GET /items", kind=SpanKind.SERVER, attributes={"http.route": "/items"}).end()
spans = memory.get_finished_spans()

exporter = OTLPSpanExporter(endpoint=a.endpoint + "/v1/traces", timeout=a.timeout)
out = {"ok": 0, "failed": 0, "latencies": []}
end = time.monotonic() + a.seconds
while time.monotonic() < end:
    t = time.monotonic()
    result = exporter.export(spans)
    took = time.monotonic() - t
    out["latencies"].append(took)
    if result == SpanExportResult.SUCCESS and took <= a.timeout:
        out["ok"] += 1
    else:
        out["failed"] += 1
    time.sleep(max(0.0, a.every - took))
json.dump(out, sys.stdout)
