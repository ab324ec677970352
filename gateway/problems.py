"""RFC 9457 problem details: every error the gateway returns is ``application/problem+json``.

Domain errors need not be known here. Any exception with ``slug: str``, ``title: str`` and
``status: int`` (400-599) becomes a problem of that status, typed
``https://taskstream.dev/problems/<slug>``. Optionally it may have ``detail`` (str),
``extensions`` (extra members) and ``headers`` (``WWW-Authenticate``, ``Retry-After``), each a
mapping or a method returning one. Without ``detail``, a 4xx error's ``str()`` is the
detail; a 5xx error's text is never shown. Anything else is a 500 with a generic detail and a
``trace_id``, logged with the same id; the exception text and stack trace stay in the log.

Wire it with ``install_problem_handlers(app)``, or ``Starlette(exception_handlers=
exception_handlers(), middleware=[Middleware(ProblemMiddleware), ...])``.
"""

from __future__ import annotations

import http
import http.client
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from opentelemetry import trace
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://taskstream.dev/problems/"
GENERIC_DETAIL = "An unexpected error occurred. Quote the trace_id when reporting it."

# RFC 9110 names where Python's http.HTTPStatus still has the RFC 7231 ones.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}
# The title of the ``validation-failed`` type, the same as the domain's ``ValidationFailed``:
# one title per problem type.
VALIDATION_TITLE = "The request is not valid"
_STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail"})

logger = logging.getLogger("taskstream.gateway")


class ProblemError(Protocol):
    """The duck-typed contract of errors the gateway turns into problems (see the module doc)."""

    slug: str
    title: str
    status: int


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_type(slug: str | None) -> str:
    """``about:blank`` for a generic problem, the slug under our base URI, or an absolute URI as is."""
    if slug is None or slug == "about:blank":
        return "about:blank"
    if ":" in slug:
        return slug
    return PROBLEM_TYPE_BASE + slug


def status_title(status: int) -> str:
    if status in _TITLES:
        return _TITLES[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    type_: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> ProblemResponse:
    """One problem response. ``type_`` is a slug, an absolute URI, or None for ``about:blank``."""
    clash = _STANDARD_MEMBERS.intersection(extensions)
    if clash:
        raise TypeError(f"extension members may not redefine {sorted(clash)}; use the parameters")
    body: dict[str, Any] = {"type": problem_type(type_), "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(extensions)
    return ProblemResponse(body, status_code=status, headers=dict(headers) if headers else None)


def bearer_challenge(error: str | None = None, description: str | None = None) -> str:
    """A ``WWW-Authenticate`` value (RFC 6750 section 3): no error code when credentials are absent."""
    params = []
    if error is not None:
        params.append(f'error="{_quote(error)}"')
    if description is not None:
        params.append(f'error_description="{_quote(description)}"')
    return "Bearer " + ", ".join(params) if params else "Bearer"


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """``{"field": "a.b", "message": ..., "type": ...}`` per failure; the input is never echoed."""
    return [
        {
            "field": ".".join(str(part) for part in error["loc"]),
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def validation_failed(
    errors: ValidationError | Sequence[Mapping[str, str]], detail: str | None = None
) -> ProblemResponse:
    listed = field_errors(errors) if isinstance(errors, ValidationError) else [dict(e) for e in errors]
    shown = detail or "The request is not valid; see errors."
    return problem(422, VALIDATION_TITLE, shown, "validation-failed", errors=listed)


def internal_error(trace_id: str) -> ProblemResponse:
    return problem(500, "Internal Server Error", GENERIC_DETAIL, trace_id=trace_id)


def current_trace_id(request: Request) -> str:
    """The request's trace id: ``request.state.trace_id``, the active OpenTelemetry trace, or new."""
    given = getattr(request.state, "trace_id", None)
    if isinstance(given, str) and given:
        return given
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return format(context.trace_id, "032x")
    return uuid.uuid4().hex


def from_problem_error(exc: BaseException, request: Request | None = None) -> ProblemResponse | None:
    """The problem for an exception that follows the contract, or None if it does not."""
    slug, title, status = (getattr(exc, name, None) for name in ("slug", "title", "status"))
    if not (isinstance(slug, str) and isinstance(title, str)):
        return None
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        return None
    detail = getattr(exc, "detail", None) if status < 500 else None  # a 5xx's text goes to the log only
    if detail is None and status < 500:
        detail = str(exc) or None
    extensions = _call_mapping(exc, "extensions")
    extensions = {k: v for k, v in extensions.items() if k not in _STANDARD_MEMBERS}
    if status >= 500:
        trace_id = current_trace_id(request) if request is not None else uuid.uuid4().hex
        logger.error("%s (%s) trace_id=%s", slug, status, trace_id, exc_info=exc, extra={"trace_id": trace_id})
        extensions["trace_id"] = trace_id
    detail_text = None if detail is None else str(detail)
    return problem(status, title, detail_text, slug, headers=_call_mapping(exc, "headers"), **extensions)


def _http_problem(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status in {204, 304}:
        return Response(status_code=status, headers=exc.headers)
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    title = status_title(status)
    # Starlette's default detail is the status phrase: show only a detail the app chose.
    detail = exc.detail if exc.detail not in {"", title, http.client.responses.get(status)} else None
    if detail is None and status == 404:
        detail = f"no resource at {request.url.path}"
    elif detail is None and status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    if status >= 500:
        trace_id = current_trace_id(request)
        logger.error("HTTP %s raised trace_id=%s", status, trace_id, extra={"trace_id": trace_id})
        return problem(status, title, detail, headers=headers, trace_id=trace_id)
    return problem(status, title, detail, headers=headers)


def problem_for(request: Request, exc: Exception) -> Response:
    """The response for any exception; an unexpected one is logged with its trace id."""
    if isinstance(exc, HTTPException):
        return _http_problem(request, exc)
    if isinstance(exc, ValidationError):
        return validation_failed(exc)
    response = from_problem_error(exc, request)
    if response is not None:
        return response
    trace_id = current_trace_id(request)
    logger.error(
        "unhandled error on %s %s trace_id=%s",
        request.method,
        request.url.path,
        trace_id,
        exc_info=exc,
        extra={"trace_id": trace_id},
    )
    return internal_error(trace_id)


class ProblemMiddleware:
    """Answers what escapes the routes: contract errors and ``ValidationError`` quietly, anything
    else as a logged 500. Starlette's own ``Exception`` handler cannot do this: it runs in
    ``ServerErrorMiddleware``, which re-raises after responding, so the server would log every
    409 as a crash. Errors after the response started are re-raised: nothing can be sent then.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:
                raise
            await problem_for(Request(scope), exc)(scope, receive, send)


async def _handle(request: Request, exc: Exception) -> Response:
    return problem_for(request, exc)


def exception_handlers() -> dict[Any, ExceptionHandler]:
    """For ``Starlette(exception_handlers=...)``, with ``Middleware(ProblemMiddleware)`` in
    ``middleware=``: HTTP exceptions (404, 405, 413 ...) and validation errors are answered in
    ``ExceptionMiddleware``; ``Exception`` covers errors raised by other middleware."""
    return {HTTPException: _handle, ValidationError: _handle, Exception: _handle}


def install_problem_handlers(app: Starlette) -> None:
    """Register the handlers and put ``ProblemMiddleware`` outermost among the app's middleware."""
    for key, handler in exception_handlers().items():
        app.add_exception_handler(key, handler)
    app.add_middleware(ProblemMiddleware)


def _call_mapping(exc: BaseException, name: str) -> dict[str, Any]:
    """``exc.<name>`` as a dict, whether a mapping attribute or a method returning one."""
    value = getattr(exc, name, None)
    if callable(value):
        value = value()
    return dict(value) if isinstance(value, Mapping) else {}


def _quote(value: str) -> str:
    cleaned = "".join(ch for ch in value if ch.isprintable())
    return cleaned.replace("\\", "\\\\").replace('"', '\\"')
