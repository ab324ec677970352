"""The telemetry helpers: labels, trace-context carriers, log formats, scrape-time collectors."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, Counter, generate_latest

from schemas.envelope import Metadata
from taskstream import telemetry
from taskstream.telemetry import (
    JsonLinesFormatter,
    TelemetryError,
    TerminalFormatter,
    configure_tracing,
    context_from,
    current_traceparent,
    kafka_trace_headers,
    method_label,
    register_disk_metrics,
    register_pool_metrics,
    serve_metrics,
    status_class,
    traceparent_from_headers,
    with_trace_context,
)

ROOT = Path(__file__).resolve().parents[2]
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# A private provider: the global one is not touched by these tests.
TRACER = TracerProvider().get_tracer("test")


@pytest.mark.parametrize(("status", "label"), [(200, "2xx"), (201, "2xx"), (304, "3xx"), (404, "4xx"), (503, "5xx"), (99, "other"), (600, "other")])
def test_status_class(status: int, label: str) -> None:
    assert status_class(status) == label


def test_unknown_methods_share_one_label() -> None:
    assert method_label("POST") == "POST"
    assert method_label("BREW") == method_label("post") == "other"


def test_latency_buckets_have_2s_as_a_boundary() -> None:
    assert 2.0 in telemetry.HTTP_LATENCY_BUCKETS and list(telemetry.HTTP_LATENCY_BUCKETS) == sorted(telemetry.HTTP_LATENCY_BUCKETS)


def test_context_from_traceparent_and_back() -> None:
    assert context_from(None) is None and context_from("garbage") is None
    with TRACER.start_as_current_span("child", context=context_from(PARENT.encode())) as span:
        carrier = current_traceparent()
        assert carrier["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
        assert carrier["traceparent"].split("-")[2] == format(span.get_span_context().span_id, "016x")
        assert kafka_trace_headers() == [("traceparent", carrier["traceparent"].encode())]
        assert with_trace_context(Metadata(actor="a")) == Metadata(actor="a", traceparent=carrier["traceparent"])
        assert with_trace_context({"actor": "a"}) == {"actor": "a", "traceparent": carrier["traceparent"]}
    assert current_traceparent() == {}  # no span: nothing to carry, metadata left as it was
    assert with_trace_context(Metadata(traceparent=PARENT)) == Metadata(traceparent=PARENT)


def test_is_sampled() -> None:
    assert telemetry.is_sampled(PARENT) and telemetry.is_sampled(PARENT.encode())
    assert not telemetry.is_sampled(PARENT[:-2] + "00")
    assert telemetry.is_sampled(PARENT[:-2] + "03")  # sampled + random trace id
    assert not telemetry.is_sampled(None) and not telemetry.is_sampled("") and not telemetry.is_sampled(PARENT[:-2] + "zz")
    assert not telemetry.is_sampled(PARENT + "-extra")


def test_traceparent_from_kafka_headers() -> None:
    headers = [("ce_id", b"x"), ("traceparent", PARENT.encode()), ("tracestate", b"k=v")]
    assert traceparent_from_headers(headers) == (PARENT, "k=v")
    assert traceparent_from_headers(None) == (None, None)


def test_start_span_from_continues_the_trace_of_kafka_headers() -> None:
    # start_span_from uses the global tracer; with none installed it still carries the context.
    headers = [("ce_id", b"x"), ("traceparent", PARENT.encode()), ("tracestate", b"k=v")]
    with telemetry.start_span_from("apply", *traceparent_from_headers(headers)) as span:
        assert format(span.get_span_context().trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
        assert current_traceparent()["tracestate"] == "k=v"
    with telemetry.start_span_from("apply", *traceparent_from_headers([])) as span:
        assert format(span.get_span_context().trace_id, "032x") != "0af7651916cd43dd8448eb211c80319c"


def record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("taskstream.test", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_trace_and_span_ids() -> None:
    formatter = JsonLinesFormatter("taskstream-test")
    with TRACER.start_as_current_span("work") as span:
        line = formatter.format(record(position=42))
    data = json.loads(line)
    ctx = span.get_span_context()
    assert data["message"] == "hello world" and data["level"] == "WARNING" and data["logger"] == "taskstream.test"
    assert data["service"] == "taskstream-test" and data["position"] == 42
    assert data["trace_id"] == format(ctx.trace_id, "032x") and data["span_id"] == format(ctx.span_id, "016x")
    assert data["time"].endswith("+00:00") and "\n" not in line
    assert "trace_id" not in json.loads(formatter.format(record()))  # outside a span: no ids


def test_json_lines_hold_tracebacks_and_odd_values() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record(odd=object())
        rec.exc_info = sys.exc_info()
    data = json.loads(JsonLinesFormatter("t").format(rec))
    assert "ValueError: boom" in data["exception"] and data["odd"].startswith("<object")


def test_terminal_format_is_one_readable_line() -> None:
    line = TerminalFormatter("t").format(record(position=3, trace_id="abc"))
    assert "WARNING taskstream.test: hello world" in line and "position=3" in line and "trace_id=abc" in line
    assert not line.startswith("{")


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(TelemetryError):
        telemetry.configure_logging("t", "xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("env", [{"OTEL_TRACES_EXPORTER": "zipkin"}, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}])
def test_unsupported_exporters_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(TelemetryError):
        configure_tracing("t", env)


def test_sdk_disabled_installs_nothing() -> None:
    assert configure_tracing("t", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}) is None


SCRIPT = """
import sys
from taskstream.telemetry import configure_tracing, current_traceparent, tracer
provider = configure_tracing("svc", {"OTEL_TRACES_EXPORTER": sys.argv[1]})
with tracer("t").start_as_current_span("hello"):
    print(current_traceparent().get("traceparent", ""))
provider.shutdown()
"""


@pytest.mark.parametrize("exporter", ["console", "none"])
def test_exporter_chosen_by_the_environment(exporter: str) -> None:
    """A real process (the global provider can be set once): console prints the span; none
    prints nothing but still makes ids, unsampled, so logs and metadata correlate."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, exporter], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    traceparent = done.stdout.strip()
    assert len(traceparent) == 55
    if exporter == "console":
        span = json.loads(done.stderr)
        assert span["name"] == "hello" and span["resource"]["attributes"]["service.name"] == "svc"
        assert span["context"]["trace_id"] == "0x" + traceparent.split("-")[1]
    else:
        assert done.stderr == "" and int(traceparent.split("-")[3], 16) & 1 == 0


class FakePool:
    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats

    def get_stats(self) -> dict[str, int]:
        return self.stats


def test_pool_metrics_read_psycopg_pool_stats_at_scrape_time() -> None:
    registry = CollectorRegistry()
    pool = FakePool({"pool_min": 2, "pool_max": 10, "pool_size": 4, "pool_available": 1, "requests_waiting": 3})
    register_pool_metrics(registry, pool)
    value = registry.get_sample_value
    assert value("taskstream_db_pool_connections", {"state": "size"}) == 4
    assert value("taskstream_db_pool_connections", {"state": "in_use"}) == 3
    assert value("taskstream_db_pool_connections", {"state": "idle"}) == 1
    assert value("taskstream_db_pool_connections", {"state": "waiting"}) == 3
    assert value("taskstream_db_pool_connections", {"state": "max"}) == 10
    pool.stats = {**pool.stats, "pool_available": 4, "requests_waiting": 0}
    assert value("taskstream_db_pool_connections", {"state": "in_use"}) == 0


def test_disk_metrics_of_data_folders(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    register_disk_metrics(registry, [tmp_path, tmp_path / "not-yet"])
    usage = shutil.disk_usage(tmp_path)
    ratio = registry.get_sample_value("taskstream_disk_usage_ratio", {"path": str(tmp_path)})
    assert ratio is not None and 0 < ratio < 1
    assert abs(ratio - usage.used / (usage.used + usage.free)) < 0.01
    assert registry.get_sample_value("taskstream_disk_size_bytes", {"path": str(tmp_path)}) == usage.total
    assert registry.get_sample_value("taskstream_disk_usage_ratio", {"path": str(tmp_path / "not-yet")}) is None


def test_serve_metrics_on_a_free_port() -> None:
    registry = CollectorRegistry()
    Counter("taskstream_test_things_total", "things", registry=registry).inc(3)
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(server.url, timeout=5) as answer:  # noqa: S310 - loopback
            body = answer.read()
    finally:
        server.close()
    assert b"taskstream_test_things_total 3.0" in body and body == generate_latest(registry)
