"""Two gateways, each with its own state cache, over one store: what one changes, the other
must obey at once. Submissions served from a cache guard the project and the caller's streams."""

from __future__ import annotations

import uuid

import pytest

from commands.authz import Actor
from commands.errors import Forbidden, IllegalTransition
from commands.handler import WriteContext
from commands.service import Service
from event_store.postgres import PostgresEventStore
from schemas.envelope import Metadata

CTX = WriteContext(Metadata())


async def setup(store: PostgresEventStore) -> tuple[Service, Service, Actor, Actor, uuid.UUID]:
    a, b = Service(store), Service(store)
    admin = Actor(str(uuid.uuid4()), "admin")  # a token-only operator: no user stream
    owner_id = (await a.register_user(None, email=f"o{uuid.uuid4().hex[:8]}@example.org", display_name="O",
                                      password="password-1", role="member", ctx=CTX)).entity_id  # fmt: skip
    owner = Actor(owner_id, "member")
    project_id = uuid.UUID((await a.create_project(owner, name=f"p-{uuid.uuid4().hex[:6]}", description="", ctx=CTX)).entity_id)
    await a.submit_task(owner, project_id, spec={"kind": "warm"}, ctx=CTX)  # a reads and caches
    await a.submit_task(owner, project_id, spec={"kind": "warm"}, ctx=CTX)  # served from a's cache
    return a, b, admin, owner, project_id


async def test_an_archive_through_one_gateway_stops_submissions_through_the_other(store: PostgresEventStore) -> None:
    a, b, _admin, owner, project_id = await setup(store)
    await b.archive_project(owner, project_id, ctx=CTX)
    refused_before = store.commit_counts["fast_guard_refused"]
    with pytest.raises(IllegalTransition):
        await a.submit_task(owner, project_id, spec={"kind": "late"}, ctx=CTX)
    # a answered from its cache first; the stale project failed the guard; the retry read afresh.
    assert store.commit_counts["fast_guard_refused"] == refused_before + 1


async def test_a_deactivation_through_one_gateway_stops_the_user_on_the_other(store: PostgresEventStore) -> None:
    a, b, admin, owner, project_id = await setup(store)
    await b.deactivate_user(admin, uuid.UUID(owner.user_id), reason="left", ctx=CTX)
    with pytest.raises(Forbidden):
        await a.submit_task(owner, project_id, spec={"kind": "late"}, ctx=CTX)


async def test_a_new_member_added_elsewhere_may_submit_at_once(store: PostgresEventStore) -> None:
    a, b, _admin, owner, project_id = await setup(store)
    member_id = (await b.register_user(None, email=f"m{uuid.uuid4().hex[:8]}@example.org", display_name="M",
                                       password="password-1", role="member", ctx=CTX)).entity_id  # fmt: skip
    await b.put_member(owner, project_id, uuid.UUID(member_id), role="editor", ctx=CTX)
    written = await a.submit_task(Actor(member_id, "member"), project_id, spec={"kind": "x"}, ctx=CTX)
    assert written.primary.version == 1


async def test_an_archive_racing_a_cached_submission_from_another_process_wins(database_url: str) -> None:
    """Two gateway processes (two stores): the archive commits while the cached submission
    waits for the append lock; the submission's guard must see it."""
    import asyncio

    import psycopg

    store_a, store_b = await PostgresEventStore.connect(database_url), await PostgresEventStore.connect(database_url)
    try:
        a, b, _admin, owner, project_id = await setup(store_a)
        b = Service(store_b)
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute("SELECT pg_advisory_xact_lock(7306010001)")
            archive = asyncio.create_task(b.archive_project(owner, project_id, ctx=CTX))
            await asyncio.sleep(0.3)
            submit = asyncio.create_task(a.submit_task(owner, project_id, spec={"kind": "late"}, ctx=CTX))
            await asyncio.sleep(0.3)
            await holder.commit()
        await archive
        with pytest.raises(IllegalTransition):
            await submit
    finally:
        await store_a.close()
        await store_b.close()


async def test_a_token_only_admin_is_checked_again_once_its_subject_has_a_user_stream(store: PostgresEventStore) -> None:
    """A subject without a user stream is remembered as such (its submissions read nothing
    about it) and guarded as absent: once a stream appears for it, its state decides."""
    from commands import user
    from schemas.envelope import NO_STREAM
    from schemas.users import UserDeactivated, UserRegistered

    a, b, admin, _owner, project_id = await setup(store)
    await a.submit_task(admin, project_id, spec={"kind": "warm"}, ctx=CTX)  # reads: no stream
    refused_before = store.commit_counts["fast_guard_refused"]
    await a.submit_task(admin, project_id, spec={"kind": "warm"}, ctx=CTX)  # trusted absent, guarded: accepted
    assert store.commit_counts["fast_guard_refused"] == refused_before
    subject = uuid.UUID(admin.user_id)
    registered = UserRegistered(user_id=subject, email=f"s{uuid.uuid4().hex[:8]}@example.org", display_name="S",
                                password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", role="admin")  # fmt: skip
    await store.append(user.stream_for(subject), NO_STREAM, [registered.to_new_event(), UserDeactivated(user_id=subject, reason="gone").to_new_event()])
    with pytest.raises(Forbidden):
        await a.submit_task(admin, project_id, spec={"kind": "late"}, ctx=CTX)
    assert store.commit_counts["fast_guard_refused"] == refused_before + 1  # the absent guard failed; the retry read it
