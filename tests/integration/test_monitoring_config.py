"""The monitoring configuration: the five alerts as the issue states them, their promtool unit
tests (and controls proving those tests notice a changed duration or threshold), Alertmanager's
routing and secrets, and the staging Prometheus configuration."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.tools import MONITORING, run, tool

RULES = MONITORING / "alert-rules.yml"
RULE_TESTS = MONITORING / "tests" / "alert-rules.test.yml"

# name: (signal the alert compares, threshold, for, severity); the five, exactly.
FIVE = {
    "HighErrorRate": ("taskstream:http_error_ratio:rate5m", "0.05", "5m", "critical"),
    "HighLatencyP99": ("taskstream:http_request_duration_seconds:p99_rate5m", "2", "10m", "critical"),
    "TaskQueueDeep": ("taskstream:task_queue_depth:max", "1000", "5m", "warning"),
    "WorkerPoolSaturated": ("taskstream:worker_utilisation:ratio", "0.9", "15m", "warning"),
    "DiskAlmostFull": ("taskstream_disk_usage_ratio", "0.8", None, "critical"),
}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_exactly_the_five_alerts_with_severity_summary_and_runbook() -> None:
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert set(alerts) == set(FIVE)
    runbook = (MONITORING / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-")) for line in runbook.splitlines() if line.startswith("## ")}
    for name, (signal, threshold, duration, severity) in FIVE.items():
        alert = alerts[name]
        assert alert["expr"].strip() == f"{signal} > {threshold}", name
        assert alert.get("for") == duration, name
        assert alert["labels"] == {"severity": severity}, name
        assert alert["annotations"]["summary"], name
        path, _, anchor = alert["annotations"]["runbook_url"].partition("#")
        assert path == "monitoring/runbook.md" and anchor in anchors, name


def test_no_label_takes_raw_paths_or_ids() -> None:
    """The signals aggregate away instance-level labels, and group by bounded ones only."""
    recorded = {r["record"]: r["expr"] for r in rules() if "record" in r}
    for expr in recorded.values():
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            assert set(map(str.strip, grouping.split(","))) <= {"le", "route", "method", "status_class", "path", "projection"}


def test_rules_are_valid() -> None:
    done = run(tool("promtool"), "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    done = run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def mutated(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of monitoring/ with one change in the rules; the unit tests unchanged."""
    copy = tmp_path / "monitoring"
    shutil.copytree(MONITORING, copy, ignore=shutil.ignore_patterns("dashboards"))
    text = RULES.read_text()
    assert text.count(old) == 1, old
    (copy / "alert-rules.yml").write_text(text.replace(old, new))
    return copy / "tests" / "alert-rules.test.yml"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # a minute shorter: the "not a minute before" checks must catch it
        ("rate5m > 0.05\n        for: 5m", "rate5m > 0.05\n        for: 4m"),
        ("p99_rate5m > 2\n        for: 10m", "p99_rate5m > 2\n        for: 9m"),
        ("max > 1000\n        for: 5m", "max > 1000\n        for: 4m"),
        ("ratio > 0.9\n        for: 15m", "ratio > 0.9\n        for: 14m"),
        # a minute longer: "fires at the stated time" must catch it
        ("rate5m > 0.05\n        for: 5m", "rate5m > 0.05\n        for: 6m"),
        ("ratio > 0.9\n        for: 15m", "ratio > 0.9\n        for: 16m"),
        # a lower threshold: "quiet below the threshold" must catch it
        ("rate5m > 0.05", "rate5m > 0.03"),
        ("p99_rate5m > 2", "p99_rate5m > 1.5"),
        ("max > 1000", "max >= 1000"),
        ("ratio > 0.9", "ratio >= 0.9"),
        ("taskstream_disk_usage_ratio > 0.8", "taskstream_disk_usage_ratio >= 0.8"),
        # a delay on the disk alert, which must fire at once
        ("taskstream_disk_usage_ratio > 0.8\n", "taskstream_disk_usage_ratio > 0.8\n        for: 1m\n"),
        # the queue summed over workers (each reports the same queue) instead of its max
        ("max(taskstream_task_queue_depth)", "sum(taskstream_task_queue_depth)"),
        # probes counted as traffic
        ('status_class="5xx", route!~"/metrics|/healthz|/readyz"', 'status_class="5xx"'),
    ],
    ids=lambda v: re.sub(r"\s+", " ", v)[:40],
)
def test_unit_tests_notice_a_changed_rule(tmp_path: Path, old: str, new: str) -> None:
    done = run(tool("promtool"), "test", "rules", str(mutated(tmp_path, old, new)))
    assert done.returncode != 0, f"the promtool tests did not notice {old!r} -> {new!r}:\n{done.stdout}"
    assert "FAILED" in done.stdout + done.stderr


def test_alertmanager_routes_every_alert_to_slack_and_pagerduty() -> None:
    config_path = MONITORING / "alertmanager.yml"
    done = run(tool("amtool"), "check-config", str(config_path))
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(config_path.read_text())
    route = config["route"]
    assert "routes" not in route and "matchers" not in route  # one receiver for everything
    (receiver,) = [r for r in config["receivers"] if r["name"] == route["receiver"]]
    assert [c["channel"] for c in receiver["slack_configs"]] == ["#ops-alerts"]
    assert len(receiver["pagerduty_configs"]) == 1
    # Secrets come from files mounted at run time, never from the repo.
    assert config["global"]["slack_api_url_file"].startswith("/")
    assert receiver["pagerduty_configs"][0]["routing_key_file"].startswith("/")
    text = config_path.read_text()
    assert not re.search(r"^\s*(slack_api_url|api_url|routing_key|service_key):", text, re.M)
    assert "hooks.slack.com" not in text


def test_amtool_refuses_a_config_without_a_secret(tmp_path: Path) -> None:
    """Control: the check is real, it rejects a PagerDuty receiver with no key."""
    text = (MONITORING / "alertmanager.yml").read_text()
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(re.sub(r"^\s*- routing_key_file: .*\n\s*", "      - ", text, flags=re.M))
    assert "routing_key_file" not in broken.read_text()
    done = run(tool("amtool"), "check-config", str(broken))
    assert done.returncode != 0 and "PagerDuty" in done.stdout + done.stderr


def test_staging_prometheus_config_is_valid_and_scrapes_every_process() -> None:
    config_path = MONITORING / "prometheus.yml"
    done = run(tool("promtool"), "check", "config", str(config_path))
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {job["job_name"] for job in yaml.safe_load(config_path.read_text())["scrape_configs"]}
    assert jobs == {"gateway", "relay", "projector", "worker"}
