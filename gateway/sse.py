"""``GET /v1/events/stream``: the event log as Server-Sent Events, for analysts and admins.

Each event goes out as ``id: <global_position>``, ``event: <type>`` and ``data:`` the event's
JSON exactly as the relay publishes it on Kafka (the envelope, private fields left out), on one
line. A client resumes with ``Last-Event-ID`` (what EventSource sends by itself) or ``?after=``:
it gets every matching event after that position, none twice, none skipped (the shared tailer
of event_store/tail.py). Without either it gets what is written from now on.

- Heartbeats: a comment line (``: heartbeat``) every ``heartbeat`` seconds without events, so
  proxies and clients can tell a quiet stream from a dead one.
- A slow client is not buffered without bound: when its queue of ``queue_size`` events is
  full, the stream ends with ``event: dropped`` and ``data: {"reason", "last_position"}``:
  resume after ``last_position``.
- The stream also ends, with ``event: closing`` (same data), when the gateway shuts down or the
  token expires: reconnect (with a fresh token) and resume.
- The category rule is gateway/event_access.py's; a category or type the token may not read is
  a 403 naming it, an unknown one a 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from commands.errors import Forbidden, NotFound, ValidationFailed
from event_store.errors import StoreUnavailable
from event_store.relay import encode_value, redacted
from event_store.tail import Closed, Dropped, EventFilter, EventHub
from gateway.auth import Principal, bearer_principal
from gateway.event_access import ALL_CATEGORIES, allowed_categories, readable_categories
from gateway.openapi import EventStream as EventStreamMarker
from gateway.routes import Deps, Endpoint
from schemas.catalog import public_data, registry
from schemas.envelope import RecordedEvent

log = logging.getLogger("taskstream.gateway.sse")

PATH = "/v1/events/stream"
MEDIA_TYPE = "text/event-stream"
RETRY_MS = 2000  # how long EventSource waits before it reconnects
FINAL_FRAME_TIMEOUT = 5.0  # seconds the last frame may wait for a client that reads nothing
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering (nginx)


def frame(event: RecordedEvent) -> bytes:
    """One SSE event: the relay's JSON (compact, so on one ``data:`` line) under its position."""
    body = encode_value(redacted(event, public_data))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.global_position, event.type.encode(), body)


@dataclass(frozen=True, slots=True)
class Streams:
    """What the endpoint needs: the process's one tailer (its items are ready-made frames)."""

    hub: EventHub[bytes]
    heartbeat: float = 15.0

    @classmethod
    def build(cls, store: Any, *, heartbeat: float, queue_size: int, poll_interval: float = 1.0,
              registry: CollectorRegistry | None = None) -> Streams:  # fmt: skip
        dropped = None
        if registry is not None:
            dropped = Counter("taskstream_sse_dropped", "Event-stream clients dropped for reading too slowly", registry=registry)
        hub = EventHub(store, frame, queue_size=queue_size, poll_interval=poll_interval, on_drop=dropped.inc if dropped else None)
        if registry is not None:
            Gauge("taskstream_sse_subscribers", "Event-stream clients following the live tail", registry=registry).set_function(
                lambda: hub.subscribers
            )
        return cls(hub, heartbeat)

    async def close(self) -> None:
        await self.hub.close()


def category_of_type(type_: str) -> str:
    """Event types are named ``<category>.<fact>`` (``task.submitted``)."""
    return type_.partition(".")[0]


def final_frame(kind: str, reason: str, last_position: int) -> bytes:
    data = json.dumps({"reason": reason, "last_position": last_position}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def _names(request: Request, name: str) -> list[str] | None:
    """A repeatable, comma-separated query parameter; None when absent."""
    values = request.query_params.getlist(name)
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",")]


def _position(raw: str, field: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ValidationFailed(f"{field} must be a global position (0 or more)", errors=[{"field": field, "message": "not a non-negative integer"}])
    return int(raw)


def _filter(request: Request, principal: Principal) -> EventFilter:
    """Both filters apply (a type outside the categories asked for never matches); a category or
    a type's category the token may not read is a 403."""
    categories = _names(request, "category")
    unknown = sorted(c for c in categories or () if c not in ALL_CATEGORIES)
    if unknown:
        raise ValidationFailed(f"unknown categories: {', '.join(unknown)}", errors=[{"field": "category", "message": "unknown category"}])
    allowed = allowed_categories(principal, categories)
    readable = readable_categories(principal)
    types = _names(request, "type")
    if types is not None:
        known = registry().classes
        unknown = sorted(t for t in types if t not in known)
        if unknown:
            raise ValidationFailed(f"unknown event types: {', '.join(unknown)}", errors=[{"field": "type", "message": "unknown event type"}])
        refused = sorted(t for t in types if category_of_type(t) not in readable)
        if refused:
            raise Forbidden(f"this token may not read the event types {', '.join(refused)}")
    return EventFilter(frozenset(allowed), frozenset(types) if types is not None else None)


async def stream_events(request: Request, deps: Deps) -> Response:
    principal = await bearer_principal(request, deps.verifier)
    streams: Streams | None = getattr(request.app.state, "event_streams", None)
    where = _filter(request, principal)
    after: int | None = None
    if (raw := request.query_params.get("after")) is not None:
        after = _position(raw, "after")
    if (raw := request.headers.get("last-event-id")) is not None:
        after = _position(raw.strip(), "Last-Event-ID")  # a reconnecting EventSource: it wins
    if streams is None:
        raise NotFound("this gateway serves no event streams")
    if request.method == "HEAD":
        return Response(None, headers=HEADERS, media_type=MEDIA_TYPE)
    await streams.hub.start()  # here, so that a store that is down answers 503 before the stream starts
    expires = principal.claims.get("exp")
    return EventStream(streams.hub, after, where, heartbeat=streams.heartbeat, expires_at=float(expires) if expires else None)


class EventStream(Response):
    """The streaming answer. Not a StreamingResponse: it needs a bound on the last frame's send
    (a client that reads nothing must not hold the connection forever) and its own shutdown."""

    media_type = MEDIA_TYPE

    def __init__(self, hub: EventHub[bytes], after: int | None, where: EventFilter, *, heartbeat: float, expires_at: float | None) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)  # no body attribute: no Content-Length, the answer is streamed
        self.hub = hub
        self.after = after
        self.where = where
        self.heartbeat = heartbeat
        self.expires_at = expires_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.create_task(self._pump(send), name="sse-pump")
        listen = asyncio.create_task(_until_disconnect(receive), name="sse-disconnect")
        try:
            await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, listen):
                task.cancel()
            await asyncio.gather(pump, listen, return_exceptions=True)
        if pump.done() and not pump.cancelled() and (exc := pump.exception()) is not None:
            raise exc

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = self.after if self.after is not None else self.hub.position
        try:
            async with self.hub.subscription(self.after, self.where) as subscription:
                last = subscription.position
                await _body(send, b"retry: %d\n: after %d\n\n" % (RETRY_MS, last))
                while True:
                    wait = self.heartbeat
                    if self.expires_at is not None:
                        wait = min(wait, self.expires_at - time.time())
                        if wait <= 0:
                            final = final_frame("closing", "the token expired: reconnect with a fresh one", last)
                            break
                    items = await subscription.next(wait)
                    if not items:
                        await _body(send, b": heartbeat\n\n")
                        continue
                    await _body(send, b"".join(prepared for _, prepared in items))
                    last = items[-1][0].global_position
        except Closed as closed:
            final = final_frame("dropped" if isinstance(closed, Dropped) else "closing", closed.reason, last)
        except StoreUnavailable:  # while catching up from the table: the client retries later
            log.warning("event stream: the event store is unavailable; closing a stream at position %d", last)
            final = final_frame("closing", "the event store is unavailable: reconnect later", last)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINAL_FRAME_TIMEOUT):
                await _body(send, final)
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


QUERY_PARAMETERS: tuple[dict[str, Any], ...] = (
    {"name": "category", "in": "query", "required": False, "style": "form", "explode": True,
     "schema": {"type": "array", "items": {"type": "string", "enum": sorted(ALL_CATEGORIES)}},
     "description": "Only these categories (repeat it, or separate with commas). Analysts: the public ones "
                    "their token allows; admins: any. Default: every category the token may read."},
    {"name": "type", "in": "query", "required": False, "style": "form", "explode": True,
     "schema": {"type": "array", "items": {"type": "string"}},
     "description": "Only these event types, e.g. `task.submitted` (repeat it, or separate with commas)"},
    {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0},
     "description": "Start after this global position (default: from now on). `Last-Event-ID` takes precedence."},
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string", "pattern": "^[0-9]+$"},
     "description": "The `id` of the last event received: resume right after it, with no gap and no duplicate"},
)  # fmt: skip

STREAM_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", PATH, stream_events, "Live events as Server-Sent Events (analysts and admins), resumable with Last-Event-ID",
             status=200, errors=(401, 403, 404, 422), query=QUERY_PARAMETERS, response=EventStreamMarker),  # type: ignore[arg-type]
)  # fmt: skip
