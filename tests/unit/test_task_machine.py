"""Rule-based state machine for the task aggregate: random command sequences, invariants."""

from __future__ import annotations

import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from commands import task
from commands.errors import AlreadyExists, IllegalTransition, StaleAttempt
from schemas.tasks import CancelTask, FailTask, RequeueTask, StartTask, SubmitTask, SucceedTask
from tests.unit.domain_testkit import Aggregate

TASK = uuid.UUID("00000000-0000-0000-0000-0000000000c1")
PROJECT = uuid.UUID("00000000-0000-0000-0000-0000000000b1")

# The lifecycle as documented, written out here independently of commands.task.
EDGES = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "queued"),
    ("running", "cancelled"),
    ("failed", "queued"),  # an admin's requeue
}
FINAL = {"succeeded", "failed", "cancelled"}
# Offsets from the right attempt number, biased towards the right one.
offsets = st.sampled_from([0, 0, 0, -1, 1])


class TaskMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.task = Aggregate(task.DECIDER)

    @property
    def state(self) -> task.TaskState:
        assert self.task.state is not None
        return self.task.state

    @initialize(max_attempts=st.integers(1, 4))
    def submit(self, max_attempts: int) -> None:
        command = SubmitTask(task_id=TASK, project_id=PROJECT, kind="k", max_attempts=max_attempts)
        assert len(self.task.run(command)) == 1  # type: ignore[arg-type]
        assert self.state.status == "queued" and self.state.attempts == 0

    def _expect(self, command: object, allowed_from: set[str], right_attempt: int | None) -> None:
        before = self.state
        outcome = self.task.run(command)
        if before.status not in allowed_from:
            assert isinstance(outcome, IllegalTransition)
        elif right_attempt is not None and command.attempt != right_attempt:  # type: ignore[attr-defined]
            assert isinstance(outcome, StaleAttempt)
        else:
            assert isinstance(outcome, list) and len(outcome) == 1
            assert (before.status, self.state.status) in EDGES
            return
        assert self.state is before

    @rule(offset=offsets, worker=st.sampled_from(["w1", "w2"]))
    def start(self, offset: int, worker: str) -> None:
        attempt = max(1, self.state.attempts + 1 + offset)
        before = self.state
        self._expect(StartTask(task_id=TASK, worker_id=worker, attempt=attempt), {"queued"}, before.attempts + 1)
        if self.state is not before:
            assert self.state.attempts == before.attempts + 1 and self.state.worker_id == worker

    @rule(offset=offsets)
    def succeed(self, offset: int) -> None:
        attempt = max(1, self.state.attempts + offset)
        self._expect(SucceedTask(task_id=TASK, attempt=attempt), {"running"}, self.state.attempts)

    @rule(offset=offsets, retryable=st.booleans())
    def fail(self, offset: int, retryable: bool) -> None:
        attempt = max(1, self.state.attempts + offset)
        before = self.state
        command = FailTask(task_id=TASK, attempt=attempt, error="e", retryable=retryable)
        self._expect(command, {"running"}, before.attempts)
        if self.state is not before:
            retried = retryable and before.attempts < before.max_attempts
            assert self.state.status == ("queued" if retried else "failed")

    @rule()
    def cancel(self) -> None:
        self._expect(CancelTask(task_id=TASK), {"queued", "running"}, None)

    @rule()
    def requeue(self) -> None:
        before = self.state
        self._expect(RequeueTask(task_id=TASK), {"failed"}, None)
        if self.state is not before:
            assert self.state.max_attempts == before.attempts + 1

    @rule()
    def submit_again(self) -> None:
        before = self.state
        assert isinstance(self.task.run(SubmitTask(task_id=TASK, project_id=PROJECT, kind="k")), AlreadyExists)
        assert self.state is before

    @invariant()
    def attempts_stay_within_max_attempts(self) -> None:
        assert 0 <= self.state.attempts <= self.state.max_attempts
        if self.state.status == "queued":
            assert self.state.attempts < self.state.max_attempts  # a queued task has an attempt left
        if self.state.status in {"running", "succeeded", "failed"}:
            assert self.state.attempts >= 1

    @invariant()
    def a_final_task_stays_final(self) -> None:
        """Only a failed task ever leaves a final status, and only through a requeue."""
        statuses = [task.evolve(None, self.task.history[0])]  # type: ignore[arg-type]
        for event in self.task.history[1:]:
            statuses.append(task.evolve(statuses[-1], event))  # type: ignore[arg-type]
        for i, s in enumerate(statuses[:-1]):
            if s is not None and s.status in FINAL:
                assert s.status == "failed" and self.task.history[i + 1].TYPE == "task.requeued"

    @invariant()
    def replay_from_the_store_equals_the_incremental_state(self) -> None:
        assert self.task.replayed() == self.task.state


TestTaskMachine = TaskMachine.TestCase
TestTaskMachine.settings = settings(max_examples=80, stateful_step_count=25, deadline=None)
