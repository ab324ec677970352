"""Bearer tokens: mint and verify JWT access tokens with joserfc.

HS256 uses one shared secret (at least 32 bytes). RS256 issues with a private key and verifies with
a public key file, a JWKS file (``file://``, read at startup) or a JWKS URL (https, or http on
loopback only), fetched through an injectable function and cached. Only the configured algorithm is accepted, so
``alg=none`` and HS256 tokens keyed with the RSA public key are refused before any key is used;
so is a ``typ`` header other than ``JWT`` or ``at+jwt`` (RFC 8725 section 3.11: a signed JWT of
another kind is not an access token). RSA keys, from files or a JWKS, need ``MIN_RSA_BITS``.
Every refusal is an ``AuthError`` whose short ``reason`` goes into ``WWW-Authenticate``.
"""

from __future__ import annotations

from collections import OrderedDict

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, get_args
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import Key, KeySet, OctKey, RSAKey
from starlette.requests import HTTPConnection

from gateway.problems import bearer_challenge
from taskstream.settings import JwtAlgorithm, Settings, SettingsError

if TYPE_CHECKING:
    import httpx

Role = Literal["admin", "member", "analyst"]
ROLES: frozenset[str] = frozenset(get_args(Role))
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
DEFAULT_LEEWAY_SECONDS = 30
MAX_JWKS_BYTES = 256 * 1024
ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})  # compared case-insensitively

Clock = Callable[[], float]
JwksFetch = Callable[[str], Awaitable[Mapping[str, Any]]]

logger = logging.getLogger("taskstream.gateway")

_CLAIM_REASONS = {
    "iss": "wrong issuer",
    "aud": "wrong audience",
    "nbf": "token not yet valid",
    "iat": "token issued in the future",
    "exp": "invalid expiry",
}


class AuthConfigError(SettingsError):
    """The settings do not describe usable token keys."""


class AuthError(Exception):
    """The request is not authenticated; ``reason`` is short and safe to show the client.

    Follows the problem contract of ``gateway.problems``: a 401 with ``WWW-Authenticate``.
    ``error`` is None when no credentials were sent (RFC 6750 section 3.1).
    """

    slug = "unauthorized"
    title = "Unauthorized"
    status = 401

    def __init__(self, reason: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error

    @property
    def detail(self) -> str:
        return self.reason

    @property
    def challenge(self) -> str:
        return bearer_challenge(self.error, self.reason if self.error else None)

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class SigningKeysUnavailable(Exception):
    """The JWKS could not be fetched and no earlier copy is cached."""

    slug = "signing-keys-unavailable"
    title = "Signing keys unavailable"
    status = 503
    detail = "Tokens cannot be verified right now; try again shortly."


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)


class KeySource(Protocol):
    async def key_for(self, header: Mapping[str, Any]) -> Key: ...


@dataclass(frozen=True, slots=True)
class StaticKeys:
    """A key, or a key set searched by the token's ``kid``, known at startup."""

    keys: Key | KeySet

    async def key_for(self, header: Mapping[str, Any]) -> Key:
        return _select(self.keys, header)


class RemoteJwks:
    """A JWKS fetched from a URL, cached ``ttl_seconds``; an unknown ``kid`` refetches early, at
    most once per ``min_refresh_seconds``. A failed fetch keeps serving the last good set."""

    def __init__(
        self,
        url: str,
        *,
        fetch: JwksFetch | None = None,
        ttl_seconds: float = 300.0,
        min_refresh_seconds: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        require_safe_jwks_url(url)
        self.url = url
        self._fetch = fetch or fetch_jwks
        self._ttl = ttl_seconds
        self._min_refresh = min_refresh_seconds
        self._clock = clock
        self._keys: KeySet | None = None
        self._fresh_until = self._last_attempt = float("-inf")
        self._attempts = 0
        self._error: Exception | None = None
        self._lock = asyncio.Lock()

    async def key_for(self, header: Mapping[str, Any]) -> Key:
        if self._clock() >= self._fresh_until:
            await self._refresh()
        if self._keys is None:
            raise SigningKeysUnavailable(f"no JWKS from {self.url} yet") from self._error
        try:
            return _select(self._keys, header)
        except AuthError:
            if self._clock() - self._last_attempt < self._min_refresh:
                raise
        await self._refresh()  # an unknown kid may be a newly rotated key
        return _select(self._keys, header)

    async def _refresh(self) -> None:
        seen = self._attempts
        async with self._lock:
            if self._attempts != seen:
                return  # another request fetched while this one waited
            self._attempts += 1
            self._last_attempt = now = self._clock()
            try:
                self._keys = import_jwks(await self._fetch(self.url))
            except Exception as exc:  # whatever the injected fetch raises: keep the last good set
                self._fresh_until, self._error = now + self._min_refresh, exc
                logger.warning("JWKS fetch from %s failed", self.url, exc_info=exc)
            else:
                self._fresh_until, self._error = now + self._ttl, None


class TokenIssuer:
    """Mints access tokens: ``sub``, ``role``, ``iss``, ``aud``, ``iat``, ``nbf``, ``exp``, ``jti``."""

    def __init__(
        self,
        key: OctKey | RSAKey,
        *,
        algorithm: JwtAlgorithm,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        clock: Clock = time.time,
    ) -> None:
        if algorithm == "HS256" and not isinstance(key, OctKey):
            raise AuthConfigError("HS256 tokens need a shared secret")
        if algorithm == "RS256" and not (isinstance(key, RSAKey) and key.is_private):
            raise AuthConfigError("RS256 tokens need an RSA private key")
        if isinstance(key, RSAKey):
            key.ensure_kid()  # the RFC 7638 thumbprint, as a KeySet names the published key
        self._key, self.algorithm, self.issuer, self.audience = key, algorithm, issuer, audience
        self.ttl_seconds, self._clock = ttl_seconds, clock

    def issue(
        self, subject: str, role: Role, *, ttl_seconds: int | None = None, categories: list[str] | None = None
    ) -> str:
        """A signed access token; ``categories`` narrows what an analyst may read (``gateway.event_access``)."""
        if not subject:
            raise ValueError("subject must be a non-empty user id")
        if role not in ROLES:
            raise ValueError(f"role must be one of {sorted(ROLES)}, not {role!r}")
        now = int(self._clock())
        claims = {
            "sub": subject,
            "role": role,
            "iss": self.issuer,
            "aud": self.audience,
            "nbf": now,
            "iat": now,
            "exp": now + (self.ttl_seconds if ttl_seconds is None else ttl_seconds),
            "jti": uuid.uuid4().hex,
        }
        if categories is not None:
            claims["categories"] = list(categories)
        header: dict[str, Any] = {"alg": self.algorithm}
        if isinstance(self._key, RSAKey):
            header["kid"] = self._key.kid
        return jwt.encode(header, claims, self._key, algorithms=[self.algorithm])

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS to publish for RS256 verifiers."""
        if not isinstance(self._key, RSAKey):
            raise AuthConfigError("HS256 keys are secret; there is no JWKS to publish")
        return {"keys": [self._key.as_dict(private=False, use="sig", alg="RS256")]}


_VERIFIED_CACHE_SIZE = 4096


class TokenVerifier:
    def __init__(
        self,
        keys: KeySource,
        *,
        algorithm: JwtAlgorithm,
        issuer: str,
        audience: str,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
        clock: Clock = time.time,
    ) -> None:
        self._keys, self.algorithm, self.issuer, self.audience = keys, algorithm, issuer, audience
        self.leeway_seconds, self._clock = leeway_seconds, clock
        # Verified tokens, so a client reusing its token costs one dict lookup, not a signature
        # check. An entry is only used inside the token's own validity window.
        self._verified: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before, while inside its validity window; None
        otherwise (``verify`` decides then). Costs a dictionary lookup and a clock read."""
        hit = self._verified.get(token)
        if hit is not None and hit[1] <= self._clock() < hit[2]:
            return hit[0]
        return None

    async def verify(self, token: str) -> Principal:
        principal = self.cached(token)
        if principal is not None:
            return principal
        self._verified.pop(token, None)  # outside its validity window, if there at all
        principal = await self._verify(token)
        claims = principal.claims
        self._verified[token] = (principal, float(claims.get("nbf", 0)) - self.leeway_seconds, float(claims["exp"]) + self.leeway_seconds)
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> Principal:
        header = _read_header(token)
        if header.get("alg") != self.algorithm:
            raise AuthError("token algorithm not accepted")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES:
            raise AuthError("token type not accepted")
        key = await self._keys.key_for(header)
        try:
            claims = jwt.decode(token, key, algorithms=[self.algorithm]).claims
        except BadSignatureError:
            raise AuthError("invalid signature") from None
        except (JoseError, ValueError):
            raise AuthError("malformed token") from None
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock()),
            leeway=self.leeway_seconds,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
            role={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise AuthError("token expired") from None
        except MissingClaimError as exc:
            raise AuthError(f"missing claim: {exc.claim}") from None
        except ClaimError as exc:
            raise AuthError(_CLAIM_REASONS.get(exc.claim, f"invalid claim: {exc.claim}")) from None
        role = claims["role"]
        if not isinstance(role, str) or role not in ROLES:
            raise AuthError("invalid claim: role")
        return Principal(subject=claims["sub"], role=cast(Role, role), claims=MappingProxyType(claims))


async def bearer_principal(request: HTTPConnection, verifier: TokenVerifier) -> Principal:
    """The principal of ``Authorization: Bearer <token>``, or ``AuthError``."""
    return await verifier.verify(bearer_token(request.headers.get("authorization", "")))


def bearer_token(header: str) -> str:
    """The token of an ``Authorization`` header's value (``""``: none sent), or ``AuthError``."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("missing bearer token", error=None)
    token = token.strip()
    if not token or " " in token:
        raise AuthError("malformed bearer token")
    return token


def build_auth(
    settings: Settings,
    *,
    fetch: JwksFetch | None = None,
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
    clock: Clock = time.time,
) -> tuple[TokenIssuer | None, TokenVerifier]:
    """The issuer (None when only verification keys are configured) and the verifier."""
    private: OctKey | RSAKey | None
    if settings.jwt_algorithm == "HS256":
        private = _hs256_key(settings)
        source: KeySource = StaticKeys(private)
    else:
        private = _rsa_file(settings.jwt_private_key_file, "JWT_PRIVATE_KEY_FILE", private=True)
        if private is None and _no_rs256_verification_key(settings) and settings.dev_mode:
            logger.warning("dev mode: RS256 with an ephemeral key; tokens die with this process")
            private = RSAKey.generate_key(MIN_RSA_BITS)
        source = _rs256_source(settings, private, fetch)
    algorithm, iss, aud = settings.jwt_algorithm, settings.jwt_issuer, settings.jwt_audience
    issuer = None
    if private is not None:
        ttl = settings.jwt_ttl_seconds
        issuer = TokenIssuer(private, algorithm=algorithm, issuer=iss, audience=aud, ttl_seconds=ttl, clock=clock)
    verifier = TokenVerifier(
        source, algorithm=algorithm, issuer=iss, audience=aud, leeway_seconds=leeway_seconds, clock=clock
    )
    return issuer, verifier


def require_safe_jwks_url(url: str) -> None:
    """JWKS URLs must be https; plain http only to a loopback host (a local test or sidecar)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise AuthConfigError(f"JWT_JWKS_URL={url!r}: use https (http is allowed only for loopback hosts)")


async def fetch_jwks(url: str, *, client: httpx.AsyncClient | None = None) -> Mapping[str, Any]:
    """GET a JWKS with httpx: no redirects, 5 s timeout, refused over ``MAX_JWKS_BYTES``."""
    import httpx  # only needed when a JWKS URL is configured

    require_safe_jwks_url(url)
    if client is None:
        async with httpx.AsyncClient(timeout=5.0) as owned:
            return await fetch_jwks(url, client=owned)
    response = await client.get(url, headers={"Accept": "application/json"}, follow_redirects=False)
    response.raise_for_status()
    if len(response.content) > MAX_JWKS_BYTES:
        raise ValueError(f"JWKS at {url} exceeds {MAX_JWKS_BYTES} bytes")
    document = response.json()
    if not isinstance(document, dict):
        raise ValueError(f"JWKS at {url} is not a JSON object")
    return document


def import_jwks(document: Mapping[str, Any]) -> KeySet:
    """The RSA signing keys of a JWKS document of at least ``MIN_RSA_BITS``; other keys are ignored
    (a weaker RSA key with a warning), so a token signed by one is refused as an unknown key."""
    if not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS needs a 'keys' list")
    strong = []
    for jwk in document["keys"]:
        bits = _rsa_bits(jwk)
        if bits is not None and bits < MIN_RSA_BITS:  # measured before import: joserfc warns on weak keys
            logger.warning("JWKS key kid=%s ignored: %d bits, at least %d needed", jwk.get("kid"), bits, MIN_RSA_BITS)
        else:
            strong.append(jwk)
    keys = KeySet.import_key_set({"keys": strong}) if strong else []
    rsa = [key for key in keys if isinstance(key, RSAKey) and key.get("use") in (None, "sig")]
    if not rsa:
        raise ValueError(f"the JWKS has no RSA signing key of at least {MIN_RSA_BITS} bits")
    return KeySet(rsa)  # type: ignore[arg-type]


def _rsa_bits(jwk: Any) -> int | None:
    """The modulus size of an RSA JWK, None for other key types."""
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA" or not isinstance(jwk.get("n"), str):
        return None
    try:
        modulus = base64.urlsafe_b64decode(jwk["n"] + "=" * (-len(jwk["n"]) % 4))
    except (binascii.Error, ValueError):
        return 0
    return int.from_bytes(modulus, "big").bit_length()


def _select(keys: Key | KeySet, header: Mapping[str, Any]) -> Key:
    if not isinstance(keys, KeySet):
        return keys
    try:
        return keys.get_by_kid(header.get("kid"), {"alg": header["alg"], "use": "sig"})
    except InvalidKeyIdError:
        raise AuthError("unknown signing key") from None


def _read_header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise AuthError("malformed token")
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError):
        raise AuthError("malformed token") from None
    if not isinstance(header, dict):
        raise AuthError("malformed token")
    return header


def _hs256_key(settings: Settings) -> OctKey:
    secret = settings.jwt_secret
    if not secret:
        if not settings.dev_mode:
            raise AuthConfigError(f"JWT_SECRET is not set: HS256 needs a secret of at least {MIN_SECRET_BYTES} bytes")
        logger.warning("dev mode: HS256 with an ephemeral secret; tokens die with this process")
        return OctKey.import_key(secrets.token_bytes(MIN_SECRET_BYTES))
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise AuthConfigError(f"JWT_SECRET is too short: HS256 needs at least {MIN_SECRET_BYTES} bytes")
    return OctKey.import_key(secret.encode())


def _no_rs256_verification_key(settings: Settings) -> bool:
    return settings.jwt_public_key_file is None and not settings.jwt_jwks_url


def _rs256_source(settings: Settings, private: RSAKey | None, fetch: JwksFetch | None) -> KeySource:
    url = settings.jwt_jwks_url
    if url and url.startswith("file:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise AuthConfigError(f"JWT_JWKS_URL={url!r}: a file URL must name a local path")
        path = Path(url2pathname(unquote(parts.path)))
        try:
            return StaticKeys(import_jwks(json.loads(path.read_bytes())))
        except (OSError, ValueError, JoseError) as exc:
            raise AuthConfigError(f"JWT_JWKS_URL={url!r}: {exc}") from None
    if url:
        return RemoteJwks(url, fetch=fetch)
    public = _rsa_file(settings.jwt_public_key_file, "JWT_PUBLIC_KEY_FILE", private=False)
    if public is None and private is not None:
        public = RSAKey.import_key(private.as_dict(private=False))
    if public is None:
        raise AuthConfigError(
            "RS256 needs JWT_PRIVATE_KEY_FILE to issue, or JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL to verify"
        )
    return StaticKeys(public)


def _rsa_file(path: Path | None, var: str, *, private: bool) -> RSAKey | None:
    if path is None:
        return None
    try:
        key = RSAKey.import_key(path.read_bytes())
    except OSError as exc:
        raise AuthConfigError(f"{var}={path}: {exc.strerror}") from None
    except (ValueError, TypeError, JoseError) as exc:
        raise AuthConfigError(f"{var}={path}: not an RSA key in PEM form ({exc})") from None
    if private and not key.is_private:
        raise AuthConfigError(f"{var}={path}: a public key cannot sign; give the private key")
    if key.raw_value.key_size < MIN_RSA_BITS:
        raise AuthConfigError(f"{var}={path}: RSA keys need at least {MIN_RSA_BITS} bits")
    return RSAKey.import_key(key.as_dict(private=False)) if not private else key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
