"""The SSRF guard: outgoing requests (webhooks, ``http.request`` tasks) only reach public hosts.

A URL is refused unless it is http(s) and *every* address its host resolves to is globally
routable: loopback, private (RFC 1918, ULA), link-local (which holds the cloud metadata
address 169.254.169.254), multicast, reserved, unspecified, CGNAT and IPv4-mapped forms of
those are refused, and the well-known metadata addresses by name too. ``allow_loopback``
lets 127.0.0.0/8 and ::1 through (the dev stack, where everything runs on one machine).

The check runs at registration and again right before each request (DNS can change). The
resolver is a parameter, so tests prove refusals without any lookup or connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254", "192.0.0.192")
)
METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"})


class UnsafeDestination(ValueError):
    """The URL must not be requested; the message says why (shown to the project)."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def refusal(ip: Address, *, allow_loopback: bool) -> str | None:
    """Why ``ip`` may not be reached, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return refusal(ip.ipv4_mapped, allow_loopback=allow_loopback)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    for test, name in (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    ):
        if test:
            return name
    return None


def parse(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise UnsafeDestination(f"the URL is not valid: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeDestination("only http and https URLs are allowed")
    if parts.username or parts.password:
        raise UnsafeDestination("credentials in the URL are not allowed")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeDestination("the port is not valid") from None
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeDestination("the URL has no host")
    return host, port


async def check_url(url: str, *, allow_loopback: bool = False, resolve: Resolver = system_resolver) -> list[Address]:
    """The addresses ``url`` reaches, all of them allowed; else ``UnsafeDestination``."""
    host, port = parse(url)
    if host in METADATA_NAMES:
        raise UnsafeDestination(f"{host} is a cloud metadata host")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            addresses = [ipaddress.ip_address("127.0.0.1")]
        else:
            try:
                addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await resolve(host, port)]
            except (OSError, UnicodeError) as exc:
                raise UnsafeDestination(f"{host} does not resolve: {exc}") from None
    if not addresses:
        raise UnsafeDestination(f"{host} does not resolve")
    for ip in addresses:
        why = refusal(ip, allow_loopback=allow_loopback)
        if why is not None:
            raise UnsafeDestination(f"{host} resolves to {ip}, {why}")
    return addresses
