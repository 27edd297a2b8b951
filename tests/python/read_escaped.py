"""Reads vitals' /metrics in each escaping scheme with prometheus_client's parsers (which implement the
escaping spec) and prints what they found as JSON.

python read_escaped.py http://127.0.0.1:PORT/metrics

For each format (text, openmetrics) and each escaping= (none, allow-utf-8, underscores, dots, values):
the family names found, and for allow-utf-8 and underscores each family's label names, count (histograms)
or value (gauges). For dots and values also the names prometheus_client's own escape_metric_name gives
the allow-utf-8 answer's names, which the answers must equal.
"""
import json
import sys
import urllib.request

from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.openmetrics.exposition import escape_metric_name
from prometheus_client import parser as text_parser

url = sys.argv[1]
SCHEMES = [None, "allow-utf-8", "underscores", "dots", "values"]
out = {"content_types": {}}


def fetch(accept):
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers.get("Content-Type"), r.read().decode("utf-8")


for fmt in ["text", "openmetrics"]:
    res = {}
    for scheme in SCHEMES:
        if fmt == "text":
            accept = "text/plain;version=1.0.0" if scheme else "text/plain;version=0.0.4"
            parse = text_parser.text_string_to_metric_families
        else:
            accept = "application/openmetrics-text;version=1.0.0"
            parse = om_parser.text_string_to_metric_families
        if scheme:
            accept += ";escaping=" + scheme
        ct, body = fetch(accept)
        if fmt == "text" and scheme:
            out["content_types"][scheme] = ct
        families = {}
        for fam in parse(body):
            info = {"type": fam.type, "labels": sorted({k for s in fam.samples for k in s.labels
                                                         if k not in ("le", "quantile")})}
            for s in fam.samples:
                if s.name.endswith("_count") and fam.type == "histogram":
                    info["count"] = info.get("count", 0) + s.value
                elif fam.type == "gauge":
                    info["value"] = s.value
            families[fam.name] = info
        key = scheme or "none"
        res[key + "_names"] = sorted(families)
        if scheme in ("allow-utf-8", "underscores"):
            res[scheme] = families
    for scheme in ("dots", "values"):
        res[scheme + "_expected"] = sorted(escape_metric_name(n, scheme) for n in res["allow-utf-8_names"])
        res[scheme + "_expected"] = sorted(n.strip('"') for n in res[scheme + "_expected"])
    out[fmt] = res
json.dump(out, sys.stdout)
