"""The ``gwallet`` command, run as a real process: migrate, demo, ledger verify, serve."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.http_service import free_port

GWALLET = [sys.executable, "-m", "gwallet.cli"]


@pytest.fixture(scope="module")
def cli_env(
    admin_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Environment for the command: an empty database of its own, the session's Redis."""
    name = f"gwallet_cli_{os.getpid()}_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = admin_database_url.rsplit("/", 1)[0]
    env = {
        **os.environ,
        "GWALLET_DATABASE_URL": f"{base}/{name}",
        "GWALLET_REDIS_URL": redis_url,
        "GWALLET_DATA_DIR": str(tmp_path_factory.mktemp("cli-data")),
        "GWALLET_LOG_LEVEL": "INFO",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    yield env
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def gwallet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GWALLET, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_migrate_applies_every_migration_once_and_then_changes_nothing(
    cli_env: dict[str, str],
) -> None:
    first = gwallet(cli_env, "migrate")
    assert first.returncode == 0, first.stderr
    assert re.search(r"applied migrations: \[1, 2(, \d+)*\]", first.stdout)
    again = gwallet(cli_env, "migrate")
    assert (again.returncode, again.stdout.strip()) == (0, "database is up to date")


def test_demo_seeds_the_ledger_idempotently_and_verify_passes(cli_env: dict[str, str]) -> None:
    first = gwallet(cli_env, "demo")
    assert first.returncode == 0, first.stderr
    assert "treasury funds the program with 10,000,000 THB: ok" in first.stdout
    assert "(refused): exceeds_credits, linked_event_failed" in first.stdout
    assert "/schema" in first.stdout and "curl" in first.stdout
    again = gwallet(cli_env, "demo")
    assert "treasury funds the program with 10,000,000 THB: exists" in again.stdout
    verify = gwallet(cli_env, "ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] is True and report["transfers"] >= 8 and report["failures"] == []


def _requests_total(metrics_text: str, route: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("gwallet_http_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(("server", "workers"), [("granian", 1), ("uvicorn", 2)])
def test_serve_answers_http_and_metrics_add_up_over_all_workers(
    cli_env: dict[str, str], server: str, workers: int
) -> None:
    assert gwallet(cli_env, "migrate").returncode == 0
    port = free_port()
    process = subprocess.Popen(
        [*GWALLET, "serve", "--port", str(port), "--workers", str(workers), "--server", server],
        env=cli_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process)
        for _ in range(30):  # a new connection each time, so the workers share them
            assert httpx.get(base + "/healthz", headers={"Connection": "close"}).status_code == 200
        metrics = httpx.get(base + "/metrics").text
        assert _requests_total(metrics, "/healthz") == 30
        if workers > 1:
            files = list((Path(cli_env["GWALLET_DATA_DIR"]) / "prometheus").glob("counter_*.db"))
            assert len(files) == workers
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    lines = [line for line in stderr.splitlines() if line.strip()]
    not_json = [line for line in lines if not _is_json(line)]
    assert not not_json, not_json[:5]
    access = [json.loads(line) for line in lines if '"gwallet.access"' in line]
    assert sum(1 for line in access if line["route"] == "/healthz") == 30


def _wait_ready(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gwallet serve exited: {process.communicate()[1][-2000:]}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("gwallet serve did not become ready")


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
