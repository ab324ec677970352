"""The built-in task kinds.

- ``echo``: returns its payload.
- ``sleep``: waits ``seconds`` (at most a day); stops at once when the task is cancelled or
  times out. Useful for trying timeouts and cancellation.
- ``project.export``: the project's stream and every task stream of the project, as JSON Lines
  in blob storage (one event per line, in global order per stream); the result names the blob,
  and the API turns it into a time-limited download link.
- ``http.request``: calls a URL (``url``, ``method``, ``headers``, ``body``/``json``) through
  the SSRF guard; a 5xx answer or a network error is retried, a 4xx one fails finally; the
  result holds the status, headers and body (large bodies go to blob storage like any result).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from workers.kinds import PermanentError, Registry, StoredResult, TaskContext

MAX_SLEEP_SECONDS = 86_400
MAX_RESPONSE_BYTES = 1 << 20


async def echo(ctx: TaskContext) -> Any:
    return ctx.payload


async def sleep(ctx: TaskContext) -> Any:
    seconds = ctx.payload.get("seconds", 1)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds <= MAX_SLEEP_SECONDS:
        raise PermanentError(f"payload.seconds must be a number from 0 to {MAX_SLEEP_SECONDS}")
    started = time.monotonic()
    await asyncio.sleep(seconds)  # a cancellation or a timeout interrupts it here
    return {"slept_seconds": round(time.monotonic() - started, 3)}


async def project_export(ctx: TaskContext) -> Any:
    assert ctx.services is not None
    store, blobs = ctx.services.store, ctx.services.blobs
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT stream_id FROM events WHERE type = 'task.submitted' AND data->>'project_id' = %s ORDER BY global_position",
            (str(ctx.project_id),),
        )
        task_streams = [row[0] for row in await cur.fetchall()]
    streams = [f"project-{ctx.project_id}", *task_streams]
    lines: list[bytes] = []
    tasks = 0
    for start in range(0, len(streams), 200):
        chunk = streams[start : start + 200]
        found = await store.read_streams({s: 0 for s in chunk})
        for stream in chunk:
            events = found.get(stream) or []
            if stream.startswith("task-") and events:
                tasks += 1
            lines.extend(json.dumps(e.to_json(), separators=(",", ":")).encode() for e in events)
    body = b"\n".join(lines) + (b"\n" if lines else b"")
    key = f"exports/{ctx.project_id}/{ctx.task_id}-{ctx.attempt}.jsonl"
    ref = await blobs.put(key, body, "application/x-ndjson")
    summary = f"{tasks} tasks, {len(lines)} events, {ref.size} bytes"
    return StoredResult(ref.uri, summary, {"tasks": tasks, "events": len(lines), "bytes": ref.size, "sha256": ref.sha256})


async def http_request(ctx: TaskContext) -> Any:
    import httpx

    from workers.ssrf import UnsafeDestination, check_url

    assert ctx.services is not None
    url, method = ctx.payload.get("url"), str(ctx.payload.get("method", "GET")).upper()
    if not isinstance(url, str):
        raise PermanentError("payload.url must be a string")
    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        raise PermanentError(f"method {method} is not supported")
    headers = ctx.payload.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise PermanentError("payload.headers must map names to strings")
    try:
        await check_url(url, allow_loopback=ctx.services.settings.webhook_allow_loopback)
    except UnsafeDestination as exc:
        raise PermanentError(f"refused: {exc}") from None
    content = ctx.payload.get("body")
    kwargs: dict[str, Any] = {"json": ctx.payload["json"]} if "json" in ctx.payload else {"content": content if isinstance(content, str) else None}
    async with httpx.AsyncClient(timeout=30, follow_redirects=False, trust_env=False) as client:
        response = await client.request(method, url, headers=headers, **kwargs)
    if response.status_code >= 500:
        raise RuntimeError(f"{method} {url} answered {response.status_code}")  # retryable
    if response.status_code >= 400:
        raise PermanentError(f"{method} {url} answered {response.status_code}")
    body = response.content[:MAX_RESPONSE_BYTES]
    return {"status": response.status_code, "headers": dict(response.headers), "body": body.decode("utf-8", "replace")}


def register(registry: Registry) -> None:
    registry.register("echo", echo)
    registry.register("sleep", sleep)
    registry.register("project.export", project_export)
    registry.register("http.request", http_request)
