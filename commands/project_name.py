"""The project-name reservation: one stream per (owner, normalised name).

Names are unique per owner among live (not archived) projects. That spans streams, so
each name has its own stream ``project_name-<uuid5(owner_id, normalised name)>`` holding
at most one claim; optimistic concurrency on that stream decides races. Normalising
(NFKC, whitespace collapsed, casefolded) makes "Alpha  Team" and "alpha team" one name.

How the command handler uses it (every append passes the version it read, ``NO_STREAM``
for an empty stream, and retries from the read on ``WrongExpectedVersion``):

- create: refuse if ``project-<id>`` exists; ``ReserveProjectName`` (``NameTaken`` if
  another project holds it); then append ``ProjectCreated`` with ``NO_STREAM``.
- rename: if ``name_key`` of old and new differ, reserve the new name, append
  ``ProjectUpdated``, then ``ReleaseProjectName`` for the old name. Same key: no claim work.
- archive: append ``ProjectArchived``, *then* release the name.

A name is released only after its project stopped using it, so a crash between two
appends can leave a name held (unavailable) but never held twice. A claim whose holder is
archived is stale and may be released by anyone (archive is final); other stale claims
are an operator's call.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from typing import TypeAlias

from commands.decider import Decider, InvalidHistory
from commands.errors import NameTaken
from schemas.envelope import stream_name
from schemas.projects import (
    ProjectNameCommand,
    ProjectNameEvent,
    ProjectNameReleased,
    ProjectNameReserved,
    ReleaseProjectName,
    ReserveProjectName,
)

CATEGORY = "project_name"
# uuid5(NAMESPACE_URL, "taskstream:project_name"). Fixed forever: a change orphans every claim.
NAMESPACE = uuid.UUID("165884eb-af93-589e-a2f9-9a015bc44b9d")


@dataclass(frozen=True, slots=True)
class NameClaim:
    owner_id: uuid.UUID
    name: str
    project_id: uuid.UUID


State: TypeAlias = NameClaim | None  # None: free, whether never claimed or released


def normalise(name: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()


def name_key(owner_id: uuid.UUID, name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{owner_id}/{normalise(name)}")


def stream_for(owner_id: uuid.UUID, name: str) -> str:
    return stream_name(CATEGORY, name_key(owner_id, name))


def decide(state: State, command: ProjectNameCommand) -> list[ProjectNameEvent]:
    match command:
        case ReserveProjectName():
            if state is None:
                return [
                    ProjectNameReserved(owner_id=command.owner_id, name=command.name, project_id=command.project_id)
                ]
            if state.project_id == command.project_id:
                return []
            # Says nothing of the other project: the caller may not be allowed to see it.
            raise NameTaken(f"the owner already has a project named {command.name!r}", name=command.name)
        case ReleaseProjectName():
            if state is None or state.project_id != command.project_id:
                return []
            return [ProjectNameReleased(owner_id=state.owner_id, name=state.name, project_id=state.project_id)]
    raise TypeError(f"not a project-name command: {command!r}")


def evolve(state: State, event: ProjectNameEvent) -> State:
    match event:
        case ProjectNameReserved(owner_id=owner_id, name=name, project_id=project_id):
            if state is not None:
                raise InvalidHistory(state, event)
            return NameClaim(owner_id=owner_id, name=name, project_id=project_id)
        case ProjectNameReleased(project_id=project_id):
            if state is None or state.project_id != project_id:
                raise InvalidHistory(state, event)
            return None
    raise TypeError(f"not a project-name event: {event!r}")


DECIDER: Decider[State, ProjectNameCommand, ProjectNameEvent] = Decider(CATEGORY, None, decide, evolve)
