"""Rule-based state machine for the project-name claim: never two holders at once."""

from __future__ import annotations

import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from commands import project_name
from commands.errors import NameTaken
from schemas.projects import ReleaseProjectName, ReserveProjectName
from tests.unit.domain_testkit import Aggregate

OWNER = uuid.UUID("00000000-0000-0000-0000-0000000000a1")
PROJECTS = [uuid.UUID(int=i) for i in range(1, 4)]
projects = st.sampled_from(PROJECTS)
spellings = st.sampled_from(["Apollo", "apollo", " APOLLO "])  # one normalised name, one stream


class ProjectNameMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.claim = Aggregate(project_name.DECIDER)
        self.holder: uuid.UUID | None = None  # the model: who should hold the name

    @rule(project_id=projects, name=spellings)
    def reserve(self, project_id: uuid.UUID, name: str) -> None:
        assert project_name.stream_for(OWNER, name) == project_name.stream_for(OWNER, "Apollo")
        outcome = self.claim.run(ReserveProjectName(owner_id=OWNER, name=name, project_id=project_id))
        if self.holder is None:
            assert isinstance(outcome, list) and len(outcome) == 1
            self.holder = project_id
        elif self.holder == project_id:
            assert outcome == []
        else:
            assert isinstance(outcome, NameTaken)

    @rule(project_id=projects, name=spellings)
    def release(self, project_id: uuid.UUID, name: str) -> None:
        outcome = self.claim.run(ReleaseProjectName(owner_id=OWNER, name=name, project_id=project_id))
        assert isinstance(outcome, list)
        assert len(outcome) == (1 if self.holder == project_id else 0)
        if self.holder == project_id:
            self.holder = None

    @invariant()
    def the_claim_matches_the_model(self) -> None:
        state = self.claim.state
        assert (state.project_id if state is not None else None) == self.holder

    @invariant()
    def replay_from_the_store_equals_the_incremental_state(self) -> None:
        assert self.claim.replayed() == self.claim.state


TestProjectNameMachine = ProjectNameMachine.TestCase
TestProjectNameMachine.settings = settings(max_examples=60, stateful_step_count=20, deadline=None)
