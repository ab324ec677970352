"""The analysts' contract: what an event looks like once published (Kafka, SSE, tail).

Published events are the envelope of ``RecordedEvent.to_json`` with the data's private fields
(a password hash) left out, at the schema version they were stored with (never upcast: a
consumer reads old versions through their own schema). The schema of each type and version is
the published one (``schemas/jsonschema.py``, files in ``schemas/published/``, served at
``/v1/schemas``); a record names it in the CloudEvents header ``ce_dataschema``, equal to the
schema's ``$id``: ``urn:taskstream:schema:<type>:v<schema_version>``.
"""

from __future__ import annotations

from typing import Any

from schemas.jsonschema import DIALECT, published_schemas, schema_id


def dataschema(type_: str, schema_version: int) -> str:
    return schema_id(type_, schema_version)


def published_data_schemas() -> dict[tuple[str, int], dict[str, Any]]:
    """(event type, schema version) -> JSON Schema of its data as published."""
    return published_schemas()


def envelope_schema() -> dict[str, Any]:
    """The JSON Schema of a published record's value (``data`` checked per type)."""
    return {
        "$schema": DIALECT,
        "$id": "urn:taskstream:schema:envelope:v1",
        "title": "taskstream event envelope",
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "stream", "type", "schema_version", "version", "global_position", "recorded_at", "data", "metadata"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "stream": {"type": "string", "pattern": "^[a-z][a-z0-9_]*-.+$"},
            "type": {"type": "string", "pattern": "^[a-z][a-z0-9_]*\\.[a-z0-9_]+$"},
            "schema_version": {"type": "integer", "minimum": 1},
            "version": {"type": "integer", "minimum": 1},
            "global_position": {"type": "integer", "minimum": 1},
            "recorded_at": {"type": "string", "format": "date-time"},
            "data": {"type": "object"},
            "metadata": {
                "type": "object",
                "properties": {k: {"type": "string"} for k in ("actor", "correlation_id", "causation_id", "traceparent", "tracestate", "idempotency_key")},
            },
        },
    }
