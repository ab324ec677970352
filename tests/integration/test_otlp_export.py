"""OTEL_TRACES_EXPORTER=otlp: a real process sends its spans over OTLP/HTTP to a collector
(here a loopback HTTP server that decodes the protobuf request)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
from taskstream.telemetry import configure_tracing, start_span_from
provider = configure_tracing("taskstream-test")
with start_span_from("apply users", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"):
    pass
provider.shutdown()  # flushes the batch
"""


def test_spans_reach_an_otlp_collector() -> None:
    received: list[tuple[str, str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the handler's protocol
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "taskstream-projector",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        }  # fmt: skip
        done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert len(received) == 1
    path, content_type, body = received[0]
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
    assert service == "taskstream-projector"  # OTEL_SERVICE_NAME wins over the process's own name
    (span,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "apply users" and span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
