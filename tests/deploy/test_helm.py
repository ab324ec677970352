"""The Helm chart, rendered offline by a real Helm (helm-python-sdk) for every environment:
`helm lint --strict`, every manifest valid for Kubernetes (`kubernetes-validate --strict`), the
sizing table, the shape the issue asks for, the alert rules, and k8s/ in step with the chart."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskstream.cli import parser
from tests.deploy.tools import ROOT, require_tool

CHART = ROOT / "helm" / "taskstream"
ENVIRONMENTS = ("development", "staging", "production")
# The architecture's sizing table: workers, memory and cores (per worker).
SIZING = {"development": (2, "512Mi", "1"), "staging": (4, "1Gi", "2"), "production": (16, "4Gi", "4")}
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # Prometheus Operator, not core Kubernetes
COMMANDS = {"gateway": "serve", "relay": "relay", "projector": "project", "workers": "work", "migrate": "migrate"}


def _render_module() -> Any:
    pytest.importorskip("helm_python", reason="helm is not installed (the `helm-python-sdk` wheel: pip install -e '.[dev]')")
    spec = importlib.util.spec_from_file_location("helm_render", ROOT / "helm" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _rendered(environment: str) -> dict[str, str]:
    return _render_module().render(environment)  # type: ignore[no-any-return]


def _resources(environment: str) -> list[dict[str, Any]]:
    return [doc for text in _rendered(environment).values() for doc in yaml.safe_load_all(text) if doc]


def _one(environment: str, kind: str, suffix: str) -> dict[str, Any]:
    found = [r for r in _resources(environment) if r["kind"] == kind and r["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {len(found)} found"
    return found[0]


def _pod_spec(resource: dict[str, Any]) -> dict[str, Any]:
    return resource["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_helm_lint_strict_finds_nothing(environment: str) -> None:
    report = _render_module().lint(environment)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("kube_version", ["1.29.0", "1.33.0"])
def test_every_manifest_is_valid_kubernetes(environment: str, kube_version: str, tmp_path: Path) -> None:
    validate = require_tool("kubernetes-validate", "pip install -e '.[dev]'")
    files = []
    for template, text in _rendered(environment).items():
        files.append(tmp_path / Path(template).name)
        files[-1].write_text(text)
    result = subprocess.run([validate, "--strict", "-k", kube_version, *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    unvalidated = set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr))
    assert unvalidated <= CRD_KINDS, f"no schema for {unvalidated - CRD_KINDS}"
    passed = re.findall(r"passed for resource", result.stdout)
    assert len(passed) == len([r for r in _resources(environment) if r["kind"] not in CRD_KINDS])


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_sizing_table(environment: str) -> None:
    workers, memory, cores = SIZING[environment]
    hpa = _one(environment, "HorizontalPodAutoscaler", "-workers")
    assert hpa["spec"]["minReplicas"] == workers and hpa["spec"]["maxReplicas"] >= workers
    for component in ("workers", "gateway"):
        limits = _pod_spec(_one(environment, "Deployment", f"-{component}"))["containers"][0]["resources"]["limits"]
        assert limits == {"memory": memory, "cpu": cores}, component
    assert _one(environment, "ConfigMap", "-config")["metadata"]["labels"]["taskstream.io/environment"] == environment


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"workers": {"concurrency": 0}}, "/workers/concurrency"),
        ({"config": {"HTTP_PORT": 8000}}, "/config/HTTP_PORT"),  # ConfigMap values are strings
        ({"gateway": {"trustedProxies": "*"}}, "/gateway/trustedProxies"),  # would trust client-written addresses
        ({"workers": {"replica": 3}}, "/workers"),  # a typo is not silently ignored
    ],
)
def test_the_values_schema_refuses_mistakes(bad: dict[str, Any], where: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match=where):
        _render_module().render("production", bad)


def test_deployments_run_the_processes_of_the_one_image() -> None:
    commands = set(parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    images = set()
    for component, command in COMMANDS.items():
        kind, suffix = ("Job", "-migrate-1") if component == "migrate" else ("Deployment", f"-{component}")
        container = _pod_spec(_one("production", kind, suffix))["containers"][0]
        assert container["args"][0] == command and command in commands
        images.add(container["image"])
    assert len(images) == 1
    assert _pod_spec(_one("production", "Deployment", "-workers"))["containers"][0]["args"] == ["work", "--concurrency", "8"]


def test_relay_is_a_single_instance_that_never_overlaps() -> None:
    relay = _one("production", "Deployment", "-relay")
    assert relay["spec"]["replicas"] == 1 and relay["spec"]["strategy"] == {"type": "Recreate"}
    assert not [r for r in _resources("production") if r["kind"] == "HorizontalPodAutoscaler" and r["metadata"]["name"].endswith("-relay")]


def test_migrations_run_as_a_hook_before_install_and_upgrade() -> None:
    job = _one("production", "Job", "-migrate-1")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    env = _pod_spec(job)["containers"][0]["env"]
    assert env == [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "taskstream-secrets", "key": "DATABASE_URL"}}}]


def test_gateway_probes_service_ingress_autoscaling_and_disruption_budgets() -> None:
    gateway = _one("production", "Deployment", "-gateway")
    container = _pod_spec(gateway)["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "replicas" not in gateway["spec"]  # the HPA owns it
    assert container["args"] == ["serve", "--forwarded-allow-ips", "10.0.0.0/8"]
    service = _one("production", "Service", "-gateway")
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    ingress = _one("production", "Ingress", "taskstream")
    assert ingress["spec"]["tls"] == [{"hosts": ["api.taskstream.example"], "secretName": "taskstream-tls"}]
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == service["metadata"]["name"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m"
    for component in ("gateway", "workers"):
        hpa = _one("production", "HorizontalPodAutoscaler", f"-{component}")
        assert hpa["spec"]["scaleTargetRef"]["name"].endswith(f"-{component}")
    for component in ("gateway", "projector", "workers"):
        pdb = _one("production", "PodDisruptionBudget", f"-{component}")
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
    monitor = _one("production", "ServiceMonitor", "-gateway")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_container_is_non_root_with_a_read_only_root_filesystem(environment: str) -> None:
    workloads = [r for r in _resources(environment) if r["kind"] in {"Deployment", "Job"}]
    assert len(workloads) == 5
    for workload in workloads:
        spec = _pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}


def test_settings_come_from_the_configmap_and_a_secret_reference() -> None:
    config = _one("production", "ConfigMap", "-config")
    settings_source = (ROOT / "taskstream" / "settings.py").read_text()
    for name in config["data"]:  # every key is a variable the settings read (no typos)
        assert f'"{name}"' in settings_source, f"{name} is not read by taskstream/settings.py"
    assert not [r for r in _resources("production") if r["kind"] == "Secret"]  # referenced, never created
    for component in ("gateway", "relay", "projector", "workers"):
        env_from = _pod_spec(_one("production", "Deployment", f"-{component}"))["containers"][0]["envFrom"]
        assert env_from == [{"configMapRef": {"name": config["metadata"]["name"]}}, {"secretRef": {"name": "taskstream-secrets"}}]


def test_the_prometheus_rule_carries_the_chart_copy_of_the_alert_rules(tmp_path: Path) -> None:
    rule = _one("production", "PrometheusRule", "taskstream")
    copy = yaml.safe_load((CHART / "files" / "alert-rules.yml").read_text())
    assert rule["spec"]["groups"] == copy["groups"]
    assert sum(1 for g in copy["groups"] for r in g["rules"] if "alert" in r) == 5  # and the recording rules they use
    promtool = require_tool("promtool", "make tools (apt-get install prometheus)")
    rendered = tmp_path / "rules.yml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(rendered)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_in_sync_with_monitoring() -> None:
    """`make helm-sync` copies monitoring/alert-rules.yml (the source of truth) into the chart."""
    source = ROOT / "monitoring" / "alert-rules.yml"
    assert source.is_file(), "monitoring/alert-rules.yml is missing"
    assert (CHART / "files" / "alert-rules.yml").read_bytes() == source.read_bytes(), "run `make helm-sync`"


def test_k8s_folder_matches_the_chart(capsys: pytest.CaptureFixture[str]) -> None:
    """The checked-in plain manifests (`make k8s`) are the production rendering of the chart."""
    assert _render_module().main(["--environment", "production", "--check", str(ROOT / "k8s")]) == 0, capsys.readouterr().err


def test_the_k8s_check_notices_a_stale_or_missing_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    render = _render_module()
    assert render.main(["--environment", "production", "--out", str(tmp_path)]) == 0
    assert render.main(["--environment", "production", "--check", str(tmp_path)]) == 0
    (tmp_path / "relay.yaml").write_text((tmp_path / "relay.yaml").read_text().replace("replicas: 1", "replicas: 2"))
    (tmp_path / "ingress.yaml").unlink()
    assert render.main(["--environment", "production", "--check", str(tmp_path)]) == 1
    assert "ingress.yaml, relay.yaml" in capsys.readouterr().err
