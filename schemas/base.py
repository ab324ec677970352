"""Base classes for events and commands: pydantic models, frozen, unknown fields refused."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from schemas.envelope import NewEvent


class DomainEvent(BaseModel):
    """A fact, named in the past tense. ``TYPE`` is the stable stored name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TYPE: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1
    # Fields kept in the store (the audit log) but left out wherever events are published.
    PRIVATE_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def to_new_event(self) -> NewEvent:
        return NewEvent(type=self.TYPE, schema_version=self.SCHEMA_VERSION, data=self.model_dump(mode="json"))


class Command(BaseModel):
    """An intention, named in the imperative. Validated at the edge, decided by a decider."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TYPE: ClassVar[str]

    def describe(self) -> dict[str, Any]:
        return {"type": self.TYPE, **self.model_dump(mode="json")}
