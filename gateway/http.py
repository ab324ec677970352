"""Reading requests and shaping write answers: content type, size, JSON, headers.

What ``read_body`` lets through can be stored and sent on as it came: a JSON object whose
numbers are finite (no ``1e400``, no integer past Python's 4,300-digit limit), nested at most
``MAX_JSON_DEPTH`` deep, whose strings and keys hold no NUL (PostgreSQL refuses it) and no lone
surrogate (not encodable as UTF-8). Anything else is a 422 before any service call, so nothing is
written. The tracing headers go into event metadata and Kafka headers only when well formed.
"""

from __future__ import annotations

import json
import math
import random
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
from gateway import consistency
from schemas.envelope import Metadata

B = TypeVar("B", bound=BaseModel)

MAX_JSON_DEPTH = 32
# The header formats, also published in the OpenAPI document (``gateway.openapi``).
# A project's read ETag is "<version>.<counts revision>": If-Match takes its version part.
IF_MATCH_PATTERN = r'^\s*(?:\*|(?:W/)?"[0-9]{1,18}(?:\.[0-9]{1,18})?"|[0-9]{1,18})\s*$'
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
CORRELATION_ID_PATTERN = r"^[A-Za-z0-9._~:/+=@-]{1,128}$"
_ETAG = re.compile(r'^\s*(?:W/)?"?([0-9]{1,18})(?:\.[0-9]{1,18})?"?\s*$')
_IF_MATCH = re.compile(IF_MATCH_PATTERN)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_CORRELATION_ID = re.compile(CORRELATION_ID_PATTERN)
_REQUEST_ID = re.compile(CORRELATION_ID_PATTERN.encode())
# W3C Trace Context level 1: version 00 exactly; a later version may append fields.
_TRACEPARENT = re.compile(r"^(?!ff)([0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-[\x21-\x7e]*)?$")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


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
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"the body is not valid JSON: {exc}", errors=[{"field": "", "message": "invalid JSON"}]) from None
    except _NotStorable as exc:
        raise ValidationFailed(str(exc), errors=[{"field": "", "message": str(exc)}]) from None
    except ValueError:  # int() past sys.get_int_max_str_digits()
        message = "an integer has too many digits"
        raise ValidationFailed(message, errors=[{"field": "", "message": message}]) from None
    except RecursionError:
        message = f"the body is nested more than {MAX_JSON_DEPTH} deep"
        raise ValidationFailed(message, errors=[{"field": "", "message": message}]) from None
    if (found := _unstorable_at(data)) is not None:
        where, message = found
        raise ValidationFailed(message, errors=[{"field": where, "message": message}])
    if not isinstance(data, dict):
        raise ValidationFailed("the body must be a JSON object", errors=[{"field": "", "message": "expected an object"}])
    return model.model_validate(data), bytes(raw)  # ValidationError -> 422 by the problem handlers


class _NotStorable(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotStorable(f"{name} is not a JSON number and cannot be stored")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStorable(f"the number {text[:32]} is out of range")
    return value


def _unstorable_at(value: Any, path: str = "", depth: int = 1) -> tuple[str, str] | None:
    """The path of the first value that cannot be stored, and why (NUL, lone surrogate, depth)."""
    if isinstance(value, str):
        return (path, _why(value)) if _UNSTORABLE.search(value) else None
    if isinstance(value, (dict, list)) and depth > MAX_JSON_DEPTH:
        return path, f"the body is nested more than {MAX_JSON_DEPTH} deep"
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{_shown(key)}" if path else _shown(key)
            if _UNSTORABLE.search(key):
                return inner, _why(key) + " (in a key)"
            if (found := _unstorable_at(item, inner, depth + 1)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _unstorable_at(item, f"{path}.{index}" if path else str(index), depth + 1)) is not None:
                return found
    return None


def _why(text: str) -> str:
    return "NUL characters are not accepted" if "\x00" in text else "lone surrogates (invalid UTF-16) are not accepted"


def _shown(key: str) -> str:
    """A key as it can be shown in an answer (UTF-8 encodable, no NUL)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def path_uuid(request: Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        raise NotFound(f"no such resource: {name} is not a valid id") from None


def if_match(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    match = _ETAG.match(raw) if _IF_MATCH.match(raw) else None
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
    correlation_id = request.headers.get("x-correlation-id")
    if correlation_id is not None and not _CORRELATION_ID.match(correlation_id):
        message = "X-Correlation-ID must be 1-128 characters from A-Z a-z 0-9 . _ ~ : / + = @ -"
        raise ValidationFailed(message, errors=[{"field": "X-Correlation-ID", "message": "invalid"}])
    metadata = Metadata(
        actor=actor.user_id if actor else None,
        correlation_id=correlation_id or request_id,
        causation_id=request_id,
        traceparent=valid_traceparent(request.headers.get("traceparent")),
        idempotency_key=key,
    )
    return WriteContext(metadata=metadata, idempotency_key=scoped_key, fingerprint=fingerprint, if_match=if_match(request))


def request_id_of(raw: bytes | None) -> str:
    """``X-Request-ID`` (nginx sets one) when well formed, else a new id: it becomes metadata."""
    if raw and _REQUEST_ID.match(raw):
        return raw.decode("ascii")
    return f"{random.getrandbits(128):032x}"  # unique, not secret: no system call per request


def valid_traceparent(raw: str | None) -> str | None:
    """A W3C ``traceparent`` as sent, or None when it is malformed (the spec says: ignore it)."""
    if raw is None or len(raw) > 512:
        return None
    match = _TRACEPARENT.match(raw)
    if match is None or (match.group(1) == "00" and len(raw) != 55):
        return None
    return raw


def written(result: Written, *, status: int, location: str) -> JSONResponse:
    primary = result.primary
    token = consistency.encode(result.results)
    body: dict[str, Any] = {
        "id": result.entity_id,
        "stream": primary.stream,
        "version": primary.version,
        "global_position": primary.last_position,
        "consistency_token": token,
    }
    headers = {"ETag": f'"{primary.version}"', "Location": location, consistency.HEADER: token}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=status, headers=headers)
