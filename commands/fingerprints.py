"""Idempotency fingerprints: what a request asked for, keyed, and with its secrets left out.

A fingerprint is stored beside each idempotency key, so that the key presented again with
another request is refused. It must not let a database dump test guesses about what was sent:
it is an HMAC-SHA256 under a server secret (``IDEMPOTENCY_SECRET``), not a plain hash, and
secret fields (a password) are left out of it altogether, so a retry that changes only the
password replays the original answer. The body is canonicalised (parsed, keys sorted) so that
whitespace and key order do not count.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SECRET_FIELDS = frozenset({"password", "new_password", "current_password", "secret", "token"})


def without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items() if k not in SECRET_FIELDS}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def canonical_body(raw_body: bytes) -> bytes:
    """The body as sorted, compact JSON less its secret fields (raw bytes if it is not JSON)."""
    if not raw_body:
        return b""
    try:
        parsed = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        return raw_body
    return json.dumps(without_secrets(parsed), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def request_fingerprint(key: bytes, method: str, path: str, if_match: str, raw_body: bytes) -> str:
    if len(key) < 16:
        raise ValueError("the fingerprint key must be at least 16 bytes")
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (method.encode(), path.encode(), if_match.encode(), canonical_body(raw_body)):
        mac.update(len(part).to_bytes(8, "big"))  # length-prefixed: no two splits collide
        mac.update(part)
    return mac.hexdigest()


def derive_key(secret: str, purpose: str = "taskstream idempotency fingerprints") -> bytes:
    """A key for fingerprints from another server secret (the dev stack's JWT secret)."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).digest()
