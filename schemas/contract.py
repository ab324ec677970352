"""The analysts' contract: what an event looks like once published (Kafka, SSE, tail).

Published events are the envelope of ``RecordedEvent.to_json`` with the data's private fields
(a password hash) left out. So the JSON Schema of published data is the event class's schema
(``schemas/jsonschema.py``) without those fields; everything else, ``additionalProperties:
false`` included, holds as stored. A record names its schema in the CloudEvents header
``ce_dataschema``: ``urn:taskstream:schema:<type>:v<schema_version>``.
"""

from __future__ import annotations

import copy
from typing import Any

from schemas.catalog import EVENTS
from schemas.jsonschema import DIALECT, json_schemas

SCHEMA_URN = "urn:taskstream:schema:{type}:v{version}"


def dataschema(type_: str, schema_version: int) -> str:
    return SCHEMA_URN.format(type=type_, version=schema_version)


def published_data_schemas() -> dict[str, dict[str, Any]]:
    """Event type -> JSON Schema of its data as published (private fields removed)."""
    private = {cls.TYPE: cls.PRIVATE_FIELDS for cls in EVENTS}
    out: dict[str, dict[str, Any]] = {}
    for type_, schema in json_schemas().items():
        if schema.get("x-kind") != "event":
            continue
        schema = copy.deepcopy(schema)
        for name in private.get(type_, ()):
            schema.get("properties", {}).pop(name, None)
            if name in schema.get("required", []):
                schema["required"].remove(name)
        schema["$id"] = dataschema(type_, schema["x-schema-version"])
        out[type_] = schema
    return out


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
