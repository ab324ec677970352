"""Every API request has a deadline: past it, a 503 with Retry-After, whatever it waits for."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from typing import Any

import httpx

from commands.service import Service
from gateway.app import create_app
from gateway.auth import build_auth
from gateway.routes import Deps
from taskstream.settings import Settings


class HangingStore:
    """A store whose every call waits forever (a database that stopped answering)."""

    def __getattr__(self, name: str) -> Any:
        async def hang(*_args: Any, **_kwargs: Any) -> Any:
            await asyncio.Event().wait()

        return hang


async def test_a_request_past_its_deadline_is_a_503_with_retry_after() -> None:
    issuer, verifier = build_auth(Settings(database_url="unused", jwt_secret=secrets.token_urlsafe(48)))
    assert issuer is not None
    deps = Deps(service=Service(HangingStore()), verifier=verifier, issuer=issuer, max_body_bytes=65536)  # type: ignore[arg-type]
    app = create_app(deps, request_timeout=0.2)
    token = issuer.issue(str(uuid.uuid4()), "member")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await asyncio.wait_for(
            client.post("/v1/projects", json={"name": "p"}, headers={"Authorization": f"Bearer {token}"}), 5
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1" and response.headers["content-type"] == "application/problem+json"
