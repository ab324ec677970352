"""The worker: runs at most N tasks at a time, each attempt through the command path.

One loop and small steps. Work arrives two ways: the log consumer hands over tasks it just
ingested while this process has free slots (the fast path: no claim query), and a claim loop
takes due rows from ``worker_tasks`` (queued tasks, retries whose backoff has passed, leases
whose worker died). Every claimed task is *reconciled with its stream* before anything runs:

- final (succeeded, failed, cancelled): nothing to run; the row is put at rest;
- running: the attempt's worker died or lost its lease; the attempt is failed as lost (a
  retryable failure), so the next one runs after its backoff;
- queued: ``StartTask`` for the next attempt, run the handler, report ``SucceedTask`` or
  ``FailTask``.

Exactly one effective run per attempt: ``StartTask`` for attempt n is accepted once (the
decider wants ``attempts + 1`` and the append checks the stream's version), and a report for an
attempt that is no longer the current one is refused (``StaleAttempt``) and dropped. While a
handler runs, its lease is renewed every third of the lease time; a failed renewal (another
worker took over) or a cancellation of the task stops the handler at once. A handler past the
task's ``timeout_seconds`` is stopped and the task fails as timed out (finally).

Traces: each claimed task is worked on inside a ``work task`` span continuing the submission's
trace (the claim's ``traceparent``, kept in ``worker_tasks``), so the StartTask/SucceedTask/
FailTask commands and their appends join it (their events carry it on to the relay and the
projector), and the handler itself runs in a child ``run task`` span.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.trace import SpanKind, StatusCode, use_span
from pydantic import ValidationError

from commands.errors import IllegalTransition, NotFound, StaleAttempt
from commands.handler import Loaded, WriteContext
from commands.service import Service
from commands import task
from commands.decider import fold
from schemas.catalog import registry as codec_registry
from schemas.envelope import Metadata, RecordedEvent
from schemas.tasks import MAX_INLINE_RESULT_BYTES, FailTask, StartTask, SucceedTask, TaskSubmitted
from workers.backoff import retry_delay
from workers.kinds import PermanentError, Registry, Services, StoredResult, TaskContext
from taskstream.telemetry import start_span_from, tracer
from workers.leases import Claim, Leases, RestStatus

log = logging.getLogger("taskstream.workers")
_tracer = tracer("taskstream.workers")

Known = tuple[Loaded[task.State], TaskSubmitted]  # a task's state and its submission, as the log delivered them
StopReason = Literal["cancelled", "lost", "shutdown"]
CLAIM_COALESCE_SECONDS = 0.005  # after a wake-up, slots freed within this are claimed with it
REST: dict[str, RestStatus] = {"succeeded": "done", "failed": "dead", "cancelled": "cancelled"}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    worker_id: str
    concurrency: int
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    shutdown_grace_seconds: float = 10.0


@dataclass(slots=True)
class _Job:
    claim: Claim
    version: int = 0  # the task stream's version this worker knows
    state: task.State = None  # the task's state at ``version``, once started here
    runner: asyncio.Task[Any] | None = None
    reason: StopReason | None = None

    def known(self, stream: str) -> Loaded[task.State] | None:
        return Loaded(stream, self.state, self.version) if self.state is not None else None

    def stop(self, reason: StopReason) -> None:
        if self.runner is not None and not self.runner.done() and self.reason is None:
            self.reason = reason
            self.runner.cancel()


@dataclass
class Worker:
    service: Service
    leases: Leases
    kinds: Registry
    services: Services
    config: WorkerConfig
    on_busy: Any = None  # called with the busy slot count whenever it changes
    _busy: int = 0
    _jobs: dict[uuid.UUID, _Job] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Some row may be due: work was queued (NOTIFY) or the last claim took all it asked for.
    # While it is False a freed slot does not query; the poll (every poll_seconds) still claims
    # retries whose backoff passed and expired leases.
    _due: bool = True
    stopping: bool = False

    # --- slots ---------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        return self._busy

    def reserve(self, wanted: int) -> int:
        """Take up to ``wanted`` free slots (for tasks about to be leased); return how many."""
        granted = 0 if self.stopping else max(0, min(wanted, self.config.concurrency - self._busy))
        self._set_busy(self._busy + granted)
        return granted

    def release(self, count: int = 1) -> None:
        self._set_busy(self._busy - count)
        if self._due:  # a freed slot only looks for queued work when some may be waiting
            self._wake.set()

    def _set_busy(self, value: int) -> None:
        self._busy = value
        if self.on_busy is not None:
            self.on_busy(value)

    def wake(self) -> None:
        self._due = True
        self._wake.set()

    def start(self, claim: Claim, known: Known | None = None) -> None:
        """Run a leased task in a slot reserved for it."""
        job = _Job(claim)
        self._jobs[claim.task_id] = job
        t = asyncio.create_task(self._guarded(job, known), name=f"task-{claim.task_id}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def cancel_local(self, task_id: uuid.UUID) -> bool:
        """The task was cancelled: stop its handler if it runs here."""
        job = self._jobs.get(task_id)
        if job is None:
            return False
        job.stop("cancelled")
        return True

    # --- the claim loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            free = self.reserve(self.config.concurrency)
            if free:
                self._due = False  # before the claim: a wake-up during it sets it again
            try:
                claims = await self.leases.claim(free)
            except Exception as exc:  # noqa: BLE001 - the database may be away; try again later
                log.warning("claim failed: %r", exc)
                self._due = True
                claims = []
            known = await self._read_many([c.task_id for c in claims])
            for claim in claims:
                self.start(claim, known.get(claim.task_id))
            got = len(claims)
            if free > got:
                self.release(free - got)
            if got and got == free:
                self._due = True
                continue  # maybe more is due
            waiter = asyncio.create_task(self._wake.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=self.config.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
            for t in (waiter, stopper):
                t.cancel()
            if waiter.done() and not stop.is_set():
                # Woken (a slot freed, work queued): let the wake-ups of the next moment join this
                # one, so that under load one claim takes several rows instead of one row a task.
                await asyncio.sleep(CLAIM_COALESCE_SECONDS)
        await self.drain()

    async def drain(self) -> None:
        """Stop taking work; give running tasks the grace period, then stop them (each such
        attempt fails as retryable, so another worker runs the task again)."""
        self.stopping = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.config.shutdown_grace_seconds)
        for job in list(self._jobs.values()):
            job.stop("shutdown")
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        await self.leases.flush()

    # --- one task ------------------------------------------------------------------------

    async def _guarded(self, job: _Job, known: Known | None) -> None:
        claim = job.claim
        try:
            with start_span_from("work task", claim.traceparent, attributes={"taskstream.task_id": str(claim.task_id),
                                 "taskstream.worker_id": self.config.worker_id}, tracer_name="taskstream.workers"):  # fmt: skip
                await self._process(job, known)
        except Exception:  # noqa: BLE001 - the lease runs out and another worker reconciles the task
            log.exception("task %s: unexpected failure; its lease will expire and the task be taken over", job.claim.task_id)
        finally:
            self._jobs.pop(job.claim.task_id, None)
            self.release()

    def _ctx(self, task_id: uuid.UUID) -> WriteContext:
        return WriteContext(Metadata(actor=f"worker:{self.config.worker_id}", correlation_id=str(task_id)))

    async def _read(self, task_id: uuid.UUID) -> Known | None:
        stream = task.stream_for(task_id)
        return self._known(stream, await self.service.store.read_stream(stream))

    def _known(self, stream: str, events: list[RecordedEvent]) -> Known | None:
        """A task's state folded from its whole stream, and its submission (None: no stream)."""
        if not events:
            return None
        codec = codec_registry()
        decoded = [codec.decode(e) for e in events]
        state = fold(task.evolve, None, decoded)
        self.service.cache.put(stream, events[-1].version, state)
        return Loaded(stream, state, events[-1].version), decoded[0]

    async def _read_many(self, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, Known]:
        """The claimed tasks' streams in one query (instead of one read per task); a task
        missing here (or all of them, if the read failed) is read by itself in ``_process``."""
        if not task_ids:
            return {}
        try:
            found = await self.service.store.read_streams({task.stream_for(t): 0 for t in task_ids})
        except Exception as exc:  # noqa: BLE001 - each task reads its own stream instead
            log.warning("reading %d claimed tasks failed: %r", len(task_ids), exc)
            return {}
        known = {t: self._known(task.stream_for(t), found.get(task.stream_for(t), [])) for t in task_ids}
        return {t: k for t, k in known.items() if k is not None}

    async def _process(self, job: _Job, known: Known | None, depth: int = 0) -> None:
        claim = job.claim
        known = known or await self._read(claim.task_id)
        if known is None:  # a row without a stream cannot happen through the log; put it at rest
            await self.leases.finish(claim.task_id, claim.lease_id, "cancelled", attempts=0, error="no such task stream")
            return
        loaded, submitted = known
        state = loaded.state
        assert state is not None
        job.version = loaded.version
        if state.final:
            await self.leases.finish(claim.task_id, claim.lease_id, REST[state.status], attempts=state.attempts)
            return
        if state.status == "running":
            # Only a claim taken over from an expired lease may judge the running attempt lost;
            # otherwise another worker started it a moment ago (a race for an unleased row, or a
            # stream read late): leave it to that worker and its lease.
            if depth or not claim.taken_over:
                return
            error = f"worker {state.worker_id} lost: attempt {state.attempts} ended without a report (its lease expired)"
            await self._fail(job, state.attempts, error, retryable=True, known=loaded)
            return
        attempt = state.attempts + 1
        try:
            written, state = await self.service.report_task(
                StartTask(
                    task_id=claim.task_id, worker_id=self.config.worker_id, attempt=attempt,
                    lease_id=claim.lease_id, lease_seconds=self.config.lease_seconds,
                ),  # fmt: skip
                ctx=self._ctx(claim.task_id),
                known=loaded,
            )
        except (IllegalTransition, StaleAttempt, NotFound):
            if depth == 0:  # the stream moved on (a cancellation, a takeover): decide again on it
                await self._process(job, None, depth + 1)
            return
        job.version = written.primary.version
        job.state = state
        await self._run(job, submitted, attempt)

    async def _run(self, job: _Job, submitted: TaskSubmitted, attempt: int) -> None:
        claim = job.claim
        ctx = TaskContext(
            task_id=claim.task_id, project_id=submitted.project_id, kind=submitted.kind, payload=dict(submitted.payload),
            attempt=attempt, worker_id=self.config.worker_id, services=self.services,
        )  # fmt: skip
        outcome: BaseException | None
        try:
            handler = self.kinds.get(submitted.kind)
        except PermanentError as exc:
            await self._fail(job, attempt, str(exc), retryable=False)
            return
        span = _tracer.start_span("run task", kind=SpanKind.INTERNAL,
                                  attributes={"taskstream.task.kind": submitted.kind, "taskstream.task.attempt": attempt})  # fmt: skip
        with use_span(span, end_on_exit=False):
            job.runner = asyncio.create_task(handler(ctx))  # the handler's own spans nest under "run task"
        heartbeat = asyncio.create_task(self._heartbeat(job))
        timed_out, outcome, value = False, None, None
        try:
            done, _ = await asyncio.wait({job.runner}, timeout=submitted.timeout_seconds)
            timed_out = not done
            if timed_out:
                job.runner.cancel()
            try:
                value = await job.runner
            except asyncio.CancelledError as exc:
                if job.reason is None and not timed_out:
                    raise  # this worker itself is being cancelled
                outcome = exc
            except Exception as exc:  # noqa: BLE001 - the handler's failure is the task's failure
                outcome = exc
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if job.reason is not None or timed_out or outcome is not None:
                span.set_status(StatusCode.ERROR, job.reason or ("timed out" if timed_out else _describe(outcome)))  # type: ignore[arg-type]
            span.end()
        if job.reason == "lost":
            log.warning("task %s attempt %d: lease lost to another worker; result dropped", claim.task_id, attempt)
            return
        if job.reason == "cancelled":
            await self.leases.finish(claim.task_id, claim.lease_id, "cancelled", attempts=attempt)
            return
        if job.reason == "shutdown":
            await self._fail(job, attempt, f"worker {self.config.worker_id} stopped during the attempt", retryable=True, delay=0.0)
            return
        if timed_out:
            await self._fail(job, attempt, f"timed out after {submitted.timeout_seconds} s", retryable=False)
            return
        if outcome is not None:
            if isinstance(outcome, PermanentError):  # the handler's own words
                await self._fail(job, attempt, str(outcome) or _describe(outcome), retryable=False)
            else:
                await self._fail(job, attempt, _describe(outcome), retryable=True)
            return
        await self._succeed(job, attempt, value)

    async def _succeed(self, job: _Job, attempt: int, value: Any) -> None:
        claim = job.claim
        try:
            inline, ref, summary = await self._store_result(claim.task_id, attempt, value)
            command = SucceedTask(task_id=claim.task_id, attempt=attempt, result_ref=ref, summary=summary, result=inline)
        except ValidationError as exc:  # a handler's StoredResult too large or malformed
            await self._fail(job, attempt, f"the handler's result cannot be recorded: {exc.errors()[0]['msg']}", retryable=False)
            return
        except PermanentError as exc:
            await self._fail(job, attempt, str(exc), retryable=False)
            return
        except Exception as exc:  # noqa: BLE001 - blob storage failed: a retryable failure
            await self._fail(job, attempt, f"storing the result failed: {_describe(exc)}", retryable=True)
            return
        try:
            await self.service.report_task(
                command,
                ctx=self._ctx(claim.task_id),
                known=job.known(task.stream_for(claim.task_id)),  # a stale state fails the append and is read again
            )
        except (IllegalTransition, StaleAttempt) as exc:
            log.info("task %s attempt %d: result dropped (%s)", claim.task_id, attempt, exc)
            await self._settle(job)
            return
        self.leases.finish_soon(claim.task_id, claim.lease_id, attempt)

    async def _fail(
        self, job: _Job, attempt: int, error: str, *, retryable: bool, known: Loaded[task.State] | None = None, delay: float | None = None
    ) -> None:
        claim = job.claim
        error = error[:4000] or "failed"
        try:
            _, state = await self.service.report_task(
                FailTask(task_id=claim.task_id, attempt=attempt, error=error, retryable=retryable),
                ctx=self._ctx(claim.task_id),
                known=known or job.known(task.stream_for(claim.task_id)),
            )
        except (IllegalTransition, StaleAttempt) as exc:
            log.info("task %s attempt %d: failure not recorded (%s)", claim.task_id, attempt, exc)
            await self._settle(job)
            return
        assert state is not None
        if state.status == "queued":
            wait = retry_delay(attempt, self.config.retry_base_seconds, self.config.retry_max_seconds) if delay is None else delay
            await self.leases.reschedule(claim.task_id, claim.lease_id, wait, attempts=attempt, error=error)
            if wait == 0:
                self.wake()
        else:
            await self.leases.finish(claim.task_id, claim.lease_id, "dead", attempts=attempt, error=error)

    async def _settle(self, job: _Job) -> None:
        """After a refused report: put the row in line with what the stream now says."""
        known = await self._read(job.claim.task_id)
        if known is None or known[0].state is None:
            return
        state = known[0].state
        if state.final:
            await self.leases.finish(job.claim.task_id, job.claim.lease_id, REST[state.status], attempts=state.attempts)
        elif state.status == "queued":
            await self.leases.reschedule(job.claim.task_id, job.claim.lease_id, 0.0, attempts=state.attempts, error=None)

    async def _store_result(self, task_id: uuid.UUID, attempt: int, value: Any) -> tuple[Any, str | None, str]:
        if isinstance(value, StoredResult):
            return value.result, value.uri, value.summary[:2000]
        try:
            body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"the handler's result is not JSON: {exc}") from None
        if len(body) <= MAX_INLINE_RESULT_BYTES:
            return value, None, body[:200].decode("utf-8", "ignore")
        ref = await self.services.blobs.put(f"results/{task_id}/attempt-{attempt}.json", body, "application/json")
        return None, ref.uri, f"{ref.size} bytes of JSON in blob storage"

    async def _heartbeat(self, job: _Job) -> None:
        """Renew the lease; stop the handler if the lease is lost or the task cancelled."""
        stream = task.stream_for(job.claim.task_id)
        interval = max(0.05, self.config.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.leases.renew(job.claim.task_id, job.claim.lease_id):
                    job.stop("lost")
                    return
                later = await self.service.store.read_stream(stream, job.version + 1)
            except Exception as exc:  # noqa: BLE001 - try again at the next beat; the lease is the backstop
                log.warning("task %s: heartbeat failed: %r", job.claim.task_id, exc)
                continue
            if any(e.type == "task.cancelled" for e in later):
                job.stop("cancelled")
                return


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
