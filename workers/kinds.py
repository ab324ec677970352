"""Task kinds: plain async functions registered by name.

A handler is ``async def handler(ctx: TaskContext) -> JsonValue | StoredResult``. It may raise
``PermanentError`` for a failure that no retry can fix (bad input); any other exception is a
retryable failure. Other packages add kinds through the entry point group
``taskstream.task_kinds`` (``name = "package.module:function"``); ``WORKER_MODULES`` names
modules to import whose ``register(registry)`` adds kinds (handy for tests and scripts).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pydantic import JsonValue

log = logging.getLogger("taskstream.workers")

ENTRY_POINT_GROUP = "taskstream.task_kinds"


class PermanentError(Exception):
    """A failure that a retry cannot fix: the task fails finally."""


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A result a handler already put in blob storage (``uri``) with a small inline summary."""

    uri: str
    summary: str = ""
    result: JsonValue = None


@dataclass(frozen=True, slots=True)
class Services:
    """What handlers may use: the event store (a PostgresEventStore), blob storage, settings."""

    store: Any
    blobs: Any
    settings: Any


@dataclass(slots=True)
class TaskContext:
    task_id: uuid.UUID
    project_id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    attempt: int
    worker_id: str
    services: Services | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


Handler = Callable[[TaskContext], Awaitable[Any]]


class UnknownKind(PermanentError):
    def __init__(self, kind: str, known: Iterable[str]) -> None:
        super().__init__(f"no handler for task kind {kind!r} (known: {', '.join(sorted(known))})")


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        if kind in self._handlers and self._handlers[kind] is not handler:
            raise ValueError(f"task kind {kind!r} is registered twice")
        self._handlers[kind] = handler

    def kind(self, name: str) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.register(name, handler)
            return handler

        return decorate

    def get(self, kind: str) -> Handler:
        try:
            return self._handlers[kind]
        except KeyError:
            raise UnknownKind(kind, self._handlers) from None

    def kinds(self) -> frozenset[str]:
        return frozenset(self._handlers)


def load_registry(extra_modules: str = "", *, group: str = ENTRY_POINT_GROUP) -> Registry:
    """The built-in kinds, then the entry point group's, then those of ``extra_modules``."""
    from workers import builtins

    registry = Registry()
    builtins.register(registry)
    for ep in entry_points(group=group):
        registry.register(ep.name, ep.load())
    for name in filter(None, (m.strip() for m in extra_modules.split(","))):
        importlib.import_module(name).register(registry)
    return registry
