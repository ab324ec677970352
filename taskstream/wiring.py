"""The one place where things are wired: each process's parts, built from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from functools import partial

from prometheus_client import CollectorRegistry, Histogram

from event_store.checkpoints import Checkpoints
from event_store.kafka import ensure_topics, make_producer
from event_store.postgres import PostgresEventStore
from event_store.relay import Relay, RelayConfig
from schemas.envelope import RecordedEvent
from taskstream.settings import Settings

log = logging.getLogger("taskstream")


def relay_lag_histogram(registry: CollectorRegistry | None = None) -> Histogram:
    return Histogram(
        "taskstream_relay_lag_seconds",
        "Time from an event's commit to the broker's acknowledgement of it",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        registry=registry,
    )


async def run_relay(settings: Settings, stop: asyncio.Event) -> None:
    store = await PostgresEventStore.connect(settings.database_url, min_size=1, max_size=4)
    producer = make_producer(settings.kafka_bootstrap_servers, client_id=f"{settings.kafka_client_id}-relay")
    lag = relay_lag_histogram()

    def observe(batch: Sequence[RecordedEvent], acked_at: float) -> None:
        for event in batch:
            lag.observe(max(0.0, acked_at - event.recorded_at.timestamp()))

    try:
        while not stop.is_set():  # the broker may come up after us
            try:
                await producer.start()
                break
            except Exception as exc:  # noqa: BLE001 - any start failure is retried
                log.warning("relay: broker %s not reachable yet: %r", settings.kafka_bootstrap_servers, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        else:
            return
        relay = Relay(
            store,
            Checkpoints(store.pool),
            producer,
            RelayConfig(
                topic_prefix=settings.kafka_topic_prefix,
                checkpoint_name=settings.relay_checkpoint_name,
                batch_size=settings.relay_batch_size,
            ),
            ensure_topics=partial(ensure_topics, settings.kafka_bootstrap_servers),
            observe=observe,
        )
        started = time.monotonic()
        await relay.run(stop)
        log.info("relay stopped at position %d after %.0f s", relay.position, time.monotonic() - started)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        await store.close()
