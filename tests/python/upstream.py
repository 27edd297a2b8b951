"""An upstream OTLP receiver for the forwarding tests, built from the official opentelemetry-proto package's
generated messages and gRPC services. It records every request body it receives (decompressed) and answers
as told.

python upstream.py --protocol http|grpc --port PORT --dir DIR [--answer ok|400|503|partial]
                   [--cert PEM --key PEM [--client-ca PEM]]

With --cert and --key it serves TLS; with --client-ca it requires a client certificate signed by that CA.

Each received body is written to DIR/<signal>-<n>.bin (the protobuf bytes as received, after gzip), and
DIR/<signal>-<n>.meta holds the compression and headers seen. "ready" is printed once listening.
"""
import argparse
import gzip
import json
import os
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as lpb, logs_service_pb2_grpc as lgr
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb, metrics_service_pb2_grpc as mgr
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb, trace_service_pb2_grpc as tgr

p = argparse.ArgumentParser()
p.add_argument("--protocol", required=True, choices=["http", "grpc"])
p.add_argument("--port", type=int, required=True)
p.add_argument("--dir", required=True)
p.add_argument("--answer", default="ok", choices=["ok", "400", "503", "partial"])
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--client-ca")
a = p.parse_args()

lock = threading.Lock()
count = {"traces": 0, "metrics": 0, "logs": 0}


def record(signal, body, meta):
    with lock:
        n = count[signal]
        count[signal] += 1
    with open(os.path.join(a.dir, f"{signal}-{n}.bin"), "wb") as f:
        f.write(body)
    with open(os.path.join(a.dir, f"{signal}-{n}.meta"), "w") as f:
        json.dump(meta, f)


def response(signal):
    """The export response; with --answer partial it rejects one item."""
    if signal == "traces":
        r = tpb.ExportTraceServiceResponse()
        if a.answer == "partial":
            r.partial_success.rejected_spans = 1
            r.partial_success.error_message = "one span refused by the test upstream"
    elif signal == "metrics":
        r = mpb.ExportMetricsServiceResponse()
        if a.answer == "partial":
            r.partial_success.rejected_data_points = 1
            r.partial_success.error_message = "one point refused by the test upstream"
    else:
        r = lpb.ExportLogsServiceResponse()
        if a.answer == "partial":
            r.partial_success.rejected_log_records = 1
            r.partial_success.error_message = "one record refused by the test upstream"
    return r


class Http(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        signal = self.path.rsplit("/", 1)[-1]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        enc = self.headers.get("Content-Encoding", "")
        if enc == "gzip":
            body = gzip.decompress(body)
        # Decoding checks that what arrived is a valid export request of the right type.
        {"traces": tpb.ExportTraceServiceRequest, "metrics": mpb.ExportMetricsServiceRequest,
         "logs": lpb.ExportLogsServiceRequest}[signal].FromString(body)
        record(signal, body, {"encoding": enc, "headers": {k.lower(): v for k, v in self.headers.items()}})
        if a.answer == "400":
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if a.answer == "503":
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        out = response(signal).SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def grpc_handler(signal):
    import grpc

    def export(request, context):
        meta = {k: v for k, v in context.invocation_metadata()}
        record(signal, request.SerializeToString(), {"encoding": meta.get("grpc-encoding", ""), "headers": meta})
        if a.answer == "400":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused by the test upstream")
        if a.answer == "503":
            context.abort(grpc.StatusCode.UNAVAILABLE, "unavailable by the test upstream")
        return response(signal)
    return export


if a.protocol == "http":
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Http)
    if a.cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        if a.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(a.client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
else:
    import grpc

    class T(tgr.TraceServiceServicer):
        Export = staticmethod(grpc_handler("traces"))

    class M(mgr.MetricsServiceServicer):
        Export = staticmethod(grpc_handler("metrics"))

    class L(lgr.LogsServiceServicer):
        Export = staticmethod(grpc_handler("logs"))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    tgr.add_TraceServiceServicer_to_server(T(), server)
    mgr.add_MetricsServiceServicer_to_server(M(), server)
    lgr.add_LogsServiceServicer_to_server(L(), server)
    if a.cert:
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        creds = grpc.ssl_server_credentials(
            [(read(a.key), read(a.cert))],
            root_certificates=read(a.client_ca) if a.client_ca else None,
            require_client_auth=bool(a.client_ca),
        )
        server.add_secure_port(f"127.0.0.1:{a.port}", creds)
    else:
        server.add_insecure_port(f"127.0.0.1:{a.port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
    sys.exit(0)
