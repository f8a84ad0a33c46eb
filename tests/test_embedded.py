"""The embedded fallback: with no database or Redis URL, the service starts its own servers.

Marked ``embedded`` (it initialises a PostgreSQL from scratch, a few seconds): deselect it
with ``-m "not embedded"`` when iterating. ``.ci/run`` also proves the same fallback through
the real ``gwallet serve`` command.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from gwallet.app import create_app
from gwallet.embedded import stop_redis
from gwallet.settings import Settings
from tests.http_service import serving

pytestmark = pytest.mark.embedded


def test_without_urls_the_service_starts_embedded_servers_migrates_and_is_ready(
    tmp_path: Path,
) -> None:
    settings = Settings(database_url=None, redis_url=None, data_dir=str(tmp_path))
    try:
        with serving(create_app(settings)) as url:
            ready = httpx.get(url + "/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"status": "ready", "postgres": "ok", "redis": "ok"}
        # A restart finds the servers and the migrated database in the same folder.
        with serving(create_app(settings)) as url:
            assert httpx.get(url + "/readyz", timeout=10).status_code == 200
        assert (tmp_path / "postgres").is_dir() and (tmp_path / "redis").is_dir()
    finally:
        stop_redis(tmp_path)
        _stop_postgres(tmp_path / "postgres")


def _stop_postgres(pgdata: Path) -> None:
    """Fast shutdown of the embedded server (it outlives its starter on purpose)."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
