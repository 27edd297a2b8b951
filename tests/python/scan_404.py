"""A routeless HTTP server under a URL scan, traced with the real OpenTelemetry Python SDK.

python scan_404.py --endpoint http://127.0.0.1:PORT --scans N --routed M

Sends N SERVER spans for random 404 paths that no route matched (span name "GET /<random path>", as servers
without a router name them, no http.route), then M spans of the real route /users/{id}. Prints the ground
truth as JSON.
"""
import argparse
import json
import random
import string

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

p = argparse.ArgumentParser()
p.add_argument("--endpoint", required=True)
p.add_argument("--service", default="scanned")
p.add_argument("--scans", type=int, default=2100)
p.add_argument("--routed", type=int, default=50)
a = p.parse_args()

tp = TracerProvider(resource=Resource.create({"service.name": a.service}))
tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=a.endpoint + "/v1/traces"), max_export_batch_size=256))
tracer = tp.get_tracer("scan-404")
rng = random.Random(7)
paths = set()
for _ in range(a.scans):
    path = "/" + "".join(rng.choice(string.ascii_lowercase) for _ in range(12)) + ".php"
    paths.add(path)
    attrs = {"http.request.method": "GET", "url.path": path, "http.response.status_code": 404}
    tracer.start_span("GET " + path, kind=SpanKind.SERVER, attributes=attrs).end()
for i in range(a.routed):
    attrs = {"http.request.method": "GET", "http.route": "/users/{id}", "url.path": f"/users/{i}",
             "http.response.status_code": 200}
    tracer.start_span("GET /users/{id}", kind=SpanKind.SERVER, attributes=attrs).end()
tp.shutdown()
print(json.dumps({"scans": a.scans, "distinct_paths": len(paths), "routed": a.routed}))
