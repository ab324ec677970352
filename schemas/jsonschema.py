"""JSON Schema (draft 2020-12) for every event and command, keyed by type name.

Run ``python -m schemas.jsonschema OUT_DIR`` to write one ``<type>.json`` file per type.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemas.base import Command, DomainEvent
from schemas.catalog import COMMANDS, EVENTS, HISTORIC_EVENTS

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _schema(cls: type[DomainEvent] | type[Command], kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"$schema": DIALECT, **cls.model_json_schema(mode="validation")}
    schema["title"] = cls.TYPE
    schema["x-kind"] = kind
    schema["x-class"] = cls.__name__
    if issubclass(cls, DomainEvent):
        schema["x-schema-version"] = cls.SCHEMA_VERSION
    return schema


def json_schemas() -> dict[str, dict[str, Any]]:
    """Type name -> JSON Schema of its ``data`` (events) or body (commands)."""
    out: dict[str, dict[str, Any]] = {}
    for event_cls in EVENTS:
        out[event_cls.TYPE] = _schema(event_cls, "event")
    for command_cls in COMMANDS:
        if command_cls.TYPE in out:
            raise ValueError(f"type name {command_cls.TYPE!r} is used by an event and a command")
        out[command_cls.TYPE] = _schema(command_cls, "command")
    return out


def event_schemas() -> dict[tuple[str, int], dict[str, Any]]:
    """(type, schema version) -> JSON Schema of its ``data``, for every version of every event
    type, past ones included: a stored or published record of any version can be validated."""
    out = {(cls.TYPE, cls.SCHEMA_VERSION): _schema(cls, "event") for cls in EVENTS}
    for cls in HISTORIC_EVENTS:
        out[(cls.TYPE, cls.SCHEMA_VERSION)] = _schema(cls, "event")
    return out


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for type_name, schema in sorted(json_schemas().items()):
        path = out_dir / f"{type_name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the JSON Schema of every event and command.")
    parser.add_argument("out_dir", type=Path, help="folder to write <type>.json files into")
    args = parser.parse_args(argv)
    written = write(args.out_dir)
    print(f"wrote {len(written)} schemas to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
