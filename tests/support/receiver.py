"""A local HTTP receiver on 127.0.0.1 for webhook and http.request tests: it records every
request and answers from a script (a list of status codes, the last one repeating)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    script: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses to answer in turn
    requests: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, path: str, *statuses: int) -> str:
        self.script[path] = list(statuses)
        return f"{self.url}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, path: str, count: int, timeout: float = 30) -> list[Received]:
        async with asyncio.timeout(timeout):
            while len(self.at(path)) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.at(path)


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    state: dict[str, Receiver] = {}

    async def handle(request: web.Request) -> web.Response:
        me = state["r"]
        me.requests.append(Received(request.path, dict(request.headers), await request.read()))
        me.arrived.set()
        statuses = me.script.get(request.path, [200])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return web.json_response({"ok": status < 400, "path": request.path}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state["r"] = Receiver(f"http://127.0.0.1:{port}")
    try:
        yield state["r"]
    finally:
        await runner.cleanup()
