"""JSON Schema (draft 2020-12) for every event and command, keyed by type name; and the
published schemas of the analysts' contract, one file per event type and schema version.

Run ``python -m schemas.jsonschema OUT_DIR`` to write one ``<type>.json`` file per type.

Published schemas (``schemas/published/``): ``<type>.v<version>.json`` for every event type and
every schema version the registry knows (1 .. the class's ``SCHEMA_VERSION``), plus
``index.json``. They describe an event's ``data`` as published (Kafka, the audit API): private
fields (the password hash) are left out. ``python -m schemas.jsonschema --write`` regenerates
them; ``--check`` fails when a file is stale, missing or left over (a test runs it).

A published version is never taken back: when a type moves to version N+1 (with its upcaster),
its version N file stays. It is regenerated from the old class when ``schemas.catalog`` keeps one
in ``HISTORIC_EVENTS`` (a class with the same ``TYPE`` and the old ``SCHEMA_VERSION``); otherwise
the file already published is kept as it is, and must exist.

Every published schema's ``$id`` is ``urn:taskstream:schema:<type>:v<version>`` (``schema_id``):
the value of the ``ce_dataschema`` header on the Kafka records, so a consumer finds the schema of
a record from its headers alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemas.base import Command, DomainEvent
from schemas.catalog import COMMANDS, EVENTS, HISTORIC_EVENTS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:taskstream:schema:{type}:v{version}"
PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
INDEX = "index.json"


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
        path.write_text(_dumps(schema), encoding="utf-8")
        written.append(path)
    return written


# --- the published contract -------------------------------------------------------------------


def published_schema(cls: type[DomainEvent]) -> dict[str, Any]:
    """The JSON Schema of ``cls``'s data as published: its private fields left out."""
    schema = _schema(cls, "event")
    schema["$id"] = schema_id(cls.TYPE, cls.SCHEMA_VERSION)
    for name in cls.PRIVATE_FIELDS:
        schema.get("properties", {}).pop(name, None)
        if name in schema.get("required", []):
            schema["required"] = [r for r in schema["required"] if r != name]
    return schema


def schema_id(type_: str, version: int) -> str:
    """The ``$id`` of a published schema, and the ``ce_dataschema`` of records of that version."""
    return SCHEMA_ID.format(type=type_, version=version)


def published_schemas() -> dict[tuple[str, int], dict[str, Any]]:
    """(type, version) -> the published schema of that version's data, for every version of every
    event type (past ones from their classes or, failing that, their published file)."""
    files = expected_files()
    return {
        (cls.TYPE, version): json.loads(files[file_name(cls.TYPE, version)])
        for cls in EVENTS
        for version in range(1, cls.SCHEMA_VERSION + 1)
    }


def file_name(type_: str, version: int) -> str:
    return f"{type_}.v{version}.json"


def _classes() -> dict[tuple[str, int], type[DomainEvent]]:
    """(type, version) -> class: the current ones and any kept in ``catalog.HISTORIC_EVENTS``."""
    found: dict[tuple[str, int], type[DomainEvent]] = {}
    for cls in (*EVENTS, *HISTORIC_EVENTS):
        found[(cls.TYPE, cls.SCHEMA_VERSION)] = cls
    return found


def expected_files(folder: Path = PUBLISHED_DIR) -> dict[str, str]:
    """File name -> content that ``folder`` must hold; ValueError for an old version that has
    neither a class nor a file already published."""
    classes = _classes()
    files: dict[str, str] = {}
    index = []
    for cls in sorted(EVENTS, key=lambda c: c.TYPE):
        for version in range(1, cls.SCHEMA_VERSION + 1):
            name = file_name(cls.TYPE, version)
            old = classes.get((cls.TYPE, version))
            if old is not None:
                files[name] = _dumps(published_schema(old))
            elif (folder / name).is_file():
                files[name] = (folder / name).read_text(encoding="utf-8")  # published once: kept as it is
            else:
                raise ValueError(f"{cls.TYPE} version {version} has no class in schemas.catalog.HISTORIC_EVENTS and no published file {name}")
            index.append({"type": cls.TYPE, "schema_version": version, "current": version == cls.SCHEMA_VERSION,
                          "category": cls.TYPE.partition(".")[0], "file": name})  # fmt: skip
    files[INDEX] = _dumps({"dialect": DIALECT, "schemas": index})
    return files


def write_published(folder: Path = PUBLISHED_DIR) -> list[str]:
    """Bring ``folder`` up to date; the names of the files written or removed."""
    expected = expected_files(folder)
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, content in expected.items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            changed.append(name)
    for path in folder.glob("*.json"):
        if path.name not in expected:
            path.unlink()
            changed.append(path.name)
    return sorted(changed)


def stale_published(folder: Path = PUBLISHED_DIR) -> list[str]:
    """What differs from a regeneration: files stale, missing or left over (empty: up to date)."""
    expected = expected_files(folder)
    present = {path.name for path in folder.glob("*.json")} if folder.is_dir() else set()
    problems = [f"missing {name}" for name in sorted(set(expected) - present)]
    problems += [f"left over {name}" for name in sorted(present - set(expected))]
    problems += [f"stale {name}" for name in sorted(set(expected) & present) if (folder / name).read_text(encoding="utf-8") != expected[name]]
    return problems


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the JSON Schema of every event and command, or the published event schemas.")
    parser.add_argument("out_dir", type=Path, nargs="?", help="folder to write <type>.json files into")
    parser.add_argument("--write", action="store_true", help=f"regenerate the published schemas in {PUBLISHED_DIR}")
    parser.add_argument("--check", action="store_true", help="fail if the published schemas are not up to date")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_published()
        print(f"published schemas: {len(changed)} files changed" + "".join(f"\n  {n}" for n in changed))
        return 0
    if args.check:
        problems = stale_published()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python -m schemas.jsonschema --write", file=sys.stderr)
        return 1 if problems else 0
    if args.out_dir is None:
        parser.error("give OUT_DIR, --write or --check")
    written = write(args.out_dir)
    print(f"wrote {len(written)} schemas to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
