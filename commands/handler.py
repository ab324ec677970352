"""Load, decide, append: the one loop every command goes through.

A use case is a ``plan``: an async function that loads the streams it needs, checks who may
act, decides, and returns the appends to make (the primary stream first), each with the version
it read. ``execute`` runs the plan and appends atomically. When another writer got there first
it runs the plan again, a bounded number of times, unless the client pinned the primary
stream's version (``If-Match``): then the conflict is the client's to resolve, and it is a 409
naming both versions.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from commands.decider import Decider, fold
from commands.states import StateCache
from commands.errors import Conflict, ValidationFailed
from event_store.errors import IdempotencyKeyReused, WrongExpectedVersion
from event_store.protocol import EventStore, StreamAppend
from schemas.base import DomainEvent
from schemas.catalog import registry
from schemas.envelope import NO_STREAM, AppendResult, ExpectedVersion, Metadata, entity_id_of
from taskstream.telemetry import tracer, with_trace_context

S = TypeVar("S")
_tracer = tracer("taskstream.commands")


class VersionConflict(Conflict):
    slug = "version-conflict"
    title = "The resource was changed by someone else"

    def __init__(self, stream: str, expected: int | str, actual: int) -> None:
        super().__init__(
            f"{stream} is at version {actual}, not {expected}",
            stream=stream,
            expected_version=expected,
            actual_version=actual,
        )


class IdempotencyKeyMismatch(ValidationFailed):
    slug = "idempotency-key-reused"
    title = "The Idempotency-Key was used for a different request"

    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was already used with another request; use a new key",
            errors=[{"field": "Idempotency-Key", "message": "already used for a different request"}],
        )


@dataclass(frozen=True, slots=True)
class Loaded(Generic[S]):
    stream: str
    state: S
    version: int

    @property
    def expected(self) -> ExpectedVersion:
        return self.version if self.version else NO_STREAM

    def append(self, events: Sequence[DomainEvent]) -> StreamAppend:
        return StreamAppend(self.stream, self.expected, [e.to_new_event() for e in events])

    def guard(self) -> StreamAppend:
        """A part that writes nothing and fails the append if this stream moved on since."""
        return StreamAppend(self.stream, self.expected, [])


async def load(store: EventStore, decider: Decider[S, Any, Any], stream: str, cache: StateCache | None = None) -> Loaded[S]:
    (loaded,) = await load_many(store, (decider, stream), cache=cache)
    return loaded


async def load_many(
    store: EventStore, *wanted: tuple[Decider[Any, Any, Any], str], cache: StateCache | None = None, trust_cache: bool = False
) -> list[Loaded[Any]]:
    """Several aggregates in one round trip; with a cache, only the events after its states.
    ``trust_cache``: when every stream is cached, answer from the cache without reading; the
    caller must then guard those streams in its append (Loaded.guard), so a stale state shows
    as a conflict and the plan runs again, reading."""
    base = {stream: (cache.get(stream) if cache is not None else None) or (0, decider.initial) for decider, stream in wanted}
    if trust_cache and cache is not None and all(version > 0 for version, _ in base.values()):
        return [Loaded(stream, base[stream][1], base[stream][0]) for _, stream in wanted]
    found = await store.read_streams({stream: version for stream, (version, _) in base.items()})
    codec = registry()
    loaded = []
    for decider, stream in wanted:
        version, state = base[stream]
        events = found[stream]
        if events:
            state = fold(decider.evolve, state, (codec.decode(e) for e in events))
            version = events[-1].version
            if cache is not None:
                cache.put(stream, version, state)
        loaded.append(Loaded(stream, state, version))
    return loaded


@dataclass(frozen=True, slots=True)
class WriteContext:
    """What travels with a write besides the command: who, why, and retry safety."""

    metadata: Metadata
    idempotency_key: str | None = None
    fingerprint: str | None = None
    if_match: int | None = None


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of a command: the primary stream's append (and the others)."""

    results: tuple[AppendResult, ...]

    @property
    def primary(self) -> AppendResult:
        return self.results[0]

    @property
    def entity_id(self) -> str:
        return entity_id_of(self.primary.stream)

    @property
    def replayed(self) -> bool:
        return self.primary.replayed


Plan = Callable[[int], Awaitable[list[StreamAppend]]]  # called with the attempt number, from 0


async def execute(store: EventStore, plan: Plan, ctx: WriteContext, *, retries: int = 3) -> Written:
    """Run ``plan`` and append. A reused idempotency key becomes a domain error here; the
    store being unavailable is left to the edge (503), wherever in a use case it happens.
    Traced as a ``command`` span, each append as a child ``append`` span whose context the
    events carry in their metadata (``traceparent``): the relay and consumers continue it."""
    with _tracer.start_as_current_span("command"):
        try:
            return await _execute(store, plan, ctx, retries)
        except IdempotencyKeyReused:
            raise IdempotencyKeyMismatch from None


async def _execute(store: EventStore, plan: Plan, ctx: WriteContext, retries: int) -> Written:
    if ctx.idempotency_key is not None and ctx.fingerprint is not None:
        # A retry must get the original answer even if the state moved on since.
        original = await store.idempotent_result(ctx.idempotency_key, ctx.fingerprint)
        if original is not None:
            return Written(tuple(original))
    for attempt in range(retries + 1):
        parts = await plan(attempt)
        primary = parts[0]
        if ctx.if_match is not None and _version(primary.expected_version) != ctx.if_match:
            raise VersionConflict(primary.stream, ctx.if_match, _version(primary.expected_version))
        try:
            with _tracer.start_as_current_span("append", attributes={"taskstream.category": primary.stream.partition("-")[0]}):
                results = await store.append_streams(
                    parts, with_trace_context(ctx.metadata), idempotency_key=ctx.idempotency_key, fingerprint=ctx.fingerprint
                )
        except WrongExpectedVersion as exc:
            # If-Match pins the primary stream only: a race on a secondary (a name claim) is retried.
            pinned = ctx.if_match is not None and exc.stream == primary.stream
            if pinned or attempt == retries:
                raise VersionConflict(exc.stream, exc.expected, exc.actual) from exc
            continue
        return Written(tuple(results))
    raise AssertionError("unreachable")  # pragma: no cover


def _version(expected: ExpectedVersion) -> int:
    return expected if isinstance(expected, int) else 0


def new_id() -> uuid.UUID:
    return uuid.uuid4()
