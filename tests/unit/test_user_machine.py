"""Rule-based state machine for the user aggregate."""

from __future__ import annotations

import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from commands import user
from commands.errors import AlreadyExists, IllegalTransition
from schemas.users import USER_ROLES, ChangeUserRole, DeactivateUser, RegisterUser, UpdateUserProfile, UserRole
from tests.unit.domain_testkit import Aggregate

USER = uuid.UUID("00000000-0000-0000-0000-0000000000a1")
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
roles = st.sampled_from(USER_ROLES)
display_names = st.sampled_from(["Ada", "Ada L.", "Grace"])


class UserMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.user = Aggregate(user.DECIDER)
        self.deactivated = False

    @property
    def state(self) -> user.UserState:
        assert self.user.state is not None
        return self.user.state

    @initialize(role=roles)
    def register(self, role: UserRole) -> None:
        command = RegisterUser(user_id=USER, email="ada@example.org", display_name="Ada", password_hash=HASH, role=role)
        assert len(self.user.run(command)) == 1  # type: ignore[arg-type]

    def _refused_if_deactivated(self, command: object) -> bool:
        before = self.state
        if not self.deactivated:
            return False
        assert isinstance(self.user.run(command), IllegalTransition)
        assert self.state is before
        return True

    @rule(name=display_names)
    def update_profile(self, name: str) -> None:
        command = UpdateUserProfile(user_id=USER, display_name=name)
        if not self._refused_if_deactivated(command):
            before = self.state
            events = self.user.run(command)
            assert isinstance(events, list) and len(events) == (0 if name == before.display_name else 1)
            assert self.state.display_name == name

    @rule(role=roles)
    def change_role(self, role: UserRole) -> None:
        command = ChangeUserRole(user_id=USER, role=role)
        if not self._refused_if_deactivated(command):
            before = self.state
            events = self.user.run(command)
            assert isinstance(events, list) and len(events) == (0 if role == before.role else 1)
            assert self.state.role == role

    @rule()
    def deactivate(self) -> None:
        command = DeactivateUser(user_id=USER)
        if not self._refused_if_deactivated(command):
            assert len(self.user.run(command)) == 1  # type: ignore[arg-type]
            self.deactivated = True

    @rule()
    def register_again(self) -> None:
        command = RegisterUser(user_id=USER, email="x@example.org", display_name="X", password_hash=HASH)
        assert isinstance(self.user.run(command), AlreadyExists)

    @invariant()
    def identity_never_changes(self) -> None:
        assert (self.state.user_id, self.state.email, self.state.password_hash) == (USER, "ada@example.org", HASH)

    @invariant()
    def active_until_deactivated(self) -> None:
        assert self.state.active is not self.deactivated

    @invariant()
    def replay_from_the_store_equals_the_incremental_state(self) -> None:
        assert self.user.replayed() == self.user.state


TestUserMachine = UserMachine.TestCase
TestUserMachine.settings = settings(max_examples=60, stateful_step_count=20, deadline=None)
