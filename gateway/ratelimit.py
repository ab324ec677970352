"""Rate limits kept in Redis, so every gateway process shares them.

A fixed window per key: one atomic script increments the window's counter and gives its time
to live; past the limit the request is refused with 429 and Retry-After. It guards the
anonymous endpoints that run Argon2 (registration and login), which a caller could otherwise
use to spend the server's memory and CPU. If Redis cannot be reached the request is let
through (and logged): the limiter protects the service, it must not be what stops it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger("taskstream.gateway")

_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""


class RateLimited(Exception):
    slug, title, status = "rate-limited", "Too Many Requests", 429

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        self.detail = f"too many requests; retry after {self.retry_after} s"
        super().__init__(self.detail)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RedisRateLimiter:
    def __init__(self, redis: Any, *, limit: int, window_seconds: float = 60.0, prefix: str = "taskstream:ratelimit:") -> None:
        self._script = redis.register_script(_SCRIPT)
        self._limit, self._window_ms, self._prefix = limit, int(window_seconds * 1000), prefix

    async def check(self, bucket: str, who: str) -> None:
        """Count one request of ``who`` in ``bucket``; raise RateLimited past the limit."""
        try:
            count, ttl_ms = await self._script(keys=[f"{self._prefix}{bucket}:{who}"], args=[self._window_ms])
        except Exception as exc:  # noqa: BLE001 - fail open, loudly
            log.warning("rate limiter unavailable, letting the request through: %r", exc)
            return
        if int(count) > self._limit:
            raise RateLimited(max(int(ttl_ms), 0) / 1000)
