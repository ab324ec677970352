"""OpenAPI 3.1, generated from the endpoint table and the pydantic bodies.

The document is the contract and says what the gateway enforces, no less: header patterns
(``gateway.http``), body constraints (``gateway.bodies``), which bodies may be left out, the
answers every endpoint can give (429 and 503 included), the response headers, and links from
an answer's ``id`` to the operations that take it. Everything is derived from ``Endpoint``
fields, so an endpoint added to the table gets the same treatment. ``tests/e2e/test_openapi_fuzz.py``
holds the gateway to it with schemathesis.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from pydantic import BaseModel

from gateway.bodies import JSON_VALUE_SCHEMA, Accepted, Problem
from gateway.http import CORRELATION_ID_PATTERN, IDEMPOTENCY_KEY_PATTERN, IF_MATCH_PATTERN, MAX_JSON_DEPTH
from gateway.routes import Endpoint

_PARAM = re.compile(r"{(\w+)}")
_ERROR_TEXT = {
    401: "Missing, invalid or expired token (WWW-Authenticate says why)",
    403: "Authenticated, but not allowed to do this",
    404: "No such resource, or not visible to the caller",
    409: "Conflict: wrong expected version (If-Match), or a rule of the domain",
    413: "Body larger than the configured limit",
    415: "Content-Type is not application/json",
    422: "Validation failed; `errors` lists each failing field; or an Idempotency-Key reused with another body",
    429: "A rate limit is spent (per caller and route class; logins also per account); Retry-After says when to try again",
    503: "Not available now (a dependency, or a read model that did not reach a consistency token in time); Retry-After says when to retry",
    500: "Unexpected error; carries a trace_id that appears in the logs",
    503: "The event store or the rate limiter is unavailable; Retry-After says when to try again",
}
# Path parameters that are not ids (every other one is a UUID): the published schemas (issue 8).
_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "event_type": {"type": "string", "pattern": r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"},
    "schema_version": {"type": "integer", "minimum": 1, "maximum": 999999},
}
_BODY_RULES = (
    "The body is a JSON object (UTF-8). Refused with 422, whatever the schema below allows: NUL "
    "characters and lone surrogates (`\\ud800`-`\\udfff`) in any string or key, numbers out of the "
    "double range (`1e400`) or integers of more than 4300 digits, `NaN`/`Infinity`, nesting deeper "
    f"than {MAX_JSON_DEPTH} levels. String lengths are counted as sent; surrounding whitespace is then stripped."
)
_RATE_FIELDS = {
    "RateLimit-Policy": {"schema": {"type": "string"}, "description": 'The limits that apply, e.g. `"write";q=600;w=60`'},
    "RateLimit": {"schema": {"type": "string"}, "description": 'What is left, e.g. `"write";r=599;t=1` (absent when the limiter is down and fails open)'},
}  # fmt: skip
_RETRY_AFTER = {"Retry-After": {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}, "description": "seconds"}}
_CHALLENGE = {"WWW-Authenticate": {"required": True, "schema": {"type": "string", "pattern": "^Bearer"}}}


class EventStream:
    """``Endpoint.response`` marker: the answer is a stream of Server-Sent Events (gateway/sse.py)."""

    DESCRIPTION = (
        "Server-Sent Events, until the client disconnects. Each event: `id:` its global position, "
        "`event:` its type, `data:` the event's JSON as published on Kafka (private fields left out). "
        "`: heartbeat` comment lines while nothing happens. The stream ends with `event: dropped` (the "
        "client read too slowly) or `event: closing` (shutdown, token expiry), whose data "
        '`{"reason", "last_position"}` says where to resume (`Last-Event-ID` or `after`).'
    )


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = _resolve_markers(model.model_json_schema(ref_template="#/components/schemas/{model}"))
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _resolve_markers(value: Any) -> Any:
    """``{"x-component": NAME}`` (see ``gateway.bodies``) becomes a $ref to that component."""
    if isinstance(value, dict):
        if set(value) == {"x-component"}:
            return {"$ref": f"#/components/schemas/{value['x-component']}"}
        return {k: _resolve_markers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_markers(v) for v in value]
    return value


_READ_HEADERS = {
    "ETag": {"schema": {"type": "string"}, "description": 'the version read ("3"; a project: "3.7", version.counts revision)'},
    "Read-Model-Lag-Events": {"schema": {"type": "integer"}, "description": "how many events the read models may be behind (absent with a consistency token)"},
    "Read-Model-Lag-Seconds": {"schema": {"type": "number"}, "description": "how old the oldest event not yet in the read models may be"},
}  # fmt: skip


def _problem_response(status: int, components: dict[str, Any], *, limited: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERROR_TEXT.get(status, "Error"),
        "content": {"application/problem+json": {"schema": _schema(Problem, components)}},
    }
    headers = dict(_RATE_FIELDS) if limited else {}
    if status in (429, 503):
        headers.update(_RETRY_AFTER)
    if status == 401:
        headers.update(_CHALLENGE)
    if headers:
        response["headers"] = headers
    return response


def _write_parameters() -> list[dict[str, Any]]:
    return [
        {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
         "description": 'Pin the expected version of the resource\'s stream, e.g. `"3"`; a mismatch answers 409; `*` pins nothing'},
        {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
         "description": "1-255 visible ASCII characters, scoped to the caller. The same key and request: the original answer "
                        "(`Idempotent-Replayed: true`), nothing written again; the same key with another request: 422"},
        {"name": "X-Correlation-ID", "in": "header", "required": False, "schema": {"type": "string", "pattern": CORRELATION_ID_PATTERN},
         "description": "Stored as the events' correlation_id (default: the request id)"},
    ]  # fmt: skip


def _operation(endpoint: Endpoint, components: dict[str, Any], *, limited: bool) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": endpoint.summary, "operationId": endpoint.handler.__name__}
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _PATH_SCHEMAS.get(name, {"type": "string", "format": "uuid"})}
        for name in _PARAM.findall(endpoint.path)
    ]
    params += list(endpoint.query)
    if endpoint.auth:
        op["security"] = [{"bearer": []}]
    elif endpoint.optional_auth:
        op["security"] = [{}, {"bearer": []}]  # a token is optional, and checked when sent
    if endpoint.is_write:
        params += _write_parameters()
    if params:
        op["parameters"] = params
    if endpoint.body is not None:
        op["requestBody"] = {
            "required": endpoint.body_required,
            "description": _BODY_RULES + ("" if endpoint.body_required else " The body may be left out (no Content-Type, no bytes)."),
            "content": {"application/json": {"schema": _schema(endpoint.body, components)}},
        }
    ok_model = endpoint.response or Accepted
    if ok_model is bytes:
        ok: dict[str, Any] = {"description": "The bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    elif ok_model is EventStream:
        ok = {"description": EventStream.DESCRIPTION, "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    else:
        ok = {"description": "Done", "content": {"application/json": {"schema": _schema(ok_model, components)}}}
    headers = dict(_RATE_FIELDS) if limited else {}
    if ok_model is Accepted:
        headers["ETag"] = {"required": True, "schema": {"type": "string", "pattern": '^"[0-9]+"$'}, "description": "the stream's new version"}
        headers["Location"] = {"required": True, "schema": {"type": "string"}, "description": "the resource written"}
        headers["Consistency-Token"] = {"required": True, "schema": {"type": "string"},
                                        "description": "present it to a read (header or ?consistency_token=) to read this write"}  # fmt: skip
    elif any(p["name"] == "If-None-Match" for p in endpoint.query):
        headers.update(_READ_HEADERS)
    if headers:
        ok["headers"] = headers
    op["responses"] = {str(endpoint.status): ok}
    if any(p["name"] == "If-None-Match" for p in endpoint.query):
        op["responses"]["304"] = {"description": "Not modified since the ETag given in If-None-Match"}
    statuses = set(endpoint.errors) | {500, 503} | ({429} if limited else set())
    if endpoint.body is not None:
        statuses |= {413, 415, 422}
    if endpoint.auth:
        statuses |= {401}
    statuses |= {403}  # an analyst's token, on every endpoint but the event streams (gateway/analysts.py)
    for status in sorted(statuses):
        op["responses"][str(status)] = _problem_response(status, components, limited=limited)
    return op


def _links(endpoints: Sequence[Endpoint]) -> dict[str, dict[str, Any]]:
    """For each endpoint that creates something, a link to every operation taking its id."""
    links: dict[str, dict[str, Any]] = {}
    for source in endpoints:
        if source.creates is None:
            continue
        for target in endpoints:
            if "{" + source.creates + "}" in target.path:
                links.setdefault(source.handler.__name__, {})[target.handler.__name__] = {
                    "operationId": target.handler.__name__,
                    "parameters": {f"path.{source.creates}": "$response.body#/id"},
                }
    return links


def openapi_document(
    endpoints: Sequence[Endpoint], *, title: str = "taskstream", version: str = "0.1.0", limited: Collection[str] = ("write", "read", "credentials")
) -> dict[str, Any]:
    """``limited``: the route classes that have a rate limit (their answers carry the fields, and 429)."""
    components: dict[str, Any] = {"JsonValue": JSON_VALUE_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    links = _links(endpoints)
    for endpoint in endpoints:
        op = _operation(endpoint, components, limited=endpoint.route_class in limited)
        if endpoint.handler.__name__ in links:
            op["responses"][str(endpoint.status)]["links"] = links[endpoint.handler.__name__]
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = op
    plain = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    paths["/healthz"] = {"get": {"summary": "The process is alive", "operationId": "healthz", "responses": {"200": plain}}}
    paths["/readyz"] = {
        "get": {
            "summary": "The database and the broker are reachable",
            "operationId": "readyz",
            "responses": {"200": plain, "503": _problem_response(503, components)},
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }
    }
    paths["/.well-known/jwks.json"] = {
        "get": {
            "summary": "The public keys of RS256 tokens (404 with HS256)",
            "operationId": "jwks",
            "responses": {"200": plain, "404": _problem_response(404, components)},
        }
    }
    description = (
        "Event-sourced users, projects and tasks. Errors are RFC 9457 problem details; a path or "
        "method that does not exist answers 404 or 405 (with `Allow`). Every answer carries "
        "`X-Request-ID`: the request's own when it is 1-128 characters of `A-Za-z0-9._~:/+=@-`, "
        "else a new one. A W3C `traceparent` is stored with the events when well formed and "
        "ignored otherwise."
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
