"""Rate limits kept in Redis, so every gateway process shares them.

Each limit is a ``Policy``: a quota of requests per window for one route class (``write``,
``read``, ``credentials``, ``login-account``), counted per caller: the token's subject when a
valid bearer token is sent, else the client address (an IPv6 address by its /64, which one
host usually holds whole). The algorithm is GCRA: one key per caller holds the theoretical
arrival time, and one Lua script (atomic, Redis's own clock) admits or refuses and reports
what is left. A burst of the whole quota is allowed, then one request per window/quota.

Checks are sent like a group commit: the checks made while a round trip is in flight go out
together in the next one, as one pipeline of EVALSHA calls (each still its own atomic script).
A request waits for at most one round trip before its own; the gateway spends about a third
of the CPU per check that one client call per check costs (``bench/http_write.py``).

Every answer of a limited route carries the IETF ``RateLimit-Policy`` and ``RateLimit`` fields
(draft-ietf-httpapi-ratelimit-headers); a refusal is a 429 with ``Retry-After`` and counts in
``taskstream_rate_limit_refusals_total{limit}``. When Redis cannot be reached, ``failure_mode``
decides: ``open`` lets the request through (logged, at most every 10 s), ``closed`` answers 503.

The caller's address is ``request.client``: uvicorn replaces it with ``X-Forwarded-For`` only
when the peer is one of ``--forwarded-allow-ips`` (setting ``forwarded_allow_ips``), so a client
that talks to the gateway directly cannot choose the address it is counted under.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import NoScriptError
from starlette.requests import Request
from starlette.types import Scope

from gateway.auth import AuthError, SigningKeysUnavailable, TokenVerifier, bearer_principal

log = logging.getLogger("taskstream.gateway")

FailureMode = Literal["open", "closed"]
STATE_KEY = "rate_limits"  # scope["state"]: the decisions of this request (gateway.edge adds the headers)
ADMITTED_KEY = "rate_limit_admitted"  # scope["state"]: the route class counted already (gateway.hotreads)

# GCRA. KEYS[1]: the caller's key. ARGV: emission interval and tolerance (the window), in ms.
# Returns {allowed, remaining, reset_ms (until the whole quota is back), retry_after_ms}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now, 0}
"""


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    quota: int
    window_seconds: int

    @property
    def interval_ms(self) -> int:
        return max(1, math.ceil(self.window_seconds * 1000 / self.quota))

    @property
    def field(self) -> str:
        return f'"{self.name}";q={self.quota};w={self.window_seconds}'


@dataclass(frozen=True, slots=True)
class Decision:
    policy: Policy
    allowed: bool
    remaining: int
    reset_seconds: int

    @property
    def field(self) -> str:
        return f'"{self.policy.name}";r={self.remaining};t={self.reset_seconds}'


class RateLimited(Exception):
    slug, title, status = "rate-limited", "Too Many Requests", 429

    def __init__(self, retry_after: float, decision: Decision | None = None) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        self.decision = decision
        self.detail = f"too many requests; retry after {self.retry_after} s"
        super().__init__(self.detail)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class LimiterUnavailable(Exception):
    """Redis is unreachable and the limits fail closed."""

    slug, title, status = "rate-limiter-unavailable", "Service Unavailable", 503
    detail = "rate limits cannot be checked right now; retry later"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class RedisRateLimiter:
    """Admits or refuses one request of one caller under one policy (see the module doc)."""

    def __init__(self, redis: Any, *, failure_mode: FailureMode = "open", prefix: str = "taskstream:ratelimit:") -> None:
        self._redis, self._failure_mode, self._prefix = redis, failure_mode, prefix
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()  # noqa: S324 - the script's name in Redis
        self._pending: list[tuple[str, int, int, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._last_warning = float("-inf")

    async def check(self, policy: Policy, who: str) -> Decision | None:
        """The decision (None when Redis is down and limits fail open); ``RateLimited`` if refused."""
        try:
            allowed, remaining, reset_ms, retry_ms = await self._eval(
                f"{self._prefix}{policy.name}:{who}", policy.interval_ms, policy.window_seconds * 1000
            )
        except Exception as exc:  # noqa: BLE001 - any failure to reach Redis
            if self._failure_mode == "closed":
                raise LimiterUnavailable() from exc
            if time.monotonic() - self._last_warning > 10:
                self._last_warning = time.monotonic()
                log.warning("rate limiter unavailable, letting requests through: %r", exc)
            return None
        decision = Decision(policy, bool(allowed), max(0, int(remaining)), max(0, math.ceil(int(reset_ms) / 1000)))
        if not decision.allowed:
            raise RateLimited(int(retry_ms) / 1000, decision)
        return decision

    async def _eval(self, key: str, interval_ms: int, window_ms: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((key, interval_ms, window_ms, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())  # starts after this tick: checks gather
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._run(batch)
                except Exception as exc:  # noqa: BLE001 - each waiting check decides what a failure means
                    results = [exc] * len(batch)
                for (*_, future), result in zip(batch, results):
                    if future.done():
                        continue  # the request went away
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None

    async def _run(self, batch: list[tuple[str, int, int, asyncio.Future[Any]]], *, loaded: bool = False) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for key, interval_ms, window_ms, _ in batch:
            pipe.evalsha(self._sha, 1, key, interval_ms, window_ms)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        if not loaded and any(isinstance(r, NoScriptError) for r in results):  # a new or flushed Redis
            await self._redis.script_load(_SCRIPT)
            return await self._run(batch, loaded=True)
        return results


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The gateway's policies per route class, and the limiter that enforces them."""

    limiter: RedisRateLimiter
    policies: dict[str, Policy]

    async def admit(self, request: Request, route_class: str, verifier: TokenVerifier | None = None) -> None:
        """Count this request in its route class, keyed by principal (or address); once."""
        policy = self.policies.get(route_class)
        if policy is not None and request.scope.get("state", {}).get(ADMITTED_KEY) != route_class:
            who = await principal_key(request, verifier) if verifier is not None else address_key(request)
            await self._check(request.scope, policy, who)

    async def admit_subject(self, scope: Scope, route_class: str, subject: str) -> None:
        """``admit`` for a request whose bearer token is known to verify to ``subject`` (the key
        ``principal_key`` gives it); the request is then not counted again on its route."""
        policy = self.policies.get(route_class)
        if policy is not None:
            await self._check(scope, policy, subject_key(subject))
            scope["state"][ADMITTED_KEY] = route_class

    async def admit_login(self, request: Request, email: str) -> None:
        """The per-account login limit, beside the per-address one (a slow guess spread over addresses)."""
        policy = self.policies.get("login-account")
        if policy is not None:
            await self._check(request.scope, policy, "account:" + hashlib.sha256(email.encode()).hexdigest()[:32])

    async def _check(self, scope: Scope, policy: Policy, who: str) -> None:
        decisions: list[Decision] = scope.setdefault("state", {}).setdefault(STATE_KEY, [])
        try:
            decision = await self.limiter.check(policy, who)
        except RateLimited as refused:
            decisions.append(refused.decision or Decision(policy, False, 0, refused.retry_after))
            raise
        if decision is not None:
            decisions.append(decision)


def address_key(request: Request) -> str:
    """The client address; IPv6 by its /64 (an IPv4-mapped one as IPv4)."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"addr:{host}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"addr:{address.ipv4_mapped}"
        return f"addr:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"addr:{address}"


def subject_key(subject: str) -> str:
    """The key of a caller known by their token's subject."""
    return f"user:{subject}"


async def principal_key(request: Request, verifier: TokenVerifier) -> str:
    """The token's subject when a valid bearer token is sent, else the address."""
    if "authorization" in request.headers:
        try:
            return subject_key((await bearer_principal(request, verifier)).subject)
        except (AuthError, SigningKeysUnavailable):
            pass  # the handler answers 401/503; count it against the address meanwhile
    return address_key(request)
