"""loadtests.seed: a seeded database is one the real service reads, pays from and verifies.

A fresh database per test (``gwallet_seed_test_*``, dropped at the end), seeded with the
service's keys (explicit ones, as ``tests/wallet_helpers`` gives every wallet test), then the
real app over real HTTP (uvicorn on 127.0.0.1) acts as seeded citizens, merchants and officials.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from gwallet import totp
from gwallet.app import create_app
from gwallet.keys import load_signing_key
from gwallet.pii import PiiCipher
from gwallet.settings import Settings
from ledger_core import verify_ledger
from loadtests import population as P
from loadtests.seed import CAPS, PROGRAM_CODE, SeedRefused, seed
from tests.conftest import ROOT, _with_database
from tests.http_service import serving
from tests.wallet_helpers import registration_body, wallet_settings_for
from wallet.context import build_context

CITIZENS, MERCHANTS, ENROLLED, TOP_UP = 300, 30, 250, 500_000
SECRET = "seed-test-" + secrets.token_hex(4)


@pytest.fixture
async def seed_database_url(admin_database_url: str) -> AsyncIterator[str]:
    name = f"gwallet_seed_test_{os.getpid()}_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(admin_database_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield _with_database(admin_database_url, name)
    finally:
        conn = await asyncpg.connect(admin_database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def key() -> dict[str, str]:
    return {"Idempotency-Key": secrets.token_hex(12)}


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GWALLET_")}
    for name in ("pii_encryption_keys", "pii_lookup_keys", "pin_pepper_keys",
                 "bank_partner_secrets", "ledger_signing_key_hex", "data_dir"):
        env["GWALLET_" + name.upper()] = str(getattr(settings, name))
    return env


async def test_a_seeded_database_is_what_the_real_service_reads_and_pays_from(
    seed_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = wallet_settings_for(seed_database_url, redis_url, tmp_path, db_pool_max_size=4)
    manifest_path = tmp_path / "manifest.json"
    report = await seed(
        seed_database_url, CITIZENS, MERCHANTS, secret=SECRET, enrolled=ENROLLED,
        top_up=TOP_UP, settings=settings, manifest_path=manifest_path, progress=False,
    )
    manifest = report.manifest
    assert P.Manifest.read(manifest_path) == manifest
    assert (manifest.secret, manifest.citizens, manifest.merchants, manifest.enrolled,
            manifest.top_up, manifest.database_url) == (
        SECRET, CITIZENS, MERCHANTS, ENROLLED, TOP_UP, seed_database_url)
    assert list(report.phases) == [
        "migrate", "program", "merchants", "citizens", "enrolments", "top-ups", "vacuum"]
    assert report.database_bytes > 0 and report.total_seconds > 0
    assert report.quota == CITIZENS and report.budget == CITIZENS * CAPS["total"]

    # The rows, as the service counts them.
    conn = await asyncpg.connect(seed_database_url)
    try:
        program_id = await conn.fetchval("SELECT id FROM programs WHERE code = $1", PROGRAM_CODE)
        status = await conn.fetchval("SELECT status FROM programs WHERE id = $1", program_id)
        assert status == "active"
        counter = await conn.fetchrow(
            "SELECT enrolled, quota FROM enrolment_counters WHERE program_id = $1", program_id)
        assert (counter["enrolled"], counter["quota"]) == (ENROLLED, CITIZENS)
        counts = await conn.fetchrow("""
            SELECT (SELECT count(*) FROM citizens) AS citizens,
                   (SELECT count(*) FROM citizen_sessions) AS sessions,
                   (SELECT count(*) FROM enrolments WHERE status = 'active') AS enrolled,
                   (SELECT count(*) FROM merchants WHERE status = 'approved') AS merchants,
                   (SELECT count(*) FROM merchant_api_keys) AS keys,
                   (SELECT count(*) FROM topups) AS topups,
                   (SELECT sum(amount) FROM topups) AS topped_up,
                   (SELECT count(*) FROM ledger_accounts WHERE code = 200) AS wallets,
                   (SELECT count(*) FROM ledger_accounts WHERE code IN (300, 301)) AS payables""")
        assert dict(counts) == {
            "citizens": CITIZENS, "sessions": CITIZENS, "enrolled": ENROLLED,
            "merchants": MERCHANTS, "keys": MERCHANTS, "topups": CITIZENS,
            "topped_up": CITIZENS * TOP_UP, "wallets": CITIZENS, "payables": 2 * MERCHANTS}
        # Personal data decrypts with the service's cipher, bound to its row and field.
        pii: PiiCipher = build_context(settings).keys.pii
        cid = P.citizen_id(SECRET, 42)
        row = await conn.fetchrow(
            "SELECT national_id_encrypted, phone_encrypted FROM citizens WHERE id = $1", cid)
        assert pii.decrypt(row["national_id_encrypted"], row_id=cid, field="national_id") == \
            P.national_id(42)
        assert pii.decrypt(row["phone_encrypted"], row_id=cid, field="phone").startswith("+668")
        verified = await verify_ledger(conn, load_signing_key(settings).public_key())
        assert verified.ok, verified.failures
        assert verified.transfers == CITIZENS + 1  # the top-ups and the budget's funding
    finally:
        await conn.close()

    with serving(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as api:
            await _the_service_accepts_the_seeded_credentials(api, manifest, seed_database_url)

    # A second seed into the same database is refused, by the function and by the command.
    with pytest.raises(SeedRefused, match="already has citizens"):
        await seed(seed_database_url, 10, 1, settings=settings, progress=False)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "loadtests.seed", "--database-url", seed_database_url,
         "--citizens", "10", "--merchants", "1", "--manifest", str(tmp_path / "again.json"),
         "--quiet"],
        cwd=ROOT, env=cli_env(settings), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "already has citizens" in done.stderr
    assert not (tmp_path / "again.json").exists()


async def _the_service_accepts_the_seeded_credentials(
    api: httpx.AsyncClient, manifest: P.Manifest, database_url: str
) -> None:
    secret = manifest.secret
    payer = 7  # enrolled: citizens 0 .. enrolled-1 are
    citizen = bearer(P.citizen_session_token(secret, payer))

    wallet = await api.get("/v1/citizen/wallet", headers=citizen)
    assert wallet.status_code == 200, wallet.text
    body = wallet.json()
    assert (body["balance"], body["available"]) == (TOP_UP, TOP_UP)
    [program] = body["programs"]
    assert program["program_id"] == manifest.program_id
    assert (program["daily_cap"], program["monthly_cap"], program["total_cap"]) == (
        CAPS["daily"], CAPS["monthly"], CAPS["total"])

    outsider = await api.get(
        "/v1/citizen/wallet", headers=bearer(P.citizen_session_token(secret, CITIZENS - 1)))
    assert outsider.status_code == 200, outsider.text
    assert outsider.json()["programs"] == []  # beyond --enrolled

    # A seeded merchant's key asks for 300 THB; the seeded citizen quotes and pays with the PIN.
    merchant = bearer(P.merchant_api_key(secret, 3))
    request = await api.post("/v1/merchant/payment-requests",
                             json={"amount": 30_000, "reference": "seed-order-1"},
                             headers={**merchant, **key()})
    assert request.status_code == 201, request.text
    qr = request.json()["qr_payload"]
    quote = await api.post("/v1/citizen/payments/quote", json={"qr_payload": qr}, headers=citizen)
    assert quote.status_code == 200, quote.text
    line = quote.json()["programs"][0]
    assert (line["program_id"], line["subsidy_amount"], line["citizen_amount"]) == (
        manifest.program_id, 15_000, 15_000)
    paid = await api.post("/v1/citizen/payments",
                          json={"qr_payload": qr, "pin": P.citizen_pin(secret, payer)},
                          headers={**citizen, **key()})
    assert paid.status_code == 201, paid.text
    assert (paid.json()["subsidy_amount"], paid.json()["citizen_amount"]) == (15_000, 15_000)
    status = await api.get(
        f"/v1/merchant/payment-requests/{request.json()['payment_request_id']}", headers=merchant)
    assert status.json()["status"] == "paid"
    after = await api.get("/v1/citizen/wallet", headers=citizen)
    assert after.json()["balance"] == TOP_UP - 15_000

    # The lookup digest is the service's: the seeded national ID is already registered.
    again = await api.post("/v1/citizen/registrations",
                           json=registration_body(national_id=P.national_id(11)))
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "already_registered"

    # National ID + PIN + a code of the derived, confirmed authenticator log in.
    login = await api.post("/v1/citizen/sessions", json={
        "national_id": P.national_id(12), "pin": P.citizen_pin(secret, 12),
        "totp_code": totp.code_at_step(P.citizen_totp_secret(secret, 12),
                                       totp.step_at(datetime.now(UTC)))})
    assert login.status_code == 201, login.text

    # The seed's admin logs in (password derived, TOTP secret in the database) and verifies.
    conn = await asyncpg.connect(database_url)
    try:
        admin_totp = await conn.fetchval(
            "SELECT totp_secret FROM officials WHERE username = $1",
            P.official_username(secret, "admin"))
    finally:
        await conn.close()
    session = await api.post("/v1/admin/sessions", json={
        "username": P.official_username(secret, "admin"),
        "password": P.official_password(secret, "admin"),
        "totp_code": totp.code_at_step(admin_totp, totp.step_at(datetime.now(UTC)))})
    assert session.status_code == 201, session.text
    admin = bearer(session.json()["access_token"])
    verify = await api.get("/v1/admin/ledger/verify", headers=admin)
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True, verify.json()
    stats = await api.get(f"/v1/admin/programs/{manifest.program_id}/stats", headers=admin)
    assert stats.status_code == 200, stats.text
    assert stats.json()["enrolled"] == ENROLLED
    assert stats.json()["budget"]["funded"] == CITIZENS * CAPS["total"]


async def test_no_enrolments_and_no_top_ups_leave_a_counter_at_zero_and_a_clean_ledger(
    seed_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = wallet_settings_for(seed_database_url, redis_url, tmp_path, db_pool_max_size=4)
    with pytest.raises(ValueError, match="enrolled"):
        await seed(seed_database_url, 5, 1, enrolled=6, settings=settings, progress=False)
    with pytest.raises(ValueError, match="quota"):
        await seed(seed_database_url, 5, 1, quota=4, settings=settings, progress=False)
    report = await seed(seed_database_url, 5, 2, enrolled=0, top_up=0, quota=7, budget=123_456,
                        settings=settings, progress=False)
    assert (report.manifest.enrolled, report.manifest.top_up, report.quota) == (0, 0, 7)
    assert len(report.manifest.secret) >= 32  # random by default
    conn = await asyncpg.connect(seed_database_url)
    try:
        counter = await conn.fetchrow("SELECT enrolled, quota FROM enrolment_counters")
        assert (counter["enrolled"], counter["quota"]) == (0, 7)
        assert await conn.fetchval("SELECT count(*) FROM topups") == 0
        assert await conn.fetchval("SELECT count(*) FROM citizens") == 5
        verified = await verify_ledger(conn, load_signing_key(settings).public_key())
        assert verified.ok, verified.failures
        assert verified.transfers == 1  # the budget's funding only
        budget = await conn.fetchval(
            "SELECT a.credits_posted FROM programs p JOIN ledger_accounts a "
            "ON a.id = p.budget_account_id WHERE p.code = $1", PROGRAM_CODE)
        assert budget == 123_456
    finally:
        await conn.close()
