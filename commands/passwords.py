"""Password hashing with argon2id (salted, RFC 9106 low-memory profile by default).

Called at the edge: the gateway hashes the clear password from the request body and puts
only the hash on ``RegisterUser``, so deciders stay pure and no event holds a password.
"""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from commands.errors import ValidationFailed

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # bounds the hashing work an anonymous request can cause


@lru_cache(maxsize=1)
def default_hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with argon2-cffi's recommended parameters


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
        message = f"must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long"
    elif not password.strip():
        message = "must not be only whitespace"
    else:
        return
    raise ValidationFailed(f"password {message}", errors=[{"field": "password", "message": message}])


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    """The PHC string (``$argon2id$...``) of a password that meets the policy."""
    check_password_policy(password)
    return (hasher or default_hasher()).hash(password)


def verify_password(password_hash: str | None, password: str, hasher: PasswordHasher | None = None) -> bool:
    """True when ``password`` matches. With no hash (unknown user) it still does the work
    of one verification and returns False, so timing does not tell which users exist.
    A malformed stored hash raises ``argon2.exceptions.InvalidHashError``.
    """
    hasher = hasher or default_hasher()
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        matched = hasher.verify(password_hash or _dummy_hash(hasher), password)
    except VerificationError:
        return False
    return matched and bool(password_hash)


def needs_rehash(password_hash: str, hasher: PasswordHasher | None = None) -> bool:
    """True when the hash was made with other parameters than the current ones."""
    return (hasher or default_hasher()).check_needs_rehash(password_hash)


@lru_cache(maxsize=4)
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash("not a password: only burns the time of a real check")

