"""Consistency tokens: read-your-writes on demand.

Every write answer carries a token naming the streams it wrote or relied on, with their
versions: ``<stream>:<version>`` pairs joined by commas, e.g.
``task-5c2f...:1,project-9a1b...:4``. A read that presents it waits until the read models reflect
at least those versions, then answers from PostgreSQL; one that cannot catch up within the
configured time answers 503 with Retry-After. Clients treat it as opaque; the gateway checks it
strictly against ``PATTERN`` (also in the OpenAPI document), and any token of that form is
honoured as it says (one naming versions nobody wrote waits, then answers 503).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from commands.errors import ValidationFailed
from schemas.envelope import AppendResult

HEADER = "Consistency-Token"  # of a write answer
QUERY = "consistency_token"  # of a read
MAX_STREAMS = 16
_PAIR = r"[a-z][a-z0-9_]{0,30}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[1-9][0-9]{0,17}"
PATTERN = rf"^{_PAIR}(?:,{_PAIR}){{0,{MAX_STREAMS - 1}}}$"
_TOKEN = re.compile(PATTERN)
_SKIPPED = ("user_email-", "project_name-")  # claim streams: no read model reflects them


def encode(results: Iterable[AppendResult]) -> str:
    # Every stream of the append, the ones only guarded too (a task submission guards its project
    # and its caller at the versions it relied on): a read waits for all of them.
    pairs = [f"{r.stream}:{r.version}" for r in results if r.version > 0 and not r.stream.startswith(_SKIPPED)]
    return ",".join(pairs[:MAX_STREAMS])


def decode(token: str) -> dict[str, int]:
    """The stream versions a token requires; 422 for anything not of the token's form."""
    if not _TOKEN.match(token):
        message = "not a consistency token returned by a write"
        raise ValidationFailed(message, errors=[{"field": QUERY, "message": message}])
    required: dict[str, int] = {}
    for pair in token.split(","):
        stream, _, version = pair.rpartition(":")
        required[stream] = max(required.get(stream, 0), int(version))
    return required


class NotCaughtUp(Exception):
    """The read models did not reach a token's versions in time: 503, retry later."""

    slug, title, status = "read-model-behind", "The read model has not caught up yet", 503

    def __init__(self, waited: float, behind: list[str]) -> None:
        super().__init__(f"the read models did not reach the token's writes within {waited:.1f} s; retry later")
        self.detail = str(self)
        self.extensions = {"streams_behind": behind[:10]}
        self.headers = {"Retry-After": "1"}


class UnknownWrites(ValidationFailed):
    """A token naming versions that were never written: no wait can satisfy it."""

    def __init__(self, streams: list[str]) -> None:
        message = "the token names writes that do not exist"
        super().__init__(message, errors=[{"field": QUERY, "message": f"{message}: {', '.join(streams[:5])}"}])
