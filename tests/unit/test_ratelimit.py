from __future__ import annotations

from starlette.requests import Request

from gateway.ratelimit import Decision, Policy, RateLimited, address_key


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert RateLimited(2.1).headers() == {"Retry-After": "3"}
    assert RateLimited(0).retry_after == 1
    assert (RateLimited.slug, RateLimited.status) == ("rate-limited", 429)


def test_ietf_fields() -> None:
    policy = Policy("write", 600, 60)
    assert policy.field == '"write";q=600;w=60' and policy.interval_ms == 100
    assert Decision(policy, True, 599, 1).field == '"write";r=599;t=1'
    assert Policy("odd", 7, 60).interval_ms == 8572  # rounded up: never more than the quota


def _from(host: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "client": (host, 1234)})


def test_ipv6_addresses_are_grouped_by_their_64() -> None:
    assert address_key(_from("2001:db8:1:2:aaaa::1")) == address_key(_from("2001:db8:1:2:ffff:1:2:3")) == "addr:2001:db8:1:2::/64"
    assert address_key(_from("2001:db8:1:3::1")) != address_key(_from("2001:db8:1:2::1"))
    assert address_key(_from("::ffff:192.0.2.7")) == address_key(_from("192.0.2.7")) == "addr:192.0.2.7"
    assert address_key(_from("192.0.2.8")) != address_key(_from("192.0.2.7"))
