"""Builds grafana/dashboards/*.json, the vitals dashboards, from the panel lists below.

python3 grafana/build.py          write the dashboards
python3 grafana/build.py --check  exit 1 if a committed dashboard differs from what this script builds

Every panel has a unit, uses the datasource variable, and filters by the namespace/pod/service variables.
Rows follow the four questions: slow? pausing? leaking? saturated?
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEL = 'namespace=~"$namespace", pod=~"$pod"'
SVC = SEL + ', service=~"$service"'
OP = SVC + ', operation=~"$operation"'


def app_latency(q):
    # The app's own http.server.request.duration histogram, relabelled so it lines up with vitals' spans.
    legacy = ('histogram_quantile(%s, sum by (service, operation, le) (label_replace(rate(http_server_request_duration_seconds_bucket{%s, http_route=~"$operation"}[$__rate_interval]), "operation", "$1", "http_route", "(.*)")))' % (q, SVC))
    # A Prometheus 3 that asks for UTF-8 names (escaping=allow-utf-8, its default) stores it under its
    # OpenTelemetry name and attribute key; the route filter is left out there, because a quoted label name
    # would not parse in Prometheus 2.
    utf8 = ('histogram_quantile(%s, sum by (service, operation, le) (label_replace(rate({__name__=~"http\\\\.server\\\\.request\\\\.duration_seconds_bucket", %s}[$__rate_interval]), "operation", "$1", "http.route", "(.*)")))' % (q, SVC))
    # An app histogram that is exponential reaches a Prometheus scraping native histograms as one native
    # series under the family's own name, in either naming; each native form comes before its classic one.
    # The legacy-name form renames the route after the quantile: Prometheus before 2.48 drops native
    # histogram samples in label_replace. The UTF-8 names exist only on Prometheus 3, where it keeps them.
    legacy_native = ('max by (service, operation) (label_replace(histogram_quantile(%s, sum by (service, http_route) (rate(http_server_request_duration_seconds{%s, http_route=~"$operation"}[$__rate_interval]))), "operation", "$1", "http_route", "(.*)"))' % (q, SVC))
    utf8_native = ('histogram_quantile(%s, sum by (service, operation) (label_replace(rate({__name__=~"http\\\\.server\\\\.request\\\\.duration_seconds", %s}[$__rate_interval]), "operation", "$1", "http.route", "(.*)")))' % (q, SVC))
    return " or ".join([legacy_native, legacy, utf8_native, utf8])


def latency(q):
    # A Prometheus that scrapes native histograms (protobuf) keeps RED as one native series per label set;
    # one that does not keeps the classic buckets. The native form comes first, the classic one fills in.
    native = 'histogram_quantile(%s, sum by (service, operation) (rate(vitals_request_duration_seconds{%s}[$__rate_interval])))' % (q, OP)
    spans = 'histogram_quantile(%s, sum by (service, operation, le) (rate(vitals_request_duration_seconds_bucket{%s}[$__rate_interval])))' % (q, OP)
    # Spans first; the app metric fills in only the operations spans do not cover.
    return native + " or " + spans + " or " + app_latency(q)


def red_count(sel, by):
    # Request counts per second from RED's count, natively or from the classic `_count` series.
    return ('sum by (%s) (histogram_count(rate(vitals_request_duration_seconds{%s}[$__rate_interval])))'
            ' or sum by (%s) (rate(vitals_request_duration_seconds_count{%s}[$__rate_interval]))' % (by, sel, by, sel))


def panel(title, unit, targets, kind="timeseries", desc="", w=8, h=8, extra=None):
    p = {"type": kind, "title": title, "description": desc, "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "gridPos": {"w": w, "h": h},
         "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l, "datasource": {"type": "prometheus", "uid": "${datasource}"}} for i, (e, l) in enumerate(targets)]}
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    if extra:
        p["fieldConfig"]["defaults"].update(extra)
    return p


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}, "panels": []}


def variable(name, query, label, include_all=True):
    return {"name": name, "label": label, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": "StandardVariableQuery"}, "definition": query, "refresh": 2,
            "includeAll": include_all, "multi": True, "allValue": ".*", "current": {"selected": True, "text": "All", "value": "$__all"}, "sort": 1}


def dashboard(uid, title, rows, with_operation=True):
    panels, x, y = [], 0, 0
    for r_title, items in rows:
        r = row(r_title)
        r["gridPos"].update({"x": 0, "y": y})
        panels.append(r)
        y += 1
        x = 0
        for p in items:
            if x + p["gridPos"]["w"] > 24:
                x = 0
                y += 8
            p["gridPos"].update({"x": x, "y": y})
            x += p["gridPos"]["w"]
            panels.append(p)
        y += 8
    for i, p in enumerate(panels):
        p["id"] = i + 1
    templating = [{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}, "hide": 0},
                  variable("namespace", "label_values(vitals_target_up, namespace)", "Namespace"),
                  variable("pod", 'label_values(vitals_target_up{namespace=~"$namespace"}, pod)', "Pod"),
                  variable("service", 'label_values(target_info{namespace=~"$namespace", pod=~"$pod"}, service_name)', "Service")]
    if with_operation:
        templating.append(variable("operation", 'label_values({__name__=~"vitals_request_duration_seconds(_count)?", namespace=~"$namespace", pod=~"$pod", service=~"$service"}, operation)', "Operation"))
    return {"uid": uid, "title": title, "tags": ["vitals"], "timezone": "browser", "schemaVersion": 39, "version": 1, "editable": True,
            "refresh": "30s", "time": {"from": "now-1h", "to": "now"}, "templating": {"list": templating}, "panels": panels,
            "links": [{"type": "dashboards", "tags": ["vitals"], "asDropdown": True, "title": "vitals"}], "annotations": {"list": []}}


HEALTH = ("Is vitals watching the process?", [
    panel("Target attached", "bool_yes_no", [('max by (target) (vitals_target_up{%s})' % SEL, "{{target}} up")], "stat", "1 while vitals reads the target (one value per named target or pod container)", 4),
    panel("Target restarts (1h)", "short", [('sum by (target) (increase(vitals_target_restarts_total{%s}[1h]))' % SEL, "{{target}} restarts")], "stat", "New target instances in the last hour, per target", 4),
    panel("What is watched", "short", [('max by (target, pid, comm, runtime) (vitals_target_info{%s})' % SEL, "{{target}} {{comm}} pid {{pid}} ({{runtime}})")], "table", "The attached process of each target", 8),
    panel("Is vitals dropping data?", "short", [('sum(rate(vitals_exporter_series_overflow_total{%s}[$__rate_interval]))' % SEL, "overflowed/s"),
                                                 ('sum(rate(vitals_exporter_otlp_refused_requests_total{%s}[$__rate_interval]))' % SEL, "refused requests/s"),
                                                 ('sum(rate(vitals_exporter_read_errors_total{%s}[$__rate_interval]))' % SEL, "read errors/s")], desc="Overflow, refused OTLP requests, unreadable files", w=8),
])

SLOW = ("Is it slow?", [
    panel("Requests per second by operation", "reqps", [(red_count(OP, "operation"), "{{operation}}")], desc="From SERVER and CONSUMER spans"),
    panel("Error ratio by operation", "percentunit", [('(%s) / (%s)' % (red_count(OP + ', outcome="error"', "operation"), red_count(OP, "operation")), "{{operation}}")], desc="Span status ERROR or HTTP >= 500; alerts at 5% and 10%"),
    panel("Apdex (T = 100 ms)", "percentunit", [('((histogram_fraction(0, 0.1, sum by (service) (rate(vitals_request_duration_seconds{%s, outcome="ok"}[$__rate_interval]))) + histogram_fraction(0, 0.4, sum by (service) (rate(vitals_request_duration_seconds{%s, outcome="ok"}[$__rate_interval])))) / 2 * sum by (service) (histogram_count(rate(vitals_request_duration_seconds{%s, outcome="ok"}[$__rate_interval]))) / sum by (service) (histogram_count(rate(vitals_request_duration_seconds{%s}[$__rate_interval])))) or ((sum by (service) (rate(vitals_request_duration_seconds_bucket{%s, outcome="ok", le="0.1"}[$__rate_interval])) + sum by (service) (rate(vitals_request_duration_seconds_bucket{%s, outcome="ok", le="0.4"}[$__rate_interval]))) / 2 / sum by (service) (rate(vitals_request_duration_seconds_count{%s}[$__rate_interval])))' % (OP, OP, OP, OP, OP, OP, OP), "{{service}}")], desc="Satisfied <= 100 ms, tolerating <= 400 ms"),
    panel("p99 latency by operation", "s", [(latency("0.99"), "{{operation}}")], desc="Spans first, the app's http.server.request.duration as fallback", w=8),
    panel("p95 latency by operation", "s", [(latency("0.95"), "{{operation}}")], w=8),
    panel("p50 latency by operation", "s", [(latency("0.50"), "{{operation}}")], w=8),
])

QUERIES = ("Which query is slow?", [
    panel("p99 latency by query (slowest 10)", "s", [('topk(10, histogram_quantile(0.99, sum by (query, le) (rate(vitals_db_query_duration_seconds_bucket{%s}[$__rate_interval]))))' % SVC, "{{query}}")], desc="From CLIENT spans with a database system; query = db.query.summary or the statement with literals folded to ?", w=8),
    panel("Queries per second by query (busiest 10)", "ops", [('topk(10, sum by (query) (rate(vitals_db_query_duration_seconds_count{%s}[$__rate_interval])))' % SVC, "{{query}}")], w=8),
    panel("Database time per second by query", "percentunit", [('topk(10, sum by (query) (rate(vitals_db_query_duration_seconds_sum{%s}[$__rate_interval])))' % SVC, "{{query}}")], desc="Seconds spent in each query per second: where the database time goes", w=8),
    panel("N+1 runs by operation and query (10 min)", "short", [('sum by (operation, query) (increase(vitals_db_n_plus_one_total{%s}[10m]))' % OP, "{{operation}}: {{query}}")], "table", "At least 5 repeats of one query under one parent span, 50 ms or more in all; alert when it keeps happening for 10 minutes", w=12),
    panel("DB connection pools beside the queries", "percentunit", [('max by (pool) (vitals_pool_utilization_ratio{%s, kind="db"})' % SEL, "{{pool}}")], desc="A full pool makes queries wait before they start; whether the query span includes that wait depends on the instrumentation (docs/queries.md)", w=6),
    panel("Waiting for a DB connection", "short", [('max by (pool) (vitals_pool_pending{%s, kind="db"})' % SEL, "{{pool}}")], desc="Requests waiting for a connection from the pool", w=6),
])

PAUSING = ("Is it pausing?", [
    panel("Share of time in GC pauses", "percentunit", [('max by (runtime) (sum by (runtime, source) (rate(vitals_gc_pause_seconds_total{%s}[$__rate_interval])))' % SEL, "{{runtime}}")], desc="Seconds paused per second; alert above 5%"),
    panel("Longest GC pause (last minute)", "s", [('max by (runtime, source) (vitals_gc_pause_max_seconds{%s})' % SEL, "{{runtime}} ({{source}})")], desc="Upper bound when only buckets are known; alert above 100 ms"),
    panel("JVM safepoints", "s", [('sum(rate(vitals_safepoint_seconds_total{%s}[$__rate_interval]))' % SEL, "time at safepoints /s")], desc="From hsperfdata"),
    panel("CPU throttled periods", "percentunit", [('sum(rate(vitals_cgroup_cpu_throttled_periods_total{%s}[$__rate_interval])) / sum(rate(vitals_cgroup_cpu_periods_total{%s}[$__rate_interval]))' % (SEL, SEL), "throttled")], desc="Share of CFS periods in which the cgroup hit its quota"),
    panel("Pressure stalls", "percentunit", [('sum by (resource, kind, scope) (rate(vitals_pressure_stalled_seconds_total{%s}[$__rate_interval]))' % SEL, "{{resource}} {{kind}} ({{scope}})")], desc="PSI: time tasks waited for cpu, memory or io"),
    panel("Ready work waiting to run (Node event loop, Go scheduler)", "s", [('max by (runtime, statistic) (vitals_event_loop_delay_seconds{%s})' % SEL, "{{runtime}} {{statistic}}")], desc="Over the app's export interval: Node's nodejs.eventloop.delay (includes its sampling resolution, 10 ms by default: an idle loop reads about 10 ms); Go's go.schedule.duration as bucket upper bounds"),
])

LEAKING = ("Is it leaking?", [
    panel("Memory vs limit", "bytes", [('max(process_memory_usage_bytes{%s})' % SEL, "rss"), ('max(vitals_cgroup_memory_usage_bytes{%s})' % SEL, "cgroup"), ('max(vitals_cgroup_memory_limit_bytes{%s})' % SEL, "limit")], desc="Resident set, cgroup charge, cgroup limit"),
    panel("Growth per window", "Bps", [('max by (signal, window) (vitals_memory_growth_bytes_per_second{%s})' % SEL, "{{signal}} {{window}}")], desc="Robust slope; empty until a window has enough data"),
    panel("Time to limit", "s", [('min by (signal) (vitals_memory_time_to_limit_seconds{%s})' % SEL, "{{signal}}")], "stat", "At the longest ready window's growth; alert under 4 h", 4),
    panel("Leak suspected", "bool_yes_no", [('max by (signal) (vitals_memory_leak_suspected{%s})' % SEL, "{{signal}}")], "stat", "Growth above 10 MB/h in every ready window", 4),
])

SATURATED = ("Is it saturated?", [
    panel("Pool utilisation", "percentunit", [('max by (kind, pool) (vitals_pool_utilization_ratio{%s})' % SEL, "{{kind}} {{pool}}")], desc="Used / max of every pool; alert above 90%", w=12),
    panel("Waiting for a pool slot", "short", [('max by (kind, pool) (vitals_pool_pending{%s})' % SEL, "{{kind}} {{pool}}")], desc="Pending requests (DB connection pools, thread pools)", w=12),
    panel("File descriptors", "short", [('max(vitals_pool_used{%s, kind="fds"})' % SEL, "open"), ('max(vitals_pool_max{%s, kind="fds"})' % SEL, "limit")], desc="Open fds against the soft RLIMIT_NOFILE", w=6),
    panel("Threads", "short", [('max(vitals_pool_used{%s, kind="threads"})' % SEL, "threads"), ('max(vitals_pool_max{%s, kind="threads"})' % SEL, "limit")], desc="Against the pids limit or kernel.threads-max", w=6),
    panel("Accept queues", "short", [('max by (pool) (vitals_pool_used{%s, kind="accept_queue"})' % SEL, "port {{pool}} queued"), ('max by (pool) (vitals_pool_max{%s, kind="accept_queue"})' % SEL, "port {{pool}} backlog")], desc="Connections waiting to be accepted per listening port", w=6),
    panel("CPU vs quota", "short", [('max(vitals_pool_used{%s, kind="cpu"})' % SEL, "cores used"), ('max(vitals_cgroup_cpu_limit_cores{%s})' % SEL, "quota")], desc="Cores in use against the cgroup CPU quota", w=6),
])

HINTS = ("What should the requests and limits be?", [
    panel("CPU: use, recommended request, limit", "short", [('sum(rate(process_cpu_time_seconds_total{%s}[$__rate_interval]))' % SEL, "cores used"),
                                                           ('max(vitals_recommendation_cores{%s, resource="cpu_request"})' % SEL, "recommended request"),
                                                           ('max(vitals_cgroup_cpu_limit_cores{%s})' % SEL, "limit")], desc="Request: p90 of per-second use over vitals' history plus 15% (docs/hints.md)", w=8),
    panel("Does the CPU limit throttle?", "percentunit", [('max(vitals_recommendation_throttled_ratio{%s, resource="cpu_limit"})' % SEL, "throttled periods over the history")], desc="Share of CFS periods throttled since vitals attached; above 10% the limit is worth raising", w=4),
    panel("Memory: use, recommended request and limit", "bytes", [('max(process_memory_usage_bytes{%s})' % SEL, "rss"),
                                                                  ('max by (resource) (vitals_recommendation_bytes{%s, resource=~"memory_request|memory_limit"})' % SEL, "recommended {{resource}}"),
                                                                  ('max(vitals_cgroup_memory_limit_bytes{%s})' % SEL, "limit")], desc="Peak RSS plus 15%; after an OOM kill the limit is 1.2 x the limit that was hit", w=8),
    panel("History behind the hints", "s", [('min by (resource) (vitals_recommendation_history_seconds{%s})' % SEL, "{{resource}}")], "stat", "Hints give no value until 10 minutes of history (--hints-min-history)", w=4),
    panel("JVM heap that fits the limit", "bytes", [('max(vitals_recommendation_bytes{%s, resource="jvm_heap_max"})' % SEL, "recommended max heap")], "stat", "Shown only when the heap leaves less than 25% of the container limit for non-heap memory", w=8),
    panel("DB pools to raise", "short", [('max by (pool) (vitals_recommendation_connections{%s, resource="db_pool_max"})' % SEL, "{{pool}}")], "stat", "Pools full with requests waiting in half their samples: raise, or find the slow query", w=8),
    panel("File-descriptor limit to raise", "short", [('max(vitals_recommendation_files{%s, resource="fd_limit"})' % SEL, "recommended limit")], "stat", "Shown when peak fd use passes 80% of the limit", w=8),
])

PAUSE_DETAIL = [("Which collector pauses?", [
    panel("Pause time by collector", "percentunit", [('sum by (runtime, collector, source) (rate(vitals_gc_pause_seconds_total{%s}[$__rate_interval]))' % SEL, "{{collector}} ({{source}})")], desc="Seconds paused per second", w=12),
    panel("Pauses per second by collector", "ops", [('sum by (runtime, collector, source) (rate(vitals_gc_pauses_total{%s}[$__rate_interval]))' % SEL, "{{collector}} ({{source}})")], w=12),
    panel("Mean pause by collector", "s", [('sum by (collector) (rate(vitals_gc_pause_seconds_total{%s}[$__rate_interval])) / sum by (collector) (rate(vitals_gc_pauses_total{%s}[$__rate_interval]))' % (SEL, SEL), "{{collector}}")], w=12),
    panel("Safepoints per second", "ops", [('sum(rate(vitals_safepoints_total{%s}[$__rate_interval]))' % SEL, "safepoints")], w=12),
]), ("Is the scheduler in the way?", [
    panel("Run-queue wait", "percentunit", [('sum(rate(vitals_process_scheduler_wait_seconds_total{%s}[$__rate_interval]))' % SEL, "waiting for a CPU")], desc="Time the target's threads were runnable but not running", w=12),
    panel("CPU time by mode", "percentunit", [('sum by (cpu_mode) (rate(process_cpu_time_seconds_total{%s}[$__rate_interval]))' % SEL, "{{cpu_mode}}")], w=12),
])]

MEMORY_DETAIL = [("Where does memory go?", [
    panel("Resident, virtual, swap", "bytes", [('max(process_memory_usage_bytes{%s})' % SEL, "rss"), ('max(vitals_process_swap_bytes{%s})' % SEL, "swap"), ('max(vitals_process_proportional_memory_bytes{%s})' % SEL, "pss")], w=12),
    panel("Cgroup memory vs limit", "bytes", [('max(vitals_cgroup_memory_usage_bytes{%s})' % SEL, "usage"), ('max(vitals_cgroup_memory_limit_bytes{%s})' % SEL, "limit")], w=12),
    panel("Growth by signal and window", "Bps", [('max by (signal, window) (vitals_memory_growth_bytes_per_second{%s})' % SEL, "{{signal}} {{window}}")], w=12),
    panel("OOM kills (1h)", "short", [('sum(increase(vitals_cgroup_memory_oom_kills_total{%s}[1h]))' % SEL, "oom kills")], "stat", w=6),
    panel("Page faults", "ops", [('sum by (system_paging_fault_type) (rate(process_paging_faults_total{%s}[$__rate_interval]))' % SEL, "{{system_paging_fault_type}}")], w=6),
])]

SATURATION_DETAIL = [("Which pool is full?", [
    panel("Used by pool", "short", [('max by (kind, pool) (vitals_pool_used{%s})' % SEL, "{{kind}} {{pool}}")], w=12),
    panel("Capacity by pool", "short", [('max by (kind, pool) (vitals_pool_max{%s})' % SEL, "{{kind}} {{pool}}")], w=12),
    panel("Pids in the cgroup", "short", [('max(vitals_cgroup_pids{%s})' % SEL, "pids"), ('max(vitals_cgroup_pids_limit{%s})' % SEL, "limit")], w=12),
    panel("Disk I/O", "Bps", [('sum by (disk_io_direction) (rate(process_disk_io_bytes_total{%s}[$__rate_interval]))' % SEL, "{{disk_io_direction}}")], w=12),
])]

DASHBOARDS = {
    "vitals-overview.json": dashboard("vitals-overview", "vitals / overview", [HEALTH, SLOW, QUERIES, PAUSING, LEAKING, SATURATED, HINTS]),
    "vitals-pauses.json": dashboard("vitals-pauses", "vitals / pauses", PAUSE_DETAIL, with_operation=False),
    "vitals-memory.json": dashboard("vitals-memory", "vitals / memory", MEMORY_DETAIL, with_operation=False),
    "vitals-saturation.json": dashboard("vitals-saturation", "vitals / saturation", SATURATION_DETAIL, with_operation=False),
}


def main():
    check = "--check" in sys.argv
    stale = []
    for name, d in DASHBOARDS.items():
        path = os.path.join(HERE, "dashboards", name)
        text = json.dumps(d, indent=2, sort_keys=True) + "\n"
        if check:
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(name)
        else:
            open(path, "w").write(text)
    if stale:
        print("out of date (run python3 grafana/build.py):", ", ".join(stale))
        sys.exit(1)


if __name__ == "__main__":
    main()
