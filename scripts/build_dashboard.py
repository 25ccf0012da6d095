#!/usr/bin/env python3
"""Writes the Grafana dashboard (conf/grafana/provisioning/dashboards/prometheus_metrics_dashboard.json):
usage: scripts/build_dashboard.py OUT.json. Edit the panels here, not in the JSON."""
import json
import sys

DS = {"type": "prometheus", "uid": "prometheus"}
JOB = 'job="cross_encoder_server"'

panels = []
next_id = [1]


def target(expr, legend, ref):
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend, "range": True}


def thresholds(steps):
    # steps: [(value or None, color)]
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def panel(kind, title, desc, targets, pos, unit="short", steps=None, extra_defaults=None, options=None):
    refs = "ABCDEFGHIJKLMNOP"
    defaults = {"unit": unit}
    if steps:
        defaults["thresholds"] = thresholds(steps)
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
        }
        if steps:
            defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
        defaults.setdefault("color", {"mode": "palette-classic"})
    else:
        defaults.setdefault("color", {"mode": "thresholds"})
    if extra_defaults:
        defaults.update(extra_defaults)
    if options is None:
        if kind == "timeseries":
            options = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        else:
            options = {
                "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
                "orientation": "auto",
                "textMode": "auto",
                "colorMode": "value",
                "graphMode": "area",
                "justifyMode": "auto",
            }
    p = {
        "id": next_id[0],
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": pos[0], "y": pos[1], "w": pos[2], "h": pos[3]},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [target(e, l, refs[i]) for i, (e, l) in enumerate(targets)],
    }
    next_id[0] += 1
    panels.append(p)


GREEN = (None, "green")

# The model variable: every per-model metric carries a `model` label (the served model's
# name); panels of those metrics select the chosen models and keep one series per model.
# Requests refused before a model was known have an empty model: "All" (.*) shows them,
# a chosen model does not. Process-wide metrics (gRPC codec, CPU, GPU, scrapes) have no
# model label and ignore the variable.
M = 'model=~"$model"'
MODEL_VARIABLE = {
    "name": "model",
    "label": "Model",
    "description": "Served models (build_info's model label). Per-model panels show one "
                   "series per selected model; All also shows requests refused before a "
                   "model was known (empty model).",
    "type": "query",
    "datasource": DS,
    "definition": "label_values(build_info, model)",
    "query": {"query": "label_values(build_info, model)", "refId": "PrometheusVariableQueryEditor-VariableQuery"},
    "refresh": 2,
    "regex": "",
    "sort": 1,
    "multi": True,
    "includeAll": True,
    "allValue": ".*",
    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    "options": [],
    "hide": 0,
    "skipUrlSync": False,
}


def per_model(rule):
    """A recording rule's series for the chosen models."""
    return f"{rule}{{{M}}}"


# Row 0: stats.
panel("stat", "Requests (5m)",
      "Requests finished (scored or errored) over the last 5 minutes, all methods, per model.",
      [(f"sum by (model) (increase(request_count_total{{{M}}}[5m]))", "{{model}} requests")], (0, 0, 4, 4))
panel("stat", "Throughput (RPS)",
      "Finished requests per second over the last minute, all methods, per model.",
      [(f"sum by (model) (rate(request_count_total{{{M}}}[1m]))", "{{model}} req/s")], (4, 0, 4, 4), unit="reqps")
panel("stat", "Latency P50",
      "Median end-to-end request latency over 5m, all methods, per model (recording rule).",
      [(per_model("crossenc:request_latency_seconds:p50_5m"), "{{model}} p50")], (8, 0, 4, 4), unit="s",
      steps=[GREEN, (1, "yellow"), (2, "red")])
panel("stat", "Latency P95",
      "95th percentile of end-to-end request latency over 5m, all methods, per model "
      "(recording rule). Alert CrossencHighLatencyP95 fires above 2s for 5m.",
      [(per_model("crossenc:request_latency_seconds:p95_5m"), "{{model}} p95")], (12, 0, 4, 4), unit="s",
      steps=[GREEN, (1, "yellow"), (2, "red")])
panel("stat", "Error Ratio (5m)",
      "Share of finished requests that ended in an error over 5m, per model: all codes, and "
      "server-side codes only (what alert CrossencHighErrorRatio watches, above 5%). Requests "
      "refused before a model was known show under an empty model name (All).",
      [(per_model("crossenc:request_errors:ratio_5m"), "{{model}} all"),
       (per_model("crossenc:request_server_errors:ratio_5m"), "{{model}} server")], (16, 0, 4, 4), unit="percentunit",
      steps=[GREEN, (0.01, "yellow"), (0.05, "red")])
panel("stat", "Workers Up",
      "Workers running and ready, by model and type (worker_up summed).",
      [(f"sum by (model, worker_type) (worker_up{{{M}}})", "{{model}} {{worker_type}}")], (20, 0, 4, 4),
      steps=[(None, "red"), (1, "green")])

# Timeseries, two per row.
W, H = 12, 8
rows = [
    ("Latency Percentiles", "End-to-end request latency over all methods, per model, 1m "
     "windows (recording rules). Mean is rate(sum)/rate(count).",
     [(per_model("crossenc:request_latency_seconds:p50_1m"), "{{model}} p50"),
      (per_model("crossenc:request_latency_seconds:p95_1m"), "{{model}} p95"),
      (per_model("crossenc:request_latency_seconds:p99_1m"), "{{model}} p99"),
      (per_model("crossenc:request_latency_seconds:mean_1m"), "{{model}} mean")], "s", None),
    ("Stage Latencies", "p95 of each pipeline stage over 5m, per model (recording rules). "
     "Inference is one forward pass per batch; queue waits are per request or pair.",
     [(per_model("crossenc:tokenization_latency_seconds:p95_5m"), "{{model}} tokenization"),
      (per_model("crossenc:inference_latency_seconds:p95_5m"), "{{model}} inference (per batch)"),
      (per_model("crossenc:queue_wait_latency_seconds:p95_5m"), "{{model}} queue wait (total)"),
      (per_model("crossenc:tokenizer_queue_wait_latency_seconds:p95_5m"), "{{model}} tokenizer queue wait"),
      (per_model("crossenc:model_queue_wait_latency_seconds:p95_5m"), "{{model}} model queue wait"),
      (per_model("crossenc:scheduler_latency_seconds:p95_5m"), "{{model}} scheduler"),
      (per_model("crossenc:overhead_latency_seconds:p95_5m"), "{{model}} overhead"),
      (per_model("crossenc:pipeline_overhead_latency_seconds:p95_5m"), "{{model}} pipeline overhead")], "s", None),
    ("Requests by Method", "Finished requests per second by model and API method.",
     [(f"sum by (model, method) (rate(request_count_total{{{M}}}[1m]))", "{{model}} {{method}}")], "reqps", None),
    ("Errors by Code", "Requests that ended in an error, per second, by model and code (no "
     "series before the first error; requests refused before a model was known have an empty "
     "model), and requests refused for a missing or wrong API key, by method "
     "(auth_failures_total: process-wide, never by key).",
     [(f"sum by (model, code) (rate(request_errors_total{{{M}}}[1m]))", "{{model}} {{code}}"),
      ("sum by (method) (rate(auth_failures_total[1m]))", "no key: {{method}}")], "reqps", None),
    ("Stage Share of Request Time", "Mean latency of a stage divided by the mean end-to-end "
     "request latency over 5m, per model: roughly the share of a request's time spent there. "
     "Stages are observed per request, pair or batch and overlap, so shares need not add up "
     "to 100%.",
     [(f"{per_model('crossenc:tokenization_latency_seconds:mean_5m')} / on (job, model) {per_model('crossenc:request_latency_seconds:mean_5m')}", "{{model}} tokenization"),
      (f"{per_model('crossenc:inference_latency_seconds:mean_5m')} / on (job, model) {per_model('crossenc:request_latency_seconds:mean_5m')}", "{{model}} inference"),
      (f"{per_model('crossenc:queue_wait_latency_seconds:mean_5m')} / on (job, model) {per_model('crossenc:request_latency_seconds:mean_5m')}", "{{model}} queue wait"),
      (f"{per_model('crossenc:overhead_latency_seconds:mean_5m')} / on (job, model) {per_model('crossenc:request_latency_seconds:mean_5m')}", "{{model}} overhead")],
     "percentunit", None),
    ("IPC & gRPC Latencies", "p95 over 5m of the transfers between the supervisor and the "
     "worker processes, per model, and of gRPC (de)serialization, process-wide (recording "
     "rules).",
     [(per_model("crossenc:mp_queue_send_latency_seconds:p95_5m"), "{{model}} ipc send"),
      (per_model("crossenc:mp_queue_receive_latency_seconds:p95_5m"), "{{model}} ipc receive"),
      ("crossenc:grpc_serialize_latency_seconds:p95_5m", "grpc serialize"),
      ("crossenc:grpc_deserialize_latency_seconds:p95_5m", "grpc deserialize")], "s", None),
    ("Queue Sizes", "Items waiting for a tokenizer worker, for a model worker, and pairs "
     "waiting in the scheduler for a batch, per model.",
     [(f"sum by (model) (tokenizer_queue_size{{{M}}})", "{{model}} tokenizer queue"),
      (f"sum by (model) (model_queue_size{{{M}}})", "{{model}} model queue"),
      (f"sum by (model) (batch_queue_size{{{M}}})", "{{model}} batch queue (pairs)")], "short", None),
    ("Admission (share of limit)", "Queued pairs against --max-queued-pairs and requests in "
     "flight against --max-concurrent-requests, per model; past 100% requests get "
     "RESOURCE_EXHAUSTED. Alerts fire above 80% for 2m.",
     [(f"sum by (model) (queued_pairs{{{M}}}) / sum by (model) (queued_pairs_limit{{{M}}} > 0)", "{{model}} queued pairs"),
      (f"sum by (model) (requests_in_flight{{{M}}}) / sum by (model) (requests_in_flight_limit{{{M}}} > 0)", "{{model}} requests in flight")],
     "percentunit", [GREEN, (0.8, "red")]),
    ("Worker Latency", "Per-worker latency reported by the supervisor (worker_latency_ms), per model.",
     [(f"max by (model, worker_type, worker_id) (worker_latency_ms{{{M}}})", "{{model}} {{worker_type}} {{worker_id}}")],
     "ms", None),
    ("Worker Throughput", "Pairs processed per second by each worker of each model: from the "
     "worker_request_count_total counter, and the worker_throughput_qps gauge.",
     [(f"sum by (model, worker_type, worker_id) (rate(worker_request_count_total{{{M}}}[1m]))", "{{model}} {{worker_type}} {{worker_id}}"),
      (f"sum by (model, worker_type, worker_id) (worker_throughput_qps{{{M}}})", "{{model}} {{worker_type}} {{worker_id}} (gauge)")],
     "suffix: pairs/s", None),
    ("Worker Restarts", "Worker restarts over the last 15m by model and type. Alert "
     "CrossencWorkerRestarting fires above 3.",
     [(f"sum by (model, worker_type) (increase(worker_restarts_total{{{M}}}[15m]))", "{{model}} {{worker_type}}")],
     "short", [GREEN, (3.5, "red")]),
    ("Pipeline Throughput", "Tokenizer and inference throughput (pairs/s) and overall "
     "throughput (requests/s) per model, as the supervisor reports them.",
     [(f"sum by (model) (tokenizer_throughput_qps{{{M}}})", "{{model}} tokenizer (pairs/s)"),
      (f"sum by (model) (inference_throughput_qps{{{M}}})", "{{model}} inference (pairs/s)"),
      (f"sum by (model) (overall_throughput_qps{{{M}}})", "{{model}} overall (req/s)")], "short", None),
    ("Batch Size", "Pairs per model batch over 5m, per model.",
     [(per_model("crossenc:batch_size:mean_5m"), "{{model}} mean"),
      (f"histogram_quantile(0.50, sum by (model, le) (rate(batch_size_bucket{{{M}}}[5m])))", "{{model}} p50"),
      (f"histogram_quantile(0.95, sum by (model, le) (rate(batch_size_bucket{{{M}}}[5m])))", "{{model}} p95")],
     "short", None),
    ("Padding Ratio", "Share of the batches' padded shape (pairs x longest pair) that is "
     "padding, per model: computed for nothing by a padded GPU pass, skipped by the packed "
     "CPU pass in its dense layers. Over 5m from the token counters (padded / (padded + "
     "real)), and the padding_ratio gauge (last interval).",
     [(per_model("crossenc:padding_ratio:ratio_5m"), "{{model}} 5m, from counters"),
      (f"avg by (model) (padding_ratio{{{M}}})", "{{model}} last interval (gauge)")], "percentunit", None),
    ("Sequence Length", "Longest and mean pair length in tokens over the last interval, per model.",
     [(f"max by (model) (max_seq_length{{{M}}})", "{{model}} max"),
      (f"avg by (model) (avg_seq_length{{{M}}})", "{{model}} mean")], "short", None),
    ("Tokens per Second", "Real tokens sent to the model, and the padding of the batches' "
     "padded shape, per second, per model.",
     [(f"sum by (model) (rate(total_tokens_total{{{M}}}[1m]))", "{{model}} real"),
      (f"sum by (model) (rate(padded_tokens_total{{{M}}}[1m]))", "{{model}} padding")], "short", None),
    ("CPU & GPU", "CPU of crossenc's whole process tree (100% = one core busy) and GPU "
     "utilization; process-wide, for all models. GPU series exist only on machines with "
     "NVIDIA GPUs.",
     [("sum(cpu_percent)", "CPU (process tree)"),
      ("avg by (gpu) (gpu_utilization_pct)", "GPU {{gpu}}")], "percent", None),
    ("GPU Memory", "GPU memory used and total per GPU, process-wide (all models). Absent "
     "without NVIDIA GPUs. Alert CrossencGpuMemoryNearFull fires above 90% for 5m.",
     [("sum by (gpu) (gpu_memory_mb)", "GPU {{gpu}} used"),
      ("sum by (gpu) (gpu_memory_total_mb)", "GPU {{gpu}} total")], "mbytes", None),
    ("Memory (RSS)", "Resident memory of each worker process of the selected models, of the "
     "supervisor (no model), and of the whole process tree.",
     [(f"sum by (model, worker_type, worker_id) (process_resident_memory_bytes{{{JOB},worker_type!=\"supervisor\",{M}}})", "{{model}} {{worker_type}} {{worker_id}}"),
      (f"sum(process_resident_memory_bytes{{{JOB},worker_type=\"supervisor\"}})", "supervisor"),
      (f"sum(process_resident_memory_bytes{{{JOB}}})", "total (all models)")], "bytes", None),
    ("Scraped Samples (cardinality)", "Samples in each scrape of crossenc and series new in "
     "it (above 0 after start-up means churn); process-wide. Alert CrossencTooManySeries "
     "fires above 2000 for 10m.",
     [(f"sum(scrape_samples_scraped{{{JOB}}})", "samples per scrape"),
      (f"sum(scrape_series_added{{{JOB}}})", "series added")], "short", [GREEN, (2000, "red")]),
]
y = 4
for i, (title, desc, targets, unit, steps) in enumerate(rows):
    x = 0 if i % 2 == 0 else W
    panel("timeseries", title, desc, targets, (x, y, W, H), unit=unit, steps=steps)
    if i % 2 == 1:
        y += H

panel("stat", "Build Info", "Version, model, architecture, device and product dtype (after any fallback) of each selected model crossenc serves (build_info).",
      [(f"build_info{{{M}}}", "{{version}} / {{model}} ({{architecture}}) / {{device}} / {{dtype}}")], (0, y, 24, 3),
      options={
          "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
          "orientation": "auto",
          "textMode": "name",
          "colorMode": "none",
          "graphMode": "none",
          "justifyMode": "auto",
      })

dashboard = {
    "id": None,
    "uid": "crossenc-prometheus-metrics",
    "title": "Prometheus Metrics Dashboard",
    "description": "crossenc cross-encoder server: traffic, latency, stages, workers, queues "
                   "and resources, per served model (the model variable). Needs the "
                   "recording rules in conf/prometheus/rules (loaded by "
                   "conf/prometheus/prometheus.yml).",
    "tags": ["crossenc", "prometheus"],
    "timezone": "browser",
    "editable": True,
    "graphTooltip": 1,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "5s",
    "time": {"from": "now-15m", "to": "now"},
    "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
    "templating": {"list": [MODEL_VARIABLE]},
    "annotations": {"list": [{
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }]},
    "links": [],
    "panels": panels,
}

out = sys.argv[1]
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
