"""docker-compose.staging.yml as the real Compose v2 binary resolves it (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from typing import Any

import pytest

from taskstream.cli import parser
from tests.deploy.tools import ROOT, compose_binary, require_tool

COMPOSE_FILE = ROOT / "docker-compose.staging.yml"
EXAMPLE_ENV = ROOT / ".env.staging.example"
TASKSTREAM = {"gateway": "serve", "relay": "relay", "projector": "project", "worker": "work", "migrate": "migrate"}
INFRASTRUCTURE = {"postgres", "redis", "kafka", "minio", "prometheus", "alertmanager", "grafana", "nginx"}
GiB = 1024**3


def _compose(*args: str, env_file: str = str(EXAMPLE_ENV)) -> subprocess.CompletedProcess[str]:
    argv = [compose_binary(), "-f", str(COMPOSE_FILE), "--env-file", env_file, *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


@cache
def _resolved() -> dict[str, Any]:
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_config_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_secrets_have_no_defaults() -> None:
    result = _compose("config", "-q", env_file="/dev/null")
    assert result.returncode != 0
    assert "required variable" in result.stderr and "is missing a value" in result.stderr


def test_the_services_of_the_architecture() -> None:
    services = _resolved()["services"]
    assert set(services) == set(TASKSTREAM) | INFRASTRUCTURE | {"minio-init"}
    commands = set(parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    image = services["gateway"]["image"]
    for name, command in TASKSTREAM.items():
        assert services[name]["image"] == image, f"{name} runs another image"
        assert services[name]["command"][0] == command and command in commands
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"]


def test_replicas_and_the_staging_sizing_row_as_limits() -> None:
    services = _resolved()["services"]
    deploy = {name: services[name].get("deploy", {}) for name in services}
    assert deploy["gateway"]["replicas"] == 2
    assert deploy["relay"]["replicas"] == 1  # one publisher, in order
    assert deploy["worker"]["replicas"] == 4
    assert deploy["worker"]["resources"]["limits"] == {"cpus": 2, "memory": str(GiB)}
    assert deploy["gateway"]["resources"]["limits"] == {"cpus": 2, "memory": str(GiB)}
    for name, spec in deploy.items():
        if name not in {"migrate", "minio-init"}:
            assert spec.get("resources", {}).get("limits"), f"{name} has no resource limits"


def test_start_order_by_health_and_completion() -> None:
    services = _resolved()["services"]

    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name].get("depends_on", {}).items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("minio-init") == {"minio": "service_healthy"}
    for name in ("gateway", "relay", "projector", "worker"):
        assert conditions(name) == {
            "migrate": "service_completed_successfully",
            "minio-init": "service_completed_successfully",
            "redis": "service_healthy",
            "kafka": "service_healthy",
        }, name
    assert conditions("nginx") == {"gateway": "service_healthy"}
    assert conditions("grafana") == {"prometheus": "service_healthy"}
    # Whatever is waited on as healthy has a health check.
    for name in services:
        for dep, condition in conditions(name).items():
            if condition == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{name} waits for {dep}, which has no health check"


def test_gateways_trust_forwarded_headers_from_nginx_only() -> None:
    services = _resolved()["services"]
    nginx_address = services["nginx"]["networks"]["edge"]["ipv4_address"]
    command = services["gateway"]["command"]
    assert command[command.index("--forwarded-allow-ips") + 1] == nginx_address
    assert set(services["gateway"]["networks"]) == {"backend", "edge"}
    # Nothing else shares the edge network with the gateways.
    on_edge = {name for name, s in services.items() if "edge" in (s.get("networks") or {})}
    assert on_edge == {"nginx", "gateway"}


def test_nginx_gets_every_variable_its_template_uses() -> None:
    template = (ROOT / "deploy" / "nginx" / "templates" / "taskstream.conf.template").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)\}", template))
    nginx = _resolved()["services"]["nginx"]
    assert used and used <= set(nginx["environment"])
    assert nginx["environment"]["NGINX_MAX_BODY_SIZE"] == _resolved()["services"]["gateway"]["environment"]["MAX_BODY_BYTES"]


def test_mounted_files_exist() -> None:
    """Every bind-mounted file of this repository exists (monitoring/ comes from the monitoring
    work and is checked by test_alert_rules_are_in_sync)."""
    for name, service in _resolved()["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind" or not volume["source"].startswith(str(ROOT)):
                continue
            relative = volume["source"].removeprefix(str(ROOT) + "/")
            if relative.startswith("monitoring/") or relative == "deploy/tls":
                continue
            assert (ROOT / relative).exists(), f"{name} mounts {relative}, which does not exist"


def test_prometheus_and_alertmanager_configs_are_valid() -> None:
    promtool = require_tool("promtool", "make tools (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "config", "--syntax-only", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    amtool = require_tool("amtool", "make tools (apt-get install prometheus-alertmanager)")
    result = subprocess.run([amtool, "check-config", str(ROOT / "deploy" / "alertmanager" / "alertmanager.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ["datasources/prometheus.yml", "dashboards/taskstream.yml"])
def test_grafana_provisioning_points_at_the_stack(path: str) -> None:
    import yaml

    config = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / path).read_text())
    if path.startswith("datasources"):
        assert config["datasources"][0]["url"] == "http://prometheus:9090"
    else:
        mounts = {v["target"] for v in _resolved()["services"]["grafana"]["volumes"]}
        assert config["providers"][0]["options"]["path"] in mounts


def test_every_setting_passed_to_the_processes_is_one_they_read() -> None:
    settings_source = (ROOT / "taskstream" / "settings.py").read_text()
    for name in _resolved()["services"]["gateway"]["environment"]:
        if name.startswith("AWS_"):  # read by boto3 itself
            continue
        assert f'"{name}"' in settings_source, f"{name} is not read by taskstream/settings.py"
