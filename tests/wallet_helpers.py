"""Citizens' test service and helpers (issue 4): explicit keys, a bank partner, citizens.

The fixtures are registered for every test module by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
from stdnum.th import pin as thai_pin

from gwallet import totp
from gwallet.app import create_app
from gwallet.settings import Settings
from tests.http_service import serving
from wallet.topups import new_webhook_id, new_webhook_secret, sign

PARTNER = "test_bank"
PARTNER_SECRET = new_webhook_secret()
OTHER_PARTNER = "other_bank"
OTHER_PARTNER_SECRET = new_webhook_secret()


def key_list(*ids: str) -> str:
    return ",".join(f"{key_id}:{secrets.token_hex(32)}" for key_id in ids)


def wallet_settings_for(
    database_url: str, redis_url: str, data_dir: Path, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "data_dir": str(data_dir),
        "ledger_batch_window_ms": 1.0,
        "ledger_signing_key_hex": bytes(range(32)).hex(),  # tests/ledger_helpers.SIGNING_KEY
        "pii_encryption_keys": key_list("t1"),
        "pii_lookup_keys": key_list("l1"),
        "pin_pepper_keys": key_list("p1"),
        "bank_partner_secrets": f"{PARTNER}:{PARTNER_SECRET},{OTHER_PARTNER}:{OTHER_PARTNER_SECRET}",
        "log_level": "WARNING",
        "db_pool_max_size": 5,  # PostgreSQL's connections are shared by every test's pools
        # Functional tests send bursts of hundreds of requests at one worker and expect each
        # to be served: admission control (tests/test_admission.py, test_budget_storm.py)
        # would turn the excess into fast 503s, as designed.
        "admission_max_in_flight": 0,
        "db_pool_acquire_timeout_seconds": 30.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def wallet_settings(database_url: str, redis_url: str, service_data_dir: Path) -> Settings:
    # The shared service's data directory: every app on the session's database must sign
    # the ledger's checkpoints with the one development key kept there.
    return wallet_settings_for(database_url, redis_url, service_data_dir)


@pytest.fixture(scope="session")
def wallet_service_url(wallet_settings: Settings) -> Iterator[str]:
    with serving(create_app(wallet_settings)) as url:
        yield url


@pytest.fixture(scope="session")
async def wallet_api(wallet_service_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=wallet_service_url, timeout=30) as client:
        yield client


# --- national IDs -------------------------------------------------------------------------

_used: set[str] = set()


def national_id(prefix: str = "1") -> str:
    """A fresh, valid 13-digit national ID (random, with its mod-11 check digit)."""
    while True:
        body = prefix + "".join(secrets.choice("0123456789") for _ in range(12 - len(prefix)))
        candidate = body + thai_pin.calc_check_digit(body)
        if candidate not in _used:
            _used.add(candidate)
            return candidate


def with_wrong_check_digit(value: str) -> str:
    return value[:-1] + str((int(value[-1]) + 1) % 10)


# --- citizens -----------------------------------------------------------------------------


@dataclass
class Citizen:
    national_id: str
    pin: str
    citizen_id: str
    wallet_id: str
    totp_secret: str
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def registration_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "national_id": national_id(),
        "phone": "0812345678",
        "full_name": "สมชาย ใจดี",
        "birth_date": "1985-04-12",
        "province_code": "10",
        "district_code": "1001",
        "pin": "482915",
    }
    body.update(overrides)
    return body


def secret_of(provisioning_uri: str) -> str:
    return parse_qs(urlsplit(provisioning_uri).query)["secret"][0]


def code(secret: str, offset: int = 0) -> str:
    return totp.code_at_step(secret, totp.step_at(datetime.now(UTC)) + offset)


def avoid_step_boundary() -> None:
    """Codes of neighbouring steps are used below; keep clear of a step change."""
    into = time.time() % totp.INTERVAL_SECONDS
    if into > totp.INTERVAL_SECONDS - 2.5:
        time.sleep(totp.INTERVAL_SECONDS - into + 0.05)


async def register(api: httpx.AsyncClient, **overrides: object) -> Citizen:
    body = registration_body(**overrides)
    response = await api.post("/v1/citizen/registrations", json=body)
    assert response.status_code == 201, response.text
    out = response.json()
    return Citizen(
        national_id=str(body["national_id"]),
        pin=str(body["pin"]),
        citizen_id=out["citizen_id"],
        wallet_id=out["wallet_id"],
        totp_secret=secret_of(out["totp_provisioning_uri"]),
    )


async def confirm(api: httpx.AsyncClient, citizen: Citizen, offset: int = -1) -> httpx.Response:
    return await api.post(
        "/v1/citizen/totp/confirm",
        json={"citizen_id": citizen.citizen_id, "code": code(citizen.totp_secret, offset)},
    )


async def login(
    api: httpx.AsyncClient, citizen: Citizen, offset: int = 0, pin: str | None = None
) -> httpx.Response:
    return await api.post(
        "/v1/citizen/sessions",
        json={
            "national_id": citizen.national_id,
            "pin": citizen.pin if pin is None else pin,
            "totp_code": code(citizen.totp_secret, offset),
        },
    )


async def signed_in(api: httpx.AsyncClient, **overrides: object) -> Citizen:
    """A registered citizen with a confirmed authenticator and a session (steps -1 and 0)."""
    avoid_step_boundary()
    citizen = await register(api, **overrides)
    assert (await confirm(api, citizen)).status_code == 200
    response = await login(api, citizen)
    assert response.status_code == 201, response.text
    citizen.token = response.json()["access_token"]
    citizen.headers = {"Authorization": f"Bearer {citizen.token}"}
    return citizen


# --- the bank -------------------------------------------------------------------------------


def signed_topup(
    body: dict[str, object] | bytes,
    *,
    secret: str = PARTNER_SECRET,
    webhook_id: str | None = None,
    at: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = sign(secret, webhook_id or new_webhook_id(), at or datetime.now(UTC), raw)
    return raw, {**headers, "content-type": "application/json"}


async def top_up(
    api: httpx.AsyncClient, wallet_id: str, amount: int, reference: str | None = None
) -> httpx.Response:
    raw, headers = signed_topup(
        {
            "wallet_id": wallet_id,
            "amount": amount,
            "bank_reference": reference or f"REF-{secrets.token_hex(8)}",
        }
    )
    return await api.post("/v1/bank/topups", content=raw, headers=headers)


def problem(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"].startswith("application/problem+json"), (
        response.status_code,
        response.text,
    )
    document = msgspec.json.decode(response.content)
    assert {"type", "title", "status", "detail", "code"} <= document.keys()
    assert document["status"] == response.status_code
    return document


async def gather(*coroutines):  # type: ignore[no-untyped-def]
    return await asyncio.gather(*coroutines)


# --- programs (rows of migration 0004, made directly: the back office is issue 3's) ----------


def program_spec(quota: int = 1_000, **changes: object) -> dict[str, object]:
    """A half-half spec whose registration is open all day, from yesterday for a month."""
    from datetime import timedelta

    from subsidy_rules.periods import bangkok

    today = bangkok(datetime.now(UTC)).date()
    spec: dict[str, object] = {
        "spec_version": 1,
        "code": f"test-{secrets.token_hex(6)}",
        "name_th": "คนละครึ่ง ทดสอบ",
        "name_en": "Half-half (test)",
        "kind": "co_payment",
        "budget_satang": 10_000_000,
        "quota": quota,
        "registration": {
            "start_date": (today - timedelta(days=1)).isoformat(),
            "end_date": (today + timedelta(days=30)).isoformat(),
            "hours": {"start": "00:00", "end": "24:00"},
        },
        "spending": {
            "start_date": today.isoformat(),
            "end_date": (today + timedelta(days=60)).isoformat(),
            "hours": {"start": "06:00", "end": "23:00"},
        },
        "first_use_deadline_days": 14,
        "citizen_eligibility": {"min_age": 18, "nationalities": ["TH"]},
        "rule": {
            "kind": "co_payment",
            "share_bp": 5000,
            "caps": {"daily": 20_000, "monthly": 100_000, "total": 240_000},
        },
    }
    spec.update(changes)
    return spec


async def make_program(pool, spec: dict[str, object], status: str = "active"):  # type: ignore[no-untyped-def]
    """Insert an approved program (two officials, the program, version 1 in force)."""
    import uuid
    from datetime import timedelta

    from subsidy_rules.spec import content_hash, spec_from_builtins

    parsed = spec_from_builtins(spec)
    now = datetime.now(UTC)
    maker, checker, program_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        for official, role in ((maker, "maker"), (checker, "checker")):
            await conn.execute(
                "INSERT INTO officials (id, username, role, password_hash, totp_secret) "
                "VALUES ($1, $2, $3, '$argon2id$test', 'AAAAAAAAAAAAAAAA')",
                official,
                f"{role}-{official.hex[:10]}",
                role,
            )
        await conn.execute(
            "INSERT INTO programs (id, code, kind, status, latest_version, budget_account_id, "
            "created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $7)",
            program_id,
            parsed.code,
            parsed.kind,
            status,
            uuid.uuid4(),
            maker,
            now,
        )
        await conn.execute(
            "INSERT INTO program_versions (program_id, version, spec, content_hash, status, "
            "effective_at, created_by, created_at, submitted_by, submitted_at, approved_by, "
            "approved_at) VALUES ($1, 1, $2::jsonb, $3, 'approved', $4, $5, $4, $5, $4, $6, $4)",
            program_id,
            msgspec.json.encode(parsed, order="sorted").decode(),
            content_hash(parsed),
            now - timedelta(hours=1),
            maker,
            checker,
        )
    return program_id
