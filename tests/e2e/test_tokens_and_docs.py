"""Tokens that must be refused, and the operational endpoints (health, readiness, metrics, OpenAPI)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

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
    assert 'taskstream_http_requests_total{method="GET",route="/healthz",status_class="2xx"}' in text


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


async def test_an_rs256_gateway_publishes_its_jwks_and_a_verifier_built_from_it_accepts_its_tokens(
    gateway_settings: Settings, tmp_path: Path
) -> None:
    import dataclasses

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from gateway.auth import build_auth
    from taskstream.wiring import build_gateway

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "private.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    settings = dataclasses.replace(gateway_settings, jwt_algorithm="RS256", jwt_secret=None, jwt_private_key_file=private)
    app = build_gateway(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
        response = await c.get("/.well-known/jwks.json")
    assert response.status_code == 200
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(response.text)
    issuer, _ = build_auth(settings)
    assert issuer is not None
    verifier_settings = dataclasses.replace(settings, jwt_private_key_file=None, jwt_jwks_url=jwks_file.as_uri())
    _, verifier = build_auth(verifier_settings)
    assert (await verifier.verify(issuer.issue("user-7", "member"))).subject == "user-7"


async def test_an_hs256_gateway_publishes_no_keys(client: httpx.AsyncClient) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
