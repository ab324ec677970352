"""The gateway's edge: what every request passes through, in one pure-ASGI layer, and its router.

``Edge`` does, for every HTTP request, what four middlewares did one after the other:

- **Request id.** ``X-Request-ID`` (from nginx) when well formed, else a new one, on
  ``scope["state"]["request_id"]`` and on the answer.
- **Trace.** A server span continuing the caller's ``traceparent``, current while the request
  runs, named ``"<method> <route template>"``; its trace id is ``scope["state"]["trace_id"]``.
  When the installed tracer provider drops every span (``OTEL_TRACES_EXPORTER=none``: the SDK
  with the ``ALWAYS_OFF`` sampler), the span is made as the SDK makes it (same ids, flags and
  trace state) without the sampler call and the span bookkeeping around it.
- **Metrics.** ``taskstream_http_requests_total{method,route,status_class}`` and
  ``taskstream_http_request_duration_seconds{method,route}``, by route template.
- **Rate-limit fields.** ``RateLimit-Policy`` and ``RateLimit`` on every answer of a limited
  request (errors too), refusals counted in ``taskstream_rate_limit_refusals_total{limit}``.
- **Problems.** What escapes the routes becomes an RFC 9457 problem (``problems.problem_for``):
  contract errors and ``HTTPException`` quietly, anything else as a logged 500 with a trace id.
  Errors after the answer started are re-raised: nothing can be sent then.

Per request it allocates one closure and a few small objects; metric children are looked up
once per label set. ``IndexedRouter`` tries only the routes whose literal prefix and number of
"/" can match the path, in their table order, so the first match is the one Starlette's router
would pick.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import Request
from starlette.convertors import FloatConvertor, IntegerConvertor, StringConvertor, UUIDConvertor
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http import request_id_of
from gateway.problems import problem_for
from gateway.ratelimit import STATE_KEY, Decision
from taskstream.telemetry import HTTP_LATENCY_BUCKETS, context_from, method_label, status_class, tracer

log = logging.getLogger("taskstream.gateway")

_RANDOM_TRACE_FLAG = 0x02  # W3C Trace Context level 2 "random trace id" (the SDK sets it)
_MAX_METRIC_CHILDREN = 4096


def _drops_every_span(provider: Any) -> bool:
    """Whether ``provider`` is the SDK's with the ALWAYS_OFF sampler and random ids (what
    ``configure_tracing`` installs when no exporter is configured)."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return False
    if type(provider) is not TracerProvider or getattr(provider, "sampler", None) is not ALWAYS_OFF:
        return False
    return type(getattr(provider, "id_generator", None)) is RandomIdGenerator


class Edge:
    """See the module doc. ``app`` is the router (with route-level exception handlers)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry, handlers: dict[Any, Any] | None = None) -> None:
        self.app = app
        # Starlette's route-level exception handlers (what its ExceptionMiddleware would set).
        given = {k: v for k, v in (handlers or {}).items() if k not in (500, Exception)}
        self._handlers = ({k: v for k, v in given.items() if not isinstance(k, int)},
                          {k: v for k, v in given.items() if isinstance(k, int)})  # fmt: skip
        self.requests = Counter(
            "taskstream_http_requests_total", "HTTP requests answered, by route template and status class",
            ["method", "route", "status_class"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "taskstream_http_request_duration_seconds", "Time to answer an HTTP request, by route template",
            ["method", "route"], registry=registry, buckets=HTTP_LATENCY_BUCKETS,
        )  # fmt: skip
        self.refusals = Counter("taskstream_rate_limit_refusals", "Requests refused by a rate limit", ["limit"], registry=registry)
        self.tracer = tracer("taskstream.gateway")
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}
        self._provider: Any = None
        self._fast_spans = False

    def _span_mode(self) -> bool:
        provider = trace.get_tracer_provider()
        if provider is not self._provider:  # installed (or replaced) since the last request
            self._provider, self._fast_spans = provider, _drops_every_span(provider)
        return self._fast_spans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        raw_id = traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                raw_id = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value
        request_id = request_id_of(raw_id)
        method = method_label(scope["method"])
        parent = context_from(traceparent, tracestate) if traceparent else None
        id_header = (b"x-request-id", request_id.encode())
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        scope["starlette.exception_handlers"] = self._handlers
        status = 500
        responded = False
        streamed_at: float | None = None  # an event stream's latency is its time to answer, not its life

        async def send_with_fields(message: Message) -> None:
            nonlocal status, responded, streamed_at
            if message["type"] == "http.response.start":
                responded = True
                status = message["status"]
                headers = [*message.get("headers", ()), id_header]
                for k, v in headers:
                    if k == b"content-type" and v.startswith(b"text/event-stream"):
                        streamed_at = time.perf_counter()
                        break
                decisions: Sequence[Decision] = state.get(STATE_KEY) or ()
                if decisions:
                    headers.append((b"ratelimit-policy", ", ".join(d.policy.field for d in decisions).encode()))
                    headers.append((b"ratelimit", ", ".join(d.field for d in decisions).encode()))
                    for refused in decisions:
                        if not refused.allowed:
                            self.refusals.labels(refused.policy.name).inc()
                message["headers"] = headers
            await send(message)

        if self._span_mode():
            span: Any = self._dropped_span(parent)
        else:
            span = self.tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            ctx = span.get_span_context()
            state["trace_id"] = format(ctx.trace_id, "032x") if ctx.is_valid else request_id
            try:
                await self.app(scope, receive, send_with_fields)
            except Exception as exc:
                if responded:
                    if span.is_recording():
                        span.record_exception(exc)
                    raise
                await problem_for(Request(scope), exc)(scope, receive, send_with_fields)
        finally:
            otel_context.detach(token)
            matched = scope.get("route")  # set by the router when a route matched
            route = getattr(matched, "path", "unmatched")
            self._count(method, route, status, (streamed_at or time.perf_counter()) - started)
            if span.is_recording():
                span.update_name(f"{method} {route}")
                span.set_attributes({"http.request.method": method, "http.route": route, "http.response.status_code": status})
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
            span.end()

    @staticmethod
    def _dropped_span(parent: otel_context.Context | None) -> NonRecordingSpan:
        """The span the SDK makes when its sampler drops it: the parent's trace id (or a new
        random one), a new span id, the parent's trace state, not sampled."""
        given = trace.get_current_span(parent).get_span_context() if parent is not None else None
        if given is not None and given.is_valid:
            trace_id, flags, trace_state = given.trace_id, given.trace_flags & _RANDOM_TRACE_FLAG, given.trace_state
        else:
            trace_id, flags, trace_state = random.getrandbits(128) or 1, _RANDOM_TRACE_FLAG, None
        span_id = random.getrandbits(64) or 1
        return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags), trace_state=trace_state))

    def _count(self, method: str, route: str, status: int, seconds: float) -> None:
        klass = status_class(status)
        counted = self._counted.get((method, route, klass))
        if counted is None:
            counted = self.requests.labels(method, route, klass)
            if len(self._counted) < _MAX_METRIC_CHILDREN:
                self._counted[(method, route, klass)] = counted
        counted.inc()
        timed = self._timed.get((method, route))
        if timed is None:
            timed = self.latency.labels(method, route)
            if len(self._timed) < _MAX_METRIC_CHILDREN:
                self._timed[(method, route)] = timed
        timed.observe(seconds)


class IndexedRouter(Router):
    """Starlette's router, trying for each path only the routes whose literal prefix (the part
    of the template before its first parameter) the path starts with and whose template has as
    many "/" as the path (unless a parameter may hold "/"), in table order. A route that cannot
    match is never asked, so the first full (or partial) match is the same."""

    _CACHED_KEYS = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._indexed: tuple[tuple[int, int], list[tuple[str, int | None, BaseRoute]]] | None = None
        self._candidates: dict[tuple[str, int], list[BaseRoute]] = {}

    def _literals(self) -> list[tuple[str, int | None, BaseRoute]]:
        if self._indexed is None or self._indexed[0] != (id(self.routes), len(self.routes)):
            literals = [(r.path.split("{", 1)[0], _slashes(r), r) if isinstance(r, Route) else ("", None, r) for r in self.routes]
            self._indexed = ((id(self.routes), len(self.routes)), literals)
            self._candidates = {}
        return self._indexed[1]

    def _for(self, path: str) -> list[BaseRoute]:
        literals = self._literals()
        # The key: the path up to its third "/" (e.g. "/v1/tasks/"), and how many "/" it has.
        # Every path with this key starts with it, so a route whose literal is neither a prefix
        # of the key nor starts with it can match none of them; nor can a route whose template
        # matches only paths with another number of "/".
        cut = path.find("/", path.find("/", 1) + 1)
        key = (path if cut < 0 else path[: cut + 1], path.count("/"))
        found = self._candidates.get(key)
        if found is None:
            prefix, slashes = key
            found = [r for literal, n, r in literals
                     if (literal.startswith(prefix) or prefix.startswith(literal)) and (n is None or n == slashes)]  # fmt: skip
            if len(self._candidates) < self._CACHED_KEYS:
                self._candidates[key] = found
        return found

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await super().app(scope, receive, send)
            return
        if "router" not in scope:
            scope["router"] = self
        partial = partial_scope = None
        for route in self._for(scope["path"]):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL and partial is None:
                partial, partial_scope = route, child_scope
        if partial is not None:
            scope["route"] = partial
            scope.update(partial_scope or {})
            await partial.handle(scope, receive, send)
            return
        await super().app(scope, receive, send)  # no route: Starlette's slash redirect, then 404


_NO_SLASH = (StringConvertor, IntegerConvertor, FloatConvertor, UUIDConvertor)  # their patterns hold no "/"


def _slashes(route: Route) -> int | None:
    """How many "/" every path that ``route`` matches has (its template's), or None when a
    parameter may hold "/" itself (``{name:path}``, or a convertor of unknown pattern)."""
    if all(type(c) in _NO_SLASH for c in route.param_convertors.values()):
        return route.path.count("/")
    return None
