"""Every event and command class, and the registry built from them."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from schemas.base import Command, DomainEvent
from schemas.projects import (
    PROJECT_COMMANDS,
    PROJECT_EVENTS,
    PROJECT_HISTORIC_EVENTS,
    PROJECT_NAME_COMMANDS,
    PROJECT_NAME_EVENTS,
    PROJECT_UPCASTERS,
)
from schemas.registry import Registry
from schemas.tasks import TASK_COMMANDS, TASK_EVENTS
from schemas.users import USER_COMMANDS, USER_EMAIL_COMMANDS, USER_EMAIL_EVENTS, USER_EVENTS

EVENTS: tuple[type[DomainEvent], ...] = USER_EVENTS + USER_EMAIL_EVENTS + PROJECT_EVENTS + PROJECT_NAME_EVENTS + TASK_EVENTS
COMMANDS: tuple[type[Command], ...] = USER_COMMANDS + USER_EMAIL_COMMANDS + PROJECT_COMMANDS + PROJECT_NAME_COMMANDS + TASK_COMMANDS

# Event classes of past schema versions (their JSON Schema stays published), and the upcasters
# from each past version to the next. The rule: see "Schema evolution" in the README.
HISTORIC_EVENTS: tuple[type[DomainEvent], ...] = PROJECT_HISTORIC_EVENTS
UPCASTERS = {**PROJECT_UPCASTERS}

COMMANDS_BY_TYPE: dict[str, type[Command]] = {cls.TYPE: cls for cls in COMMANDS}
if len(COMMANDS_BY_TYPE) != len(COMMANDS):
    raise ValueError("two command classes share a TYPE")


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The registry of every event type at its current version, with the upcasters every read
    path decodes through (projectors, replays, the command handler, workers)."""
    return Registry.of(EVENTS, UPCASTERS)


@lru_cache(maxsize=1)
def _private_fields() -> dict[str, frozenset[str]]:
    return {cls.TYPE: cls.PRIVATE_FIELDS for cls in EVENTS if cls.PRIVATE_FIELDS}


def public_data(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event's data as it may be published: private fields (a password hash) removed."""
    private = _private_fields().get(type_)
    if not private:
        return data
    return {k: v for k, v in data.items() if k not in private}
