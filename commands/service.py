"""The use cases behind the write API: each loads, checks access, decides, and appends.

Every method takes the acting user and a WriteContext and returns ``Written`` (the appends
made, primary stream first). Rules live in the deciders and in ``commands.authz``; this module
only says which streams a use case touches and in what order.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from commands import authz, passwords, project, project_name, task, user, user_email
from commands.authz import Actor
from commands.errors import DomainError, Forbidden, IllegalTransition, NotFound, ValidationFailed
from commands.decider import fold
from commands.handler import Loaded, WriteContext, Written, execute, load, load_many
from commands.states import StateCache
from event_store.protocol import EventStore, StreamAppend
from schemas.projects import (
    AddProjectMember,
    ArchiveProject,
    CreateProject,
    ReleaseProjectName,
    RemoveProjectMember,
    ReserveProjectName,
    UpdateProject,
)
from schemas.envelope import RecordedEvent
from schemas.tasks import CancelTask, FailTask, RequeueTask, StartTask, SubmitTask, SucceedTask
from schemas.users import ChangeUserRole, ClaimUserEmail, DeactivateUser, RegisterUser, UpdateUserProfile


class InvalidCredentials(Exception):
    """Wrong email or password, or a deactivated user: one answer for all, on purpose."""


@dataclass(frozen=True, slots=True)
class Service:
    store: EventStore
    retries: int = 3
    cache: StateCache = field(default_factory=StateCache)
    task_kinds: frozenset[str] | None = None  # set: a submission of another kind is refused (422)
    # Callers whose token subject has no user stream (an operator's bootstrap admin): with
    # ``trust_cache`` their stream is not read again but guarded as absent in the append, as a
    # cached state is guarded at its version (the cache keeps no empty streams).
    _streamless: set[str] = field(default_factory=set)

    async def _run(self, plan: Any, ctx: WriteContext) -> Written:
        return await execute(self.store, plan, ctx, retries=self.retries)

    async def _current(self, actor: Actor) -> Actor:
        """The caller as stored now, not as the token remembers: a deactivation or a role
        change takes effect on the next write, whatever the token's lifetime."""
        stream = _actor_stream(actor)
        if stream is None:
            return actor
        return _as_stored(actor, (await load(self.store, user.DECIDER, stream, self.cache)).state)

    # --- users -----------------------------------------------------------------------------

    async def register_user(
        self, actor: Actor | None, *, email: str, display_name: str, password: str, role: str, ctx: WriteContext
    ) -> Written:
        if actor is not None:
            actor = await self._current(actor)
        if role != "member" and (actor is None or not actor.is_admin):
            raise Forbidden("only an admin may register a user with another role than member")
        password_hash = await asyncio.to_thread(passwords.hash_password, password)
        user_id = uuid.uuid4()

        async def plan(_attempt: int) -> list[StreamAppend]:
            claim = await load(self.store, user_email.DECIDER, user_email.stream_for(email), self.cache)
            claimed = user_email.decide(claim.state, ClaimUserEmail(email=email, user_id=user_id))
            account = Loaded(user.stream_for(user_id), None, 0)  # a new id: the append expects no stream
            command = RegisterUser(user_id=user_id, email=email, display_name=display_name, password_hash=password_hash, role=role)  # type: ignore[arg-type]
            return [account.append(user.decide(account.state, command)), claim.append(claimed)]

        return await self._run(plan, ctx)

    async def authenticate(self, email: str, password: str) -> user.UserState:
        claim = await load(self.store, user_email.DECIDER, user_email.stream_for(email), self.cache)
        account = None
        if claim.state is not None:
            account = (await load(self.store, user.DECIDER, user.stream_for(claim.state.user_id), self.cache)).state
        password_hash = account.password_hash if account is not None else None
        ok = await asyncio.to_thread(passwords.verify_password, password_hash, password)
        if not ok or account is None or not account.active:
            raise InvalidCredentials
        return account

    async def update_user(self, actor: Actor, user_id: uuid.UUID, *, display_name: str, ctx: WriteContext) -> Written:
        actor = await self._current(actor)
        authz.self_or_admin(actor, user_id)
        return await self._on_user(user_id, UpdateUserProfile(user_id=user_id, display_name=display_name), ctx)

    async def change_role(self, actor: Actor, user_id: uuid.UUID, *, role: str, ctx: WriteContext) -> Written:
        actor = await self._current(actor)
        authz.admin_only(actor)
        return await self._on_user(user_id, ChangeUserRole(user_id=user_id, role=role), ctx)  # type: ignore[arg-type]

    async def deactivate_user(self, actor: Actor, user_id: uuid.UUID, *, reason: str, ctx: WriteContext) -> Written:
        actor = await self._current(actor)
        authz.self_or_admin(actor, user_id)
        return await self._on_user(user_id, DeactivateUser(user_id=user_id, reason=reason), ctx)

    async def _on_user(self, user_id: uuid.UUID, command: Any, ctx: WriteContext) -> Written:
        async def plan(_attempt: int) -> list[StreamAppend]:
            account = await load(self.store, user.DECIDER, user.stream_for(user_id), self.cache)
            return [account.append(user.decide(account.state, command))]

        return await self._run(plan, ctx)

    # --- projects --------------------------------------------------------------------------

    async def create_project(self, actor: Actor, *, name: str, description: str, ctx: WriteContext) -> Written:
        actor = await self._current(actor)
        authz.may_create_projects(actor)
        owner_id, project_id = actor.uuid(), uuid.uuid4()

        async def plan(_attempt: int) -> list[StreamAppend]:
            proj = await load(self.store, project.DECIDER, project.stream_for(project_id), self.cache)
            created = project.decide(proj.state, CreateProject(project_id=project_id, owner_id=owner_id, name=name, description=description))
            claim = await self._reserve(owner_id, name, project_id)
            return [proj.append(created), claim]

        return await self._run(plan, ctx)

    async def update_project(self, actor: Actor, project_id: uuid.UUID, *, changes: dict[str, Any], ctx: WriteContext) -> Written:
        actor = await self._current(actor)

        async def plan(_attempt: int) -> list[StreamAppend]:
            proj = await self._project(project_id, actor, "manage")
            state = proj.state
            assert state is not None
            parts = [proj.append(project.decide(state, UpdateProject(project_id=project_id, **changes)))]
            new_name = changes.get("name")
            if new_name is not None and project_name.name_key(state.owner_id, new_name) != project_name.name_key(state.owner_id, state.name):
                parts.append(await self._reserve(state.owner_id, new_name, project_id))
                parts.append(await self._release(state.owner_id, state.name, project_id))
            return parts

        return await self._run(plan, ctx)

    async def archive_project(self, actor: Actor, project_id: uuid.UUID, *, ctx: WriteContext) -> Written:
        actor = await self._current(actor)

        async def plan(_attempt: int) -> list[StreamAppend]:
            proj = await self._project(project_id, actor, "manage")
            assert proj.state is not None
            archived = proj.append(project.decide(proj.state, ArchiveProject(project_id=project_id)))
            if not archived.events:
                return [archived]
            return [archived, await self._release(proj.state.owner_id, proj.state.name, project_id)]

        return await self._run(plan, ctx)

    async def put_member(self, actor: Actor, project_id: uuid.UUID, user_id: uuid.UUID, *, role: str, ctx: WriteContext) -> Written:
        actor = await self._current(actor)

        async def plan(_attempt: int) -> list[StreamAppend]:
            proj = await self._project(project_id, actor, "manage")  # before anything about the member leaks
            member = (await load(self.store, user.DECIDER, user.stream_for(user_id), self.cache)).state
            if member is None or not member.active:  # the path names no user: 404, as for the project
                raise NotFound("no active user with this id")
            return [proj.append(project.decide(proj.state, AddProjectMember(project_id=project_id, user_id=user_id, role=role)))]  # type: ignore[arg-type]

        return await self._run(plan, ctx)

    async def remove_member(self, actor: Actor, project_id: uuid.UUID, user_id: uuid.UUID, *, ctx: WriteContext) -> Written:
        actor = await self._current(actor)

        async def plan(_attempt: int) -> list[StreamAppend]:
            proj = await self._project(project_id, actor, "manage")
            return [proj.append(project.decide(proj.state, RemoveProjectMember(project_id=project_id, user_id=user_id)))]

        return await self._run(plan, ctx)

    async def authorize_project(self, actor: Actor, project_id: uuid.UUID, need: authz.Need) -> None:
        """Check that the caller (as stored now) may ``need`` the project; 404/403 otherwise."""
        await self._project_and_actor(project_id, actor, need)

    async def _project(self, project_id: uuid.UUID, actor: Actor, need: authz.Need) -> Loaded[project.State]:
        proj = await load(self.store, project.DECIDER, project.stream_for(project_id), self.cache)
        authz.project_access(proj.state, actor, need)
        return proj

    async def _reserve(self, owner_id: uuid.UUID, name: str, project_id: uuid.UUID) -> StreamAppend:
        claim = await load(self.store, project_name.DECIDER, project_name.stream_for(owner_id, name), self.cache)
        return claim.append(project_name.decide(claim.state, ReserveProjectName(owner_id=owner_id, name=name, project_id=project_id)))

    async def _release(self, owner_id: uuid.UUID, name: str, project_id: uuid.UUID) -> StreamAppend:
        claim = await load(self.store, project_name.DECIDER, project_name.stream_for(owner_id, name), self.cache)
        return claim.append(project_name.decide(claim.state, ReleaseProjectName(owner_id=owner_id, name=name, project_id=project_id)))

    # --- tasks -----------------------------------------------------------------------------

    async def submit_task(self, actor: Actor, project_id: uuid.UUID, *, spec: dict[str, Any], ctx: WriteContext) -> Written:
        if self.task_kinds is not None and spec.get("kind") not in self.task_kinds:
            message = f"no worker handles this kind; known kinds: {', '.join(sorted(self.task_kinds))}"
            raise ValidationFailed(message, errors=[{"field": "kind", "message": message}])
        task_id = uuid.uuid4()  # new, so its stream is empty: the append expects NO_STREAM
        command = SubmitTask(task_id=task_id, project_id=project_id, **spec)

        async def plan(attempt: int) -> list[StreamAppend]:
            # The project and the caller are guarded in the append: a cached state that is behind
            # (another gateway changed them) fails the append, and the retry reads them afresh.
            proj, account = await self._project_and_actor(project_id, actor, "edit", trust_cache=attempt == 0, live=True)
            submitted = Loaded(task.stream_for(task_id), None, 0).append(task.decide(None, command))
            # The caller's stream is guarded even when it has none (expected: no stream), so a
            # state trusted from memory, absent or not, is checked by the append.
            return [submitted, proj.guard(), *([account.guard()] if account.stream else [])]

        return await self._run(plan, ctx)

    async def cancel_task(self, actor: Actor, task_id: uuid.UUID, *, reason: str, ctx: WriteContext) -> Written:
        async def plan(_attempt: int) -> list[StreamAppend]:
            job = await load(self.store, task.DECIDER, task.stream_for(task_id), self.cache)
            if job.state is None:
                raise NotFound("no such task")
            try:
                proj, account = await self._project_and_actor(job.state.project_id, actor, "edit")
            except NotFound:
                raise NotFound("no such task") from None
            cancelled = job.append(task.decide(job.state, CancelTask(task_id=task_id, reason=reason)))
            return [cancelled, proj.guard(), *([account.guard()] if account.version else [])]

        return await self._run(plan, ctx)

    async def requeue_task(self, actor: Actor, task_id: uuid.UUID, *, reason: str, ctx: WriteContext) -> Written:
        """An admin gives a finally failed task one more attempt."""
        actor = await self._current(actor)
        authz.admin_only(actor)

        async def plan(_attempt: int) -> list[StreamAppend]:
            job = await load(self.store, task.DECIDER, task.stream_for(task_id), self.cache)
            if job.state is None:
                raise NotFound("no such task")
            return [job.append(task.decide(job.state, RequeueTask(task_id=task_id, reason=reason)))]

        return await self._run(plan, ctx)

    async def task_history(self, actor: Actor, task_id: uuid.UUID) -> list[RecordedEvent]:
        """The task's events, for a caller who may view its project."""
        events = await self.store.read_stream(task.stream_for(task_id))
        if not events:
            raise NotFound("no such task")
        project_id = uuid.UUID(str(events[0].data["project_id"]))
        try:
            await self._project_and_actor(project_id, actor, "view")
        except NotFound:
            raise NotFound("no such task") from None
        return events

    # --- task outcomes (workers) -----------------------------------------------------------

    async def report_task(
        self, command: StartTask | SucceedTask | FailTask, *, ctx: WriteContext, known: Loaded[task.State] | None = None
    ) -> tuple[Written, task.State]:
        """A worker's report, decided on the task's stream like any command. ``known``: a
        state the worker already holds, tried first (a stale one fails the append and the plan
        runs again on what is stored). Returns the append and the task's state after it."""
        stream = task.stream_for(command.task_id)
        after: list[task.State] = []

        async def plan(attempt: int) -> list[StreamAppend]:
            job = known if known is not None and attempt == 0 else await load(self.store, task.DECIDER, stream, self.cache)
            events = task.decide(job.state, command)
            after[:] = [fold(task.evolve, job.state, events)]
            return [job.append(events)]

        written = await self._run(plan, ctx)
        self.cache.put(stream, written.primary.version, after[0])
        return written, after[0]

    async def _project_and_actor(
        self, project_id: uuid.UUID, actor: Actor, need: authz.Need, *, trust_cache: bool = False, live: bool = False
    ) -> tuple[Loaded[project.State], Loaded[user.State]]:
        """The project and the acting user in one round trip (none when both are cached and
        ``trust_cache``: then guard them), access checked as _current does; ``live``: the
        project must not be archived."""
        wanted: list[tuple[Any, str]] = [(project.DECIDER, project.stream_for(project_id))]
        actor_stream = _actor_stream(actor)
        absent = trust_cache and actor_stream in self._streamless
        if actor_stream is not None and not absent:
            wanted.append((user.DECIDER, actor_stream))
        loaded = await load_many(self.store, *wanted, cache=self.cache, trust_cache=trust_cache)
        if absent:
            account = Loaded(actor_stream, None, 0)  # type: ignore[arg-type]
        else:
            account = loaded[1] if len(loaded) > 1 else Loaded("", None, 0)
            if actor_stream is not None and not account.version:
                if len(self._streamless) >= 10_000:
                    self._streamless.clear()
                self._streamless.add(actor_stream)
            elif actor_stream is not None:
                self._streamless.discard(actor_stream)  # it has a stream now: cached as any other
        try:
            state = authz.project_access(loaded[0].state, _as_stored(actor, account.state), need)
            if live and state.archived:
                raise IllegalTransition("the project is archived: no new tasks", project_id=str(project_id))
        except DomainError:
            if trust_cache:  # a refusal must come from the current state, never a cached one
                return await self._project_and_actor(project_id, actor, need, live=live)
            raise
        return loaded[0], account


def _actor_stream(actor: Actor) -> str | None:
    try:
        return user.stream_for(uuid.UUID(actor.user_id))
    except ValueError:
        return None


def _as_stored(actor: Actor, account: user.State) -> Actor:
    """A token whose subject has no user stream (an operator's bootstrap admin) keeps its role."""
    if account is None:
        return actor
    if not account.active:
        raise Forbidden("this user is deactivated")
    return actor if account.role == actor.role else Actor(actor.user_id, account.role)
