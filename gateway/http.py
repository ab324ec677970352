"""Reading requests and shaping write answers: content type, size, JSON, headers."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from commands.authz import Actor
from commands.errors import NotFound, ValidationFailed
from commands.fingerprints import request_fingerprint
from commands.handler import WriteContext, Written
from schemas.envelope import Metadata

B = TypeVar("B", bound=BaseModel)

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class UnsupportedMediaType(Exception):
    slug, title, status = "unsupported-media-type", "Unsupported Media Type", 415

    def __init__(self, content_type: str | None) -> None:
        super().__init__(f"send application/json, not {content_type or 'nothing'}")
        self.detail = str(self)


class ContentTooLarge(Exception):
    slug, title, status = "content-too-large", "Content Too Large", 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.detail = str(self)
        self.extensions = {"max_bytes": limit}


async def read_body(request: Request, model: type[B], max_bytes: int) -> tuple[B, bytes]:
    """The validated body and its raw bytes. 415, 413 or 422 otherwise."""
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(media or None)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ContentTooLarge(max_bytes)
    raw = bytearray()
    async for chunk in request.stream():
        raw.extend(chunk)
        if len(raw) > max_bytes:
            raise ContentTooLarge(max_bytes)
    try:
        data = json.loads(raw, parse_constant=_refuse_constant) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"the body is not valid JSON: {exc}", errors=[{"field": "", "message": "invalid JSON"}]) from None
    except _NotStorable as exc:
        raise ValidationFailed(str(exc), errors=[{"field": "", "message": str(exc)}]) from None
    if (where := _nul_at(data)) is not None:
        message = "NUL characters are not accepted"
        raise ValidationFailed(message, errors=[{"field": where, "message": message}])
    if not isinstance(data, dict):
        raise ValidationFailed("the body must be a JSON object", errors=[{"field": "", "message": "expected an object"}])
    return model.model_validate(data), bytes(raw)  # ValidationError -> 422 by the problem handlers


class _NotStorable(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotStorable(f"{name} is not a JSON number and cannot be stored")


def _nul_at(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) holding a NUL character, which PostgreSQL refuses."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if "\x00" in key or (found := _nul_at(item, inner)) is not None:
                return inner if "\x00" in key else found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _nul_at(item, f"{path}.{index}" if path else str(index))) is not None:
                return found
    return None


def path_uuid(request: Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        raise NotFound(f"no such resource: {name} is not a valid id") from None


def if_match(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    match = _ETAG.match(raw)
    if match is None:
        raise ValidationFailed("If-Match must be an ETag such as \"3\"", errors=[{"field": "If-Match", "message": "not a version ETag"}])
    return int(match.group(1))


def write_context(request: Request, actor: Actor | None, raw_body: bytes) -> WriteContext:
    """Metadata for the events, and the idempotency key scoped to the caller and request."""
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ValidationFailed("Idempotency-Key must be 1-255 visible ASCII characters", errors=[{"field": "Idempotency-Key", "message": "invalid"}])
    request_id = getattr(request.state, "request_id", None) or str(uuid.uuid4())
    who = actor.user_id if actor else "anonymous"
    fingerprint = None
    scoped_key = None
    if key is not None:
        scoped_key = f"{who}:{key}"
        fingerprint = request_fingerprint(
            request.app.state.fingerprint_key, request.method, request.url.path, request.headers.get("if-match", ""), raw_body
        )
    metadata = Metadata(
        actor=actor.user_id if actor else None,
        correlation_id=request.headers.get("x-correlation-id") or request_id,
        causation_id=request_id,
        traceparent=request.headers.get("traceparent"),
        idempotency_key=key,
    )
    return WriteContext(metadata=metadata, idempotency_key=scoped_key, fingerprint=fingerprint, if_match=if_match(request))


def written(result: Written, *, status: int, location: str) -> JSONResponse:
    primary = result.primary
    body: dict[str, Any] = {
        "id": result.entity_id,
        "stream": primary.stream,
        "version": primary.version,
        "global_position": primary.last_position,
    }
    headers = {"ETag": f'"{primary.version}"', "Location": location}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=status, headers=headers)
