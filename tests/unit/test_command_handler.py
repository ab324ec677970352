"""The load-decide-append loop's retry rules, over a stand-in store (the real one is in e2e)."""

from __future__ import annotations

from typing import Any

import pytest

from commands.handler import VersionConflict, WriteContext, execute
from event_store.errors import WrongExpectedVersion
from event_store.protocol import StreamAppend
from schemas.envelope import AppendResult, Metadata


class ScriptedStore:
    """Answers append_streams from a script: an exception to raise, or None for success."""

    def __init__(self, *script: Exception | None) -> None:
        self.script = list(script)
        self.calls = 0

    async def idempotent_result(self, key: str, fingerprint: str) -> None:
        return None

    async def append_streams(self, parts: list[StreamAppend], metadata: Any, **_: Any) -> list[AppendResult]:
        self.calls += 1
        step = self.script.pop(0)
        if step is not None:
            raise step
        return [AppendResult(p.stream, 3, 10, 10) for p in parts]


def plan_for(version: int):  # noqa: ANN201
    async def plan(_attempt: int) -> list[StreamAppend]:
        return [StreamAppend("project-1", version, []), StreamAppend("project_name-9", "no_stream", [])]

    return plan


async def test_a_pinned_write_retries_a_race_on_a_secondary_stream() -> None:
    store = ScriptedStore(WrongExpectedVersion("project_name-9", "no_stream", 1), None)
    written = await execute(store, plan_for(2), WriteContext(Metadata(), if_match=2))  # type: ignore[arg-type]
    assert store.calls == 2 and written.primary.stream == "project-1"


async def test_a_pinned_write_does_not_retry_its_primary_stream() -> None:
    store = ScriptedStore(WrongExpectedVersion("project-1", 2, 3), None)
    with pytest.raises(VersionConflict) as info:
        await execute(store, plan_for(2), WriteContext(Metadata(), if_match=2))  # type: ignore[arg-type]
    assert store.calls == 1 and info.value.extensions["actual_version"] == 3


async def test_a_pin_that_does_not_match_what_was_read_is_refused_before_writing() -> None:
    store = ScriptedStore()
    with pytest.raises(VersionConflict):
        await execute(store, plan_for(2), WriteContext(Metadata(), if_match=1))  # type: ignore[arg-type]
    assert store.calls == 0


async def test_unpinned_conflicts_are_retried_a_bounded_number_of_times() -> None:
    conflict = WrongExpectedVersion("project-1", 2, 3)
    store = ScriptedStore(conflict, conflict, conflict, conflict)
    with pytest.raises(VersionConflict):
        await execute(store, plan_for(2), WriteContext(Metadata()), retries=3)  # type: ignore[arg-type]
    assert store.calls == 4
