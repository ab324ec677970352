"""The fault suite (`make chaos`) at a small size: a few relay kills, one broker restart, one
PostgreSQL restart, one Redis outage, under HTTP write load; every check must hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.suite import Config, run_suite

pytestmark = pytest.mark.kafka


async def test_the_write_path_survives_the_fault_suite(server_dir: Path) -> None:
    home = server_dir / "chaos"
    home.mkdir()
    home.chmod(0o755)
    result = await run_suite(Config(relay_kills=4, writers=3, kill_delay=(0.3, 1.2), outage=1.0, settle=1.0), home)
    assert result["ok"], json.dumps(result)
    assert result["relay_kills"] == 4 and result["broker_restarts"] == result["postgres_restarts"] == result["redis_outages"] == 1
    assert result["writes_acked"] > 50 and result["events_missing_in_log"] == 0 and result["streams_out_of_order"] == 0
