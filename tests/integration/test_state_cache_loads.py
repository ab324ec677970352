"""Loading through the state cache gives the same state as folding the whole stream."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands import project
from commands.handler import load
from commands.states import StateCache
from event_store.postgres import PostgresEventStore
from schemas.projects import ProjectChanges, ProjectCreated, ProjectMemberAdded, ProjectUpdated


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=5))
async def test_cached_incremental_loads_equal_full_loads(store: PostgresEventStore, steps: list[int]) -> None:
    project_id, owner = uuid.uuid4(), uuid.uuid4()
    stream = project.stream_for(project_id)
    cache = StateCache()
    await store.append(stream, "no_stream", [ProjectCreated(project_id=project_id, owner_id=owner, name="p").to_new_event()])
    version = 1
    for n, count in enumerate(steps):
        events = [
            ProjectMemberAdded(project_id=project_id, user_id=uuid.uuid4(), role="viewer").to_new_event() if i % 2 else
            ProjectUpdated(project_id=project_id, changes=ProjectChanges(description=f"step {n}.{i}")).to_new_event()
            for i in range(count)
        ]  # fmt: skip
        version = (await store.append(stream, version, events)).version
        cached = await load(store, project.DECIDER, stream, cache)
        fresh = await load(store, project.DECIDER, stream)
        assert (cached.version, cached.state) == (fresh.version, fresh.state) == (version, fresh.state)
