"""A lean HTTP/1.1 GET load generator: N keep-alive connections, one request in flight on each.

Why not aiohttp or httpx: on a 2-core machine the load generator shares the cores with the
servers it measures, and a client library spends 80-140 µs of CPU per request (parsing every
header into objects, a coroutine and a response object per request). That CPU comes out of the
servers' share and flattens any difference between them towards 1 (a bench measuring the load
generator). This one is an ``asyncio.Protocol`` per connection: the request bytes are made once,
a response is read by its status line and ``Content-Length`` (every byte of the body is
received before the next request is sent), and the next request goes out from
``data_received``, with no task or coroutine per request. Like wrk, it is closed-loop: each
connection sends its next request when the answer to the last one is in.

It refuses what it cannot read correctly rather than guessing: a response without
``Content-Length`` (chunked), or a connection the server closed, ends the run with an error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    record: bool = False


class _Connection(asyncio.Protocol):
    def __init__(self, request: bytes, until: float, tally: Tally, done: asyncio.Future[None]) -> None:
        self._request, self._until, self._tally, self._done = request, until, tally, done
        self._buffer = b""
        self._need = -1  # the whole response's length once its head is in
        self._status = ""
        self._sent = 0.0
        self._transport: Any = None  # asyncio's or uvloop's (not an asyncio.Transport subclass)

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._sent = time.perf_counter()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._need < 0:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self._buffer[:end].lower()
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    self._fail("a response without Content-Length")
                    return
                line_end = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
                self._status = head[9:12].decode()
                self._need = end + 4 + length
            if len(self._buffer) < self._need:
                return
            self._buffer = self._buffer[self._need :]
            self._need = -1
            now = time.perf_counter()
            tally = self._tally
            if tally.record:
                tally.latencies_ms.append((now - self._sent) * 1000)
                tally.statuses[self._status] = tally.statuses.get(self._status, 0) + 1
            if now >= self._until:
                self._finish()
                return
            self._send()

    def _fail(self, why: str) -> None:
        self._tally.statuses[why] = self._tally.statuses.get(why, 0) + 1
        self._finish()

    def _finish(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if not self._done.done():
            self._done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._tally.statuses["connection closed by the server"] = self._tally.statuses.get("connection closed by the server", 0) + 1
            self._done.set_result(None)


def get_request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def run(host: str, port: int, request: bytes, connections: int, seconds: float, tally: Tally) -> None:
    """Keep ``connections`` connections busy with ``request`` for ``seconds``."""
    loop = asyncio.get_running_loop()
    until = time.perf_counter() + seconds
    done = [loop.create_future() for _ in range(connections)]
    for future in done:
        await loop.create_connection(lambda f=future: _Connection(request, until, tally, f), host, port)  # type: ignore[misc]
    await asyncio.gather(*done)
