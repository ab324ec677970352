"""OpenAPI 3.1, generated from the endpoint table and the pydantic bodies."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from gateway.bodies import Accepted, Problem, TokenResponse
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
    429: "Too many registrations or logins from this address; Retry-After says when to try again",
    500: "Unexpected error; carries a trace_id that appears in the logs",
}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _problem_response(status: int, components: dict[str, Any]) -> dict[str, Any]:
    return {"description": _ERROR_TEXT.get(status, "Error"), "content": {"application/problem+json": {"schema": _schema(Problem, components)}}}


def _operation(endpoint: Endpoint, components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": endpoint.summary, "operationId": endpoint.handler.__name__}
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
        for name in _PARAM.findall(endpoint.path)
    ]
    params += list(endpoint.query)
    if endpoint.auth:
        op["security"] = [{"bearer": []}]
        params += [
            {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
             "description": 'Pin the expected version, e.g. "3"; a mismatch answers 409'},
            {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 255},
             "description": "Same key and body: the original answer, nothing written again"},
        ]  # fmt: skip
    if params:
        op["parameters"] = params
    if endpoint.body is not None:
        op["requestBody"] = {
            "required": endpoint.method != "POST" or endpoint.path.endswith("/users") or endpoint.path.endswith("/tasks") or endpoint.path.endswith("/token") or endpoint.path == "/v1/projects",
            "content": {"application/json": {"schema": _schema(endpoint.body, components)}},
        }
    ok_model = endpoint.response or (TokenResponse if endpoint.handler.__name__ == "issue_token" else Accepted)
    if ok_model is bytes:
        ok: dict[str, Any] = {"description": "The bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    else:
        ok = {"description": "Done", "content": {"application/json": {"schema": _schema(ok_model, components)}}}
    if ok_model is Accepted:
        ok["headers"] = {
            "ETag": {"schema": {"type": "string"}, "description": "the stream's new version"},
            "Location": {"schema": {"type": "string"}, "description": "the resource written"},
        }
    op["responses"] = {str(endpoint.status): ok}
    for status in (*endpoint.errors, 500):
        op["responses"][str(status)] = _problem_response(status, components)
    return op


def openapi_document(endpoints: Sequence[Endpoint], *, title: str = "taskstream", version: str = "0.1.0") -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, components)
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
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": "Event-sourced users, projects and tasks. Errors are RFC 9457 problem details."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
