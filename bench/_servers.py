"""The servers a benchmark runs against: the ones named in the environment, else embedded ones."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from taskstream import embedded
from taskstream.migrate import upgrade


def servers(folder: Path, started: list[embedded.ServerProcess]) -> tuple[str, str, str]:
    """(database, Redis, Kafka) URLs: DATABASE_URL, REDIS_URL and KAFKA_BOOTSTRAP_SERVERS when all
    are set, else embedded PostgreSQL (fsync on, as in production), Valkey and tansu in ``folder``
    (appended to ``started``, for the caller to stop). The database is migrated either way."""
    urls = {k: os.environ.get(k) for k in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    if all(urls.values()):
        db_url, redis_url, kafka = urls["DATABASE_URL"], urls["REDIS_URL"], urls["KAFKA_BOOTSTRAP_SERVERS"]
    else:
        pg = embedded.start_postgres(folder / "pg", embedded.free_port(), fsync=True)
        started.append(pg)
        valkey = embedded.start_valkey(folder / "valkey", embedded.free_port())
        started.append(valkey)
        tansu = embedded.start_tansu(folder / "tansu", embedded.free_port())
        started.append(tansu)
        db_url, redis_url, kafka = pg.url, valkey.url, tansu.url
    assert db_url and redis_url and kafka
    upgrade(db_url)
    return db_url, redis_url, kafka


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user and system) of a process and of what it started: its own, its live
    children's (and theirs), and its exited children's (the children's times it holds). For
    PostgreSQL, the postmaster's: the live backends summed, the exited ones in its children's
    times. None if the process cannot be read (gone, or no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    total = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += cpu_seconds(int(child)) or 0.0  # None: it exited meanwhile
    return total


def start_system(folder: Path, started: list[embedded.ServerProcess], db_url: str, redis_url: str, kafka: str,
                 *, host: str = "127.0.0.1") -> tuple[str, dict[str, str], embedded.ServerProcess, str]:  # fmt: skip
    """The relay, a projector and the gateway as processes, as in production, over the given
    servers, on topics and a consumer group of their own; per-principal rate limits off (a bench
    is one principal). Returns (gateway URL, its environment, its process, the topic prefix)
    once the gateway is ready."""
    import asyncio
    import secrets
    import sys

    from http_write import wait_ready

    http_port = embedded.free_port()
    suffix = secrets.token_hex(4)
    prefix = f"bench{suffix}."
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "KAFKA_BOOTSTRAP_SERVERS": kafka,
           "HTTP_HOST": host, "HTTP_PORT": str(http_port), "JWT_SECRET": secrets.token_urlsafe(48),
           "TASKSTREAM_DEV_MODE": "1", "KAFKA_TOPIC_PREFIX": prefix, "RELAY_CHECKPOINT_NAME": f"relay-{suffix}",
           "PROJECTOR_GROUP_ID": f"projector-{suffix}", "PROJECTOR_SESSION_TIMEOUT": "3", "METRICS_PORT": "0",
           "RATE_LIMIT_WRITE_PER_MINUTE": "0", "RATE_LIMIT_READ_PER_MINUTE": "0", "BLOB_DIR": str(folder / "blobs")}  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    for name in ("relay", "project", "serve"):
        proc = embedded.spawn(name, [sys.executable, "-m", "taskstream.cli", name], folder / f"{name}.log", env=env, cwd=root)
        started.append(embedded.ServerProcess(name, "", 0, proc, folder / f"{name}.log"))
    gateway = started[-1]
    embedded.wait_until(lambda: embedded.accepts(http_port), gateway, timeout=60)
    base = f"http://{host}:{http_port}"
    asyncio.run(wait_ready(base, gateway.alive))
    return base, env, gateway, prefix
