from __future__ import annotations

from gateway.ratelimit import RateLimited


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert RateLimited(2.1).headers() == {"Retry-After": "3"}
    assert RateLimited(0).retry_after == 1
    assert (RateLimited.slug, RateLimited.status) == ("rate-limited", 429)
