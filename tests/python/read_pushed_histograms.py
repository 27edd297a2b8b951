"""Reads the metrics requests tests/python/upstream.py recorded, decoded with the official opentelemetry-proto
classes, and reports each histogram data point of the newest request that carries a metric: its OTLP type,
fields, the bucket total, and quantiles computed here from its buckets (independently of vitals' own code).

python read_pushed_histograms.py DIR METRIC [METRIC...] --quantiles 0.5,0.95,0.99

Prints one JSON object: {METRIC: [point, ...]} from the newest request holding METRIC, each point
{"type", "attributes", "service", "count", "sum", "min", "max", "start", "time", "scale", "zero_count",
"zero_threshold", "bucket_total", "quantiles": {q: value}}.
"""
import argparse
import glob
import json
import math
import os

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("metrics", nargs="+")
p.add_argument("--quantiles", default="0.5,0.95,0.99")
a = p.parse_args()
qs = [float(q) for q in a.quantiles.split(",")]


def exponential_quantile(dp, q):
    """The q quantile of an exponential point: the bucket holding rank q*count, interpolated
    log-linearly inside it (the buckets are exponential, so equal ratios are equally likely)."""
    base = 2.0 ** (2.0 ** -dp.scale)
    rank = q * dp.count
    seen = 0
    neg = list(dp.negative.bucket_counts)
    for k in reversed(range(len(neg))):
        c = neg[k]
        if c and seen + c >= rank:
            i = dp.negative.offset + k
            lo, hi = base ** (i + 1), base ** i
            return -(lo * (hi / lo) ** ((rank - seen) / c))
        seen += c
    if dp.zero_count and seen + dp.zero_count >= rank:
        return 0.0
    seen += dp.zero_count
    for k, c in enumerate(dp.positive.bucket_counts):
        if c and seen + c >= rank:
            i = dp.positive.offset + k
            lo, hi = base ** i, base ** (i + 1)
            return lo * (hi / lo) ** ((rank - seen) / c)
        seen += c
    return math.nan


def explicit_quantile(dp, q):
    """Linear interpolation inside the explicit bucket holding rank q*count, as histogram_quantile does."""
    rank = q * dp.count
    seen = 0
    bounds = list(dp.explicit_bounds)
    for k, c in enumerate(dp.bucket_counts):
        if c and seen + c >= rank:
            lo = bounds[k - 1] if k > 0 else 0.0
            hi = bounds[k] if k < len(bounds) else bounds[-1]
            return lo + (hi - lo) * (rank - seen) / c
        seen += c
    return math.nan


def attrs(kvs):
    return {kv.key: kv.value.string_value for kv in kvs}


def report(metric, service):
    out = []
    kind = metric.WhichOneof("data")
    if kind == "exponential_histogram":
        for dp in metric.exponential_histogram.data_points:
            total = dp.zero_count + sum(dp.positive.bucket_counts) + sum(dp.negative.bucket_counts)
            out.append({
                "type": kind, "service": service, "attributes": attrs(dp.attributes),
                "temporality": metric.exponential_histogram.aggregation_temporality,
                "count": dp.count, "sum": dp.sum if dp.HasField("sum") else None,
                "min": dp.min if dp.HasField("min") else None, "max": dp.max if dp.HasField("max") else None,
                "start": dp.start_time_unix_nano, "time": dp.time_unix_nano, "scale": dp.scale,
                "zero_count": dp.zero_count, "zero_threshold": dp.zero_threshold,
                "positive_buckets": len(dp.positive.bucket_counts), "bucket_total": total,
                "quantiles": {str(q): exponential_quantile(dp, q) for q in qs},
            })
    elif kind == "histogram":
        for dp in metric.histogram.data_points:
            out.append({
                "type": kind, "service": service, "attributes": attrs(dp.attributes),
                "temporality": metric.histogram.aggregation_temporality,
                "count": dp.count, "sum": dp.sum if dp.HasField("sum") else None,
                "start": dp.start_time_unix_nano, "time": dp.time_unix_nano,
                "bucket_total": sum(dp.bucket_counts),
                "quantiles": {str(q): explicit_quantile(dp, q) for q in qs},
            })
    else:
        out.append({"type": kind, "service": service})
    return out


found = {}
bodies = sorted(glob.glob(os.path.join(a.dir, "metrics-*.bin")),
                key=lambda f: int(os.path.basename(f).split("-")[1].split(".")[0]))
for path in bodies:
    if not os.path.exists(path[:-4] + ".meta"):
        continue  # still being written
    with open(path, "rb") as f:
        req = mpb.ExportMetricsServiceRequest.FromString(f.read())
    for rm in req.resource_metrics:
        service = attrs(rm.resource.attributes).get("service.name", "")
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name in a.metrics:
                    # Later requests replace earlier ones: the newest cumulative reading wins.
                    found[m.name] = report(m, service)
print(json.dumps(found))
