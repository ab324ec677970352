"""The parts of a running system for tests: a gateway served by uvicorn inside the test loop on a
free port, and a wait until a projector (a child process) applies what is written."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import uvicorn

from taskstream import embedded
from taskstream.settings import Settings
from taskstream.wiring import build_gateway, gateway_server, uvicorn_options


@contextlib.asynccontextmanager
async def serve_gateway(settings: Settings, *, log_level: str = "warning") -> AsyncIterator[str]:
    """A gateway built from ``settings``, served as ``taskstream serve`` serves it (its host and
    port, forwarded headers believed only from ``forwarded_allow_ips``); yields its URL."""
    app = build_gateway(settings)
    config = uvicorn.Config(app, **uvicorn_options(settings), log_level=log_level, lifespan="on")  # type: ignore[arg-type]
    server = gateway_server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(15):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.http_port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def wait_until_projecting(database_url: str, running: list[embedded.ServerProcess], timeout: float = 60) -> None:
    """Write one event and wait for its row: then the projector has joined its group."""
    from event_store.postgres import PostgresEventStore
    from schemas.envelope import NO_STREAM, NewEvent

    store = await PostgresEventStore.connect(database_url, min_size=1, max_size=2)
    try:
        user_id = uuid.uuid4()
        data = {"user_id": str(user_id), "email": f"probe-{user_id.hex[:8]}@example.org", "display_name": "probe",
                "password_hash": "$argon2id$probe", "role": "member"}  # fmt: skip
        await store.append(f"user-{user_id}", NO_STREAM, [NewEvent("user.registered", data)])
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for child in running:
                        if not child.alive():
                            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
                    async with store.pool.connection() as conn:
                        cur = await conn.execute("SELECT 1 FROM users WHERE user_id = %s", (user_id,))
                        if await cur.fetchone():
                            return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            tails = "\n".join(f"--- {c.name}:\n{c.log_tail(40)}" for c in running)
            raise RuntimeError(f"nothing was projected after {timeout:.0f} s:\n{tails}") from None
    finally:
        await store.close()
