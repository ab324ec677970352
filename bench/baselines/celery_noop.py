"""The Celery 5 side of bench/tasks.py: one no-op task, a Redis broker and result backend.

Run by the bench as ``celery -A bench.baselines.celery_noop worker --pool solo``; the URLs come from
CELERY_BROKER_URL and CELERY_RESULT_BACKEND (the embedded Valkey)."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "bench",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/2"),
)
app.conf.update(
    task_acks_late=True,  # the closest Celery comes to "lose nothing": ack after the run
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> None:
    return None
