"""Standard Webhooks signatures (https://www.standardwebhooks.com/), HMAC-SHA256.

Headers: ``webhook-id`` (the message id, the same on every retry), ``webhook-timestamp``
(Unix seconds) and ``webhook-signature``: space-separated ``v1,<base64 HMAC>`` over
``{id}.{timestamp}.{body}``, keyed by the base64 part of a ``whsec_`` secret. During a
rotation's grace period the message carries one signature per valid secret, so a receiver
holding either verifies it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets_: Sequence[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
        "content-type": "application/json",
    }
