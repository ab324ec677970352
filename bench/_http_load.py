"""A lean HTTP/1.1 load generator: N keep-alive connections, one request in flight on each
(``run``: closed-loop GETs; ``Client``: requests whose answers the caller reads).

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


class NoContentLength(ValueError):
    """A response this reader cannot delimit (chunked): it refuses rather than guesses."""


def response_head(buffer: bytes) -> tuple[str, int, int] | None:
    """(status, where the body starts, the whole response's length) once the head is in
    ``buffer``; None before. Raises NoContentLength."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end].lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise NoContentLength("a response without Content-Length")
    line_end = head.find(b"\r\n", at + 2)
    length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
    return head[9:12].decode(), end + 4, end + 4 + length


def take_response(buffer: bytes) -> tuple[str, bytes, bytes] | None:
    """(status, body, the bytes after it) once a whole response is in ``buffer``; None before.
    Raises NoContentLength. A head split over reads is parsed again: answers here are small."""
    head = response_head(buffer)
    if head is None or len(buffer) < head[2]:
        return None
    status, body_at, end = head
    return status, buffer[body_at:end], buffer[end:]


class _Connection(asyncio.Protocol):
    def __init__(self, request: bytes, until: float, tally: Tally, done: asyncio.Future[None]) -> None:
        self._request, self._until, self._tally, self._done = request, until, tally, done
        self._buffer = b""
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
            try:
                response = take_response(self._buffer)
            except NoContentLength as exc:
                self._fail(str(exc))
                return
            if response is None:
                return
            status, _, self._buffer = response
            now = time.perf_counter()
            tally = self._tally
            if tally.record:
                tally.latencies_ms.append((now - self._sent) * 1000)
                tally.statuses[status] = tally.statuses.get(status, 0) + 1
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


async def run(host: str, port: int, request: bytes, connections: int, seconds: float, tally: Tally) -> None:
    """Keep ``connections`` connections busy with ``request`` for ``seconds``."""
    loop = asyncio.get_running_loop()
    until = time.perf_counter() + seconds
    done = [loop.create_future() for _ in range(connections)]
    for future in done:
        await loop.create_connection(lambda f=future: _Connection(request, until, tally, f), host, port)  # type: ignore[misc]
    await asyncio.gather(*done)


class _Exchange(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time: ``send`` gives a future of
    (status, body), read by the same rules as ``_Connection`` (Content-Length, else an error)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._transport: Any = None
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._answer

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            response = take_response(self._buffer)
        except NoContentLength as exc:
            self._fail(ConnectionError(str(exc)))
            return
        if response is None:
            return
        status, body, self._buffer = response
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((int(status), body))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("connection closed by the server"))

    def close(self) -> None:
        self._fail(ConnectionError("closed by the client"))


class Client:
    """Requests and their answers over a pool of keep-alive connections (one is opened whenever
    none is idle): for a bench that needs the answers (open-loop writes, polling reads) without
    a client library's CPU per request."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self._timeout = host, port, timeout
        self._idle: list[_Exchange] = []
        self._all: list[_Exchange] = []

    async def request(self, request: bytes) -> tuple[int, bytes]:
        """(status, body); ConnectionError or TimeoutError when there is no complete answer."""
        while self._idle and self._idle[-1].closed:  # the server closes idle keep-alive connections
            self._idle.pop()
        if self._idle:
            exchange = self._idle.pop()
        else:
            _, exchange = await asyncio.get_running_loop().create_connection(_Exchange, self.host, self.port)
            self._all = [e for e in self._all if not e.closed] + [exchange]
        async with asyncio.timeout(self._timeout):
            answer = await exchange.send(request)
        self._idle.append(exchange)  # only after a whole answer: never reused half-read
        return answer

    def close(self) -> None:
        for exchange in self._all:
            exchange.close()
        self._idle.clear()


def request_bytes(method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
