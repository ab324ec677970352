"""Type name -> event class, and upcasters applied on the read path.

Stored rows are never rewritten: an event stored at an older ``schema_version`` is upcast
step by step (v1 -> v2 -> ...) when it is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from schemas.base import DomainEvent
from schemas.envelope import JSON, RecordedEvent

Upcaster = Callable[[JSON], JSON]


class UnknownEventType(LookupError):
    def __init__(self, type_: str, schema_version: int) -> None:
        super().__init__(f"no event class registered for type {type_!r} version {schema_version}")
        self.type = type_
        self.schema_version = schema_version


@dataclass(frozen=True)
class Registry:
    classes: Mapping[str, type[DomainEvent]]
    upcasters: Mapping[tuple[str, int], Upcaster] = field(default_factory=dict)

    @classmethod
    def of(cls, events: Iterable[type[DomainEvent]], upcasters: Mapping[tuple[str, int], Upcaster] | None = None) -> Registry:
        classes: dict[str, type[DomainEvent]] = {}
        for event_cls in events:
            if event_cls.TYPE in classes:
                raise ValueError(f"event type {event_cls.TYPE!r} registered twice")
            classes[event_cls.TYPE] = event_cls
        return cls(classes=classes, upcasters=dict(upcasters or {}))

    def upcast(self, type_: str, schema_version: int, data: JSON) -> JSON:
        event_cls = self.classes.get(type_)
        if event_cls is None:
            raise UnknownEventType(type_, schema_version)
        version = schema_version
        while version < event_cls.SCHEMA_VERSION:
            step = self.upcasters.get((type_, version))
            if step is None:
                raise UnknownEventType(type_, version)
            data = step(data)
            version += 1
        if version != event_cls.SCHEMA_VERSION:
            raise UnknownEventType(type_, schema_version)
        return data

    def decode(self, event: RecordedEvent) -> DomainEvent:
        data = self.upcast(event.type, event.schema_version, event.data)
        return self.classes[event.type].model_validate(data)
