"""The servers a benchmark runs against: the ones named in the environment, else embedded ones."""

from __future__ import annotations

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
