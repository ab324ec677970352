"""Project-name reservation: one claim per (owner, normalised name)."""

from __future__ import annotations

import uuid

import pytest

from commands import project_name
from commands.decider import InvalidHistory, fold
from commands.errors import NameTaken
from schemas.projects import ProjectNameReleased, ProjectNameReserved, ReleaseProjectName, ReserveProjectName

OWNER = uuid.UUID("00000000-0000-0000-0000-0000000000a1")
OTHER_OWNER = uuid.UUID("00000000-0000-0000-0000-0000000000a2")
APOLLO = uuid.UUID("00000000-0000-0000-0000-0000000000b1")
ARTEMIS = uuid.UUID("00000000-0000-0000-0000-0000000000b2")
RESERVED = ProjectNameReserved(owner_id=OWNER, name="Apollo", project_id=APOLLO)
RELEASED = ProjectNameReleased(owner_id=OWNER, name="Apollo", project_id=APOLLO)


def when(given: list[object], command: object) -> list[object]:
    return list(project_name.decide(fold(project_name.evolve, None, given), command))  # type: ignore[arg-type]


def test_reserve_a_free_name() -> None:
    assert when([], ReserveProjectName(owner_id=OWNER, name="Apollo", project_id=APOLLO)) == [RESERVED]


def test_reserving_again_for_the_holder_decides_nothing() -> None:
    assert when([RESERVED], ReserveProjectName(owner_id=OWNER, name="APOLLO", project_id=APOLLO)) == []


def test_a_held_name_is_refused_to_another_project() -> None:
    with pytest.raises(NameTaken) as caught:
        when([RESERVED], ReserveProjectName(owner_id=OWNER, name="apollo", project_id=ARTEMIS))
    assert caught.value.status == 409
    # Nothing about the project holding the name: the caller may not be allowed to see it.
    assert caught.value.extensions == {"name": "apollo"}


def test_a_released_name_can_be_reserved_again() -> None:
    command = ReserveProjectName(owner_id=OWNER, name="Apollo", project_id=ARTEMIS)
    assert when([RESERVED, RELEASED], command) == [
        ProjectNameReserved(owner_id=OWNER, name="Apollo", project_id=ARTEMIS)
    ]


def test_release_by_the_holder() -> None:
    assert when([RESERVED], ReleaseProjectName(owner_id=OWNER, name="Apollo", project_id=APOLLO)) == [RELEASED]


@pytest.mark.parametrize(
    "given", [[], [RESERVED, RELEASED], [RESERVED]], ids=["never-held", "released", "held-by-another"]
)
def test_release_by_a_non_holder_decides_nothing(given: list[object]) -> None:
    assert when(given, ReleaseProjectName(owner_id=OWNER, name="Apollo", project_id=ARTEMIS)) == []


def test_names_that_differ_in_case_and_spacing_share_a_stream() -> None:
    assert project_name.stream_for(OWNER, "Apollo  Team") == project_name.stream_for(OWNER, " apollo team")
    assert project_name.stream_for(OWNER, "ＡＰＯＬＬＯ") == project_name.stream_for(OWNER, "apollo")  # NFKC


def test_names_are_scoped_per_owner_and_distinct_names_differ() -> None:
    assert project_name.stream_for(OWNER, "Apollo") != project_name.stream_for(OTHER_OWNER, "Apollo")
    assert project_name.stream_for(OWNER, "Apollo") != project_name.stream_for(OWNER, "Apollo 2")


def test_the_stream_name_is_stable() -> None:
    # Changing the namespace or normalisation would orphan every stored claim.
    assert project_name.stream_for(OWNER, "Apollo") == "project_name-" + str(
        uuid.uuid5(uuid.UUID("165884eb-af93-589e-a2f9-9a015bc44b9d"), f"{OWNER}/apollo")
    )


@pytest.mark.parametrize(
    "history", [[RESERVED, RESERVED], [RELEASED], [RESERVED, RELEASED.model_copy(update={"project_id": ARTEMIS})]]
)
def test_evolve_refuses_an_impossible_history(history: list[object]) -> None:
    with pytest.raises(InvalidHistory):
        fold(project_name.evolve, None, history)  # type: ignore[arg-type]
