"""Tokens that must be refused, and the operational endpoints (health, readiness, metrics, OpenAPI)."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from gateway.routes import ENDPOINTS
from taskstream.settings import Settings


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(settings: Settings, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": "00000000-0000-4000-8000-0000000000aa", "role": "admin", "iss": settings.jwt_issuer,
                               "aud": settings.jwt_audience, "iat": now, "nbf": now, "exp": now + 600}  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(settings: Settings, **overrides: object) -> str:
    assert settings.jwt_secret is not None
    return jwt.encode({"alg": "HS256"}, claims(settings, **overrides), OctKey.import_key(settings.jwt_secret), algorithms=["HS256"])


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s: signed(s, exp=int(time.time()) - 3600), id="expired"),
        pytest.param(lambda s: signed(s, nbf=int(time.time()) + 3600), id="not-yet-valid"),
        pytest.param(lambda s: signed(s, aud="someone-else"), id="wrong-audience"),
        pytest.param(lambda s: signed(s, iss="https://evil.example"), id="wrong-issuer"),
        pytest.param(lambda s: signed(s, role="superuser"), id="unknown-role"),
        pytest.param(lambda s: b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims(s)) + ".", id="alg-none"),
        pytest.param(
            lambda s: (lambda t: t.split(".")[0] + "." + b64({**claims(s), "role": "admin", "sub": "x"}) + "." + t.split(".")[2])(
                signed(s, role="member")
            ),
            id="tampered-payload",
        ),
        pytest.param(lambda s: jwt.encode({"alg": "HS256"}, claims(s), OctKey.import_key("another-secret-" * 4), algorithms=["HS256"]), id="foreign-key"),
        pytest.param(lambda s: jwt.encode({"alg": "HS512"}, claims(s), OctKey.import_key(s.jwt_secret), algorithms=["HS512"]), id="other-alg"),
    ],
)
async def test_bad_tokens_are_refused(client: httpx.AsyncClient, gateway_settings: Settings, make) -> None:  # noqa: ANN001
    response = await client.post("/v1/projects", json={"name": "n"}, headers={"Authorization": f"Bearer {make(gateway_settings)}"})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_good_token_passes(client: httpx.AsyncClient, gateway_settings: Settings, new_user) -> None:  # noqa: ANN001
    user = await new_user()
    token = signed(gateway_settings, sub=user.id, role="member")
    assert (await client.post("/v1/projects", json={"name": "n"}, headers={"Authorization": f"Bearer {token}"})).status_code == 201


async def test_readyz_checks_database_and_broker(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


async def test_metrics_count_requests(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    text = (await client.get("/metrics")).text
    assert 'taskstream_http_requests_total{method="GET",route="/healthz",status="200"}' in text


async def test_openapi_describes_every_endpoint(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    for endpoint in ENDPOINTS:
        op = doc["paths"][endpoint.path][endpoint.method.lower()]
        assert str(endpoint.status) in op["responses"]
        for status in (*endpoint.errors, 500):
            assert "application/problem+json" in op["responses"][str(status)]["content"]
        if endpoint.body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    submit = doc["components"]["schemas"]["SubmitTaskBody"]
    assert submit["additionalProperties"] is False and "kind" in submit["required"]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "get" in doc["paths"][path]
