"""Results in S3 (a real moto server over HTTP): a worker writes them, the gateway answers a
presigned link, and the link downloads the right bytes. moto checks no signatures (INFRA.md):
the local store's own signing is tested in test_workers.py and the unit tests."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from event_store.postgres import PostgresEventStore
from taskstream import embedded
from taskstream.settings import Settings
from tests.support.worker_pool import Pool, serve_gateway, worker_pool

pytestmark = pytest.mark.kafka

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Iterator[tuple[str, str]]:
    if urlsplit(s3_endpoint).hostname not in ("127.0.0.1", "::1", "localhost"):
        pytest.skip("S3 tests only run against a loopback server")
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # the gateway's boto3 client takes them from its environment
    yield s3_endpoint, f"results-{uuid.uuid4().hex[:10]}"
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
async def pool(store: PostgresEventStore, database_url: str, kafka_bootstrap: str, s3: tuple[str, str]) -> AsyncIterator[Pool]:
    folder = Path(tempfile.mkdtemp(prefix="taskstream-s3-"))
    env = {**CREDENTIALS, "BLOB_BACKEND": "s3", "S3_ENDPOINT_URL": s3[0], "S3_BUCKET": s3[1]}
    try:
        async with worker_pool(store, database_url, kafka_bootstrap, folder, workers=1, **env) as p:
            yield p
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
async def http(gateway_settings: Settings, s3: tuple[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    settings = dataclasses.replace(
        gateway_settings, http_port=embedded.free_port(), blob_backend="s3", s3_endpoint_url=s3[0], s3_bucket=s3[1],
        blob_link_ttl_seconds=120,
    )  # fmt: skip
    async with serve_gateway(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


async def test_a_large_result_is_stored_in_s3_and_downloads_through_a_presigned_link(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    payload = {"rows": [{"i": i, "text": "y" * 40} for i in range(600)]}
    response = await http.post(f"/v1/projects/{project}/tasks", json={"kind": "echo", "payload": payload}, headers=owner.auth)
    task_id = response.json()["id"]
    events = await pool.wait_status(task_id, "succeeded", "failed")
    assert events[-1].type == "task.succeeded", events[-1].data
    assert events[-1].data["result_ref"].startswith("s3://results-") and events[-1].data["result"] is None
    result = (await http.get(f"/v1/tasks/{task_id}/result", headers=owner.auth)).json()
    url = result["download"]["url"]
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["120"] and "X-Amz-Signature" in query
    async with httpx.AsyncClient(timeout=10) as plain:
        downloaded = await plain.get(url)
    assert downloaded.status_code == 200 and json.loads(downloaded.content) == payload


async def test_a_project_export_lands_in_s3(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    response = await http.post(f"/v1/projects/{project}/tasks", json={"kind": "project.export"}, headers=owner.auth)
    task_id = response.json()["id"]
    await pool.wait_status(task_id, "succeeded")
    result = (await http.get(f"/v1/tasks/{task_id}/result", headers=owner.auth)).json()
    async with httpx.AsyncClient(timeout=10) as plain:
        body = (await plain.get(result["download"]["url"])).content
    streams = [json.loads(line)["stream"] for line in body.splitlines()]
    assert streams[0] == f"project-{project}" and f"task-{task_id}" in streams
