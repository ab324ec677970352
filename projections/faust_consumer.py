"""faust's consumer, with the records of a fed topic handed over a partition's fetch at a time.

faust delivers every fetched record on its own: an async generator step, a message object, a
race of the delivery against ``suspend_flow`` (tasks and an ``asyncio.wait``) and sensor calls,
about a fifth of the projector's CPU per event here. The projector needs none of it: its
``_Batches`` buffer records and apply them in batches. So ``FeedingConsumer._drain_messages`` is
faust's fetch loop (``faust.transport.consumer.Consumer._drain_messages`` and ``getmany``, pinned
with faust-streaming 0.15.x) with the same checks made once per partition's fetch instead of once
per record: the flow is active and the generation unchanged (else the rest of the fetch is left,
to be read again from the committed offset), the partition is active, a record below the read
offset is dropped, a gap in offsets is recorded for the commit, and the read offset moves on.
The records of a topic with a feed go to its ``put_many`` in offset order; any other topic's go
through faust's own per-record delivery.

The aiokafka consumer thread fetches with a short ``fetch_max_wait_ms`` (see
``PromptConsumerThread``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver


class Feed(Protocol):
    async def put_many(self, messages: Sequence[Any]) -> None:
        """Buffer ``messages`` (one partition's, in offset order, of one generation)."""


class PromptConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """faust fixes the consumer's ``fetch_max_wait_ms`` at 1500. tansu answers a fetch only when
    that wait is over, even when records arrive meanwhile (measured: 450 ms per record at 1500 ms,
    2 ms at 5 ms), so every event would wait there before it could be projected."""

    fetch_max_wait_ms = 5

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by consumer.start()
        return consumer


class FeedingConsumer(aiokafka_driver.Consumer):
    """faust's consumer with ``feeds``: by topic, where its records go a fetch at a time. A feed
    tracks a record as unacknowledged when it buffers it, as faust's stream does, and the
    projector acknowledges it once applied; so a rebalance still waits for every buffered record
    (``stream_wait_empty``) and faust commits no offset past an unapplied record."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feeds: dict[str, Feed] = {}

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # faust's fetch loop, see the module
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        app = self.app
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                # faust sleeps here too: a fetch may come back at once, again and again
                await self.sleep(0)
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    try:
                        await self.perform_seek()  # as faust's getmany: back to the committed offsets
                    except Exception as exc:  # noqa: BLE001 - faust logs it and goes on, so do we
                        self.log.warning(f"exception performing seek when flow not active {exc}")
                    continue
                generation = app.consumer_generation_id
                for tp, fetched in records.items():
                    if not self.flow_active or app.consumer_generation_id != generation:
                        break
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    await self._deliver(tp, fetched)
                    await asyncio.sleep(0)  # as faust's yield every 100 records: let the loop breathe
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _deliver(self, tp: Any, fetched: Sequence[Any]) -> None:
        """One partition's fetched records: those at or past the read offset, in order."""
        read = self._read_offset[tp]
        feed = self.feeds.get(tp.topic)
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        to_message = self._to_message
        messages = []
        for record in fetched:
            offset = record.offset
            if read is not None and offset < read:
                continue  # faust drops it as well (read already)
            if read and offset - read > 1 and acks_enabled:
                await self._add_gap(tp, read + 1, offset)  # offsets the log skipped: committable
            read = offset
            if feed is None:
                await self._commit_if_due()
                await self.wait_first(self.callback(to_message(tp, record)), self.suspend_flow.wait())
                self._read_offset[tp] = offset
            else:
                messages.append(to_message(tp, record))
        if messages:
            await self._commit_if_due()
            await feed.put_many(messages)
            self._read_offset[tp] = read

    async def _commit_if_due(self) -> None:
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()


class _Transport(aiokafka_driver.Transport):
    Consumer = FeedingConsumer


class App(faust.App):
    """faust's app, with ``FeedingConsumer`` as its consumer (``app.consumer.feeds``)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
