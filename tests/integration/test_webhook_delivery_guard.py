"""The SSRF guard at delivery time: a name that resolved to an allowed address at registration
and resolves to a private one later (DNS rebinding) is refused, and nothing is connected to.
The resolver is injected: no lookup and no connection leave this machine."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from event_store.postgres import PostgresEventStore
from schemas.envelope import RecordedEvent
from taskstream.settings import Settings
from workers.leases import Leases, NewTask
from workers.webhooks.endpoints import WebhookEndpoints
from workers.webhooks.sender import WebhookSender


async def test_a_name_that_now_resolves_to_a_private_address_is_refused_at_delivery(store: PostgresEventStore, database_url: str) -> None:
    answers = {"hook.internal.test": ["127.0.0.1"]}
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return answers[host]

    endpoints = WebhookEndpoints(store.pool, allow_loopback=True, resolve=resolver)
    project_id, task_id = uuid.uuid4(), uuid.uuid4()
    endpoint = await endpoints.register(project_id, "http://hook.internal.test:9/x", ["*"], "test")
    await Leases(store.pool, "guard", 30).ingest([NewTask(task_id, project_id, "echo", 5, datetime.now(UTC), None)])
    answers["hook.internal.test"] = ["10.20.30.40"]  # the DNS answer changed after registration

    settings = dataclasses.replace(Settings(database_url=database_url), webhook_allow_loopback=True, webhook_backoff_scale=100.0)
    sender = WebhookSender(store.pool, settings, resolve=resolver)
    event = RecordedEvent(uuid.uuid4(), f"task-{task_id}", "task.submitted", 1, 1, 1, datetime.now(UTC), {"task_id": str(task_id)}, {})
    await sender.enqueue([event])
    stop = asyncio.Event()
    running = asyncio.create_task(sender.run(stop))
    try:
        async with asyncio.timeout(10):
            while not (log := await endpoints.deliveries(project_id, uuid.UUID(endpoint["id"]))):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
    [attempt] = log
    assert attempt["status_code"] is None and attempt["error"].startswith("refused: hook.internal.test resolves to 10.20.30.40")
    assert attempt["delivery_status"] == "pending"  # retried later on the schedule: DNS may change back
    assert lookups.count("hook.internal.test") == 2  # once at registration, once before the delivery


async def test_registration_through_the_guard(store: PostgresEventStore) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["192.168.7.7"]

    from commands.errors import ValidationFailed
    from workers.webhooks.endpoints import DestinationRefused

    endpoints = WebhookEndpoints(store.pool, allow_loopback=True, resolve=resolver)
    with pytest.raises(DestinationRefused, match="192.168.7.7"):
        await endpoints.register(uuid.uuid4(), "https://intranet.example.test/hook", ["task.succeeded"], "test")
    with pytest.raises(ValidationFailed):
        await endpoints.register(uuid.uuid4(), "https://example.test/hook", ["task.exploded"], "test")
