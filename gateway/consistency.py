"""Consistency tokens: read-your-writes on demand.

Every write answer carries a token naming the streams it wrote or relied on, with their versions
(and the global position of its last event). A read that presents it waits until the read models reflect
at least those versions, then answers from PostgreSQL; one that cannot catch up within the
configured time answers 503 with Retry-After. The token is opaque to clients: base64url of a
small JSON document, checked strictly when it comes back.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping

from commands.errors import ValidationFailed
from schemas.envelope import AppendResult

HEADER = "Consistency-Token"
QUERY = "consistency_token"
MAX_TOKEN_LENGTH = 2048
_STREAM = re.compile(r"^[a-z][a-z0-9_]*-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def encode(results: Iterable[AppendResult]) -> str:
    # Every stream of the append, the ones only guarded too (a task submission guards its project
    # and its caller at the versions it relied on): a read waits for all of them.
    streams = {r.stream: r.version for r in results if r.version > 0 and not r.stream.startswith(("user_email-", "project_name-"))}
    positions = [r.last_position for r in results if r.last_position is not None]
    body = {"s": streams, "p": max(positions, default=0)}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(token: str) -> dict[str, int]:
    """The stream versions a token requires; 422 for anything that is not a token we made."""
    try:
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        streams = body["s"]
        if not isinstance(streams, Mapping) or not isinstance(body.get("p", 0), int):
            raise ValueError("not a token")
        out: dict[str, int] = {}
        for stream, version in streams.items():
            if not isinstance(stream, str) or not _STREAM.match(stream):
                raise ValueError("bad stream")
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ValueError("bad version")
            out[stream] = version
        return out
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        message = "not a consistency token returned by a write"
        raise ValidationFailed(message, errors=[{"field": HEADER, "message": message}]) from None


class NotCaughtUp(Exception):
    """The read models did not reach a token's versions in time: 503, retry later."""

    slug, title, status = "read-model-behind", "The read model has not caught up yet", 503

    def __init__(self, waited: float, behind: list[str]) -> None:
        super().__init__(f"the read models did not reach the token's writes within {waited:.1f} s; retry later")
        self.detail = str(self)
        self.extensions = {"streams_behind": behind[:10]}
        self.headers = {"Retry-After": "1"}
