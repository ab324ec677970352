"""Telemetry shared by every process: Prometheus metrics, OpenTelemetry traces, JSON-line logs.

A leaf module, like ``settings``: it imports nothing else of taskstream, does no I/O at import,
and any layer may use its helpers (the command handler, the relay, the projector, the workers).

**Traces.** One trace follows a write from the gateway's request span through the command and
its append to the relay's publish, the projector's apply and the worker's run. The context
crosses process boundaries as a W3C ``traceparent``: the append writes it into the event's
metadata (:func:`with_trace_context`), the relay starts its publish span from it
(:func:`start_span_from`) and puts the publish span's own context in the Kafka headers
(:func:`kafka_trace_headers`); a consumer continues from those headers
(:func:`traceparent_from_headers` then :func:`start_span_from`).
The exporter is chosen by the standard variables: ``OTEL_TRACES_EXPORTER`` = ``none``
(default), ``console`` or ``otlp`` (OTLP over HTTP/protobuf, configured by
``OTEL_EXPORTER_OTLP_*``), ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` and ``OTEL_SDK_DISABLED``. With ``none`` nothing is recorded, but ids
are still made and propagated (the sampler drops every span, which costs an id and no more),
so logs and event metadata can be correlated across processes at no export cost.

**Logs.** One format for every process: JSON lines on stderr with ``time``, ``level``,
``logger``, ``message``, ``service``, ``trace_id``, ``span_id``, the record's extra fields and
the traceback; ``text`` is the same content for a terminal (``taskstream dev``).

**Metrics.** Names follow Prometheus conventions (base units, ``_total`` counters, ``_seconds``,
``_bytes``, ``_ratio``), and no label takes unbounded values: routes are templates, methods a
fixed set, paths the configured data folders. Collectors that read a state at scrape time
(the connection pool, disk usage) are registered with :func:`register_pool_metrics` and
:func:`register_disk_metrics`; a process with no HTTP server serves its registry with
:func:`serve_metrics`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LogFormat = Literal["json", "text"]
TRACE_HEADERS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()

# Request latency buckets, in seconds: 2 s is a boundary, so "p99 above 2 s" is exact.
HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class TelemetryError(ValueError):
    """The OTEL_* or logging environment does not describe a usable configuration."""


# ---------------------------------------------------------------------------------------------
# Labels


def status_class(status: int) -> str:
    """``"2xx"`` ... ``"5xx"``: the status label of request counters (bounded by construction)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def method_label(method: str) -> str:
    """The request method, or ``"other"``: a client can send any token as a method."""
    return method if method in HTTP_METHODS else "other"


# ---------------------------------------------------------------------------------------------
# Traces


def configure_tracing(service: str, env: Mapping[str, str] | None = None) -> Any | None:
    """Install the global tracer provider from the ``OTEL_*`` variables; returns it (call its
    ``shutdown()`` at exit to flush) or None when ``OTEL_SDK_DISABLED=true``. ``env`` holds the
    variables read here (exporters, protocol, service name); the SDK itself reads the others
    (sampler, OTLP endpoint and headers, resource attributes) from the process environment.
    Refuses what it cannot honour rather than silently exporting nothing."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    unknown = set(names) - {"none", "console", "otlp"}
    if unknown:
        raise TelemetryError(f"OTEL_TRACES_EXPORTER: unsupported {', '.join(sorted(unknown))} (none, console, otlp)")
    exporters = [n for n in names if n != "none"]
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if "otlp" in exporters and protocol != "http/protobuf":
        raise TelemetryError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only http/protobuf is installed")
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service})
    # No exporter: drop every span (ids are still made and propagated); else the env's sampler.
    provider = TracerProvider(resource=resource, sampler=None if exporters else ALWAYS_OFF)
    for name in exporters:
        if name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracer(name: str) -> trace.Tracer:
    """A tracer that follows the global provider, even one installed after this call."""
    return trace.get_tracer(name)


def context_from(traceparent: str | bytes | None, tracestate: str | bytes | None = None) -> otel_context.Context | None:
    """The context a W3C ``traceparent`` describes; None when absent or malformed."""
    if not traceparent:
        return None
    carrier = {"traceparent": _text(traceparent)}
    if tracestate:
        carrier["tracestate"] = _text(tracestate)
    ctx = _PROPAGATOR.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


@contextlib.contextmanager
def start_span_from(
    name: str,
    traceparent: str | bytes | None,
    tracestate: str | bytes | None = None,
    *,
    kind: SpanKind = SpanKind.CONSUMER,
    attributes: Mapping[str, Any] | None = None,
    tracer_name: str = "taskstream",
) -> Iterator[Span]:
    """A current span continuing the trace of ``traceparent`` (a new trace when there is none):
    what a projector or worker opens around the handling of one event, e.g.
    ``with start_span_from("apply users", *traceparent_from_headers(record.headers)):``."""
    parent = context_from(traceparent, tracestate)
    with tracer(tracer_name).start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as span:
        yield span


def is_sampled(traceparent: str | bytes | None) -> bool:
    """Whether a W3C ``traceparent`` (version 00) asks for its trace to be recorded. A consumer
    skips its span for an unsampled one (and forwards the context as it came): no span would
    be exported, and making one costs more than the work it would describe."""
    if not traceparent or len(traceparent) != 55:
        return False
    try:
        return bool(int(_text(traceparent)[53:55], 16) & 1)
    except ValueError:
        return False


def current_traceparent(span: Span | None = None) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of ``span`` or of the current span; empty if none."""
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier


def with_trace_context(metadata: Any, span: Span | None = None) -> Any:
    """Event metadata carrying the current trace context: a ``Metadata`` dataclass (its
    ``traceparent`` field) or a dict. Unchanged when there is no valid context."""
    carrier = current_traceparent(span)
    if not carrier:
        return metadata
    if dataclasses.is_dataclass(metadata) and not isinstance(metadata, type):
        return dataclasses.replace(metadata, traceparent=carrier["traceparent"])
    return {**metadata, **carrier}


def kafka_trace_headers(span: Span | None = None) -> list[tuple[str, bytes]]:
    """Kafka record headers for the current context (or ``span``'s)."""
    return [(key, value.encode()) for key, value in current_traceparent(span).items()]


def traceparent_from_headers(headers: Iterable[tuple[str, bytes | str | None]] | None) -> tuple[str | None, str | None]:
    """``(traceparent, tracestate)`` from Kafka record headers."""
    found = {key: _text(value) for key, value in headers or () if key in TRACE_HEADERS and value}
    return found.get("traceparent"), found.get("tracestate")


def trace_ids() -> tuple[str | None, str | None]:
    """The current ``(trace_id, span_id)`` as hex, or Nones."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------
# Logs

# Record attributes that are not extra fields (uvicorn adds a colour copy of its message).
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName", "color_message"}


class _Base(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        trace_id, span_id = trace_ids()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
            "trace_id": getattr(record, "trace_id", None) or trace_id,
            "span_id": getattr(record, "span_id", None) or span_id,
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.stack_info:
            out["stack"] = record.stack_info
        return {k: v for k, v in out.items() if v is not None}


class JsonLinesFormatter(_Base):
    """One JSON object per line; values that JSON cannot hold are written as their ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), default=str, ensure_ascii=False)


class TerminalFormatter(_Base):
    """The same fields for a person: ``time level logger message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        head = f"{fields.pop('time')[11:23]} {fields.pop('level'):<7} {fields.pop('logger')}: {fields.pop('message')}"
        fields.pop("service", None)
        exception = fields.pop("exception", None) or fields.pop("stack", None)
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        return "\n".join(part for part in (f"{head}  {tail}" if tail else head, exception) if part)


def configure_logging(service: str, fmt: LogFormat = "json", level: str | int = "INFO") -> None:
    """Route every logger (uvicorn's, aiokafka's, faust's) to stderr in the one format."""
    if fmt not in ("json", "text"):
        raise TelemetryError(f"LOG_FORMAT={fmt!r}: must be json or text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter(service) if fmt == "json" else TerminalFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    for noisy in ("alembic", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def logging_from_env(service: str, env: Mapping[str, str] | None = None) -> None:
    """``LOG_FORMAT`` (json|text, default json) and ``LOG_LEVEL`` (default INFO)."""
    env = os.environ if env is None else env
    configure_logging(service, env.get("LOG_FORMAT") or "json", env.get("LOG_LEVEL") or "INFO")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Metrics read at scrape time


class _StatsPool(Protocol):
    def get_stats(self) -> Mapping[str, int]: ...


class PoolCollector(Collector):
    """``taskstream_db_pool_connections{state}`` from psycopg_pool's ``get_stats()``: ``size``
    (open connections), ``in_use``, ``idle``, ``waiting`` (requests queued for a connection),
    ``max`` (the ceiling)."""

    def __init__(self, pool: _StatsPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        family = GaugeMetricFamily(
            "taskstream_db_pool_connections", "PostgreSQL connection pool: connections by state, and requests waiting", labels=["state"]
        )
        for state, value in (
            ("size", size),
            ("in_use", max(0, size - idle)),
            ("idle", idle),
            ("waiting", stats.get("requests_waiting", 0)),
            ("max", stats.get("pool_max", 0)),
        ):
            family.add_metric([state], value)
        yield family


def register_pool_metrics(registry: CollectorRegistry, pool: _StatsPool) -> PoolCollector:
    collector = PoolCollector(pool)
    registry.register(collector)
    return collector


class DiskUsageCollector(Collector):
    """``taskstream_disk_usage_ratio{path}`` (used / size of the filesystem holding each data
    folder), ``taskstream_disk_used_bytes{path}`` and ``taskstream_disk_size_bytes{path}``.
    A folder that does not exist (yet) is left out rather than failing the scrape."""

    def __init__(self, paths: Sequence[Path | str]) -> None:
        self._paths = [str(p) for p in paths]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio = GaugeMetricFamily("taskstream_disk_usage_ratio", "Used fraction of the filesystem holding a data folder", labels=["path"])
        used = GaugeMetricFamily("taskstream_disk_used_bytes", "Bytes used on the filesystem holding a data folder", labels=["path"])
        size = GaugeMetricFamily("taskstream_disk_size_bytes", "Size of the filesystem holding a data folder", labels=["path"])
        for path in self._paths:
            try:
                usage = shutil.disk_usage(path)
            except OSError:
                continue
            # As df counts it: blocks reserved for root are neither used nor available.
            usable = usage.used + usage.free
            ratio.add_metric([path], usage.used / usable if usable else 0.0)
            used.add_metric([path], usage.used)
            size.add_metric([path], usage.total)
        yield from (ratio, used, size)


def register_disk_metrics(registry: CollectorRegistry, paths: Sequence[Path | str]) -> DiskUsageCollector:
    collector = DiskUsageCollector(paths)
    registry.register(collector)
    return collector


# ---------------------------------------------------------------------------------------------
# /metrics for processes without an HTTP server


@dataclasses.dataclass
class MetricsServer:
    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread (port 0: any free
    port; see ``.port``). Collectors run in that thread: they must only read."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host, int(server.server_address[1]), server, thread)
