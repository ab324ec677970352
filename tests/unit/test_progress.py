"""The replay's progress: a rich bar on a terminal, log lines otherwise, both with rate and time left."""

from __future__ import annotations

import io
import logging

import pytest

from taskstream.progress import LogProgress, RichProgress, for_terminal


def test_log_lines_say_done_total_rate_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    progress = LogProgress("replay", interval=0.0)
    with caplog.at_level(logging.INFO, logger="taskstream.replay"):
        progress.start(1000)
        progress.advance(250)
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert "replay: 1000 events to fold" in lines[0]
    assert lines[1].startswith("replay: 250/1000 events (25.0 %)") and "events/s" in lines[1] and "s left" in lines[1]
    assert lines[-1].endswith("(done)")


def test_the_bar_draws_on_a_terminal_and_log_lines_are_chosen_otherwise() -> None:
    assert isinstance(for_terminal("replay", io.StringIO()), LogProgress)
    out = io.StringIO()
    bar = RichProgress("replay", stream=out)
    bar.start(100)
    bar.advance(40)
    bar.note("swap: done")
    bar.close()
    assert "replay" in out.getvalue() and "swap: done" in out.getvalue() and "100" in out.getvalue()
