"""``create_app``: the Starlette application, given everything it needs (no I/O at import)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.openapi import openapi_document
from event_store.errors import StoreUnavailable
from gateway.problems import current_trace_id, install_problem_handlers, problem
from gateway.routes import ENDPOINTS, Deps, Endpoint

log = logging.getLogger("taskstream.gateway")

ReadinessCheck = Callable[[], Awaitable[None]]  # raises when the dependency is not reachable


class RequestContext:
    """X-Request-ID (from nginx, or new) on request.state and on the answer; request metrics."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("taskstream_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "taskstream_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})
        scope["state"]["request_id"] = scope["state"]["trace_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            method, matched = scope["method"], scope.get("route")  # set by the router when a route matched
            route = getattr(matched, "path", "unmatched")
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(time.perf_counter() - started)


def _route(endpoint: Endpoint, deps: Deps, timeout: float | None) -> Route:
    async def handle(request: Request) -> Response:
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

    handle.__name__ = endpoint.handler.__name__
    return Route(endpoint.path, handle, methods=[endpoint.method])


def create_app(
    deps: Deps,
    *,
    readiness: dict[str, ReadinessCheck] | None = None,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[Any]] | None = None,
    registry: CollectorRegistry | None = None,
    request_timeout: float | None = None,
    fingerprint_key: bytes | None = None,
) -> Starlette:
    """``request_timeout``: each API request's deadline in seconds (503 + Retry-After after it).
    ``fingerprint_key``: the HMAC key of idempotency fingerprints (commands/fingerprints.py);
    every gateway of a deployment needs the same one. None: a random key for this app only."""
    registry = registry or CollectorRegistry()
    checks = dict(readiness or {})
    document = openapi_document(ENDPOINTS)

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
        *(_route(e, deps, request_timeout) for e in ENDPOINTS),
    ]
    async def store_unavailable(request: Request, exc: Exception) -> Response:
        trace_id = current_trace_id(request)
        log.error("event store unavailable trace_id=%s: %s", trace_id, exc)
        return problem(503, "Service Unavailable", "the event store is unavailable; retry later", "unavailable",
                       headers={"Retry-After": "1"}, trace_id=trace_id)  # fmt: skip

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.fingerprint_key = fingerprint_key or secrets.token_bytes(32)
    install_problem_handlers(app)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_middleware(RequestContext, registry=registry)
    return app
