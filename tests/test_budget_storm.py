"""10,000 concurrent payers against a program budget that covers 2,500 subsidies (issue 5).

A database seeded by ``loadtests.seed`` (10,000 citizens, topped up and enrolled in a funded
half-half program, and 40 merchants), one open payment request per payer, and the real
service (``gwallet serve --workers 2``: two processes, each with its own ledger engine, both
spending the one budget). All 10,000 payers pay at once over HTTP; up to ``IN_FLIGHT``
requests are on the wire at a moment (one socket each). The budget is spent exactly: 2,500
payments get their subsidy, every other one is paid in full by the citizen with none, and the
budget account ends at 0, never below. Clients behave as the API asks: a refusal with
Retry-After (503 ``overloaded`` under this storm) or a lost connection is retried with the same
Idempotency-Key, which makes it safe.

The payment requests are written straight into the database (with the QR payload the service
itself builds): creating them is the merchants' part, tested elsewhere; here the storm is
the payers'.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from gwallet.ids import parse_id
from ledger_core import new_id, verify_ledger
from loadtests import population as P
from loadtests.seed import seed
from merchant_api.payment_requests import qr_payload
from tests.conftest import ROOT
from tests.http_service import free_port
from tests.test_seed import cli_env, seed_database_url  # noqa: F401 - a fixture
from tests.wallet_helpers import wallet_settings_for

PAYERS = 10_000
MERCHANTS = 40
AMOUNT = 2_000  # satang; the half-half program's share is 1,000, within every cap
SUBSIDY = 1_000
COVERED = 2_500
BUDGET = COVERED * SUBSIDY
TOP_UP = 10_000
IN_FLIGHT = 1_000
CLIENTS = 4

pytestmark = pytest.mark.slow


async def open_requests(database_url: str, secret: str) -> list[str]:
    """One open payment request per payer, payer i's at merchant i % MERCHANTS."""
    conn = await asyncpg.connect(database_url)
    try:
        merchants = {row["id"]: row for row in await conn.fetch(
            "SELECT id, name, province_code FROM merchants")}
        now = datetime.now(UTC)
        rows, payloads = [], []
        for i in range(PAYERS):
            merchant = merchants[P.merchant_id(secret, i % MERCHANTS)]
            request_id = new_id()
            payload = qr_payload(payment_request_id=request_id, amount=AMOUNT,
                                 merchant_id=merchant["id"], merchant_name=merchant["name"],
                                 province_code=merchant["province_code"])
            rows.append((request_id, merchant["id"], AMOUNT, f"storm-{i}", payload, now,
                         now + timedelta(minutes=30)))
            payloads.append(payload)
        await conn.copy_records_to_table(
            "payment_requests", records=rows,
            columns=["id", "merchant_id", "amount", "reference", "qr_payload", "created_at",
                     "expires_at"])
        return payloads
    finally:
        await conn.close()


async def _send(client: httpx.AsyncClient, path: str, body: dict, headers: dict[str, str]
                ) -> httpx.Response:
    """A well-behaved client: a fast refusal (429/503 with Retry-After) or a connection lost
    before the answer is tried again, with the same body and Idempotency-Key, after a pause."""
    for _ in range(400):
        try:
            response = await client.post(path, json=body, headers=headers)
        except httpx.TransportError:
            await asyncio.sleep(0.05 + secrets.randbelow(100) / 1000)
            continue
        if response.status_code not in (429, 503) or "retry-after" not in response.headers:
            return response
        await asyncio.sleep(0.05 + secrets.randbelow(200) / 1000)
    raise AssertionError(f"{path}: still refused after 400 tries")


async def test_ten_thousand_concurrent_payers_spend_exactly_the_budget_and_never_more(
    seed_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = wallet_settings_for(seed_database_url, redis_url, tmp_path)
    secret = "storm-" + secrets.token_hex(4)
    report = await seed(seed_database_url, PAYERS, MERCHANTS, secret=secret, top_up=TOP_UP,
                        budget=BUDGET, settings=settings, progress=False)
    program_id = report.manifest.program_id
    qrs = await open_requests(seed_database_url, secret)

    port = free_port()
    env = {**cli_env(settings), "GWALLET_DATABASE_URL": seed_database_url,
           "GWALLET_REDIS_URL": redis_url, "GWALLET_LOG_LEVEL": "WARNING",
           "GWALLET_DB_POOL_MAX_SIZE": "6"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gwallet.cli", "serve", "--workers", "2", "--port", str(port)],
        env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=IN_FLIGHT // CLIENTS,
                          max_keepalive_connections=IN_FLIGHT // CLIENTS)
    clients = [httpx.AsyncClient(base_url=base, timeout=60, limits=limits)
               for _ in range(CLIENTS)]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (await clients[0].get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "no service"
            await asyncio.sleep(0.1)
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def pay(i: int) -> httpx.Response:
            async with gate:
                return await _send(
                    clients[i % CLIENTS], "/v1/citizen/payments",
                    {"qr_payload": qrs[i], "pin": P.citizen_pin(secret, i)},
                    {"Authorization": f"Bearer {P.citizen_session_token(secret, i)}",
                     "Idempotency-Key": f"storm-pay-{i}"})

        responses = await asyncio.gather(*(pay(i) for i in range(PAYERS)))
    finally:
        for client in clients:
            await client.aclose()
        server.terminate()
        server.wait(timeout=30)

    failed = [r.text for r in responses if r.status_code != 201]
    assert not failed, (len(failed), failed[:3])
    subsidies = [r.json()["subsidy_amount"] for r in responses]
    assert sum(subsidies) == BUDGET
    assert sorted(set(subsidies)) == [0, SUBSIDY]  # the budget was a multiple of the share
    assert subsidies.count(SUBSIDY) == COVERED
    assert all(r.json()["citizen_amount"] + r.json()["subsidy_amount"] == AMOUNT
               for r in responses)

    conn = await asyncpg.connect(seed_database_url)
    try:
        budget = await conn.fetchrow(
            "SELECT a.debits_posted, a.credits_posted, a.debits_pending "
            "FROM programs p JOIN ledger_accounts a ON a.id = p.budget_account_id "
            "WHERE p.id = $1", parse_id("prg", program_id))
        assert budget["credits_posted"] == BUDGET  # funded once, with exactly the budget
        assert budget["debits_posted"] == BUDGET and budget["debits_pending"] == 0
        paid = await conn.fetchrow(
            "SELECT count(*) AS n, sum(subsidy_amount) AS subsidy, "
            "count(DISTINCT payment_request_id) AS requests FROM payments")
        assert (paid["n"], paid["subsidy"], paid["requests"]) == (PAYERS, BUDGET, PAYERS)
        assert await conn.fetchval(
            "SELECT count(*) FROM payment_requests WHERE status <> 'paid'") == 0
        verified = await verify_ledger(conn, None)
        assert verified.ok, verified.failures[:3]
    finally:
        await conn.close()
