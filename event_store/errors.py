"""The store's own errors. Driver errors are wrapped once, here at the store's edge."""

from __future__ import annotations


class EventStoreError(Exception):
    """Base of every error the store raises."""


class WrongExpectedVersion(EventStoreError):
    """The stream was not at the version the writer expected (optimistic concurrency)."""

    def __init__(self, stream: str, expected: int | str, actual: int) -> None:
        shown = "no stream" if actual == 0 else f"version {actual}"
        super().__init__(f"wrong expected version for stream {stream!r}: expected {expected}, stream is at {shown}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class IdempotencyKeyReused(EventStoreError):
    """An idempotency key was presented again with a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request")
        self.key = key


class StoreUnavailable(EventStoreError):
    """The database could not be reached or failed; nothing was written."""
