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


async def test_a_request_counted_by_subject_is_not_counted_again_in_that_class_only() -> None:
    """The hot lane counts a read (``admit_subject``); the route then skips the ``read`` count,
    but a request in any other class would still be counted."""
    from gateway.ratelimit import RateLimits

    checks: list[tuple[str, str]] = []

    class Recording:
        async def check(self, policy: Policy, who: str) -> Decision:
            checks.append((policy.name, who))
            return Decision(policy, True, 9, 60)

    limits = RateLimits(Recording(), {"read": Policy("read", 10, 60), "write": Policy("write", 10, 60)})  # type: ignore[arg-type]
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("192.0.2.7", 1), "state": {}})
    await limits.admit_subject(request.scope, "read", "u1")
    await limits.admit(request, "read")
    await limits.admit(request, "write")
    assert checks == [("read", "user:u1"), ("write", "addr:192.0.2.7")]
