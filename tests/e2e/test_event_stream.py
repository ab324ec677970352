"""GET /v1/events/stream over real HTTP (uvicorn in the test loop) and real PostgreSQL.

The module has a database of its own (``isolated_database_url``): it writes events straight
into the store, fast and concurrently, and compares what clients saw with the whole table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import secrets
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from event_store.postgres import PostgresEventStore
from event_store.relay import encode_value, redacted
from gateway.auth import TokenIssuer, build_auth
from schemas.catalog import public_data
from schemas.envelope import ANY, NewEvent
from taskstream import embedded
from taskstream.settings import Settings
from tests.support.stack import serve_gateway


@dataclass
class Frame:
    id: int | None = None
    event: str = "message"
    data: str | None = None
    comment: str | None = None


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """A small SSE parser (the text/event-stream format of the HTML standard)."""
    current: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in current or "event" in current:
                yield Frame(int(current["id"]) if "id" in current else None, current.get("event", "message"), current.get("data"))
            current = {}
        elif line.startswith(":"):
            yield Frame(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current[name] = current[name] + "\n" + value if name == "data" and name in current else value


@pytest.fixture(scope="module")
def settings(isolated_database_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=isolated_database_url,
        redis_url=redis_url,
        kafka_bootstrap_servers=f"127.0.0.1:{embedded.free_port()}",  # only /readyz would look at it
        jwt_secret=secrets.token_urlsafe(48),
        idempotency_secret=secrets.token_urlsafe(32),
        http_port=embedded.free_port(),
        rate_limit_read_per_minute=0,
        rate_limit_write_per_minute=0,
        sse_heartbeat_seconds=0.5,
        sse_queue_events=50,
        sse_poll_seconds=0.5,
        near_cache_entries=0,
    )


@pytest.fixture(scope="module")
async def url(settings: Settings) -> AsyncIterator[str]:
    async with serve_gateway(settings) as served:
        yield served


@pytest.fixture(scope="module")
def issuer(settings: Settings) -> TokenIssuer:
    token_issuer, _ = build_auth(settings)
    assert token_issuer is not None
    return token_issuer


@pytest.fixture(scope="module")
async def store(settings: Settings) -> AsyncIterator[PostgresEventStore]:
    event_store = await PostgresEventStore.connect(settings.database_url, min_size=1, max_size=8)
    yield event_store
    await event_store.close()


def bearer(issuer: TokenIssuer, role: str, **kwargs: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(str(uuid.uuid4()), role, **kwargs)}"}  # type: ignore[arg-type]


async def write_some(store: PostgresEventStore, n: int, *, padding: int = 0) -> None:
    """``n`` events over several categories, a registration (with its password hash) among them."""
    for _ in range(n):
        kind = random.choice(["task", "user", "user_email"])
        entity = uuid.uuid4()
        if kind == "task":
            event = NewEvent("task.submitted", {"task_id": str(entity), "kind": "echo", "pad": "x" * padding})
        elif kind == "user":
            event = NewEvent("user.registered", {"user_id": str(entity), "email": f"{entity.hex[:8]}@example.org", "password_hash": "$argon2id$secret"})
        else:
            event = NewEvent("user_email.claimed", {"email": f"{entity.hex[:8]}@example.org", "user_id": str(entity)})
        await store.append(f"{kind}-{entity}", ANY, [event])


async def positions_after(store: PostgresEventStore, after: int, categories: tuple[str, ...] | None = None) -> list[int]:
    async with store.pool.connection() as conn:
        if categories is None:
            cur = await conn.execute("SELECT global_position FROM events WHERE global_position > %s ORDER BY 1", (after,))
        else:
            cur = await conn.execute("SELECT global_position FROM events WHERE global_position > %s AND category = ANY(%s) ORDER BY 1", (after, list(categories)))
        return [row[0] for row in await cur.fetchall()]


async def test_the_union_of_what_a_client_saw_across_disconnects_is_the_log(url: str, issuer: TokenIssuer, store: PostgresEventStore) -> None:
    start = await store.head_position()
    headers = bearer(issuer, "admin")
    writers = [asyncio.create_task(write_some(store, 60)) for _ in range(6)]  # concurrent appends, group commits
    seen: list[Frame] = []
    last = start
    connections = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while True:
            done = all(w.done() for w in writers)
            if done and last >= await store.head_position():
                break
            connections += 1
            take = random.randint(1, 40)  # then hang up, wherever the stream is
            resume = {"Last-Event-ID": str(last)} if connections % 2 else {}
            params = {} if resume else {"after": str(last)}
            async with client.stream("GET", "/v1/events/stream", headers={**headers, **resume}, params=params) as response:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                async for frame in frames(response):
                    if frame.comment is not None:
                        if frame.comment == "heartbeat" and all(w.done() for w in writers):
                            break  # idle: reconnect and check the head again
                        continue
                    seen.append(frame)
                    last = frame.id  # type: ignore[assignment]
                    take -= 1
                    if take == 0:
                        break
    await asyncio.gather(*writers)
    ids = [f.id for f in seen]
    assert ids == await positions_after(store, start), "a gap, a duplicate or a reordering"
    assert len(ids) == 360 and connections > 5
    events = {e.global_position: e for e in await store.read_all(start, 1000)}
    for frame in seen:
        event = events[frame.id]  # type: ignore[index]
        assert frame.event == event.type
        assert json.loads(frame.data or "") == json.loads(encode_value(redacted(event, public_data)))  # the relay's record
        assert "password_hash" not in (frame.data or "")


async def test_heartbeats_while_nothing_happens(url: str, issuer: TokenIssuer) -> None:
    comments = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("GET", "/v1/events/stream", params={"category": "project_name"}, headers=bearer(issuer, "admin")) as response:
            async for frame in frames(response):
                assert frame.comment is not None, "no project_name event is written in this module"
                comments.append(frame.comment)
                if comments.count("heartbeat") == 2:
                    break
    assert comments[0].startswith("after ")


async def test_analysts_read_their_categories_only(url: str, issuer: TokenIssuer, store: PostgresEventStore) -> None:
    start = await store.head_position()
    await write_some(store, 30)
    analyst = bearer(issuer, "analyst", categories=["task"])
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        seen: list[int] = []
        want = await positions_after(store, start, ("task",))
        async with client.stream("GET", "/v1/events/stream", params={"after": start}, headers=analyst) as response:
            assert response.status_code == 200
            async for frame in frames(response):
                if frame.id is not None:
                    assert frame.event.startswith("task.")
                    seen.append(frame.id)
                if seen == want:
                    break
        assert want and seen == want
        refused = await client.get("/v1/events/stream", params={"category": "user"}, headers=analyst)
        assert refused.status_code == 403 and "user" in refused.json()["detail"]
        assert (await client.get("/v1/events/stream", params={"type": "user.registered"}, headers=analyst)).status_code == 403
        # an analyst without a categories claim reads the public categories, never the internal ones
        assert (await client.get("/v1/events/stream", params={"category": "user_email"}, headers=bearer(issuer, "analyst"))).status_code == 403
        member = await client.get("/v1/events/stream", headers=bearer(issuer, "member"))
        assert member.status_code == 403 and member.headers["content-type"] == "application/problem+json"
        assert (await client.get("/v1/events/stream")).status_code == 401
        admin = bearer(issuer, "admin")
        for params, extra in (({"category": "nope"}, {}), ({"type": "task.nope"}, {}), ({"after": "-1"}, {}), ({}, {"Last-Event-ID": "x"})):
            bad = await client.get("/v1/events/stream", params=params, headers={**admin, **extra})
            assert bad.status_code == 422, (params, extra, bad.text)


async def test_a_type_filter_and_no_password_hash(url: str, issuer: TokenIssuer, store: PostgresEventStore) -> None:
    start = await store.head_position()
    await write_some(store, 30)
    want = [e.global_position for e in await store.read_all(start, 1000) if e.type == "user.registered"]
    seen: list[Frame] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        params = {"type": "user.registered,task.submitted", "category": "user", "after": str(start)}
        async with client.stream("GET", "/v1/events/stream", params=params, headers=bearer(issuer, "analyst")) as response:
            async for frame in frames(response):
                if frame.id is not None:
                    seen.append(frame)
                if [f.id for f in seen] == want:
                    break
    assert want and [f.id for f in seen] == want
    for frame in seen:
        data = json.loads(frame.data or "")
        assert data["type"] == "user.registered" and "password_hash" not in data["data"] and "email" in data["data"]


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert match, name
    return float(match[1])


async def test_a_slow_client_is_dropped_with_a_final_event_and_resumes(url: str, issuer: TokenIssuer, store: PostgresEventStore) -> None:
    start = await store.head_position()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads slowly: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    token = bearer(issuer, "admin")["Authorization"]
    writer.write(f"GET /v1/events/stream?after={start} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n\r\n".encode())
    await writer.drain()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        dropped_before = await metric(client, "taskstream_sse_dropped_total")
        total = 0
        while await metric(client, "taskstream_sse_dropped_total") == dropped_before:  # it reads nothing meanwhile
            await asyncio.gather(*(write_some(store, 25, padding=2000) for _ in range(8)))
            total += 200
            assert total < 20_000, "never dropped: the server buffers without bound"
        assert await metric(client, "taskstream_sse_subscribers") == 0  # its queue is gone already
    raw = b""
    async with asyncio.timeout(30):
        while chunk := await reader.read(65536):  # now it reads: what was in flight, then the last word
            raw += chunk
    writer.close()
    text = raw.decode()
    ids = [int(i) for i in re.findall(r"^id: (\d+)$", text, re.M)]
    final = re.search(r"event: dropped\r?\ndata: (.*)", text)
    assert final, text[-500:]
    body = json.loads(final[1])
    assert "too slow" in body["reason"] and body["last_position"] == ids[-1]
    assert len(ids) < total
    assert ids == (await positions_after(store, start))[: len(ids)]
    rest: list[int] = []
    log = await positions_after(store, start)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        headers = {**bearer(issuer, "admin"), "Last-Event-ID": str(body["last_position"])}
        async with client.stream("GET", "/v1/events/stream", headers=headers) as response:
            async for frame in frames(response):
                if frame.id is not None:
                    rest.append(frame.id)
                if ids + rest == log:
                    break
    assert ids + rest == log


async def test_the_stream_ends_when_the_token_expires(url: str, issuer: TokenIssuer) -> None:
    headers = bearer(issuer, "analyst", ttl_seconds=2)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("GET", "/v1/events/stream", headers=headers) as response:
            events = [f async for f in frames(response) if f.comment is None]
    assert [e.event for e in events] == ["closing"] and "token expired" in json.loads(events[0].data or "")["reason"]


async def test_shutdown_ends_open_streams_at_once(settings: Settings, issuer: TokenIssuer) -> None:
    """The control: with a grace period of 60 s, uvicorn alone would wait for the open stream
    (longer than serve_gateway's 10 s wait for the server to stop)."""
    own = dataclasses.replace(settings, http_port=embedded.free_port(), http_shutdown_grace_seconds=60)
    received: list[Frame] = []
    opened = asyncio.Event()

    async def follow(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            async with client.stream("GET", "/v1/events/stream", headers=bearer(issuer, "admin")) as response:
                opened.set()
                async for frame in frames(response):
                    received.append(frame)

    async with serve_gateway(own) as base:
        following = asyncio.create_task(follow(base))
        await asyncio.wait_for(opened.wait(), 10)
        await asyncio.sleep(0.2)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5
    await asyncio.wait_for(following, 5)
    closing = [f for f in received if f.event == "closing"]
    assert closing and "shutting down" in json.loads(closing[0].data or "")["reason"]


async def test_the_stream_is_in_the_openapi_document(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/events/stream"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {p["name"] for p in operation["parameters"]} == {"category", "type", "after", "Last-Event-ID"}


async def test_a_streams_latency_is_its_time_to_answer_not_its_life(url: str, issuer: TokenIssuer) -> None:
    """Streams last minutes: counted whole, they would trip the p99 latency alert (> 2 s)."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("GET", "/v1/events/stream", params={"category": "project_name"}, headers=bearer(issuer, "admin")) as response:
            heartbeats = 0
            async for frame in frames(response):
                heartbeats += frame.comment == "heartbeat"
                if heartbeats == 5:  # 2.5 s at least
                    break
        await asyncio.sleep(0.5)  # the server notices the disconnect
        text = (await client.get("/metrics")).text
    labels = 'method="GET",route="/v1/events/stream"'
    count = float(re.search(rf"^taskstream_http_request_duration_seconds_count{{{labels}}} (\S+)$", text, re.M)[1])  # type: ignore[index]
    within = float(re.search(rf'^taskstream_http_request_duration_seconds_bucket{{le="2.0",{labels}}} (\S+)$', text, re.M)[1])  # type: ignore[index]
    assert count >= 1 and within == count


async def test_taskstream_serve_stops_at_once_on_sigterm_with_a_stream_open(settings: Settings, issuer: TokenIssuer, tmp_path: Path) -> None:
    """The real process (uvicorn's signal handling, the gateway's server): SIGTERM ends the
    stream with ``closing`` and the process exits, well within its 60 s grace period."""
    from tests.support import processes

    own = dataclasses.replace(settings, http_port=embedded.free_port(), http_shutdown_grace_seconds=60)
    child = processes.start("serve", ["serve"], own, tmp_path)
    try:
        base = f"http://127.0.0.1:{own.http_port}"
        async with asyncio.timeout(60):
            while not embedded.accepts(own.http_port):
                assert child.alive(), child.log_tail()
                await asyncio.sleep(0.1)
        received: list[Frame] = []
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            async with client.stream("GET", "/v1/events/stream", headers=bearer(issuer, "admin")) as response:
                assert response.status_code == 200
                stopping = 0.0
                async for frame in frames(response):  # until the server ends the stream
                    received.append(frame)
                    if frame.comment == "heartbeat" and not stopping:
                        stopping = time.monotonic()
                        child.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(child.process.wait, 30)
        # uvicorn re-raises the signal it caught once it has shut down cleanly: -SIGTERM
        assert code in (0, -signal.SIGTERM) and time.monotonic() - stopping < 10, child.log_tail()
        assert "Finished server process" in child.log_tail()
        closing = [f for f in received if f.event == "closing"]
        assert closing and "shutting down" in json.loads(closing[0].data or "")["reason"]
    finally:
        child.stop()
