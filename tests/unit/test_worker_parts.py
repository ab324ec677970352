"""Pure parts of the worker pool: backoff, the SSRF guard, webhook signatures, local links, kinds."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from workers.backoff import WEBHOOK_SCHEDULE, retry_delay, webhook_delay
from workers.kinds import PermanentError, Registry, UnknownKind, load_registry
from workers.links import LinkRefused, parse_uri, sign_local, verify_local
from workers.ssrf import UnsafeDestination, check_url, refusal
from workers.webhooks import signing


@given(attempt=st.integers(1, 30), r=st.floats(0, 1))
def test_retry_delay_is_jittered_exponential_and_capped(attempt: int, r: float) -> None:
    delay = retry_delay(attempt, 2.0, 300.0, rand=lambda: r)
    ceiling = min(300.0, 2.0 * 2 ** (attempt - 1))
    assert ceiling / 2 <= delay <= ceiling


def test_retry_delay_grows() -> None:
    assert [retry_delay(n, 1.0, 1000.0, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    with pytest.raises(ValueError):
        retry_delay(0, 1.0, 10.0)


def test_webhook_schedule_ends() -> None:
    assert webhook_delay(1, rand=lambda: 0.5) == pytest.approx(5.0)
    assert webhook_delay(len(WEBHOOK_SCHEDULE), rand=lambda: 0.5) == pytest.approx(36000.0)
    assert webhook_delay(len(WEBHOOK_SCHEDULE) + 1) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.0.0.1", "private"), ("172.31.255.255", "private"),
        ("192.168.1.1", "private"), ("169.254.169.254", "metadata"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("fd00:ec2::254", "metadata"),
        ("::ffff:192.168.0.1", "private"), ("100.64.0.1", "public"), ("100.100.100.200", "metadata"), ("fc00::1", "private"),
    ],
)  # fmt: skip
def test_refused_addresses(address: str, why: str) -> None:
    reason = refusal(ipaddress.ip_address(address), allow_loopback=False)
    assert reason is not None and why in reason


def test_public_addresses_pass_and_loopback_only_when_allowed() -> None:
    assert refusal(ipaddress.ip_address("93.184.216.34"), allow_loopback=False) is None
    assert refusal(ipaddress.ip_address("2606:2800:220:1::1"), allow_loopback=False) is None
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) is None
    assert refusal(ipaddress.ip_address("10.0.0.1"), allow_loopback=True) is not None


async def test_a_name_is_refused_if_any_of_its_addresses_is_unsafe() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example.com", 443)
        return ["93.184.216.34", "10.0.0.7"]  # a rebinding-style answer: one public, one private

    with pytest.raises(UnsafeDestination, match="10.0.0.7"):
        await check_url("https://hooks.example.com/x", resolve=resolver)


async def test_a_public_name_passes() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    assert [str(a) for a in await check_url("https://hooks.example.com:8443/x", resolve=resolver)] == ["93.184.216.34"]


@pytest.mark.parametrize("url", ["gopher://x/", "http:///x", "http://[::1/x", "http://example.com:99999/", "http://u:p@example.com/", "http://metadata.google.internal/", "http://x.localhost/"])
async def test_malformed_or_named_unsafe_urls(url: str) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        raise AssertionError("no lookup expected")

    with pytest.raises(UnsafeDestination):
        await check_url(url, resolve=resolver)


@settings(max_examples=50, deadline=None)
@given(data=st.dictionaries(st.text(max_size=10), st.text(max_size=50) | st.integers(), max_size=5), msg_id=st.from_regex(r"msg_[a-f0-9]{8,32}", fullmatch=True))
def test_our_signatures_verify_with_the_standardwebhooks_package(data: dict, msg_id: str) -> None:
    body = json.dumps({"type": "task.succeeded", "data": data})  # the package parses the body as JSON
    secret = signing.new_secret()
    headers = signing.headers([secret], msg_id, int(time.time()), body)
    Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)


def test_local_links_verify_and_refuse_tampering_and_expiry() -> None:
    secret, now = b"k" * 32, 1_000_000.0
    link = sign_local(secret, "results/a/attempt-1.json", int(now) + 60)
    assert verify_local(secret, link["key"], link["expires"], link["signature"], now=now) == link["key"]
    with pytest.raises(LinkRefused, match="expired"):
        verify_local(secret, link["key"], link["expires"], link["signature"], now=now + 60)
    for key, expires, signature in (
        ("results/b/attempt-1.json", link["expires"], link["signature"]),
        (link["key"], str(int(link["expires"]) + 1), link["signature"]),
        (link["key"], link["expires"], link["signature"][::-1]),
        ("../etc/passwd", link["expires"], link["signature"]),
        (link["key"], "soon", link["signature"]),
    ):
        with pytest.raises(LinkRefused, match="not valid"):
            verify_local(secret, key, expires, signature, now=now)
    with pytest.raises(LinkRefused):
        verify_local(b"other" * 8, link["key"], link["expires"], link["signature"], now=now)


def test_parse_uri() -> None:
    assert parse_uri("blob://local/results/x.json") == ("local", "results/x.json")
    assert parse_uri("s3://bucket/exports/p/t.jsonl") == ("s3", "exports/p/t.jsonl")
    with pytest.raises(ValueError):
        parse_uri("https://example.com/x")


def test_registry_built_ins_and_unknown_kinds() -> None:
    registry = load_registry()
    assert {"echo", "sleep", "project.export", "http.request"} <= registry.kinds()
    with pytest.raises(UnknownKind) as caught:
        registry.get("nope")
    assert isinstance(caught.value, PermanentError) and "echo" in str(caught.value)


def test_kinds_from_an_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import workers.kinds as kinds

    ep = EntryPoint(name="plugin.echo", value="workers.builtins:echo", group=kinds.ENTRY_POINT_GROUP)
    monkeypatch.setattr(kinds, "entry_points", lambda group: [ep] if group == kinds.ENTRY_POINT_GROUP else [])
    assert "plugin.echo" in kinds.load_registry().kinds()


def test_a_kind_registered_twice_is_refused() -> None:
    registry = Registry()

    async def one(_ctx: object) -> None: ...
    async def two(_ctx: object) -> None: ...

    registry.register("k", one)
    registry.register("k", one)  # the same handler again is harmless
    with pytest.raises(ValueError):
        registry.register("k", two)
