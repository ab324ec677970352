"""The CI/CD pipeline in .github/workflows/: actionlint passes, and its shape keeps production
reachable only through tests, staging and an approved protected environment."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import ROOT, require_tool

WORKFLOWS = ROOT / ".github" / "workflows"


def _pipeline() -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / "pipeline.yml").read_text())  # type: ignore[no-any-return]


def _triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    return workflow.get("on", workflow.get(True))  # type: ignore[no-any-return]  # YAML 1.1 reads `on` as True


def _run_lines(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_actionlint_passes(tmp_path: Path) -> None:
    actionlint = require_tool("actionlint", "make tools (go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12)")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert files
    result = subprocess.run([actionlint, "-no-color", *files], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    # Control: the same binary refuses a broken workflow (so a pass above means something).
    broken = tmp_path / "bad.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ secrets }}\n        uses: actions/checkout@v4\n")
    control = subprocess.run([actionlint, "-no-color", str(broken)], capture_output=True, text=True, cwd=tmp_path)
    assert control.returncode == 1, control.stdout + control.stderr


def test_every_pull_request_and_push_runs_the_tests_and_the_lint() -> None:
    pipeline = _pipeline()
    assert set(_triggers(pipeline)) == {"pull_request", "push"}
    jobs = pipeline["jobs"]
    for name in ("test", "lint"):
        assert "if" not in jobs[name], f"{name} must run on every event"
    assert ".ci/run" in _run_lines(jobs["test"])  # the same command as CI's entry point: make tools, make test
    assert "make lint" in _run_lines(jobs["lint"])
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert ci_run.index("make tools") < ci_run.index("make test")


def test_main_builds_pushes_then_staging_then_approved_production() -> None:
    jobs = _pipeline()["jobs"]
    assert jobs["image"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert set(jobs["image"]["needs"]) == {"test", "lint"}
    login = next(s for s in jobs["image"]["steps"] if s.get("uses", "").startswith("docker/login-action"))
    assert all("secrets." in str(v) for v in login["with"].values())  # registry and credentials from secrets
    push = next(s for s in jobs["image"]["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert push["with"]["push"] is True and "github.sha" in push["with"]["tags"]
    assert jobs["staging"]["needs"] == "image" and jobs["staging"]["environment"]["name"] == "staging"
    assert jobs["production"]["needs"] == "staging" and jobs["production"]["environment"]["name"] == "production"
    for name, values in (("staging", "values-staging.yaml"), ("production", "values-production.yaml")):
        script = _run_lines(jobs[name])
        assert "helm upgrade --install" in script and "--atomic --wait" in script and values in script
        assert 'image.tag="$GITHUB_SHA"' in script


def test_nothing_else_deploys() -> None:
    for path in WORKFLOWS.glob("*.y*ml"):
        workflow = yaml.safe_load(path.read_text())
        triggers = _triggers(workflow)
        assert "pull_request_target" not in triggers and "workflow_dispatch" not in triggers, path.name
        for name, job in workflow["jobs"].items():
            deploys = "helm upgrade" in _run_lines(job) or "kubectl apply" in _run_lines(job)
            assert not deploys or (path.name, name) in {("pipeline.yml", "staging"), ("pipeline.yml", "production")}, (path.name, name)
