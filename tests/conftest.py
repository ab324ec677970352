"""Real servers for the integration and end-to-end tests, started once per session.

Each server runs on a free port on 127.0.0.1 and is stopped at the end of the session. Set
TEST_DATABASE_URL, TEST_REDIS_URL, TEST_KAFKA_BOOTSTRAP_SERVERS or TEST_S3_ENDPOINT_URL to
use an external server instead. Tests make their own unique ids, so nothing needs cleaning.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from taskstream import embedded

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its base folder is private to root, the PostgreSQL user must traverse it.
    path = Path(tempfile.mkdtemp(prefix="taskstream-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def database_urls(server_dir: Path) -> Iterator[dict[str, str]]:
    """PostgreSQL as three roles: ``admin`` (superuser), ``owner`` (ran the migrations, owns
    the schema) and ``app`` (what every process uses: SELECT and INSERT on events; see
    taskstream/dbroles.py). An external TEST_DATABASE_URL is used as all three."""
    from taskstream import dbroles
    from taskstream.migrate import upgrade

    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        upgrade(external)
        yield {"admin": external, "owner": external, "app": external}
        return
    server = embedded.start_postgres(server_dir / "pg", embedded.free_port(), fsync=False)
    try:
        dbroles.bootstrap(server.url)
        urls = {
            "admin": server.url,
            "owner": dbroles.role_url(server.url, dbroles.OWNER_ROLE),
            "app": dbroles.role_url(server.url, dbroles.APP_ROLE),
        }
        upgrade(urls["owner"])
        yield urls
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(database_urls: dict[str, str]) -> str:
    """The app role's URL: what the gateway, the relay and the tests' stores use."""
    return database_urls["app"]


@pytest.fixture(scope="session")
def owner_database_url(database_urls: dict[str, str]) -> str:
    return database_urls["owner"]


def _external_or_embedded(var: str, start: Callable[[], embedded.ServerProcess]) -> Iterator[str]:
    """The server named by ``var`` in the environment, or an embedded one for the session."""
    external = os.environ.get(var)
    if external:
        yield external
        return
    server = start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(server_dir: Path) -> Iterator[str]:
    yield from _external_or_embedded("TEST_REDIS_URL", lambda: embedded.start_valkey(server_dir / "valkey", embedded.free_port()))


@pytest.fixture(scope="session")
def tansu_bootstrap(server_dir: Path) -> Iterator[str]:
    yield from _external_or_embedded(
        "TEST_KAFKA_BOOTSTRAP_SERVERS", lambda: embedded.start_tansu(server_dir / "tansu", embedded.free_port())
    )


@pytest.fixture(scope="session")
def apache_kafka_bootstrap(server_dir: Path) -> Iterator[str]:
    """Skipped only when Java or Maven is missing (and not even then under
    TASKSTREAM_REQUIRE_APACHE_KAFKA=1, as in .ci/run); a broker that fails to start is a failure."""
    from tests.support.apache_kafka import ToolsMissing, apache_kafka

    try:
        with apache_kafka(server_dir / "apache-kafka", ROOT / "tests" / "kafka" / ".cache") as bootstrap:
            yield bootstrap
    except ToolsMissing as exc:
        if os.environ.get("TASKSTREAM_REQUIRE_APACHE_KAFKA") == "1":
            pytest.fail(f"the Apache Kafka leg is required here: {exc}")
        pytest.skip(f"Apache Kafka leg skipped: {exc}")


@pytest.fixture(scope="session", params=["tansu", "apache-kafka"])
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """Every test that touches the log runs against both brokers."""
    if request.param == "tansu":
        return str(request.getfixturevalue("tansu_bootstrap"))
    return str(request.getfixturevalue("apache_kafka_bootstrap"))


@pytest.fixture(scope="session")
def s3_endpoint(server_dir: Path) -> Iterator[str]:
    yield from _external_or_embedded("TEST_S3_ENDPOINT_URL", lambda: embedded.start_moto(server_dir / "moto", embedded.free_port()))


@pytest.fixture(scope="session")
async def store(database_url: str) -> AsyncIterator[object]:
    from event_store.postgres import PostgresEventStore

    s = await PostgresEventStore.connect(database_url, max_size=20)
    yield s
    await s.close()


def create_database(urls: dict[str, str]) -> str:
    """A new database on the same server, its roles set up and migrated as the owner; returns the
    app role's URL. For tests whose processes read every event."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    from taskstream import dbroles
    from taskstream.migrate import upgrade

    name = f"t_{uuid.uuid4().hex[:16]}"

    def on(url: str) -> str:
        return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))

    if urls["admin"] == urls["app"]:  # one external role for all: no roles to set up
        with psycopg.connect(urls["admin"], autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        upgrade(on(urls["admin"]))
        return on(urls["admin"])
    with psycopg.connect(urls["admin"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dbroles.bootstrap(on(urls["admin"]))
    upgrade(on(urls["owner"]))
    return on(urls["app"])


@pytest.fixture(scope="module")
def isolated_database_url(database_urls: dict[str, str]) -> str:
    """A database of this test module's own (same server as ``database_url``), as the app role."""
    return create_database(database_urls)


@pytest.fixture
def unique() -> str:
    """A short unique suffix so tests sharing servers never collide."""
    return uuid.uuid4().hex[:12]
