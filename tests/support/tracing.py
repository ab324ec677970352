"""Spans recorded in memory, for tests that follow one trace across processes' code.

OpenTelemetry allows one global tracer provider per process: the first recorder installs an
SDK provider (always sampling); each recorder adds its own in-memory exporter to it and stops
storing when its block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class Recorded:
    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self._exporter = exporter

    def spans(self, trace_id: int | None = None) -> list[ReadableSpan]:
        found = list(self._exporter.get_finished_spans())
        return [s for s in found if trace_id is None or (s.context is not None and s.context.trace_id == trace_id)]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


@contextlib.contextmanager
def recorded_spans() -> Iterator[Recorded]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "another tracer provider was installed first"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield Recorded(exporter)
    finally:
        exporter.shutdown()  # its processor stays registered but stores nothing more
