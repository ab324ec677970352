"""Grafana dashboards as code (grafana-foundation-sdk's typed builders, not hand-written JSON).

    python monitoring/dashboards.py            # write monitoring/dashboards/*.json
    python monitoring/dashboards.py --check    # exit 1 if the committed JSON is not what this makes

Four dashboards: the overview (the five alert signals, each with its alert's threshold), the
gateway, the log (relay and projection lag) and the worker pool. The overview plots the very
series the alerts compare (the recording rules of monitoring/alert-rules.yml). Every panel uses
the dashboard's ``datasource`` variable, so the JSON fits any Grafana with a Prometheus source;
monitoring/grafana/provisioning/ provisions them for the staging stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphTresholdsStyleMode  # (sic)
from grafana_foundation_sdk.models.dashboard import DataSourceRef, DashboardCursorSync, Threshold, ThresholdsMode

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
API = 'route!~"/metrics|/healthz|/readyz"'  # probes and scrapes are not traffic (as in the rules)


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    return q.legend_format(legend) if legend else q


def thresholds(limit: float | None) -> dashboard.ThresholdsConfig:
    steps = [Threshold(value=None, color="green")]
    if limit is not None:
        steps.append(Threshold(value=limit, color="red"))
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)


def graph(title: str, queries: list[tuple[str, str]], unit: str, *, limit: float | None = None, description: str = "",
          width: int = 12, minimum: float | None = 0) -> timeseries.Panel:  # fmt: skip
    """A time series; with ``limit``, the alert's threshold drawn as a red dashed line."""
    panel = timeseries.Panel().title(title).datasource(DATASOURCE).unit(unit).height(8).span(width).fill_opacity(10)
    if description:
        panel = panel.description(description)
    if minimum is not None:
        panel = panel.min(minimum)
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + i)))
    panel = panel.thresholds(thresholds(limit))
    if limit is not None:
        panel = panel.thresholds_style(GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED))
    return panel


def single(title: str, expr: str, unit: str, limit: float | None, *, width: int = 4, description: str = "") -> stat.Panel:
    panel = stat.Panel().title(title).datasource(DATASOURCE).unit(unit).height(4).span(width).with_target(query(expr))
    if description:
        panel = panel.description(description)
    return panel.thresholds(thresholds(limit))


def base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    datasource = dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["taskstream"])
        .time("now-3h", "now")
        .refresh("30s")
        .timezone("utc")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource)
        .readonly()
    )


# The five alert signals: (title, recorded series, unit, threshold, alert and its duration).
SIGNALS = [
    ("Error rate (5xx share)", "taskstream:http_error_ratio:rate5m", "percentunit", 0.05, "HighErrorRate: > 5 % for 5 min"),
    ("Latency p99", "taskstream:http_request_duration_seconds:p99_rate5m", "s", 2.0, "HighLatencyP99: > 2 s for 10 min"),
    ("Task queue depth", "taskstream:task_queue_depth:max", "short", 1000.0, "TaskQueueDeep: > 1000 for 5 min"),
    ("Worker utilisation", "taskstream:worker_utilisation:ratio", "percentunit", 0.9, "WorkerPoolSaturated: > 90 % for 15 min"),
    ("Disk usage (fullest data folder)", "max(taskstream_disk_usage_ratio)", "percentunit", 0.8, "DiskAlmostFull: > 80 %"),
]


def overview() -> dashboard.Dashboard:
    board = base("taskstream-overview", "taskstream / overview", "The five alert signals against their thresholds.")
    board = board.with_row(dashboard.Row("Now"))
    board = board.with_panel(single("Alerts firing", 'count(ALERTS{alertstate="firing"}) or vector(0)', "short", 1, width=4))
    for title, expr, unit, limit, alert in SIGNALS:
        board = board.with_panel(single(title, expr, unit, limit, width=4, description=alert))
    board = board.with_row(dashboard.Row("Over time"))
    for title, expr, unit, limit, alert in SIGNALS[:4]:
        board = board.with_panel(graph(title, [(expr, title)], unit, limit=limit, description=f"Alert {alert}"))
    _, _, unit, limit, alert = SIGNALS[4]
    board = board.with_panel(
        graph("Disk usage by data folder", [("taskstream_disk_usage_ratio", "{{instance}} {{path}}")], unit, limit=limit,
              description=f"Alert {alert}", width=24)  # fmt: skip
    )
    return board


def gateway() -> dashboard.Dashboard:
    board = base("taskstream-gateway", "taskstream / gateway", "HTTP traffic, errors, latency, the database pool and the cache.")
    board = board.with_row(dashboard.Row("Traffic and errors"))
    board = board.with_panel(graph("Requests by route", [(f"sum by (method, route) (rate(taskstream_http_requests_total{{{API}}}[5m]))", "{{method}} {{route}}")], "reqps"))
    board = board.with_panel(graph("Requests by status class", [(f"sum by (status_class) (rate(taskstream_http_requests_total{{{API}}}[5m]))", "{{status_class}}")], "reqps"))
    board = board.with_panel(
        graph("5xx share by route", [(f'sum by (route) (rate(taskstream_http_requests_total{{status_class="5xx",{API}}}[5m])) / sum by (route) (rate(taskstream_http_requests_total{{{API}}}[5m]))', "{{route}}")],
              "percentunit", limit=0.05)  # fmt: skip
    )
    board = board.with_panel(graph("4xx share by route", [(f'sum by (route) (rate(taskstream_http_requests_total{{status_class="4xx",{API}}}[5m])) / sum by (route) (rate(taskstream_http_requests_total{{{API}}}[5m]))', "{{route}}")], "percentunit"))
    board = board.with_row(dashboard.Row("Latency"))
    quantiles = [
        (f"histogram_quantile({q}, sum by (le) (rate(taskstream_http_request_duration_seconds_bucket{{{API}}}[5m])))", f"p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]
    board = board.with_panel(graph("Latency p50 / p95 / p99", quantiles, "s", limit=2.0))
    board = board.with_panel(
        graph("Latency p99 by route", [(f"histogram_quantile(0.99, sum by (le, route) (rate(taskstream_http_request_duration_seconds_bucket{{{API}}}[5m])))", "{{route}}")], "s", limit=2.0)
    )
    board = board.with_row(dashboard.Row("Dependencies"))
    board = board.with_panel(
        graph("Database pool", [(f'sum by (state) (taskstream_db_pool_connections{{job="gateway",state="{s}"}})', s) for s in ("size", "in_use", "waiting", "max")], "short",
              description="psycopg_pool statistics: open connections, in use, requests waiting for one, the ceiling")  # fmt: skip
    )
    board = board.with_panel(
        graph("Cache results", [("sum by (result) (rate(taskstream_cache_requests_total[5m]))", "{{result}}")], "reqps", description="hits, misses and fallbacks of the gateway's cache")
    )
    return board


def log() -> dashboard.Dashboard:
    board = base("taskstream-log", "taskstream / log", "The relay (table to Kafka) and the projections (Kafka to read models): how far behind.")
    board = board.with_row(dashboard.Row("Relay"))
    board = board.with_panel(
        graph("Relay backlog (events)", [("max(taskstream_relay_lag_events)", "events past the relay checkpoint")], "short",
              description="Counted in PostgreSQL: events in the table past the relay's checkpoint")  # fmt: skip
    )
    board = board.with_panel(
        graph("Relay lag, commit to broker ack", [(f"histogram_quantile({q}, sum by (le) (rate(taskstream_relay_lag_seconds_bucket[5m])))", f"p{int(q * 100)}") for q in (0.5, 0.99)], "s")
    )
    board = board.with_panel(graph("Events published", [("sum(rate(taskstream_relay_lag_seconds_count[5m]))", "events/s")], "ops", width=24))
    board = board.with_row(dashboard.Row("Projections"))
    board = board.with_panel(
        graph("Projection lag (events)", [("max by (projection) (taskstream_projection_lag_events)", "{{projection}}")], "short",
              description="Computed from PostgreSQL positions (not broker offsets)")  # fmt: skip
    )
    board = board.with_panel(graph("Projection lag (seconds)", [("max by (projection) (taskstream_projection_lag_seconds)", "{{projection}}")], "s"))
    return board


def workers() -> dashboard.Dashboard:
    board = base("taskstream-workers", "taskstream / worker pool", "Utilisation of the worker slots and the queue in front of them.")
    board = board.with_panel(graph("Worker utilisation", [("taskstream:worker_utilisation:ratio", "busy / slots")], "percentunit", limit=0.9))
    board = board.with_panel(graph("Task queue depth", [("taskstream:task_queue_depth:max", "tasks waiting to start")], "short", limit=1000.0))
    board = board.with_panel(
        graph("Slots", [("sum(taskstream_worker_busy_slots)", "busy"), ("sum(taskstream_worker_slots)", "total")], "short")
    )
    board = board.with_panel(graph("Busy slots by worker", [("sum by (instance) (taskstream_worker_busy_slots)", "{{instance}}")], "short"))
    board = board.with_panel(
        graph("Database pool (workers)", [(f'sum by (state) (taskstream_db_pool_connections{{job="worker",state="{s}"}})', s) for s in ("size", "in_use", "waiting", "max")], "short")
    )
    board = board.with_panel(graph("Disk usage (workers' data folders)", [('taskstream_disk_usage_ratio{job="worker"}', "{{instance}} {{path}}")], "percentunit", limit=0.8))
    board = board.with_panel(
        graph("Consumer lag (workers)", [("max(taskstream_worker_consumer_lag_events)", "submissions not consumed")], "short",
              description="Computed from PostgreSQL: task.submitted events without a worker_tasks row (not broker offsets)")  # fmt: skip
    )
    board = board.with_panel(graph("Consumer lag (workers, seconds)", [("max(taskstream_worker_consumer_lag_seconds)", "oldest unconsumed")], "s"))
    return board


DASHBOARDS = {"overview": overview, "gateway": gateway, "log": log, "workers": workers}


def build(make: object) -> object:
    """The built dashboard, its panels numbered 1, 2, ... in order (Grafana wants unique ids)."""
    board = make().build()  # type: ignore[operator]
    for number, panel in enumerate(board.panels or [], start=1):
        setattr(panel, "id_val" if hasattr(panel, "id_val") else "id", number)
    return board


def render() -> dict[str, str]:
    """File name -> JSON text, deterministic (sorted keys, fixed indentation)."""
    return {f"{name}.json": json.dumps(build(make), cls=JSONEncoder, indent=2, sort_keys=True) + "\n" for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    rendered = render()
    if args.check:
        stale = [name for name, text in rendered.items() if not (args.out / name).exists() or (args.out / name).read_text() != text]
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in rendered)
        for name in stale + extra:
            print(f"{args.out / name}: not what monitoring/dashboards.py makes; run it", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
