"""The catalog of events and commands, the registry and the JSON Schema export."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.base import Command, DomainEvent
from schemas.catalog import COMMANDS, COMMANDS_BY_TYPE, EVENTS, HISTORIC_EVENTS, registry
from schemas.envelope import RecordedEvent
from schemas.jsonschema import event_schemas, json_schemas, main
from schemas.registry import UnknownEventType

CATEGORY_OF_MODULE = {
    "schemas.users": {"user", "user_email"},
    "schemas.projects": {"project", "project_name"},
    "schemas.tasks": {"task"},
}


@pytest.mark.parametrize("cls", EVENTS + COMMANDS, ids=lambda cls: cls.__name__)
def test_type_names_are_category_dot_snake_case(cls: type[DomainEvent] | type[Command]) -> None:
    category, _, name = cls.TYPE.partition(".")
    assert category in CATEGORY_OF_MODULE[cls.__module__]
    assert name and name == name.lower() and " " not in name


def test_every_type_name_is_unique() -> None:
    names = [cls.TYPE for cls in EVENTS + COMMANDS]
    assert len(names) == len(set(names))
    assert set(COMMANDS_BY_TYPE) == {cls.TYPE for cls in COMMANDS}


def test_every_past_version_has_an_upcaster_and_keeps_its_class() -> None:
    """The schema evolution rule (README): a new version comes with an upcaster from the one
    before, and the old version's class stays, for its published JSON Schema."""
    upcasters = registry().upcasters
    historic = {(cls.TYPE, cls.SCHEMA_VERSION) for cls in HISTORIC_EVENTS}
    for cls in EVENTS:
        for version in range(1, cls.SCHEMA_VERSION):
            assert (cls.TYPE, version) in upcasters, (cls.TYPE, version)
            assert (cls.TYPE, version) in historic, (cls.TYPE, version)
    assert set(upcasters) == historic


def test_there_is_a_json_schema_for_every_version_of_every_event() -> None:
    schemas = event_schemas()
    expected = {(cls.TYPE, v) for cls in EVENTS for v in range(1, cls.SCHEMA_VERSION + 1)}
    assert set(schemas) == expected
    for (type_, version), schema in schemas.items():
        assert schema["title"] == type_ and schema["x-schema-version"] == version
    assert "changes" in schemas[("project.updated", 2)]["required"]
    assert "changes" not in schemas[("project.updated", 1)]["properties"]


def test_the_registry_knows_every_event_and_is_built_once() -> None:
    assert dict(registry().classes) == {cls.TYPE: cls for cls in EVENTS}
    assert registry() is registry()


def test_the_registry_refuses_unknown_types() -> None:
    row = RecordedEvent(
        id=uuid.uuid4(),
        stream="task-1",
        type="task.exploded",
        schema_version=1,
        version=1,
        global_position=1,
        recorded_at=datetime.now(UTC),
        data={},
        metadata={},
    )
    with pytest.raises(UnknownEventType):
        registry().decode(row)


def test_json_schemas_cover_every_type_with_its_fields() -> None:
    schemas = json_schemas()
    assert set(schemas) == {cls.TYPE for cls in EVENTS + COMMANDS}
    for cls in EVENTS + COMMANDS:
        schema = schemas[cls.TYPE]
        assert set(schema["properties"]) == set(cls.model_fields)
        assert schema["additionalProperties"] is False
        assert schema["x-kind"] == ("event" if issubclass(cls, DomainEvent) else "command")
    assert "password_hash" in schemas["user.registered"]["required"]
    assert schemas["task.submit"]["properties"]["priority"]["maximum"] == 9


def test_main_writes_one_file_per_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"{type_name}.json" for type_name in json_schemas())
    written = json.loads((tmp_path / "task.failed.json").read_text())
    assert written["x-schema-version"] == 1 and "retry_scheduled" in written["required"]
    assert f"wrote {len(files)} schemas" in capsys.readouterr().out


def test_project_updated_v1_is_upcast_to_v2() -> None:
    from schemas.projects import ProjectChanges, ProjectUpdated

    project_id = uuid.uuid4()
    v1 = {"project_id": str(project_id), "name": None, "description": "new"}
    assert registry().upcast("project.updated", 1, v1) == {"project_id": str(project_id), "changes": {"description": "new"}}
    row = RecordedEvent(uuid.uuid4(), f"project-{project_id}", "project.updated", 1, 2, 9, datetime.now(UTC), v1, {})
    assert registry().decode(row) == ProjectUpdated(project_id=project_id, changes=ProjectChanges(description="new"))
    # Written at v2, only what changed is stored: no null stands for "unchanged".
    written = ProjectUpdated(project_id=project_id, changes=ProjectChanges(name="N")).to_new_event()
    assert written.schema_version == 2 and written.data == {"project_id": str(project_id), "changes": {"name": "N"}}
