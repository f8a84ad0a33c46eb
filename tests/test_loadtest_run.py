"""The load run end to end, tiny and bounded (~40 s), and the invariant checks failing on
deliberately broken data.

``python -m loadtests.run`` runs as a subprocess (Locust monkey-patches with gevent on
import: it must never load in this process): it seeds a fresh database, measures R_tpcb and
R_ping, starts the service, runs Locust headless, stops everything and checks the invariants.
The run keeps its database (``--keep``) so that copies of it can be broken here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from loadtests.invariants import check_invariants, public_key_of
from loadtests.ledger_bench import with_database

ROOT = Path(__file__).resolve().parent.parent
CHECKS = {"ledger_verifies", "subsidy_caps", "program_budgets", "enrolment_quotas",
          "idempotency_effects"}
RUN_TIMEOUT_SECONDS = 240  # the run takes ~40 s; this only stops a hung one


def own_redis_database(url: str, db: int = 6) -> str:
    """The same Redis server, another database: the run flushes the one it is given."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
    query = dict(parse_qsl(parts.query)) | {"db": str(db)}  # unix:// sockets
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def kept_run(
    admin_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One tiny lunch run whose database is kept for the tests below, dropped afterwards."""
    out = tmp_path_factory.mktemp("load-run")
    command = [
        sys.executable, "-m", "loadtests.run", "--scenario", "lunch", "--seconds", "8",
        "--users", "10", "--think-seconds", "0.2", "--citizens", "200", "--merchants", "20",
        "--workers", "1", "--locust-processes", "1", "--tpcb-seconds", "2",
        "--ping-seconds", "2", "--ping-users", "8", "--out", str(out),
        "--database-url", admin_database_url, "--redis-url", own_redis_database(redis_url),
        "--quiet", "--keep",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GWALLET_")}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_SECONDS)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    database = summary.get("settings", {}).get("database")
    try:
        yield {"result": result, "out": out, "summary": summary,
               "database_url": with_database(admin_database_url, database) if database else None}
    finally:
        if database:
            asyncio.run(_execute(admin_database_url,
                                 f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def test_one_command_seeds_serves_loads_and_checks_every_invariant_with_its_references(
    kept_run: dict[str, Any],
) -> None:
    result = kept_run["result"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    text = result.stdout
    for field in ("offered load", "payments", "errors", "fast refusals", "R_tpcb", "R_ping",
                  "payments/s / R_tpcb", "requests/s / R_ping", "pay p50", "p95", "p99",
                  "invariants     ALL HOLD"):
        assert field in text, (field, text)
    summary = kept_run["summary"]
    assert summary["r_tpcb_tps"] > 0 and summary["r_ping_rps"] > 0
    assert summary["payments"]["succeeded"] > 0, summary["payments"]
    assert summary["payments"]["in_database"] >= summary["payments"]["succeeded"]
    assert summary["payments"]["p50_ms"] > 0
    assert summary["offered"]["requests_per_second"] > 0
    assert summary["ratios"]["payments_per_s_over_r_tpcb"] > 0
    names = {(e["type"], e["name"]) for e in summary["endpoints"]}
    assert {("POST", "/v1/merchant/payment-requests"), ("POST", "/v1/citizen/payments/quote"),
            ("POST", "/v1/citizen/payments"), ("GET", "/v1/citizen/wallet")} <= names, names
    checks = summary["invariants"]["checks"]
    assert {c["name"] for c in checks} == CHECKS
    assert all(c["ok"] for c in checks), checks
    out: Path = kept_run["out"]
    for report in ("locust_stats.csv", "locust_failures.csv", "locust_stats_history.csv",
                   "locust.html", "ping_stats.csv", "service.log", "summary.json"):
        assert (out / report).stat().st_size > 0, report


# Each breaks one invariant in a copy of the run's database; the named check must fail.
BREAKAGES = {
    "a duplicated payment row": (
        "idempotency_effects",
        """
        INSERT INTO payments (id, payment_request_id, citizen_id, merchant_id, program_id,
            program_version, amount, subsidy_amount, citizen_amount, bounded_by, item_category,
            delivery, merchant_category, merchant_province_code, merchant_district_code,
            citizen_province_code, citizen_district_code, business_date, created_at)
        SELECT gen_random_uuid(), gen_random_uuid(), citizen_id, merchant_id, program_id,
            program_version, amount, subsidy_amount, citizen_amount, bounded_by, item_category,
            delivery, merchant_category, merchant_province_code, merchant_district_code,
            citizen_province_code, citizen_district_code, business_date, created_at
        FROM payments WHERE subsidy_amount > 0 LIMIT 1
        """,
    ),
    "a usage row beyond the caps": (
        "subsidy_caps",
        """
        UPDATE subsidy_usage SET used_day = 240001, used_month = 240001, used_total = 240001
        WHERE (citizen_id, program_id) IN (SELECT citizen_id, program_id FROM subsidy_usage
                                           LIMIT 1)
        """,
    ),
    "an enrolment counter off by one": (
        "enrolment_quotas",
        "UPDATE enrolment_counters SET enrolled = enrolled - 1",
    ),
    "a payment transfer rewritten": (
        "ledger_verifies",
        """
        UPDATE ledger_transfers SET amount = amount + 1
        WHERE id = (SELECT id FROM ledger_transfers WHERE code = 400 LIMIT 1)
        """,
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
async def test_the_invariant_checks_fail_on_a_database_with_one_invariant_broken(
    kept_run: dict[str, Any], admin_database_url: str, breakage: str
) -> None:
    source = kept_run["database_url"]
    assert source, kept_run["result"].stderr[-3000:]
    check, statement = BREAKAGES[breakage]
    name = f"gwallet_load_broken_{os.getpid()}_{check}"
    source_name = urlsplit(source).path.lstrip("/")
    await _execute(admin_database_url, f'DROP DATABASE IF EXISTS "{name}"',
                   f'CREATE DATABASE "{name}" TEMPLATE "{source_name}"')
    try:
        url = with_database(admin_database_url, name)
        intact = await check_invariants(url)
        assert intact.ok, intact.lines()
        # Triggers may refuse changes (the ledger is append-only): the saboteur disables them.
        await _execute(url, "SET session_replication_role = replica", statement)
        broken = await check_invariants(url, public_key_of(None, None))
        assert not broken.ok
        assert check in broken.failed(), broken.lines()
    finally:
        await _execute(admin_database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
