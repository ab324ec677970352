"""The gateway's request metrics: route templates and status classes, nothing unbounded."""

from __future__ import annotations

import re
import uuid

import httpx


async def test_labels_stay_bounded_whatever_the_client_sends(client: httpx.AsyncClient) -> None:
    user_id = uuid.uuid4()
    await client.patch(f"/v1/users/{user_id}", json={})  # 401: no token
    await client.get(f"/no/such/{uuid.uuid4()}")  # 404, no route
    await client.request("PROPFIND", "/healthz")  # a method the API does not know
    text = (await client.get("/metrics")).text
    samples = [line for line in text.splitlines() if line.startswith(("taskstream_http_requests_total{", "taskstream_http_request_duration_seconds_bucket{"))]
    assert samples
    assert 'taskstream_http_requests_total{method="PATCH",route="/v1/users/{user_id}",status_class="4xx"}' in text
    assert 'route="unmatched",status_class="4xx"' in text
    assert 'method="other",route="/healthz"' in text
    hex_ids = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}")
    assert not any(hex_ids.search(line) for line in samples)
    statuses = {m for line in samples for m in re.findall(r'status_class="([^"]*)"', line)}
    assert statuses <= {"1xx", "2xx", "3xx", "4xx", "5xx", "other"}


async def test_latency_histogram_has_2s_as_a_bucket_boundary(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    text = (await client.get("/metrics")).text
    assert 'taskstream_http_request_duration_seconds_bucket{le="2.0",method="GET",route="/healthz"}' in text


async def test_pool_metrics_of_the_gateway(client: httpx.AsyncClient) -> None:
    assert (await client.get("/readyz")).status_code == 200  # uses a pooled connection
    text = (await client.get("/metrics")).text
    for state in ("size", "in_use", "idle", "waiting", "max"):
        assert f'taskstream_db_pool_connections{{state="{state}"}}' in text
    assert 'taskstream_db_pool_connections{state="max"} 20.0' in text
