"""``create_app``: the Starlette application, given everything it needs (no I/O at import)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.openapi import openapi_document
from event_store.errors import StoreUnavailable
from gateway.edge import Edge, IndexedRouter
from gateway.problems import current_trace_id, exception_handlers, problem
from gateway.hotreads import HotReads, HotRoute
from gateway.reads import READ_ENDPOINTS
from gateway.analysts import refuse_analysts  # issue 8: analysts read event streams only
from gateway.audit import with_audit  # issue 8: time travel, audit log, schemas
from gateway.routes import ENDPOINTS, Deps, Endpoint
from gateway.sse import STREAM_ENDPOINTS

log = logging.getLogger("taskstream.gateway")

ReadinessCheck = Callable[[], Awaitable[None]]  # raises when the dependency is not reachable


class _Gateway(Starlette):
    """Starlette with one edge layer (``gateway.edge.Edge``) in place of its error and exception
    middlewares and ours: request ids, spans, metrics, rate-limit fields and problems in one
    pass. Middleware added with ``add_middleware`` runs inside the edge."""

    def __init__(self, *, routes: list[Route], lifespan: Any, registry: CollectorRegistry) -> None:
        super().__init__(routes=routes, lifespan=lifespan)
        self.router = IndexedRouter(routes, lifespan=lifespan)
        self._registry = registry

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = self.router
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return Edge(app, self._registry, handlers=dict(self.exception_handlers))


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
    lanes = HotReads(deps).lanes if deps.reads is not None else {}  # reads by id from the near-cache
    routes: list[Route] = []
    for path in ordered:
        handle, methods = _dispatch(by_path[path], deps, timeout), _EVERY_METHOD if "{" not in path else list(by_path[path])
        lane = lanes.get(path) if "GET" in by_path[path] else None
        routes.append(HotRoute(path, handle, methods=methods, lane=lane) if lane is not None else Route(path, handle, methods=methods))
    return routes


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

    app = _Gateway(routes=routes, lifespan=lifespan, registry=registry)
    app.state.fingerprint_key = fingerprint_key or secrets.token_bytes(32)
    app.state.event_streams = streams  # GET /v1/events/stream (gateway/sse.py)
    for key, handler in exception_handlers().items():  # Exception: answered by the edge
        app.add_exception_handler(key, handler)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    return app
