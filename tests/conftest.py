"""Shared fixtures: a real, freshly migrated PostgreSQL database and a real Redis.

The servers come from ``GWALLET_TEST_DATABASE_URL`` (default: the machine's PostgreSQL on
127.0.0.1:5432) and ``GWALLET_TEST_REDIS_URL`` (default: 127.0.0.1:6379, database 15).
Where none answers, the embedded servers are started instead, as the service itself does.
Each test session gets its own database, created here and dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis_asyncio

from gwallet.embedded import start_postgres, start_redis
from gwallet.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = ROOT / ".gwallet-data" / "test"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
TEST_LEDGER_SIGNING_KEY_HEX = bytes(range(32)).hex()  # tests/ledger_helpers.SIGNING_KEY


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    if not parts.hostname or parts.hostname.startswith("/"):
        return True  # a socket path: let the driver report any problem
    try:
        with socket.create_connection((parts.hostname, parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def admin_database_url() -> str:
    """A URL to a maintenance database on a server where test databases may be created."""
    url = os.environ.get("GWALLET_TEST_DATABASE_URL", DEFAULT_ADMIN_URL)
    if _answers(url, 5432):
        return url
    return start_postgres(TEST_DATA_DIR, database="postgres")


@pytest.fixture(scope="session")
def database_url(admin_database_url: str) -> Iterator[str]:
    """A fresh database, migrated, for this test session only."""
    name = f"gwallet_test_{os.getpid()}_{secrets.token_hex(3)}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_database_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin_database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    url = _with_database(admin_database_url, name)
    asyncio.run(migrate(url))
    yield url
    asyncio.run(drop())


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("GWALLET_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    if _answers(url, 6379):
        return url
    return start_redis(TEST_DATA_DIR)


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=20)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis_client(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


# --- The HTTP service (gwallet.app), served by uvicorn on 127.0.0.1 for the session ---------
# (Imported here, below the ledger fixtures, to keep this part of the file self-contained.)

import httpx  # noqa: E402

from gwallet.app import create_app  # noqa: E402
from gwallet.settings import Settings  # noqa: E402
from tests.http_service import free_port, serving  # noqa: E402
from tests.routes_for_tests import CREATE_TEST_TABLES, TEST_ROUTES  # noqa: E402

def _service_settings(database_url: str, redis_url: str, data_dir: Path, **overrides) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=str(data_dir),
        ledger_batch_window_ms=1.0,
        # Every engine on the session's database signs checkpoints with the same key, so
        # that verify (with any app's key) checks them all.
        ledger_signing_key_hex=TEST_LEDGER_SIGNING_KEY_HEX,
        **overrides,
    )


@pytest.fixture(scope="session")
def service_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gwallet-data")


@pytest.fixture(scope="session")
def service_url(database_url: str, redis_url: str, service_data_dir: Path) -> Iterator[str]:
    """The app with the test-only routes, against the session's database and Redis."""

    async def create_tables() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(CREATE_TEST_TABLES)
        finally:
            await conn.close()

    asyncio.run(create_tables())
    settings = _service_settings(database_url, redis_url, service_data_dir)
    with serving(create_app(settings, route_handlers=TEST_ROUTES)) as url:
        yield url


@pytest.fixture(scope="session")
def service_without_redis_url(database_url: str, service_data_dir: Path, service_url: str) -> Iterator[str]:
    """The same app whose Redis is down (nothing listens on its port), with a 1 s time limit."""
    settings = _service_settings(
        database_url,
        f"redis://127.0.0.1:{free_port()}/0",
        service_data_dir,
        request_timeout_seconds=1.0,
        readiness_timeout_seconds=0.5,
    )
    with serving(create_app(settings, route_handlers=TEST_ROUTES)) as url:
        yield url


@pytest.fixture(scope="session")
async def api(service_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service_url, timeout=15) as client:
        yield client


@pytest.fixture(scope="session")
async def api_without_redis(service_without_redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service_without_redis_url, timeout=15) as client:
        yield client


# --- Citizens (issue 4): the wallet's service with explicit keys (tests/wallet_helpers.py) ---
from tests.wallet_helpers import wallet_api, wallet_service_url, wallet_settings  # noqa: E402,F401

# --- Officials (issue 3): the back office's shared officials (tests/backoffice.py) ---------
from tests.backoffice import staff, team  # noqa: E402,F401
