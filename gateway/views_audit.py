"""The answers of the audit API (``gateway.audit``, ``gateway.schema_routes``), as pydantic
models: they document it in the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Event(BaseModel):
    """An event as stored (``schemas.envelope.RecordedEvent.to_json``), private fields left out."""

    id: str
    stream: str
    type: str
    schema_version: int
    version: int
    global_position: int
    recorded_at: str
    data: dict[str, Any]
    metadata: dict[str, Any]


class EventList(BaseModel):
    items: list[Event]
    next_cursor: str | None
    next: str | None


class HistoryItem(BaseModel):
    version: int
    global_position: int
    recorded_at: str
    type: str
    schema_version: int
    actor: str | None
    correlation_id: str | None
    event_id: str
    data: dict[str, Any]


class HistoryList(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None
    next: str | None


class PublishedSchema(BaseModel):
    type: str
    schema_version: int
    current: bool
    category: str
    url: str


class SchemaIndex(BaseModel):
    items: list[PublishedSchema]


class JsonSchema(BaseModel):
    """A JSON Schema (draft 2020-12) document."""

    model_config = {"extra": "allow"}
