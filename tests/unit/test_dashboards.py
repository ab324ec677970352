"""The committed dashboards are what monitoring/dashboards.py makes; they watch the alert
signals at the alerts' thresholds, name only metrics that exist, and their PromQL parses."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.tools import MONITORING, ROOT, run, tool

# Every metric the system exports (or, for processes built elsewhere, has agreed to export).
KNOWN = {
    "taskstream_http_request_duration_seconds_bucket", "taskstream_http_requests_total",
    "taskstream_task_queue_depth", "taskstream_worker_busy_slots", "taskstream_worker_slots",
    "taskstream_projection_lag_events", "taskstream_projection_lag_seconds", "taskstream_cache_requests_total",
    "taskstream_relay_lag_seconds_bucket", "taskstream_relay_lag_seconds_count", "taskstream_relay_lag_events",
    "taskstream_db_pool_connections", "taskstream_disk_usage_ratio",
    "taskstream_worker_consumer_lag_events", "taskstream_worker_consumer_lag_seconds",
}  # fmt: skip
BOUNDED = {"le", "method", "route", "status_class", "state", "result", "projection", "instance"}


def load_generator():  # noqa: ANN201 - the module
    spec = importlib.util.spec_from_file_location("monitoring_dashboards", MONITORING / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((MONITORING / "dashboards").glob("*.json"))}


def exprs(board: dict) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_committed_json_is_what_the_code_makes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(MONITORING / "dashboards.py"), "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    made = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text() for p in (MONITORING / "dashboards").glob("*.json")}
    assert set(made) == {"overview.json", "gateway.json", "log.json", "workers.json"}
    assert made == committed, "run `python monitoring/dashboards.py` and commit the JSON"


def test_check_mode_notices_a_hand_edit(tmp_path: Path) -> None:
    generator = load_generator()
    assert generator.main(["--out", str(tmp_path)]) == 0
    assert generator.main(["--out", str(tmp_path), "--check"]) == 0
    edited = tmp_path / "gateway.json"
    edited.write_text(edited.read_text().replace("taskstream / gateway", "edited by hand"))
    assert generator.main(["--out", str(tmp_path), "--check"]) == 1


def test_overview_shows_each_alert_signal_at_its_threshold() -> None:
    overview = dashboards()["overview"]
    alerts = [r for g in yaml.safe_load((MONITORING / "alert-rules.yml").read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) == 5
    for alert in alerts:
        signal, threshold = (part.strip() for part in alert["expr"].split(" > "))
        panels = [p for p in overview["panels"] if any(signal in t["expr"] for t in p.get("targets", []))]
        assert panels, alert["alert"]
        for panel in panels:
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps[-1]["value"] == float(threshold), (alert["alert"], panel["title"])


def test_every_panel_uses_the_datasource_variable_and_known_metrics() -> None:
    for name, board in dashboards().items():
        assert board["uid"] == f"taskstream-{name}" and board["templating"]["list"][0]["name"] == "datasource"
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for expr in exprs(board):
            unknown = set(re.findall(r"\btaskstream_[a-z_]+", expr)) - KNOWN
            assert not unknown, (name, expr)
            for grouping in re.findall(r"by \(([^)]*)\)", expr):  # bounded labels only
                assert {g.strip() for g in grouping.split(",")} <= BOUNDED, (name, expr)


def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses each panel's PromQL (as a recording rule: promtool has no offline query check)."""
    rules = [{"record": f"dashboard:expr_{i}:check", "expr": e} for i, e in enumerate(e for b in dashboards().values() for e in exprs(b))]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = run(tool("promtool"), "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout
