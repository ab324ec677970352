"""The worker's own metrics (names are a contract: alert rules use them).

- ``taskstream_task_queue_depth``: tasks submitted and not started yet (first runs and
  retries waiting for their turn), from ``worker_tasks``; every worker reports the same
  pool-wide number.
- ``taskstream_worker_busy_slots`` / ``taskstream_worker_slots``: this process's running
  tasks and its concurrency; utilisation is their ratio.
- ``taskstream_worker_consumer_lag_events`` / ``..._seconds``: submitted tasks no worker has
  consumed from the log yet, and the age of the oldest, computed in PostgreSQL
  (workers/lag.py), not from broker offsets; pool-wide, like the queue depth.

The registry given to :meth:`WorkerMetrics.create` also carries what every process exports
(process, connection pool, disk usage of the data folders: taskstream/wiring.process_registry).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    registry: CollectorRegistry
    queue_depth: Gauge
    busy_slots: Gauge
    slots: Gauge
    outcomes: Counter
    lag_events: Gauge
    lag_seconds: Gauge

    @classmethod
    def create(cls, worker_id: str, concurrency: int, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        registry = registry if registry is not None else CollectorRegistry()
        labels = {"worker": worker_id}
        metrics = cls(
            registry,
            Gauge("taskstream_task_queue_depth", "Tasks submitted and not started yet", registry=registry),
            Gauge("taskstream_worker_busy_slots", "Task slots of this worker running a task", list(labels), registry=registry),
            Gauge("taskstream_worker_slots", "Task slots of this worker (its concurrency)", list(labels), registry=registry),
            Counter("taskstream_worker_webhook_attempts", "Webhook delivery attempts", ["outcome"], registry=registry),
            Gauge("taskstream_worker_consumer_lag_events", "Submitted tasks not yet consumed from the log by any worker", registry=registry),
            Gauge("taskstream_worker_consumer_lag_seconds", "Age of the oldest submitted task not yet consumed by any worker",
                  registry=registry),  # fmt: skip
        )
        metrics.slots.labels(**labels).set(concurrency)
        metrics.busy_slots.labels(**labels).set(0)
        return metrics

    def set_busy(self, worker_id: str, busy: int) -> None:
        self.busy_slots.labels(worker=worker_id).set(busy)
