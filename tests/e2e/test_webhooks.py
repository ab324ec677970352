"""Webhooks end to end: endpoints registered through the API, deliveries from worker processes
to a local receiver that verifies signatures with the independent `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from event_store.postgres import PostgresEventStore
from taskstream import embedded
from taskstream.settings import Settings
from tests.e2e.conftest import User
from tests.support.receiver import Received, receiver
from tests.support.worker_pool import Pool, serve_gateway, worker_pool

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
async def pool(store: PostgresEventStore, database_url: str, kafka_bootstrap: str) -> AsyncIterator[Pool]:
    folder = Path(tempfile.mkdtemp(prefix="taskstream-webhooks-"))
    try:
        async with worker_pool(store, database_url, kafka_bootstrap, folder, workers=1, concurrency=4) as p:
            yield p
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
async def api(gateway_settings: Settings) -> AsyncIterator[str]:
    settings = dataclasses.replace(gateway_settings, http_port=embedded.free_port(), webhook_allow_loopback=True)
    async with serve_gateway(settings) as url:
        yield url


@pytest.fixture
async def http(api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=10) as c:
        yield c


async def register(http: httpx.AsyncClient, owner: User, project: str, url: str, types: list[str]) -> dict:
    response = await http.post(f"/v1/projects/{project}/webhooks", json={"url": url, "event_types": types}, headers=owner.auth)
    assert response.status_code == 201, response.text
    return response.json()


async def submit(http: httpx.AsyncClient, owner: User, project: str, kind: str, payload: dict) -> str:
    response = await http.post(f"/v1/projects/{project}/tasks", json={"kind": kind, "payload": payload}, headers=owner.auth)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def verified(secret: str, request: Received) -> dict:
    return Webhook(secret).verify(request.body, request.headers)  # raises WebhookVerificationError when it does not verify


async def test_deliveries_are_signed_and_retried_after_a_500(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    async with receiver() as rx:
        endpoint = await register(http, owner, project, rx.on("/hook", 500, 200), ["task.succeeded"])
        assert endpoint["secret"].startswith("whsec_") and endpoint["enabled"]
        task_id = await submit(http, owner, project, "echo", {"n": 1})
        first, second = await rx.wait_for("/hook", 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the same message, retried
    for request in (first, second):
        message = verified(endpoint["secret"], request)
        assert message["type"] == "task.succeeded" and message["data"]["task_id"] == task_id
        assert message["data"]["result"] == {"n": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 32).verify(first.body, first.headers)  # the control: another key fails
    async with asyncio.timeout(10):  # the receiver answered; the sender records the attempt right after
        while len(log := (await http.get(f"/v1/projects/{project}/webhooks/{endpoint['id']}/deliveries", headers=owner.auth)).json()["items"]) < 2:
            await asyncio.sleep(0.05)
    assert [(d["attempt"], d["status_code"]) for d in sorted(log, key=lambda d: d["attempt"])] == [(1, 500), (2, 200)]
    assert all(d["duration_ms"] >= 0 and d["event_type"] == "task.succeeded" for d in log)


async def test_only_subscribed_types_are_delivered(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    async with receiver() as rx:
        everything = await register(http, owner, project, rx.on("/all", 200), ["*"])
        await register(http, owner, project, rx.on("/started", 200), ["task.started"])
        await submit(http, owner, project, "echo", {})
        received = await rx.wait_for("/all", 3)
        await rx.wait_for("/started", 1)
        await asyncio.sleep(1)
    assert sorted(json.loads(r.body)["type"] for r in received) == ["task.started", "task.submitted", "task.succeeded"]
    assert [json.loads(r.body)["type"] for r in rx.at("/started")] == ["task.started"]
    assert all(verified(everything["secret"], r) for r in received)


async def test_rotation_keeps_the_old_secret_valid_for_the_grace_period(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    async with receiver() as rx:
        endpoint = await register(http, owner, project, rx.on("/rot", 200), ["task.succeeded"])
        rotated = (await http.post(f"/v1/projects/{project}/webhooks/{endpoint['id']}/rotate", headers=owner.auth)).json()
        assert rotated["secret"] != endpoint["secret"]
        await submit(http, owner, project, "echo", {})
        [request] = await rx.wait_for("/rot", 1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verified(rotated["secret"], request) and verified(endpoint["secret"], request)


async def test_an_endpoint_that_keeps_failing_is_disabled_and_says_why(pool: Pool, http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    async with receiver() as rx:
        endpoint = await register(http, owner, project, rx.on("/broken", 500), ["*"])
        await submit(http, owner, project, "echo", {})
        await rx.wait_for("/broken", 3)  # WEBHOOK_DISABLE_AFTER=3 in the pool
        async with asyncio.timeout(10):
            while True:
                [listed] = (await http.get(f"/v1/projects/{project}/webhooks", headers=owner.auth)).json()["items"]
                if not listed["enabled"]:
                    break
                await asyncio.sleep(0.1)
        assert "3 delivery attempts in a row failed" in listed["disabled_reason"] and "HTTP 500" in listed["disabled_reason"]
        await asyncio.sleep(1)
        attempts = len(rx.at("/broken"))
        await submit(http, owner, project, "echo", {})
        await asyncio.sleep(1.5)
        assert len(rx.at("/broken")) == attempts  # a disabled endpoint gets nothing
    deleted = await http.delete(f"/v1/projects/{project}/webhooks/{endpoint['id']}", headers=owner.auth)
    assert deleted.status_code == 200
    assert (await http.get(f"/v1/projects/{project}/webhooks", headers=owner.auth)).json()["items"] == []


async def test_only_project_owners_manage_webhooks(http: httpx.AsyncClient, new_user, new_project) -> None:  # noqa: ANN001
    owner, stranger = await new_user(), await new_user()
    project = await new_project(owner)
    body = {"url": "https://hooks.example.com/x", "event_types": ["*"]}
    assert (await http.post(f"/v1/projects/{project}/webhooks", json=body, headers=stranger.auth)).status_code == 404
    assert (await http.get(f"/v1/projects/{project}/webhooks", headers=stranger.auth)).status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",  # loopback: refused by this gateway (no allow-loopback setting)
        "http://[::1]/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[fe80::1]/hook",
        "http://224.0.0.251/hook",
        "http://0.0.0.0/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://100.64.0.1/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
    ],
)
async def test_registration_refuses_unsafe_urls_without_connecting(client: httpx.AsyncClient, new_user, new_project, url: str) -> None:  # noqa: ANN001
    owner = await new_user()
    project = await new_project(owner)
    response = await client.post(f"/v1/projects/{project}/webhooks", json={"url": url, "event_types": ["*"]}, headers=owner.auth)
    # not an http(s) URL at all: 422; a URL whose destination the guard refuses: 403
    assert response.status_code == (422 if url.startswith("ftp:") else 403), response.text
    assert response.json()["errors"][0]["field"] == "url"
