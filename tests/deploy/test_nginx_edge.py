"""The edge for real: Debian's nginx with deploy/nginx/ and a self-signed certificate, in front
of a running gateway on loopback.

The gateway trusts X-Forwarded-For only from the proxy's address (127.0.0.1), as `taskstream
serve --forwarded-allow-ips` does. Clients connect from other loopback addresses (127.x.y.z
source addresses), so the test can tell real peers apart: the rate limiter must count each real
peer on its own (the proxy's header is trusted) and ignore whatever X-Forwarded-For a client
sends (the header is overwritten at the edge, not appended to).
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import socket
import ssl
import subprocess
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from taskstream import embedded
from taskstream.settings import Settings
from tests.support.stack import serve_gateway
from tests.deploy.tools import ROOT, require_tool

NGINX_DIR = ROOT / "deploy" / "nginx"
LIMIT = 3  # logins per minute per client address, for this test's gateway
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)\}")


def envsubst(template: str, env: dict[str, str]) -> str:
    """What the nginx image's entrypoint does: substitute ${NAME} for the defined names only."""
    return _VARIABLE.sub(lambda m: env[m.group(1)] if m.group(1) in env else m.group(0), template)


def _loopback_address() -> str:
    """A random 127.x.y.z other than the proxy's 127.0.0.1: a fresh rate-limit window per run."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


@dataclass(frozen=True)
class Edge:
    https_url: str
    http_url: str
    gateway_url: str
    ca_file: Path


@pytest.fixture(scope="module")
def edge_dir() -> Iterator[Path]:
    # Traversable by nginx's unprivileged worker processes (pytest's tmp_path is private to root).
    path = Path(tempfile.mkdtemp(prefix="taskstream-nginx-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture(scope="module")
def certificate(edge_dir: Path) -> tuple[Path, Path]:
    openssl = require_tool("openssl", "apt-get install openssl")
    cert, key = edge_dir / "tls.crt", edge_dir / "tls.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def edge_settings(database_url: str, redis_url: str, tansu_bootstrap: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        kafka_bootstrap_servers=tansu_bootstrap,
        jwt_secret=secrets.token_urlsafe(48),
        http_port=embedded.free_port(),
        auth_rate_limit_per_minute=LIMIT,
    )


@pytest.fixture(scope="module")
async def proxied_gateway(edge_settings: Settings) -> AsyncIterator[str]:
    """The gateway as `taskstream serve` runs it: proxy headers trusted from 127.0.0.1 only."""
    # nginx is the only proxy: forwarded headers are believed from 127.0.0.1 alone
    async with serve_gateway(replace(edge_settings, http_host="127.0.0.1", forwarded_allow_ips="127.0.0.1")) as url:
        yield url


@pytest.fixture(scope="module")
def edge(proxied_gateway: str, edge_settings: Settings, edge_dir: Path, certificate: tuple[Path, Path]) -> Iterator[Edge]:
    nginx = require_tool("nginx", "make tools (apt-get install nginx)")
    http_port, https_port = embedded.free_port(), embedded.free_port()
    cert, key = certificate
    env = {
        "NGINX_SERVER_NAME": "localhost",
        "NGINX_PUBLIC_ORIGIN": f"https://localhost:{https_port}",
        "NGINX_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "NGINX_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
        "NGINX_TLS_CERTIFICATE": str(cert),
        "NGINX_TLS_CERTIFICATE_KEY": str(key),
        "NGINX_MAX_BODY_SIZE": str(edge_settings.max_body_bytes),
        "GATEWAY_UPSTREAM": f"127.0.0.1:{edge_settings.http_port}",
    }
    conf_d = edge_dir / "conf.d"
    conf_d.mkdir()
    site = envsubst((NGINX_DIR / "templates" / "taskstream.conf.template").read_text(), env)
    assert "${" not in site, "the template uses a variable the deployment does not define"
    (conf_d / "taskstream.conf").write_text(site)
    # The container's main file, with its /tmp and conf.d paths moved into the test folder.
    main = (NGINX_DIR / "nginx.conf").read_text().replace("/tmp/", f"{edge_dir}/").replace("/etc/nginx/conf.d/", f"{conf_d}/")
    (edge_dir / "nginx.conf").write_text(main)
    argv = [nginx, "-p", str(edge_dir), "-c", str(edge_dir / "nginx.conf"), "-g", "daemon off;"]
    check = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = edge_dir / "nginx.log"
    server = embedded.ServerProcess("nginx", "", https_port, embedded.spawn("nginx", argv, log), log)
    try:
        embedded.wait_until(lambda: embedded.accepts(https_port) and embedded.accepts(http_port), server, timeout=15)
        yield Edge(f"https://localhost:{https_port}", f"http://127.0.0.1:{http_port}", proxied_gateway, cert)
    finally:
        server.stop()


def _handshake(edge: Edge, context: ssl.SSLContext) -> tuple[str | None, str | None]:
    """A bare TLS handshake with the edge: the negotiated ALPN protocol and TLS version. The
    socket is closed without a TLS shutdown (nginx may already be sending HTTP/2 frames)."""
    host, port = edge.https_url.removeprefix("https://").split(":")
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as raw:
        tls = context.wrap_socket(raw, server_hostname=host)
        try:
            return tls.selected_alpn_protocol(), tls.version()
        finally:
            tls.close()


def _client(edge: Edge, source: str, *, base_url: str | None = None) -> httpx.AsyncClient:
    """A client whose connections come from the loopback address ``source``."""
    context = ssl.create_default_context(cafile=str(edge.ca_file))
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=context, retries=0)
    return httpx.AsyncClient(transport=transport, base_url=base_url or edge.https_url, timeout=10, follow_redirects=False)


async def test_https_answers_with_hsts_http2_and_the_edges_request_id(edge: Edge) -> None:
    async with _client(edge, _loopback_address()) as client:
        response = await client.get("/healthz", headers={"X-Request-ID": "chosen-by-the-client"})
    assert response.status_code == 200
    assert response.headers["strict-transport-security"].startswith("max-age=63072000")
    # One id: nginx's fresh $request_id, not the one the client chose (nginx sends it upstream too).
    assert len(response.headers.get_list("x-request-id")) == 1
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), response.headers["x-request-id"]
    context = ssl.create_default_context(cafile=str(edge.ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    alpn, version = await asyncio.to_thread(_handshake, edge, context)
    assert alpn == "h2" and version in {"TLSv1.2", "TLSv1.3"}


async def test_an_old_tls_version_is_refused(edge: Edge) -> None:
    context = ssl.create_default_context(cafile=str(edge.ca_file))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert (await asyncio.to_thread(_handshake, edge, context))[1] == "TLSv1.2"  # TLS 1.2 is accepted ...
    with warnings.catch_warnings():  # offering TLS 1.1 is deprecated, which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cafile=str(edge.ca_file))
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as refused:  # ... TLS 1.1 is not
        await asyncio.to_thread(_handshake, edge, old)
    # The server's alert (not a client that could not offer TLS 1.1 in the first place).
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value


async def test_plain_http_redirects_to_the_https_origin(edge: Edge) -> None:
    async with _client(edge, _loopback_address(), base_url=edge.http_url) as client:
        response = await client.post("/v1/auth/token?x=1", json={}, headers={"Host": "evil.example"})
    assert response.status_code == 308  # 308 keeps the method and body of a POST
    assert response.headers["location"] == f"{edge.https_url}/v1/auth/token?x=1"


async def test_a_spoofed_x_forwarded_for_does_not_change_the_address_the_rate_limiter_sees(
    edge: Edge, edge_settings: Settings
) -> None:
    spoofer, honest, direct = _loopback_address(), _loopback_address(), _loopback_address()
    login = {"email": "nobody@example.org", "password": "wrong-password"}
    statuses = []
    async with _client(edge, spoofer) as client:
        for n in range(LIMIT + 1):  # a new made-up address on every attempt
            spoofed = {"X-Forwarded-For": f"127.0.{n}.{random.randint(1, 254)}, {honest}", "X-Real-IP": honest}
            statuses.append((await client.post("/v1/auth/token", json=login, headers=spoofed)).status_code)
    assert statuses == [401] * LIMIT + [429]
    # Another real peer through the same proxy has its own budget: the gateway does use the
    # proxy's X-Forwarded-For (otherwise every client would share 127.0.0.1's budget).
    async with _client(edge, honest) as client:
        assert (await client.post("/v1/auth/token", json=login)).status_code == 401
    # Straight to the gateway from an address that is not the proxy: its header is ignored.
    transport = httpx.AsyncHTTPTransport(local_address=direct, retries=0)
    async with httpx.AsyncClient(transport=transport, base_url=edge.gateway_url, timeout=10) as client:
        response = await client.post("/v1/auth/token", json=login, headers={"X-Forwarded-For": spoofer})
        assert response.status_code == 401
    redis = Redis.from_url(edge_settings.redis_url)
    try:
        # GCRA: one key per address counted (its value is the theoretical arrival time, not a count)
        keys = {k.decode().rsplit(":", 1)[-1] for k in await redis.keys("taskstream:ratelimit:credentials:*")}
    finally:
        await redis.aclose()
    assert {spoofer, honest, direct} <= keys
    assert "127.0.0.1" not in keys and not any(a.startswith("127.0.") and a not in {spoofer, honest, direct} for a in keys)


async def test_an_oversized_body_is_refused_at_the_edge(edge: Edge, edge_settings: Settings) -> None:
    body = b"{" + b" " * edge_settings.max_body_bytes + b"}"
    async with _client(edge, _loopback_address()) as client:
        refused = await client.post("/v1/users", content=body, headers={"Content-Type": "application/json"})
        # Just under the limit passes the edge and reaches the gateway (which answers as JSON).
        small = await client.post("/v1/users", content=b"{" + b" " * 1000 + b"}", headers={"Content-Type": "application/json"})
    assert refused.status_code == 413
    # nginx's own page, not the gateway's problem+json: the body never reached a gateway.
    assert refused.headers["content-type"].startswith("text/html")
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])  # nginx's own answers carry the id too
    assert small.status_code == 422 and small.headers["content-type"] == "application/problem+json"
