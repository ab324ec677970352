"""``FeedingConsumer._deliver``: faust's per-record checks, made once per partition's fetch.

The consumer around it is faust's (its fetch loop runs in the integration tests against both
brokers); here only the delivery of one fetch is driven, with a stand-in for the consumer's
state, to pin what faust's ``_drain_messages`` does with each record: drop what is below the
read offset, record a gap for the commit, move the read offset on, and hand the records over in
order: all at once to a feed, one by one through faust's callback otherwise.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP as TP_

from projections.faust_consumer import FeedingConsumer

TOPIC = "events.task"
TP = TP_(TOPIC, 0)


class _Feed:
    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    async def put_many(self, messages: list[Any]) -> None:
        self.calls.append(list(messages))


class _State:
    """The attributes of faust's consumer that ``_deliver`` reads or calls."""

    def __init__(self, *, feed: _Feed | None = None, read: int | None = None, acks: bool = True) -> None:
        self._read_offset: defaultdict[Any, int | None] = defaultdict(lambda: None)
        if read is not None:
            self._read_offset[TP] = read
        self.feeds = {TOPIC: feed} if feed is not None else {}
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: acks))
        self.suspend_flow = asyncio.Event()
        self.gaps: list[tuple[int, int]] = []
        self.called_back: list[Any] = []
        self.commit_checks = 0

    def _to_message(self, tp: Any, record: Any) -> tuple[str, int]:
        assert tp is TP
        return ("message", record.offset)

    async def _add_gap(self, tp: Any, first: int, last: int) -> None:
        self.gaps.append((first, last))

    async def _commit_if_due(self) -> None:
        self.commit_checks += 1

    async def callback(self, message: Any) -> None:
        self.called_back.append(message)

    async def wait_first(self, delivery: Any, suspended: Any) -> None:
        suspended.close()
        await delivery


def _records(*offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=o) for o in offsets]


async def _deliver(state: _State, *offsets: int) -> None:
    await FeedingConsumer._deliver(state, TP, _records(*offsets))  # type: ignore[arg-type]


async def test_a_feed_gets_the_whole_fetch_at_once_in_order() -> None:
    feed = _Feed()
    state = _State(feed=feed)
    await _deliver(state, 0, 1, 2, 3)
    assert feed.calls == [[("message", 0), ("message", 1), ("message", 2), ("message", 3)]]
    assert state._read_offset[TP] == 3
    assert state.called_back == [] and state.gaps == [] and state.commit_checks == 1


async def test_records_below_the_read_offset_are_dropped_and_the_one_at_it_is_kept() -> None:
    feed = _Feed()
    state = _State(feed=feed, read=5)
    await _deliver(state, 3, 4, 5, 6)
    assert feed.calls == [[("message", 5), ("message", 6)]]
    assert state._read_offset[TP] == 6


async def test_a_fetch_already_read_hands_nothing_over() -> None:
    feed = _Feed()
    state = _State(feed=feed, read=9)
    await _deliver(state, 7, 8)
    assert feed.calls == [] and state._read_offset[TP] == 9 and state.commit_checks == 0


async def test_offsets_the_log_skipped_are_recorded_as_a_gap_when_acks_are_on() -> None:
    feed = _Feed()
    state = _State(feed=feed, read=2)
    await _deliver(state, 3, 7, 8, 12)
    # faust's own arguments: from past the read offset to the record's own offset (included)
    assert state.gaps == [(4, 7), (9, 12)]
    assert [m for _, m in feed.calls[0]] == [3, 7, 8, 12]


async def test_no_gap_is_recorded_without_acks_or_before_a_first_read() -> None:
    without_acks = _State(feed=_Feed(), read=2, acks=False)
    await _deliver(without_acks, 9)
    first_fetch = _State(feed=_Feed())
    await _deliver(first_fetch, 40, 41)
    assert without_acks.gaps == [] and first_fetch.gaps == []


async def test_a_topic_without_a_feed_goes_through_fausts_callback_one_record_at_a_time() -> None:
    state = _State(read=1)
    await _deliver(state, 1, 2, 4)
    assert state.called_back == [("message", 1), ("message", 2), ("message", 4)]
    assert state.gaps == [(3, 4)]
    assert state._read_offset[TP] == 4 and state.commit_checks == 3
