"""``taskstream tail``: the event log for operators, as JSON lines or a table.

Reads go through event_store/tail.py: without ``--follow``, every matching event up to the head
as it was when the command started; with it, the same and then the live tail, gap-free and
without duplicates (a catch-up from the table joins the live tail at the tailer's position).
Private fields (a password hash) are never printed, in either format: the data passes through
``schemas.catalog.public_data``, as on Kafka and over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import Callable, Sequence
from typing import Literal, TextIO

from event_store.postgres import PostgresEventStore
from event_store.relay import redacted
from event_store.tail import Dropped, EventFilter, EventHub, read_matching
from schemas.catalog import public_data
from schemas.envelope import RecordedEvent

Format = Literal["json", "table"]
PAGE = 1000


def as_json(event: RecordedEvent) -> str:
    return json.dumps(redacted(event, public_data).to_json(), separators=(",", ":"))


# (title, width, right-aligned); the data column takes what is left of the terminal.
_COLUMNS = (("POSITION", 9, True), ("RECORDED (UTC)", 19, False), ("TYPE", 27, False), ("STREAM", 47, False), ("VER", 4, True), ("ACTOR", 12, False))


def _cell(text: str, width: int, right: bool) -> str:
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)


def _data_width() -> int:
    used = sum(width + 1 for _, width, _ in _COLUMNS)
    return max(20, shutil.get_terminal_size((160, 24)).columns - used)


def table_header() -> str:
    return " ".join([*(_cell(t, w, r) for t, w, r in _COLUMNS), "DATA"])


def as_row(event: RecordedEvent) -> str:
    data = json.dumps(public_data(event.type, event.data), separators=(",", ":"), ensure_ascii=False)
    actor = str(event.metadata.get("actor") or "-")
    cells = (
        str(event.global_position),
        event.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
        event.type,
        event.stream,
        str(event.version),
        actor,
    )
    width = _data_width()
    if len(data) > width:
        data = data[: width - 1] + "…"
    return " ".join([*(_cell(c, w, r) for c, (_, w, r) in zip(cells, _COLUMNS, strict=True)), data])


def printer(fmt: Format, out: TextIO) -> Callable[[RecordedEvent], None]:
    header_done = False

    def show(event: RecordedEvent) -> None:
        nonlocal header_done
        if fmt == "table" and not header_done:
            print(table_header(), file=out, flush=True)
            header_done = True
        print(as_json(event) if fmt == "json" else as_row(event), file=out, flush=True)

    return show


async def tail(
    store: PostgresEventStore,
    where: EventFilter,
    after: int,
    show: Callable[[RecordedEvent], None],
    *,
    follow: bool,
    stop: asyncio.Event,
    poll_interval: float = 1.0,
) -> None:
    """Print what is there (and, with ``follow``, what comes) until ``stop``."""
    if not follow:
        head = await store.head_position()  # every event up to it is final: see event_store/postgres.py
        position = after
        while not stop.is_set() and (page := await read_matching(store, position, head, where, PAGE)):
            for event in page:
                show(event)
            position = page[-1].global_position
        return
    hub: EventHub[None] = EventHub(store, lambda _: None, queue_size=PAGE, poll_interval=poll_interval)
    position = after
    try:
        while not stop.is_set():
            try:
                async with hub.subscription(position, where) as subscription:
                    while not stop.is_set():
                        waiting = asyncio.create_task(subscription.next(1.0))
                        stopping = asyncio.create_task(stop.wait())
                        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                        stopping.cancel()
                        if not waiting.done():
                            waiting.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await waiting
                            return
                        for event, _ in waiting.result():
                            show(event)
                            position = event.global_position
            except Dropped:
                continue  # the terminal fell behind the live tail: catch up from what it printed
    finally:
        await hub.close()


def split_names(values: Sequence[str] | None) -> list[str] | None:
    """``--category a,b --category c`` -> [a, b, c]; None when not given."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]
