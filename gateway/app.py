"""``create_app``: the Starlette application, given everything it needs (no I/O at import)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.openapi import openapi_document
from event_store.errors import StoreUnavailable
from gateway.http import request_id_of
from gateway.ratelimit import RateLimitHeaders
from gateway.problems import current_trace_id, install_problem_handlers, problem
from gateway.reads import READ_ENDPOINTS
from gateway.analysts import refuse_analysts  # issue 8: analysts read event streams only
from gateway.audit import with_audit  # issue 8: time travel, audit log, schemas
from gateway.routes import ENDPOINTS, Deps, Endpoint
from gateway.sse import STREAM_ENDPOINTS
from taskstream.telemetry import HTTP_LATENCY_BUCKETS, context_from, method_label, status_class, tracer

log = logging.getLogger("taskstream.gateway")

ReadinessCheck = Callable[[], Awaitable[None]]  # raises when the dependency is not reachable


class RequestContext:
    """X-Request-ID (from nginx, or new) on request.state and on the answer; the request's
    server span (continuing a caller's ``traceparent``); request metrics by route template."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "taskstream_http_requests_total", "HTTP requests answered, by route template and status class",
            ["method", "route", "status_class"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "taskstream_http_request_duration_seconds", "Time to answer an HTTP request, by route template",
            ["method", "route"], registry=registry, buckets=HTTP_LATENCY_BUCKETS,
        )  # fmt: skip
        self.tracer = tracer("taskstream.gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        request_id = request_id_of(headers.get(b"x-request-id"))
        method = method_label(scope["method"])
        parent = context_from(headers.get(b"traceparent"), headers.get(b"tracestate"))
        status = 500
        started = time.perf_counter()
        streamed_at: float | None = None  # an event stream's latency is its time to answer, not its life

        async def send_with_id(message: Message) -> None:
            nonlocal status, streamed_at
            if message["type"] == "http.response.start":
                status = message["status"]
                if any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message.get("headers", ())):
                    streamed_at = time.perf_counter()
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        with self.tracer.start_as_current_span(method, context=parent, kind=SpanKind.SERVER) as span:
            ctx = span.get_span_context()
            scope.setdefault("state", {})
            scope["state"]["request_id"] = request_id
            scope["state"]["trace_id"] = format(ctx.trace_id, "032x") if ctx.is_valid else request_id
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                matched = scope.get("route")  # set by the router when a route matched
                route = getattr(matched, "path", "unmatched")
                self.requests.labels(method, route, status_class(status)).inc()
                self.latency.labels(method, route).observe((streamed_at or time.perf_counter()) - started)
                if span.is_recording():
                    span.update_name(f"{method} {route}")
                    span.set_attributes({"http.request.method": method, "http.route": route, "http.response.status_code": status})
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)


def _routes(endpoints: Sequence[Endpoint], deps: Deps, timeout: float | None = None) -> list[Route]:
    """One Route per path, its endpoints chosen by method, so a 405 lists every allowed method.
    Each request is counted in its endpoint's rate-limit route class before the handler runs."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for endpoint in endpoints:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
    # A literal path before a templated one that would also match it (/v1/users/me before
    # /v1/users/{user_id}); a literal path takes every method and answers 405 for the ones it
    # lacks itself, so that PATCH /v1/users/me is not taken for a user whose id is "me".
    ordered = sorted(by_path, key=lambda path: "{" in path)
    return [
        Route(path, _dispatch(by_path[path], deps, timeout), methods=_EVERY_METHOD if "{" not in path else list(by_path[path]))
        for path in ordered
    ]


_EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]


def _dispatch(methods: dict[str, Endpoint], deps: Deps, timeout: float | None) -> Callable[[Request], Awaitable[Response]]:
    allowed = sorted({*methods, *(["HEAD"] if "GET" in methods else [])})

    async def handle(request: Request) -> Response:
        if request.method not in allowed:
            raise HTTPException(405, headers={"Allow": ", ".join(allowed)})
        endpoint = methods.get(request.method) or methods["GET"]  # HEAD is served by GET
        if deps.limits is not None:
            verifier = None if endpoint.route_class == "credentials" else deps.verifier
            await deps.limits.admit(request, endpoint.route_class, verifier)
        await refuse_analysts(request, endpoint.path, deps.verifier)  # gateway/analysts.py (issue 8)
        if timeout is None:
            return await endpoint.handler(request, deps)
        try:
            async with asyncio.timeout(timeout):
                return await endpoint.handler(request, deps)
        except TimeoutError:
            trace_id = current_trace_id(request)
            log.error("request deadline (%.1f s) passed trace_id=%s", timeout, trace_id)
            return problem(503, "Service Unavailable", "the request took too long; retry later", "unavailable",
                           headers={"Retry-After": "1"}, trace_id=trace_id)  # fmt: skip

    handle.__name__ = "_".join(e.handler.__name__ for e in methods.values())
    return handle


def create_app(
    deps: Deps,
    *,
    readiness: dict[str, ReadinessCheck] | None = None,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[Any]] | None = None,
    registry: CollectorRegistry | None = None,
    request_timeout: float | None = None,
    fingerprint_key: bytes | None = None,
    streams: Any = None,
) -> Starlette:
    """``request_timeout``: each API request's deadline in seconds (503 + Retry-After after it).
    ``fingerprint_key``: the HMAC key of idempotency fingerprints (commands/fingerprints.py);
    every gateway of a deployment needs the same one. None: a random key for this app only.
    ``streams``: the event streams' shared tailer (gateway.sse.Streams); None: 404 there."""
    registry = registry or CollectorRegistry()
    checks = dict(readiness or {})
    endpoints = with_audit((*ENDPOINTS, *READ_ENDPOINTS))  # time travel, audit log, schemas (issue 8)
    endpoints += STREAM_ENDPOINTS  # GET /v1/events/stream: Server-Sent Events (gateway/sse.py)
    document = openapi_document(endpoints, limited=deps.limits.policies if deps.limits is not None else ())

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        failures: dict[str, str] = {}

        async def run(name: str, check: ReadinessCheck) -> None:
            try:
                await asyncio.wait_for(check(), timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                failures[name] = type(exc).__name__

        await asyncio.gather(*(run(n, c) for n, c in checks.items()))
        if failures:
            return problem(503, "Service Unavailable", "a dependency is not reachable", "not-ready", checks=failures)
        return JSONResponse({"status": "ready", "checks": {name: "ok" for name in checks}})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(_: Request) -> Response:
        return JSONResponse(document)

    async def jwks(_: Request) -> Response:
        """The public keys that verify this gateway's RS256 tokens (HS256 keys are secret)."""
        if deps.issuer is None or deps.issuer.algorithm != "RS256":
            return problem(404, "Not Found", "this gateway publishes no signing keys")
        return JSONResponse(deps.issuer.public_jwks(), headers={"Cache-Control": "public, max-age=300"})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        *_routes(endpoints, deps, request_timeout),
    ]
    async def store_unavailable(request: Request, exc: Exception) -> Response:
        trace_id = current_trace_id(request)
        log.error("event store unavailable trace_id=%s: %s", trace_id, exc)
        return problem(503, "Service Unavailable", "the event store is unavailable; retry later", "unavailable",
                       headers={"Retry-After": "1"}, trace_id=trace_id)  # fmt: skip

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.fingerprint_key = fingerprint_key or secrets.token_bytes(32)
    app.state.event_streams = streams  # GET /v1/events/stream (gateway/sse.py)
    install_problem_handlers(app)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_middleware(RateLimitHeaders, registry=registry)  # outside ProblemMiddleware: errors get the fields too
    app.add_middleware(RequestContext, registry=registry)
    return app
