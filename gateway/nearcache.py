"""An in-process near-cache over Redis, kept correct by server-assisted invalidation.

Guarantee: the near-cache never serves an entry after this process has learnt that Redis
changed it, and it serves nothing while it cannot learn that.

Mechanism: one control connection turns on ``CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX
ts:rm:`` so that Redis sends every change (write, delete, expiry, eviction) of a key under the
read-model prefix to a second connection, subscribed to ``__redis__:invalidate`` (RESP2:
redis-py's RESP3 reader blocks on a raw SUBSCRIBE, see INFRA.md). BCAST mode tracks by prefix,
not by the keys a connection read, so the pooled data connections need no set-up. Each message
evicts its keys (a null message, sent on FLUSHALL, evicts everything).

A fetch races with invalidations: a GET may return the old value while the message for a newer
one is already on its way. A fetch therefore registers its key before asking Redis; an
invalidation of a registered key marks it, and a marked fetch does not fill the near-cache.

If either connection fails, or the control connection stops answering its heartbeat, the
near-cache is flushed and bypassed (``healthy`` is False) until both are back, so an invalidation
lost during an outage can never leave a stale entry behind. Bounded: LRU of ``max_entries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from redis.asyncio import Connection
from redis.exceptions import RedisError

from projections.cache import PREFIX

log = logging.getLogger("taskstream.nearcache")

V = TypeVar("V")


class NearCache(Generic[V]):
    def __init__(self, *, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._fetching: dict[str, bool] = {}  # key -> invalidated while being fetched
        self.healthy = False
        self.flushes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        if not self.healthy:
            return None
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def begin_fetch(self, key: str) -> None:
        self._fetching[key] = False

    def end_fetch(self, key: str, value: V | None) -> None:
        """Fill with what a fetch returned, unless the key was invalidated meanwhile."""
        invalidated = self._fetching.pop(key, True)
        if value is None or invalidated or not self.healthy or self.max_entries <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, keys: list[str] | None) -> None:
        if keys is None:
            self.flush()
            return
        for key in keys:
            self._entries.pop(key, None)
            if key in self._fetching:
                self._fetching[key] = True

    def flush(self) -> None:
        self._entries.clear()
        for key in self._fetching:
            self._fetching[key] = True
        self.flushes += 1


class Invalidations:
    """The two connections that keep a NearCache correct; ``run`` until cancelled."""

    def __init__(self, near: NearCache[Any], *, host: str, port: int, password: str | None = None,
                 db: int = 0, heartbeat: float = 0.5, reconnect_delay: float = 0.5) -> None:  # fmt: skip
        self._near = near
        self._kwargs = {"host": host, "port": port, "password": password, "db": db, "protocol": 2,
                        "socket_connect_timeout": 1, "socket_timeout": None}  # fmt: skip
        self._heartbeat = heartbeat
        self._reconnect_delay = reconnect_delay
        self.connected = asyncio.Event()

    async def run(self) -> None:
        me = asyncio.current_task()
        while True:
            # A cancel that a library swallowed (seen: the gateway's shutdown waited for ever on
            # this task, "cancelling" yet back in its heartbeat wait) still ends the task.
            if me is not None and me.cancelling():
                self._down()
                raise asyncio.CancelledError
            try:
                await self._session()
            except asyncio.CancelledError:
                self._down()
                raise
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                if self._near.healthy:
                    log.warning("near-cache: invalidation connection lost, bypassing the near-cache: %r", exc)
            self._down()
            await asyncio.sleep(self._reconnect_delay)

    def _down(self) -> None:
        self._near.healthy = False
        self._near.flush()
        self.connected.clear()

    async def _session(self) -> None:
        subscriber = Connection(**self._kwargs)
        control = Connection(**{**self._kwargs, "socket_timeout": 2})
        try:
            await subscriber.connect()
            await subscriber.send_command("CLIENT", "ID")
            client_id = int(await subscriber.read_response())
            await subscriber.send_command("SUBSCRIBE", "__redis__:invalidate")
            await subscriber.read_response()  # the subscribe confirmation
            await control.connect()
            await control.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", PREFIX)
            answer = await control.read_response()
            if answer not in (b"OK", "OK"):
                raise RedisError(f"CLIENT TRACKING answered {answer!r}")
            self._near.flush()  # whatever was cached before this session is unknown
            self._near.healthy = True
            self.connected.set()
            log.info("near-cache: tracking %s* through client %d", PREFIX, client_id)
            listener = asyncio.create_task(self._listen(subscriber))
            try:
                current = asyncio.current_task()
                while not listener.done() and not (current is not None and current.cancelling()):
                    await control.send_command("PING")
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
                    # that lands as the answer arrives
                    async with asyncio.timeout(2):
                        await control.read_response()
                    await asyncio.wait({listener}, timeout=self._heartbeat)
                if listener.done():
                    listener.result()
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                    await listener
        finally:
            for conn in (subscriber, control):
                with contextlib.suppress(Exception):
                    await conn.disconnect()

    async def _listen(self, subscriber: Connection) -> None:
        while True:
            message = await subscriber.read_response(timeout=None)
            if not isinstance(message, list) or len(message) < 3 or message[0] not in (b"message", "message"):
                continue
            data = message[2]
            if data is None:
                self._near.invalidate(None)
            else:
                self._near.invalidate([k.decode() if isinstance(k, bytes) else str(k) for k in data])
