"""The event store: the ``events`` table is the source of truth and the audit log."""

from event_store.errors import (
    EventStoreError,
    IdempotencyKeyReused,
    StoreUnavailable,
    WrongExpectedVersion,
)
from event_store.protocol import EventStore, StreamAppend

__all__ = [
    "EventStore",
    "EventStoreError",
    "StreamAppend",
    "IdempotencyKeyReused",
    "StoreUnavailable",
    "WrongExpectedVersion",
]
