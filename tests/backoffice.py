"""Helpers of the back-office tests: officials who log in over HTTP, program specs, programs
brought to a state, and payment history inserted straight into ``payments``."""

from __future__ import annotations

import copy
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from gwallet.officials import Role, create_official
from gwallet.totp import code_at_step, step_at
from subsidy_rules.examples import KHON_LA_KHRUENG_PLUS_2025
from subsidy_rules.periods import BANGKOK

PROGRAMS = "/v1/admin/programs"


@dataclass
class Official:
    official_id: str
    username: str
    role: str
    password: str
    secret: str
    token: str | None = None
    last_step: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        assert self.token is not None
        return {"Authorization": f"Bearer {self.token}"}

    def peek(self) -> str:
        """The current code, without taking it (for requests that must fail anyway)."""
        return code_at_step(self.secret, step_at(datetime.now(UTC)))

    def code(self) -> str:
        """A TOTP code not used yet: this step or the next (each is accepted once).

        Two fresh codes per 30 s per official; tests that need more make more officials.
        """
        current = step_at(datetime.now(UTC))
        for step in (current, current + 1):
            if self.last_step is None or step > self.last_step:
                self.last_step = step
                return code_at_step(self.secret, step)
        raise AssertionError("no fresh TOTP code left for this official in this window")


async def new_official(
    pool: asyncpg.Pool, api: httpx.AsyncClient, role: str, *, login: bool = True
) -> Official:
    username = f"{role}-{secrets.token_hex(5)}"
    async with pool.acquire() as conn, conn.transaction():
        created = await create_official(
            conn, username=username, role=Role(role), password=None, created_by=None
        )
    assert created.password is not None
    official = Official(
        official_id=created.official.official_id,
        username=username,
        role=role,
        password=created.password,
        secret=created.totp_secret,
    )
    if login:
        response = await api.post(
            "/v1/admin/sessions",
            json={
                "username": username,
                "password": official.password,
                "totp_code": official.code(),
            },
        )
        assert response.status_code == 201, response.text
        official.token = response.json()["access_token"]
    return official


@pytest.fixture(scope="module")
async def staff(api: httpx.AsyncClient, pool: asyncpg.Pool) -> dict[str, Official]:
    """A maker, an admin and an auditor shared by a module's tests (they need no TOTP code
    after their login; checkers do, so each test gets its own from ``team``)."""
    roles = ("maker", "admin", "auditor")
    return {role: await new_official(pool, api, role) for role in roles}


@pytest.fixture
async def team(
    staff: dict[str, Official], api: httpx.AsyncClient, pool: asyncpg.Pool
) -> dict[str, Official]:
    return {**staff, "checker": await new_official(pool, api, "checker")}


def key() -> dict[str, str]:
    return {"Idempotency-Key": secrets.token_hex(8)}


def spec(**changes: Any) -> dict[str, Any]:
    """A half-half program spec (Plus 2025) with a code of its own and a small budget."""
    out = copy.deepcopy(KHON_LA_KHRUENG_PLUS_2025)
    out["code"] = f"test-{secrets.token_hex(6)}"
    out["budget_satang"] = 10_000_000  # 100,000 THB
    out.update(changes)
    return out


async def create_program(api: httpx.AsyncClient, maker: Official, body: dict[str, Any]) -> dict:
    response = await api.post(PROGRAMS, json={"spec": body}, headers={**maker.headers, **key()})
    assert response.status_code == 201, response.text
    return response.json()


async def submit(api: httpx.AsyncClient, maker: Official, program: dict) -> dict:
    response = await api.post(
        f"{PROGRAMS}/{program['program_id']}/submit",
        json={"version": program["version"]},
        headers=maker.headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


async def approve(
    api: httpx.AsyncClient, checker: Official, program: dict, *, fresh: bool = True
) -> httpx.Response:
    """``fresh=False`` for an approval refused before its TOTP code is looked at."""
    return await api.post(
        f"{PROGRAMS}/{program['program_id']}/approve",
        json={
            "version": program["version"],
            "content_hash": program["content_hash"],
            "totp_code": checker.code() if fresh else checker.peek(),
        },
        headers=checker.headers,
    )


async def approved_program(
    api: httpx.AsyncClient, maker: Official, checker: Official, body: dict | None = None
) -> dict:
    program = await submit(api, maker, await create_program(api, maker, body or spec()))
    response = await approve(api, checker, program)
    assert response.status_code == 200, response.text
    return response.json()


async def lifecycle(
    api: httpx.AsyncClient, admin: Official, program: dict, action: str
) -> httpx.Response:
    return await api.post(
        f"{PROGRAMS}/{program['program_id']}/{action}",
        json={"reason": "test"},
        headers=admin.headers,
    )


async def fund(
    api: httpx.AsyncClient, maker: Official, checker: Official, program: dict, amount: int
) -> dict:
    base = f"{PROGRAMS}/{program['program_id']}/funding"
    requested = await api.post(base, json={"amount": amount}, headers={**maker.headers, **key()})
    assert requested.status_code == 201, requested.text
    funding_id = requested.json()["funding_id"]
    approved = await api.post(
        f"{base}/{funding_id}/approve",
        json={"totp_code": checker.code()},
        headers={**checker.headers, **key()},
    )
    assert approved.status_code == 200, approved.text
    return approved.json()


def bangkok_time(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=BANGKOK)


async def insert_payment(
    pool: asyncpg.Pool,
    *,
    program_uuid: uuid.UUID | None,
    at: datetime,
    amount: int,
    subsidy: int,
    citizen_id: uuid.UUID | None = None,
    merchant_id: uuid.UUID | None = None,
    category: str = "grocery",
    province: str = "10",
    district: str = "1001",
    item_category: str | None = None,
) -> None:
    """A payment row as the payment path writes it (history for stats and simulation)."""
    await pool.execute(
        """
        INSERT INTO payments (id, payment_request_id, citizen_id, merchant_id, program_id,
            program_version, amount, subsidy_amount, citizen_amount, item_category,
            merchant_category, merchant_province_code, merchant_district_code,
            citizen_province_code, citizen_district_code, business_date, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $12, $13, $14, $15)
        """,
        uuid.uuid4(),
        uuid.uuid4(),
        citizen_id or uuid.uuid4(),
        merchant_id or uuid.uuid4(),
        program_uuid,
        None if program_uuid is None else 1,
        amount,
        subsidy,
        amount - subsidy,
        item_category,
        category,
        province,
        district,
        at.astimezone(BANGKOK).date(),
        at,
    )


def today_bangkok() -> date:
    return datetime.now(BANGKOK).date()


def days_ago(n: int) -> date:
    return today_bangkok() - timedelta(days=n)
