"""A Flask app traced by the real OpenTelemetry SDK (Flask instrumentation, OTLP/HTTP to wherever
`vitals run` points it) whose /report handler spends CPU in a native function, render_report_slowly, in
proportion to the rows asked for: few rows answer in milliseconds, many in most of a second.

python slow_flask.py PORT LIBRARY.so
"""
import ctypes
import signal
import sys

from flask import Flask, request
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# Ends with vitals, its parent, also when a failing test kills vitals without a SIGTERM (PR_SET_PDEATHSIG).
ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))

port, library = int(sys.argv[1]), sys.argv[2]
native = ctypes.CDLL(library)
native.render_report_slowly.argtypes = [ctypes.c_ulong]
native.render_report_slowly.restype = ctypes.c_ulong

provider = TracerProvider(resource=Resource.create({"service.name": "reports"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=200))
trace.set_tracer_provider(provider)

app = Flask(__name__)
FlaskInstrumentor().instrument_app(app)


@app.route("/report")
def report():
    rows = int(request.args.get("rows", "1"))
    return str(native.render_report_slowly(rows))


# One thread serves every request, so each sample is of a thread the profiler already follows.
app.run(host="127.0.0.1", port=port, threaded=False)
