"""The Redis cache in front of the read models, shared by the projector (writes) and gateways (reads).

Entries are ``ts:rm:<model>:<id>`` -> ``<revision>:<view JSON>``, with a TTL. Every write is a
compare-and-set in Lua: an entry is never replaced by an older revision, so a gateway filling a
miss with a row it read a moment ago cannot overwrite what the projector wrote since, in either
order. The projector writes the rows it has just committed (write-through, after the commit), so
a reader sees a new version without a miss; gateways fill misses. Memory is bounded by the TTL
and by Redis's own ``maxmemory`` policy where one is set.

If Redis cannot be written, the projector remembers the keys it could not refresh (up to a bound)
and deletes them once Redis answers again; past the bound it deletes every entry of the prefix.
Nothing stale is served after an outage, whatever the server kept.

Revision 0 with an empty body means "no such row" (gateways remember a miss for a short TTL):
every row's revision is 1 or more, so the projector's write of the row replaces it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("taskstream.cache")

PREFIX = "ts:rm:"

# Compare-and-set of many keys in one call (one key for ``put``): each is written unless Redis
# holds an equal or newer revision. KEYS = keys; ARGV[1] = ttl, ARGV[2] = the entries' values
# back to back, each as ``<length>:<revision>:<body>`` (length of ``<revision>:<body>``, the value
# stored), in the order of KEYS. One argument instead of two per key: the client encodes and the
# server parses far less.
_CAS_MANY = """
local written = 0
local blob = ARGV[2]
local pos = 1
for i, key in ipairs(KEYS) do
  local colon = string.find(blob, ':', pos, true)
  local length = tonumber(string.sub(blob, pos, colon - 1))
  local value = string.sub(blob, colon + 1, colon + length)
  pos = colon + length + 1
  local sep = string.find(value, ':', 1, true)
  local revision = tonumber(string.sub(value, 1, sep - 1))
  local current = redis.call('GET', key)
  local newer = false
  if current then
    local held_sep = string.find(current, ':', 1, true)
    if held_sep then
      local held = tonumber(string.sub(current, 1, held_sep - 1))
      newer = held ~= nil and held >= revision
    end
  end
  if not newer then
    redis.call('SET', key, value, 'EX', ARGV[1])
    written = written + 1
  end
end
return written
"""

_CHUNK = 2000  # keys per script call (about a millisecond of the server's time)


def _packed(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    parts = []
    for _, revision, body in entries:
        value = b"%d:%b" % (revision, body)
        parts.append(b"%d:%b" % (len(value), value))
    return b"".join(parts)


def cache_key(model: str, entity_id: Any) -> str:
    return f"{PREFIX}{model}:{entity_id}"


def decode(raw: bytes) -> tuple[int, bytes]:
    revision, _, body = raw.partition(b":")
    return int(revision), body


class ReadCache:
    """Version-guarded reads and writes of cached views."""

    def __init__(self, redis: Redis, *, ttl_seconds: int = 3600, max_dirty: int = 100_000) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds
        self._cas_many = redis.register_script(_CAS_MANY)
        self._dirty: set[str] = set()
        self._dirty_overflow = False
        self._max_dirty = max_dirty

    async def get(self, key: str) -> tuple[int, bytes] | None:
        raw = await self.redis.get(key)
        return None if raw is None else decode(raw)

    async def put(self, key: str, revision: int, body: bytes, *, ttl_seconds: int | None = None) -> bool:
        """Write one entry unless Redis holds an equal or newer revision; True when written."""
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        return bool(await self._cas_many(keys=[key], args=[ttl, _packed([(key, revision, body)])]))

    async def put_many(self, entries: Sequence[tuple[str, int, bytes]]) -> None:
        """Write-through after a commit. Never raises: a failure marks the keys dirty."""
        if not entries:
            return
        try:
            if self.dirty:
                await self.clean()
            for start in range(0, len(entries), _CHUNK):
                chunk = entries[start : start + _CHUNK]
                await self._cas_many(keys=[key for key, _, _ in chunk], args=[self.ttl_seconds, _packed(chunk)])
        except (RedisError, OSError) as exc:
            log.warning("cache write-through failed (%d keys marked stale): %r", len(entries), exc)
            self._mark_dirty(key for key, _, _ in entries)

    def _mark_dirty(self, keys: Iterable[str]) -> None:
        for key in keys:
            if len(self._dirty) >= self._max_dirty:
                self._dirty_overflow = True
                self._dirty.clear()
                return
            self._dirty.add(key)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty) or self._dirty_overflow

    async def clean(self) -> None:
        """Delete what could not be refreshed during an outage (raises while Redis is down)."""
        if self._dirty_overflow:
            async for batch in _scan_batches(self.redis, f"{PREFIX}*"):
                await self.redis.delete(*batch)
            self._dirty_overflow = False
        if self._dirty:
            keys = list(self._dirty)
            for start in range(0, len(keys), 1000):
                await self.redis.delete(*keys[start : start + 1000])
            self._dirty.difference_update(keys)


async def _scan_batches(redis: Redis, pattern: str, size: int = 1000):  # noqa: ANN202 - async generator
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=size):
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
