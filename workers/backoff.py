"""Retry delays: exponential backoff with full jitter (pure; the random source is a parameter)."""

from __future__ import annotations

import random
from collections.abc import Callable


def retry_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): uniform in
    [ceiling/2, ceiling] with ceiling = min(cap, base * 2**(attempt-1)), so retries spread out
    without ever coming back at once, and never wait longer than ``cap``."""
    if attempt < 1:
        raise ValueError("attempts start at 1")
    ceiling = min(cap, base * 2 ** min(attempt - 1, 60))
    return ceiling / 2 + rand() * ceiling / 2


# The Standard Webhooks retry schedule (seconds after the previous attempt), scaled in tests.
WEBHOOK_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


def webhook_delay(failed_attempts: int, scale: float = 1.0, rand: Callable[[], float] = random.random) -> float | None:
    """Seconds before the next delivery attempt after ``failed_attempts`` failures, with
    +-10 % jitter; None once the schedule is used up (the delivery has failed)."""
    if failed_attempts < 1:
        raise ValueError("call this after a failure")
    if failed_attempts > len(WEBHOOK_SCHEDULE):
        return None
    return WEBHOOK_SCHEDULE[failed_attempts - 1] * scale * (0.9 + 0.2 * rand())
