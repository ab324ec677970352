"""Rule-based state machine for the project aggregate: a project always keeps an owner."""

from __future__ import annotations

import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from commands import project
from commands.errors import IllegalTransition, LastOwner, NotFound
from schemas.projects import (
    PROJECT_ROLES,
    AddProjectMember,
    ArchiveProject,
    CreateProject,
    ProjectRole,
    RemoveProjectMember,
    UpdateProject,
)
from tests.unit.domain_testkit import Aggregate

PROJECT = uuid.UUID("00000000-0000-0000-0000-0000000000b1")
USERS = [uuid.UUID(int=i) for i in range(1, 5)]
CREATOR = USERS[0]
users = st.sampled_from(USERS)
roles = st.sampled_from(PROJECT_ROLES)


class ProjectMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.project = Aggregate(project.DECIDER)
        self.archived = False

    @property
    def state(self) -> project.ProjectState:
        assert self.project.state is not None
        return self.project.state

    @initialize()
    def create(self) -> None:
        events = self.project.run(CreateProject(project_id=PROJECT, owner_id=CREATOR, name="Apollo"))
        assert isinstance(events, list) and len(events) == 1

    def _run(self, command: object) -> object:
        before = self.state
        outcome = self.project.run(command)
        if self.archived:
            assert isinstance(outcome, IllegalTransition)
        if not isinstance(outcome, list):
            assert self.state is before
        return outcome

    @rule(user_id=users, role=roles)
    def add_member(self, user_id: uuid.UUID, role: ProjectRole) -> None:
        before = self.state
        outcome = self._run(AddProjectMember(project_id=PROJECT, user_id=user_id, role=role))
        if isinstance(outcome, LastOwner):
            assert before.owners == {user_id} and role != "owner"
        elif isinstance(outcome, list):
            assert self.state.members[user_id] == role
            assert {u: r for u, r in self.state.members.items() if u != user_id} == {
                u: r for u, r in before.members.items() if u != user_id
            }

    @rule(user_id=users)
    def remove_member(self, user_id: uuid.UUID) -> None:
        before = self.state
        outcome = self._run(RemoveProjectMember(project_id=PROJECT, user_id=user_id))
        if isinstance(outcome, NotFound):
            assert user_id not in before.members
        elif isinstance(outcome, LastOwner):
            assert before.owners == {user_id}
        elif isinstance(outcome, list):
            assert dict(self.state.members) == {u: r for u, r in before.members.items() if u != user_id}

    @rule(name=st.none() | st.sampled_from(["Apollo", "Artemis"]), description=st.none() | st.just("d"))
    def update(self, name: str | None, description: str | None) -> None:
        if name is None and description is None:
            return
        outcome = self._run(UpdateProject(project_id=PROJECT, name=name, description=description))
        if isinstance(outcome, list):
            assert name is None or self.state.name == name
            assert description is None or self.state.description == description

    @rule()
    def archive(self) -> None:
        if isinstance(self._run(ArchiveProject(project_id=PROJECT)), list):
            self.archived = True

    @invariant()
    def always_at_least_one_owner(self) -> None:
        assert self.state.owners
        assert self.state.owners <= set(self.state.members)

    @invariant()
    def identity_and_archive_are_permanent(self) -> None:
        assert (self.state.project_id, self.state.owner_id) == (PROJECT, CREATOR)
        assert self.state.archived is self.archived

    @invariant()
    def replay_from_the_store_equals_the_incremental_state(self) -> None:
        assert self.project.replayed() == self.project.state


TestProjectMachine = ProjectMachine.TestCase
TestProjectMachine.settings = settings(max_examples=80, stateful_step_count=25, deadline=None)
