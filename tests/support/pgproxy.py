"""A TCP proxy on loopback in front of PostgreSQL that can break one connection on cue.

``cut_request(marker)``: the next client message holding ``marker`` is not forwarded; the
connection is closed (nothing reached the server). ``drop_reply(marker)``: the message goes
through, the server's answer is thrown away and the connection closed (the server did the
work, the client never hears of it): an ambiguous commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class PgProxy:
    target: tuple[str, int]
    server: asyncio.Server | None = None
    cut: bytes | None = None
    drop: bytes | None = None
    broken: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    async def start(cls, host: str, port: int) -> PgProxy:
        proxy = cls((host, port))
        proxy.server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
        return proxy

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def url(self, database_url: str) -> str:
        return database_url.replace(f"{self.target[0]}:{self.target[1]}", f"127.0.0.1:{self.port}")

    def cut_request(self, marker: bytes) -> None:
        self.cut = marker

    def drop_reply(self, marker: bytes) -> None:
        self.drop = marker

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_r, up_w = await asyncio.open_connection(*self.target)
        dropping = asyncio.Event()
        done = asyncio.Event()

        async def upstream() -> None:
            while chunk := await client_r.read(65536):
                if self.cut is not None and self.cut in chunk:
                    self.cut, self.broken = None, self.broken + 1
                    done.set()
                    return
                if self.drop is not None and self.drop in chunk:
                    self.drop, self.broken = None, self.broken + 1
                    dropping.set()
                up_w.write(chunk)
                await up_w.drain()
            done.set()

        async def downstream() -> None:
            while chunk := await up_r.read(65536):
                if dropping.is_set():
                    done.set()  # the server answered: throw the answer away and hang up
                    return
                client_w.write(chunk)
                await client_w.drain()
            done.set()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await done.wait()
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_w, up_w):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            self._tasks.discard(task)
