"""The EventStore protocol: what commands, the relay and projections may rely on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.envelope import AppendResult, ExpectedVersion, Metadata, NewEvent, RecordedEvent


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """One stream's part of an append: all parts of one append commit together or not at all."""

    stream: str
    expected_version: ExpectedVersion
    events: Sequence[NewEvent]


class EventStore(Protocol):
    async def append(
        self,
        stream: str,
        expected_version: ExpectedVersion,
        events: Sequence[NewEvent],
        metadata: Metadata | None = None,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> AppendResult:
        """Append atomically. Versions start at 1; a stream with no events is at version 0.

        Raises WrongExpectedVersion when the stream is not at ``expected_version``, and
        IdempotencyKeyReused when ``idempotency_key`` was used with another ``fingerprint``.
        With a known key and the same fingerprint, returns the original result (replayed=True)
        and appends nothing.
        """
        ...

    async def append_streams(
        self,
        parts: Sequence[StreamAppend],
        metadata: Metadata | None = None,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> list[AppendResult]:
        """Append to several streams in one transaction: all parts are written, or none."""
        ...

    async def idempotent_result(self, key: str, fingerprint: str) -> list[AppendResult] | None:
        """The original result for ``key``; None if unused; IdempotencyKeyReused if the
        fingerprint differs."""
        ...

    async def read_stream(self, stream: str, from_version: int = 1, limit: int | None = None) -> list[RecordedEvent]: ...

    async def read_streams(self, after: Mapping[str, int]) -> dict[str, list[RecordedEvent]]:
        """Several streams in one round trip, each from just after the given version."""
        ...

    async def stream_version(self, stream: str) -> int: ...

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]: ...

    async def head_position(self) -> int: ...

    def subscribe(self, after_position: int = 0, batch_size: int = 500) -> AsyncIterator[list[RecordedEvent]]:
        """Tail the global order from ``after_position``, forever, never skipping an event."""
        ...
