"""Idempotency fingerprints: keyed, canonical, and blind to secrets."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.fingerprints import canonical_body, derive_key, request_fingerprint

KEY = derive_key("a server secret of some length")


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@given(st.text(min_size=1), st.text(min_size=1))
def test_the_password_does_not_count_and_cannot_be_tested_against_it(first: str, second: str) -> None:
    a = request_fingerprint(KEY, "POST", "/v1/users", "", body(email="a@example.org", password=first))
    b = request_fingerprint(KEY, "POST", "/v1/users", "", body(email="a@example.org", password=second))
    assert a == b
    assert json.loads(canonical_body(body(email="a@example.org", password=first))) == {"email": "a@example.org"}


def test_it_is_keyed_not_a_plain_hash() -> None:
    raw = body(email="a@example.org", display_name="A")
    mine = request_fingerprint(KEY, "POST", "/v1/users", "", raw)
    assert mine != request_fingerprint(derive_key("another secret entirely"), "POST", "/v1/users", "", raw)
    plain = hashlib.sha256()
    for part in ("POST", "/v1/users", "", raw):
        plain.update(part if isinstance(part, bytes) else part.encode())
        plain.update(b"\0")
    assert mine != plain.hexdigest() and mine != hashlib.sha256(raw).hexdigest()


def test_what_the_request_asks_for_counts_and_formatting_does_not() -> None:
    fp = request_fingerprint(KEY, "POST", "/v1/projects", "", b'{"name": "x", "description": "d"}')
    assert fp == request_fingerprint(KEY, "POST", "/v1/projects", "", b'{"description":"d","name":"x"}')
    assert fp != request_fingerprint(KEY, "POST", "/v1/projects", "", b'{"description":"d","name":"y"}')
    assert fp != request_fingerprint(KEY, "PATCH", "/v1/projects", "", b'{"description":"d","name":"x"}')
    assert fp != request_fingerprint(KEY, "POST", "/v1/projects", '"3"', b'{"description":"d","name":"x"}')


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        request_fingerprint(b"short", "POST", "/", "", b"")


def test_the_gateways_key_comes_from_a_configured_secret_and_has_no_default() -> None:
    from taskstream.settings import Settings, SettingsError
    from taskstream.wiring import fingerprint_key

    explicit = Settings.from_env({"DATABASE_URL": "x", "IDEMPOTENCY_SECRET": "s" * 32, "JWT_SECRET": "j" * 48})
    assert fingerprint_key(explicit) == derive_key("s" * 32)
    assert fingerprint_key(Settings(database_url="x", jwt_secret="j" * 48)) == derive_key("j" * 48)
    with pytest.raises(SettingsError, match="IDEMPOTENCY_SECRET"):
        fingerprint_key(Settings(database_url="x", jwt_algorithm="RS256"))
    assert len(fingerprint_key(Settings(database_url="x", jwt_algorithm="RS256", dev_mode=True))) == 32
