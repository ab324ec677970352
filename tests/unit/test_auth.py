"""Token minting and verification: round trips, and every way a token must be refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings as hypothesis_settings, strategies as st
from joserfc import jwt
from joserfc.jwk import OctKey
from starlette.requests import Request

from gateway.auth import (
    AuthConfigError,
    AuthError,
    Principal,
    RemoteJwks,
    SigningKeysUnavailable,
    TokenIssuer,
    TokenVerifier,
    bearer_principal,
    build_auth,
    fetch_jwks,
    import_jwks,
)
from taskstream.settings import Settings

SECRET = "s" * 16 + "e" * 16 + "cret"  # 36 bytes


@dataclass(frozen=True)
class RsaFiles:
    private: Path
    public: Path
    public_pem: bytes


def _write_rsa(directory: Path) -> RsaFiles:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "private.pem").write_bytes(private_pem)
    (directory / "public.pem").write_bytes(public_pem)
    return RsaFiles(directory / "private.pem", directory / "public.pem", public_pem)


@pytest.fixture(scope="module")
def rsa_files(tmp_path_factory: pytest.TempPathFactory) -> RsaFiles:
    return _write_rsa(tmp_path_factory.mktemp("rsa"))


@pytest.fixture(scope="module")
def other_rsa_files(tmp_path_factory: pytest.TempPathFactory) -> RsaFiles:
    return _write_rsa(tmp_path_factory.mktemp("rsa-other"))


def hs_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"jwt_secret": SECRET}
    values.update(overrides)
    return Settings(database_url="postgresql://unused", **values)


def rs_settings(files: RsaFiles, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"jwt_algorithm": "RS256", "jwt_private_key_file": files.private}
    values.update(overrides)
    return Settings(database_url="postgresql://unused", **values)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: Mapping[str, Any], claims: Mapping[str, Any], secret: bytes | None) -> str:
    """A compact JWS built by hand, so tests can make tokens no library would sign."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def valid_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "user-1",
        "role": "member",
        "iss": "taskstream",
        "aud": "taskstream-api",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def refused(verifier: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await verifier.verify(token)
    return info.value


def hs_issuer_and_verifier() -> tuple[TokenIssuer, TokenVerifier]:
    issuer, verifier = build_auth(hs_settings())
    assert issuer is not None
    return issuer, verifier


# --- round trips ---------------------------------------------------------------------------


async def test_hs256_round_trip() -> None:
    issuer, verifier = hs_issuer_and_verifier()
    principal = await verifier.verify(issuer.issue("user-1", "admin"))
    assert principal == Principal(subject="user-1", role="admin")
    claims = principal.claims
    assert (claims["iss"], claims["aud"]) == ("taskstream", "taskstream-api")
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    assert isinstance(claims["jti"], str) and len(claims["jti"]) == 32


async def test_each_token_has_its_own_jti() -> None:
    issuer, verifier = hs_issuer_and_verifier()
    first = await verifier.verify(issuer.issue("user-1", "member"))
    second = await verifier.verify(issuer.issue("user-1", "member"))
    assert first.claims["jti"] != second.claims["jti"]


async def test_rs256_round_trip_with_key_files(rsa_files: RsaFiles) -> None:
    issuer, verifier = build_auth(rs_settings(rsa_files, jwt_public_key_file=rsa_files.public))
    assert issuer is not None
    principal = await verifier.verify(issuer.issue("user-2", "analyst"))
    assert (principal.subject, principal.role) == ("user-2", "analyst")


async def test_rs256_verifier_from_public_key_only_has_no_issuer(rsa_files: RsaFiles) -> None:
    issuer, _ = build_auth(rs_settings(rsa_files))
    settings = rs_settings(rsa_files, jwt_private_key_file=None, jwt_public_key_file=rsa_files.public)
    no_issuer, verifier = build_auth(settings)
    assert issuer is not None and no_issuer is None
    assert (await verifier.verify(issuer.issue("user-3", "member"))).subject == "user-3"


async def test_rs256_round_trip_with_jwks_file(rsa_files: RsaFiles, tmp_path: Path) -> None:
    issuer, _ = build_auth(rs_settings(rsa_files))
    assert issuer is not None
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.public_jwks()))
    _, verifier = build_auth(rs_settings(rsa_files, jwt_private_key_file=None, jwt_jwks_url=jwks.as_uri()))
    assert (await verifier.verify(issuer.issue("user-4", "admin"))).role == "admin"


async def test_jwks_file_without_the_tokens_kid_is_refused(
    rsa_files: RsaFiles, other_rsa_files: RsaFiles, tmp_path: Path
) -> None:
    issuer, _ = build_auth(rs_settings(rsa_files))
    other, _ = build_auth(rs_settings(other_rsa_files))
    assert issuer is not None and other is not None
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(other.public_jwks()))
    _, verifier = build_auth(rs_settings(rsa_files, jwt_private_key_file=None, jwt_jwks_url=jwks.as_uri()))
    assert (await refused(verifier, issuer.issue("user-5", "member"))).reason == "unknown signing key"


async def test_rs256_token_signed_by_another_key_is_refused(rsa_files: RsaFiles, other_rsa_files: RsaFiles) -> None:
    other, _ = build_auth(rs_settings(other_rsa_files))
    _, verifier = build_auth(rs_settings(rsa_files))
    assert other is not None
    assert (await refused(verifier, other.issue("user-1", "admin"))).reason == "invalid signature"


# --- refusals ------------------------------------------------------------------------------


async def test_expired_token_is_refused_but_leeway_is_honoured() -> None:
    past = time.time() - 3600 - 10
    issuer = build_auth(hs_settings(), clock=lambda: past)[0]
    assert issuer is not None
    _, strict = build_auth(hs_settings(), leeway_seconds=0)
    _, lenient = build_auth(hs_settings(), leeway_seconds=30)
    token = issuer.issue("user-1", "member")
    assert (await refused(strict, token)).reason == "token expired"
    assert (await lenient.verify(token)).subject == "user-1"


async def test_a_cached_verification_ends_when_the_token_expires() -> None:
    now = [time.time()]
    issuer, verifier = build_auth(hs_settings(), leeway_seconds=0, clock=lambda: now[0])
    assert issuer is not None
    token = issuer.issue("user-1", "member", ttl_seconds=60)
    assert (await verifier.verify(token)).subject == "user-1"
    assert (await verifier.verify(token)).subject == "user-1"  # served from the cache
    now[0] += 61
    assert (await refused(verifier, token)).reason == "token expired"


async def test_token_not_yet_valid_is_refused() -> None:
    _, verifier = hs_issuer_and_verifier()
    token = craft({"alg": "HS256", "typ": "JWT"}, valid_claims(nbf=int(time.time()) + 600), SECRET.encode())
    assert (await refused(verifier, token)).reason == "token not yet valid"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"jwt_audience": "someone-else"}, "wrong audience"),
        ({"jwt_issuer": "https://evil.example"}, "wrong issuer"),
    ],
)
async def test_wrong_audience_or_issuer_is_refused(overrides: dict[str, str], reason: str) -> None:
    foreign_issuer, _ = build_auth(hs_settings(**overrides))
    _, verifier = hs_issuer_and_verifier()
    assert foreign_issuer is not None
    assert (await refused(verifier, foreign_issuer.issue("user-1", "admin"))).reason == reason


async def test_tampered_payload_is_refused() -> None:
    issuer, verifier = hs_issuer_and_verifier()
    header, _, signature = issuer.issue("user-1", "member").split(".")
    forged = b64(json.dumps(valid_claims(role="admin")).encode())
    assert (await refused(verifier, f"{header}.{forged}.{signature}")).reason == "invalid signature"


async def test_tampered_signature_is_refused() -> None:
    issuer, verifier = hs_issuer_and_verifier()
    header, payload, signature = issuer.issue("user-1", "member").split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    assert (await refused(verifier, f"{header}.{payload}.{b64(bytes(raw))}")).reason == "invalid signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(alg: str) -> None:
    _, verifier = hs_issuer_and_verifier()
    token = craft({"alg": alg, "typ": "JWT"}, valid_claims(role="admin"), None)
    assert (await refused(verifier, token)).reason == "token algorithm not accepted"


async def test_alg_none_is_refused_under_rs256(rsa_files: RsaFiles) -> None:
    _, verifier = build_auth(rs_settings(rsa_files))
    token = craft({"alg": "none"}, valid_claims(), None)
    assert (await refused(verifier, token)).reason == "token algorithm not accepted"


async def test_hs256_signed_with_the_rsa_public_key_is_refused(rsa_files: RsaFiles) -> None:
    _, verifier = build_auth(rs_settings(rsa_files, jwt_public_key_file=rsa_files.public))
    token = craft({"alg": "HS256", "typ": "JWT"}, valid_claims(role="admin"), rsa_files.public_pem)
    assert (await refused(verifier, token)).reason == "token algorithm not accepted"


async def test_other_hmac_algorithm_is_refused() -> None:
    _, verifier = hs_issuer_and_verifier()
    key = OctKey.import_key(SECRET.encode())
    token = jwt.encode({"alg": "HS512"}, valid_claims(), key, algorithms=["HS512"])
    assert (await refused(verifier, token)).reason == "token algorithm not accepted"


async def test_rs256_token_is_refused_when_hs256_is_configured(rsa_files: RsaFiles) -> None:
    rs_issuer, _ = build_auth(rs_settings(rsa_files))
    _, verifier = hs_issuer_and_verifier()
    assert rs_issuer is not None
    assert (await refused(verifier, rs_issuer.issue("user-1", "admin"))).reason == "token algorithm not accepted"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sub": None}, "missing claim: sub"),
        ({"role": None}, "missing claim: role"),
        ({"exp": None}, "missing claim: exp"),
        ({"iss": None}, "missing claim: iss"),
        ({"aud": None}, "missing claim: aud"),
        ({"sub": ""}, "invalid claim: sub"),
        ({"sub": 42}, "invalid claim: sub"),
        ({"role": "root"}, "invalid claim: role"),
        ({"role": ["admin"]}, "invalid claim: role"),
        ({"iat": int(time.time()) + 3600}, "token issued in the future"),
    ],
)
async def test_bad_claims_are_refused(overrides: dict[str, Any], reason: str) -> None:
    _, verifier = hs_issuer_and_verifier()
    token = craft({"alg": "HS256", "typ": "JWT"}, valid_claims(**overrides), SECRET.encode())
    assert (await refused(verifier, token)).reason == reason


async def test_audience_list_containing_ours_is_accepted() -> None:
    _, verifier = hs_issuer_and_verifier()
    token = craft({"alg": "HS256", "typ": "JWT"}, valid_claims(aud=["other", "taskstream-api"]), SECRET.encode())
    assert (await verifier.verify(token)).subject == "user-1"


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "!!!.e30.x", "e30.e30.", "W10.e30.x", "é.e30.x"])
async def test_malformed_tokens_are_refused(token: str) -> None:
    _, verifier = hs_issuer_and_verifier()
    assert (await refused(verifier, token)).reason in {"malformed token", "token algorithm not accepted"}


@hypothesis_settings(max_examples=150, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.characters(codec="utf-8"))
def test_any_one_character_change_is_refused_or_harmless(position: int, replacement: str) -> None:
    issuer, verifier = hs_issuer_and_verifier()
    token = issuer.issue("user-1", "member")
    index = position % len(token)
    mutated = token[:index] + replacement + token[index + 1 :]
    original = asyncio.run(verifier.verify(token))
    try:
        principal = asyncio.run(verifier.verify(mutated))
    except AuthError:
        return
    # Base64url's last character can carry unused bits: the same bytes, the same token.
    assert principal == original and dict(principal.claims) == dict(original.claims)


# --- configuration -------------------------------------------------------------------------


def test_missing_secret_is_a_configuration_error() -> None:
    with pytest.raises(AuthConfigError, match="JWT_SECRET is not set"):
        build_auth(hs_settings(jwt_secret=None))


def test_short_secret_is_a_configuration_error() -> None:
    with pytest.raises(AuthConfigError, match="at least 32 bytes"):
        build_auth(hs_settings(jwt_secret="x" * 31))


def test_rs256_without_keys_is_a_configuration_error() -> None:
    with pytest.raises(AuthConfigError, match="RS256 needs"):
        build_auth(Settings(database_url="postgresql://unused", jwt_algorithm="RS256"))


def test_public_key_given_as_private_key_is_a_configuration_error(rsa_files: RsaFiles) -> None:
    with pytest.raises(AuthConfigError, match="cannot sign"):
        build_auth(rs_settings(rsa_files, jwt_private_key_file=rsa_files.public))


def test_missing_key_file_is_a_configuration_error(tmp_path: Path, rsa_files: RsaFiles) -> None:
    with pytest.raises(AuthConfigError, match="JWT_PRIVATE_KEY_FILE"):
        build_auth(rs_settings(rsa_files, jwt_private_key_file=tmp_path / "absent.pem"))


@pytest.mark.parametrize("algorithm", ["HS256", "RS256"])
async def test_dev_mode_without_keys_uses_an_ephemeral_key(algorithm: str) -> None:
    values: dict[str, Any] = {"jwt_algorithm": algorithm, "dev_mode": True}
    settings = Settings(database_url="postgresql://unused", **values)
    issuer, verifier = build_auth(settings)
    assert issuer is not None
    assert (await verifier.verify(issuer.issue("dev", "admin"))).role == "admin"


def test_issuer_refuses_unknown_role_and_empty_subject() -> None:
    issuer, _ = hs_issuer_and_verifier()
    with pytest.raises(ValueError, match="role"):
        issuer.issue("user-1", "root")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subject"):
        issuer.issue("", "admin")


@pytest.mark.parametrize(
    "url", ["http://keys.example.com/jwks.json", "ftp://127.0.0.1/jwks", "http://10.0.0.1/jwks", "https:///jwks"]
)
def test_jwks_url_must_be_https_unless_loopback(url: str, rsa_files: RsaFiles) -> None:
    with pytest.raises(AuthConfigError, match="JWT_JWKS_URL"):
        build_auth(rs_settings(rsa_files, jwt_jwks_url=url))


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/jwks", "http://localhost:9/jwks", "http://[::1]:9/jwks"])
def test_loopback_http_jwks_url_is_allowed(url: str, rsa_files: RsaFiles) -> None:
    _, verifier = build_auth(rs_settings(rsa_files, jwt_jwks_url=url))  # nothing is fetched yet
    assert verifier.algorithm == "RS256"


# --- JWKS by URL, with an injected fetch (nothing leaves the process) -----------------------


class FakeFetch:
    def __init__(self, *documents: Mapping[str, Any] | Exception) -> None:
        self.documents = list(documents)
        self.urls: list[str] = []

    async def __call__(self, url: str) -> Mapping[str, Any]:
        self.urls.append(url)
        document = self.documents[min(len(self.urls), len(self.documents)) - 1]
        if isinstance(document, Exception):
            raise document
        return document


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rs_issuers(rsa_files: RsaFiles, other_rsa_files: RsaFiles) -> tuple[TokenIssuer, TokenIssuer]:
    first, _ = build_auth(rs_settings(rsa_files))
    second, _ = build_auth(rs_settings(other_rsa_files))
    assert first is not None and second is not None
    return first, second


def remote_verifier(keys: RemoteJwks) -> TokenVerifier:
    return TokenVerifier(keys, algorithm="RS256", issuer="taskstream", audience="taskstream-api")


async def test_remote_jwks_is_fetched_once_and_cached(rsa_files: RsaFiles, other_rsa_files: RsaFiles) -> None:
    issuer, _ = rs_issuers(rsa_files, other_rsa_files)
    fetch, clock = FakeFetch(issuer.public_jwks()), FakeClock()
    verifier = remote_verifier(RemoteJwks("https://keys.example/jwks.json", fetch=fetch, clock=clock))
    for _ in range(3):
        await verifier.verify(issuer.issue("user-1", "member"))
    assert fetch.urls == ["https://keys.example/jwks.json"]
    clock.now += 301
    await verifier.verify(issuer.issue("user-1", "member"))
    assert len(fetch.urls) == 2


async def test_remote_jwks_refetches_for_a_rotated_key_at_most_every_min_interval(
    rsa_files: RsaFiles, other_rsa_files: RsaFiles
) -> None:
    old, new = rs_issuers(rsa_files, other_rsa_files)
    fetch, clock = FakeFetch(old.public_jwks(), new.public_jwks()), FakeClock()
    verifier = remote_verifier(RemoteJwks("https://keys.example/jwks.json", fetch=fetch, clock=clock))
    await verifier.verify(old.issue("user-1", "member"))
    assert (await refused(verifier, new.issue("user-1", "member"))).reason == "unknown signing key"
    assert len(fetch.urls) == 1  # too soon to refetch
    clock.now += 31
    assert (await verifier.verify(new.issue("user-1", "member"))).subject == "user-1"
    assert len(fetch.urls) == 2


async def test_remote_jwks_failure_keeps_the_last_good_keys(rsa_files: RsaFiles, other_rsa_files: RsaFiles) -> None:
    issuer, _ = rs_issuers(rsa_files, other_rsa_files)
    fetch, clock = FakeFetch(issuer.public_jwks(), httpx.ConnectError("down")), FakeClock()
    verifier = remote_verifier(RemoteJwks("https://keys.example/jwks.json", fetch=fetch, clock=clock))
    await verifier.verify(issuer.issue("user-1", "member"))
    clock.now += 301
    assert (await verifier.verify(issuer.issue("user-1", "member"))).subject == "user-1"
    assert len(fetch.urls) == 2


async def test_remote_jwks_unavailable_without_cache_backs_off() -> None:
    fetch, clock = FakeFetch(httpx.ConnectError("down")), FakeClock()
    verifier = remote_verifier(RemoteJwks("https://keys.example/jwks.json", fetch=fetch, clock=clock))
    token = craft({"alg": "RS256", "typ": "JWT"}, valid_claims(), None)
    for _ in range(2):
        with pytest.raises(SigningKeysUnavailable):
            await verifier.verify(token)
    assert len(fetch.urls) == 1


async def test_fetch_jwks_uses_httpx_without_redirects(rsa_files: RsaFiles, other_rsa_files: RsaFiles) -> None:
    issuer, _ = rs_issuers(rsa_files, other_rsa_files)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"Location": "http://evil.example/jwks"})
        return httpx.Response(200, json=issuer.public_jwks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        document = await fetch_jwks("https://keys.example/jwks.json", client=client)
        with pytest.raises(httpx.HTTPStatusError):
            await fetch_jwks("https://keys.example/moved", client=client)
        with pytest.raises(AuthConfigError):
            await fetch_jwks("http://keys.example/jwks.json", client=client)
    assert len(import_jwks(document).keys) == 1
    assert [str(r.url) for r in seen] == ["https://keys.example/jwks.json", "https://keys.example/moved"]


def test_import_jwks_ignores_symmetric_keys() -> None:
    with pytest.raises(ValueError, match="no RSA signing key"):
        import_jwks({"keys": [{"kty": "oct", "k": b64(SECRET.encode())}]})


# --- the Authorization header --------------------------------------------------------------


def request_with(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


@pytest.mark.parametrize("value", [None, "", "Basic dXNlcjpwYXNz", "Token abc"])
async def test_missing_bearer_token(value: str | None) -> None:
    _, verifier = hs_issuer_and_verifier()
    with pytest.raises(AuthError) as info:
        await bearer_principal(request_with(value), verifier)
    assert info.value.reason == "missing bearer token"
    assert info.value.challenge == "Bearer"


async def test_bearer_principal_reads_the_token_case_insensitively() -> None:
    issuer, verifier = hs_issuer_and_verifier()
    principal = await bearer_principal(request_with(f"bearer {issuer.issue('user-9', 'analyst')}"), verifier)
    assert (principal.subject, principal.role) == ("user-9", "analyst")


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer a b"])
async def test_malformed_bearer_value(value: str) -> None:
    _, verifier = hs_issuer_and_verifier()
    with pytest.raises(AuthError, match="malformed bearer token"):
        await bearer_principal(request_with(value), verifier)


def test_auth_error_challenge_and_problem_contract() -> None:
    error = AuthError('token "expired"')
    assert error.challenge == 'Bearer error="invalid_token", error_description="token \\"expired\\""'
    assert (error.status, error.slug, error.detail) == (401, "unauthorized", 'token "expired"')
    assert error.headers() == {"WWW-Authenticate": error.challenge}


def test_principal_is_frozen() -> None:
    principal = Principal(subject="u", role="member")
    with pytest.raises(AttributeError):
        principal.role = "admin"  # type: ignore[misc]
    assert replace(principal, role="admin").role == "admin"


# --- token type and key strength ---------------------------------------------------------


@pytest.mark.parametrize("typ", [None, "JWS", "id_token+jwt", "secevent+jwt", 7, ""])
async def test_a_token_of_another_type_is_refused(typ: Any) -> None:
    _, verifier = hs_issuer_and_verifier()
    header = {"alg": "HS256"} if typ is None else {"alg": "HS256", "typ": typ}
    assert (await refused(verifier, craft(header, valid_claims(), SECRET.encode()))).reason == "token type not accepted"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/at+JWT"])
async def test_access_token_types_are_accepted(typ: str) -> None:
    _, verifier = hs_issuer_and_verifier()
    principal = await verifier.verify(craft({"alg": "HS256", "typ": typ}, valid_claims(), SECRET.encode()))
    assert principal.subject == "user-1"


def _rsa_jwk(bits: int, kid: str) -> tuple[Any, dict[str, Any]]:
    """A private key (cryptography) and its public JWK, built without joserfc (it warns on weak keys)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    numbers = key.public_key().public_numbers()

    def b64int(value: int) -> str:
        return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return key, {"kty": "RSA", "kid": kid, "n": b64int(numbers.n), "e": b64int(numbers.e)}


def _rs256(key: Any, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


def test_jwks_keys_below_the_minimum_size_are_refused() -> None:
    _, weak = _rsa_jwk(1024, "weak")
    with pytest.raises(ValueError, match="at least 2048 bits"):
        import_jwks({"keys": [weak]})
    _, strong = _rsa_jwk(2048, "strong")
    assert [k.kid for k in import_jwks({"keys": [weak, strong]}).keys] == ["strong"]


async def test_a_token_signed_by_a_weak_jwks_key_is_refused() -> None:
    from gateway.auth import StaticKeys

    weak_private, weak = _rsa_jwk(1024, "weak")
    strong_private, strong = _rsa_jwk(2048, "strong")
    verifier = TokenVerifier(StaticKeys(import_jwks({"keys": [weak, strong]})), algorithm="RS256", issuer="taskstream", audience="taskstream-api")
    assert (await verifier.verify(_rs256(strong_private, {"alg": "RS256", "typ": "JWT", "kid": "strong"}, valid_claims()))).subject == "user-1"
    token = _rs256(weak_private, {"alg": "RS256", "typ": "JWT", "kid": "weak"}, valid_claims())
    assert (await refused(verifier, token)).reason == "unknown signing key"
