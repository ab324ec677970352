"""The forwarded-headers trust model: uvicorn believes X-Forwarded-For only from
``forwarded_allow_ips``. A client talking to the gateway directly cannot choose the address its
requests are counted under; a trusted proxy can name the client it forwards for.

Served by real uvicorn with the options ``taskstream serve`` uses; each client connects from its
own loopback address (127.x.y.z), so the peer address is known and its rate-limit budget is fresh.
"""

from __future__ import annotations

import dataclasses
import random

import httpx

from taskstream import embedded
from taskstream.settings import Settings
from tests.support.stack import serve_gateway

LOGIN = {"email": "nobody@example.org", "password": "wrong-password"}




def _peer() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def _spoof() -> str:
    # A documentation address (never contacted: only a header value), in its own /64.
    return f"2001:db8:{random.randint(0, 0xFFFF):x}:{random.randint(0, 0xFFFF):x}::{random.randint(1, 0xFFFF):x}"


async def _logins(url: str, peer: str, forwarded_for: list[str]) -> list[int]:
    transport = httpx.AsyncHTTPTransport(local_address=peer)
    async with httpx.AsyncClient(transport=transport, base_url=url) as client:
        return [(await client.post("/v1/auth/token", json=LOGIN, headers={"X-Forwarded-For": f})).status_code for f in forwarded_for]


async def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(gateway_settings: Settings) -> None:
    settings = dataclasses.replace(gateway_settings, auth_rate_limit_per_minute=2, http_port=embedded.free_port())
    assert settings.forwarded_allow_ips == "127.0.0.1"  # the default: a proxy on the same host
    async with serve_gateway(settings) as url:
        # Each request claims another address; the limiter still counts the real peer.
        assert await _logins(url, _peer(), [_spoof(), _spoof(), _spoof()]) == [401, 401, 429]


async def test_a_trusted_proxy_names_the_client(gateway_settings: Settings) -> None:
    proxy = _peer()
    settings = dataclasses.replace(gateway_settings, auth_rate_limit_per_minute=2, http_port=embedded.free_port(), forwarded_allow_ips=proxy)
    async with serve_gateway(settings) as url:
        # The control: from the trusted proxy, each named client has its own budget...
        assert await _logins(url, proxy, [_spoof(), _spoof(), _spoof()]) == [401, 401, 401]
        # ...and one client named three times spends its own.
        client = _spoof()
        assert await _logins(url, proxy, [client, client, client]) == [401, 401, 429]
