"""The gateway served by uvicorn on a free port, over the embedded servers, reached by real HTTP."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.auth import TokenIssuer, build_auth
from taskstream import embedded
from tests.support import processes
from tests.support.stack import serve_gateway, wait_until_projecting
from taskstream.settings import Settings


@pytest.fixture(scope="session")
def gateway_settings(database_url: str, redis_url: str, tansu_bootstrap: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        kafka_bootstrap_servers=tansu_bootstrap,
        jwt_secret=secrets.token_urlsafe(48),
        idempotency_secret=secrets.token_urlsafe(32),
        max_body_bytes=64 * 1024,
        http_port=embedded.free_port(),
        auth_rate_limit_per_minute=100_000,  # the session registers many users from one address
        kafka_topic_prefix=f"e2e{uuid.uuid4().hex[:8]}.",
        relay_checkpoint_name=f"relay-e2e-{uuid.uuid4().hex[:8]}",
        projector_group_id=f"projector-e2e-{uuid.uuid4().hex[:8]}",
        projector_session_timeout=3.0,
        metrics_port=0,  # /metrics of relays and projectors on free ports
        read_consistency_timeout=15.0,  # generous: the machine is shared; the 503 test uses its own gateway
        auth_account_rate_limit_per_hour=100_000,
        rate_limit_write_per_minute=100_000,
        rate_limit_read_per_minute=100_000,
    )


@pytest.fixture(scope="session")
async def read_side(gateway_settings: Settings, server_dir: Path) -> AsyncIterator[None]:
    """The relay and one projector, as child processes: what the gateway's reads read."""
    children = [processes.start(name, [name], gateway_settings, server_dir / "logs") for name in ("relay", "project")]
    try:
        await wait_until_projecting(gateway_settings.database_url, children)
        yield
    finally:
        for child in children:
            child.stop()


@pytest.fixture(scope="session")
async def gateway_url(gateway_settings: Settings, read_side: None) -> AsyncIterator[str]:
    async with serve_gateway(gateway_settings) as url:
        yield url


@pytest.fixture(scope="session")
def issuer(gateway_settings: Settings) -> TokenIssuer:
    token_issuer, _ = build_auth(gateway_settings)
    assert token_issuer is not None
    return token_issuer


@pytest.fixture
async def client(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as c:
        yield c


@dataclass(frozen=True)
class User:
    id: str
    email: str
    password: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def new_user(client: httpx.AsyncClient, issuer: TokenIssuer):  # noqa: ANN201 - a factory
    async def make(role: str = "member") -> User:
        email = f"u{uuid.uuid4().hex[:12]}@example.org"
        password = secrets.token_urlsafe(12)
        headers = {}
        if role != "member":
            headers = {"Authorization": f"Bearer {issuer.issue(str(uuid.uuid4()), 'admin')}"}
        response = await client.post(
            "/v1/users", json={"email": email, "display_name": "Test User", "password": password, "role": role}, headers=headers
        )
        assert response.status_code == 201, response.text
        user_id = response.json()["id"]
        return User(user_id, email, password, issuer.issue(user_id, role))  # type: ignore[arg-type]

    return make


@pytest.fixture
def new_project(client: httpx.AsyncClient):  # noqa: ANN201 - a factory
    async def make(owner: User, name: str | None = None) -> str:
        response = await client.post("/v1/projects", json={"name": name or f"p-{uuid.uuid4().hex[:8]}"}, headers=owner.auth)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    return make
