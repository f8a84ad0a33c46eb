"""Enrolment: first come, first served, exact under any concurrency; forfeited rights return."""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import httpx
import pytest
import redis.asyncio as redis_asyncio

from gwallet.ids import format_id, parse_id
from subsidy_rules.enrolment import first_use_deadline, is_forfeited
from subsidy_rules.periods import bangkok
from subsidy_rules.service import version_at
from tests.http_service import free_port
from tests.wallet_helpers import make_program, problem, program_spec, signed_in
from wallet import enrolment

pytestmark = pytest.mark.usefixtures("wallet_api")


def enrol_path(program_id: uuid.UUID | str) -> str:
    text = program_id if isinstance(program_id, str) else format_id("prg", program_id)
    return f"/v1/citizen/programs/{text}/enrolment"


async def test_a_citizen_enrols_once_and_a_repeat_returns_the_same_enrolment(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    program_id = await make_program(pool, program_spec(quota=5))
    citizen = await signed_in(wallet_api)
    first = await wallet_api.post(enrol_path(program_id), headers=citizen.headers)
    assert first.status_code == 201, first.text
    out = first.json()
    assert out["enrolment_id"].startswith("enr_") and out["status"] == "active"
    assert out["program_id"] == format_id("prg", program_id) and out["citizen_id"] == citizen.citizen_id
    deadline = datetime.fromisoformat(out["first_use_deadline"])
    assert timedelta(days=14) < deadline - datetime.now(UTC) <= timedelta(days=16)
    again = await wallet_api.post(enrol_path(program_id), headers=citizen.headers)
    assert again.status_code == 200 and again.json() == out
    counted = await pool.fetchval(
        "SELECT enrolled FROM enrolment_counters WHERE program_id = $1", program_id
    )
    assert counted == 1


async def all_programs(api: httpx.AsyncClient, headers: dict[str, str]) -> list[dict]:
    """Every page of GET /v1/citizen/programs (oldest first: the session's database holds
    other tests' programs too)."""
    out: list[dict] = []
    params: dict[str, object] = {"limit": 100}
    while True:
        page = (await api.get("/v1/citizen/programs", params=params, headers=headers)).json()
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        params["starting_after"] = page["data"][-1]["program_id"]


async def test_the_quota_is_first_come_first_served_then_409_quota_exhausted(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    program_id = await make_program(pool, program_spec(quota=2))
    citizens = [await signed_in(wallet_api) for _ in range(3)]
    statuses = []
    for citizen in citizens:
        statuses.append(await wallet_api.post(enrol_path(program_id), headers=citizen.headers))
    assert [r.status_code for r in statuses] == [201, 201, 409]
    assert problem(statuses[2])["code"] == "quota_exhausted"
    # An enrolled citizen still gets the enrolment back once the program is full.
    assert (await wallet_api.post(enrol_path(program_id), headers=citizens[0].headers)).status_code == 200
    listed = await all_programs(wallet_api, citizens[2].headers)
    mine = next(p for p in listed if p["program_id"] == format_id("prg", program_id))
    assert mine["citizen_status"] == "quota_exhausted" and mine["enrolled_count"] == 2


async def test_an_ineligible_citizen_is_403_not_eligible_with_the_reason(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    program_id = await make_program(
        pool, program_spec(citizen_eligibility={"min_age": 18, "province_codes": ["50"]})
    )
    child = await signed_in(wallet_api, birth_date="2015-03-01")
    response = await wallet_api.post(enrol_path(program_id), headers=child.headers)
    assert response.status_code == 403
    body = problem(response)
    assert body["code"] == "not_eligible" and "age" in str(body["detail"])
    assert body["errors"][0]["field"] == "eligibility.age"  # type: ignore[index]
    bangkok_resident = await signed_in(wallet_api)  # province 10, the program wants 50
    response = await wallet_api.post(enrol_path(program_id), headers=bangkok_resident.headers)
    assert response.status_code == 403 and "province" in str(problem(response)["detail"])
    chiang_mai = await signed_in(wallet_api, province_code="50", district_code="5001")
    assert (await wallet_api.post(enrol_path(program_id), headers=chiang_mai.headers)).status_code == 201


async def test_programs_exclude_holders_of_another_program(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    welfare = program_spec()
    welfare_id = await make_program(pool, welfare)
    half_half = await make_program(
        pool, program_spec(citizen_eligibility={"excluded_if_holding": [welfare["code"]]})
    )
    citizen = await signed_in(wallet_api)
    assert (await wallet_api.post(enrol_path(welfare_id), headers=citizen.headers)).status_code == 201
    response = await wallet_api.post(enrol_path(half_half), headers=citizen.headers)
    assert response.status_code == 403 and problem(response)["errors"][0]["field"] == (  # type: ignore[index]
        "eligibility.excluded_program"
    )


async def test_registration_hours_dates_and_program_status_are_enforced(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    today = bangkok(datetime.now(UTC)).date()
    closed_window = await make_program(pool, program_spec(registration={
        "start_date": (today - timedelta(days=10)).isoformat(),
        "end_date": (today - timedelta(days=1)).isoformat(),
        "hours": {"start": "00:00", "end": "24:00"},
    }))
    not_yet = await make_program(pool, program_spec(registration={
        "start_date": (today + timedelta(days=1)).isoformat(),
        "end_date": (today + timedelta(days=10)).isoformat(),
        "hours": {"start": "06:00", "end": "22:00"},
    }))
    closed_program = await make_program(pool, program_spec(), status="closed")
    paused = await make_program(pool, program_spec(), status="paused")
    draft = await make_program(pool, program_spec(), status="approved")
    await pool.execute("UPDATE programs SET status = 'submitted', budget_account_id = NULL "
                       "WHERE id = $1", draft)
    citizen = await signed_in(wallet_api)
    expected = [
        (closed_window, 422, "registration_closed"),
        (not_yet, 422, "registration_not_open"),
        (closed_program, 422, "registration_closed"),
        (paused, 422, "registration_not_open"),
        (draft, 404, "not_found"),
        (uuid.uuid4(), 404, "not_found"),
        ("prg_nonsense", 404, "not_found"),
        ("cit_" + "0" * 26, 404, "not_found"),
    ]
    for program_id, status, code in expected:
        response = await wallet_api.post(enrol_path(program_id), headers=citizen.headers)
        assert (response.status_code, problem(response)["code"]) == (status, code), program_id
    statuses = {p["program_id"]: p["citizen_status"]
                for p in await all_programs(wallet_api, citizen.headers)}
    assert statuses[format_id("prg", not_yet)] == "registration_not_open"
    assert statuses[format_id("prg", paused)] == "registration_not_open"
    assert format_id("prg", closed_program) not in statuses  # closed and not enrolled
    assert format_id("prg", draft) not in statuses


async def test_the_program_list_pages_by_cursor(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    for _ in range(3):
        await make_program(pool, program_spec())
    citizen = await signed_in(wallet_api)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"starting_after": cursor} if cursor else {})}
        page = (await wallet_api.get("/v1/citizen/programs", params=params, headers=citizen.headers)).json()
        seen += [p["program_id"] for p in page["data"]]
        if not page["has_more"]:
            break
        cursor = seen[-1]
    assert len(seen) == len(set(seen)) >= 3 and seen == sorted(seen, key=lambda p: parse_id("prg", p))


async def test_forfeited_rights_return_to_the_quota(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool, redis_client: redis_asyncio.Redis
) -> None:
    program_id = await make_program(pool, program_spec(quota=1))
    first, second = await signed_in(wallet_api), await signed_in(wallet_api)
    assert (await wallet_api.post(enrol_path(program_id), headers=first.headers)).status_code == 201
    full = await wallet_api.post(enrol_path(program_id), headers=second.headers)
    assert full.status_code == 409
    assert await redis_client.exists(f"gwallet:enrolment:full:{program_id}")
    # The first-use deadline of the first right passes unused.
    first_id = parse_id("cit", first.citizen_id)
    await pool.execute(
        "UPDATE enrolments SET first_use_deadline = now() - interval '5 minutes 1 second' "
        "WHERE program_id = $1 AND citizen_id = $2",
        program_id, first_id,
    )
    # On demand: the next enrolment that finds the program full releases the lapsed right.
    # (The "full" flags, in Redis and in this process, would expire within seconds; forget
    # them as their expiry would.)
    await redis_client.delete(f"gwallet:enrolment:full:{program_id}")
    enrolment.forget_programs()
    again = await wallet_api.post(enrol_path(program_id), headers=second.headers)
    assert again.status_code == 201, again.text
    lapsed = await wallet_api.post(enrol_path(program_id), headers=first.headers)
    assert lapsed.status_code == 200 and lapsed.json()["status"] == "forfeited"
    rows = await pool.fetch(
        "SELECT status FROM enrolments WHERE program_id = $1 ORDER BY enrolled_at", program_id
    )
    assert [r["status"] for r in rows] == ["forfeited", "active"]
    assert await pool.fetchval(
        "SELECT enrolled FROM enrolment_counters WHERE program_id = $1", program_id
    ) == 1


async def test_the_periodic_release_agrees_with_is_forfeited_and_clears_the_full_flag(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool, redis_client: redis_asyncio.Redis
) -> None:
    program_id = await make_program(pool, program_spec(quota=3))
    citizens = [await signed_in(wallet_api) for _ in range(3)]
    for citizen in citizens:
        assert (await wallet_api.post(enrol_path(program_id), headers=citizen.headers)).status_code == 201
    version = await version_at(pool, program_id, datetime.now(UTC))
    assert version is not None
    rows = await pool.fetch("SELECT * FROM enrolments WHERE program_id = $1", program_id)
    for row in rows:
        assert row["first_use_deadline"] == first_use_deadline(row["enrolled_at"], version)
    used, unused, paid = rows[0]["id"], rows[1]["id"], rows[2]["id"]
    later = max(r["first_use_deadline"] for r in rows) + enrolment.FORFEIT_GRACE + timedelta(seconds=1)
    await pool.execute("UPDATE enrolments SET first_used_at = enrolled_at WHERE id = $1", used)
    # A payment with the program before the deadline is a use too, even if the payment path
    # did not mark the enrolment.
    await pool.execute(
        "INSERT INTO payments (id, payment_request_id, citizen_id, merchant_id, program_id, "
        "program_version, amount, subsidy_amount, citizen_amount, merchant_category, "
        "merchant_province_code, merchant_district_code, citizen_province_code, "
        "citizen_district_code, business_date, created_at) SELECT $1, $2, citizen_id, $3, "
        "program_id, 1, 100, 50, 50, 'grocery', '10', '1001', '10', '1001', current_date, "
        "enrolled_at FROM enrolments WHERE id = $4",
        uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), paid,
    )
    await redis_client.set(f"gwallet:enrolment:full:{program_id}", b"1")
    assert await enrolment.release_all_forfeited(pool, rows[0]["enrolled_at"], redis_client) == 0
    released = await enrolment.release_forfeited(pool, program_id, later, redis_client)
    assert released == 1
    after = {r["id"]: r for r in await pool.fetch("SELECT * FROM enrolments WHERE program_id = $1", program_id)}
    first_use = {used: rows[0]["enrolled_at"], paid: rows[2]["enrolled_at"], unused: None}
    for row in rows:
        expected = is_forfeited(row["enrolled_at"], first_use[row["id"]], later, version)
        assert (after[row["id"]]["status"] == "forfeited") == expected
    assert [after[i]["status"] for i in (used, unused, paid)] == ["active", "forfeited", "active"]
    assert not await redis_client.exists(f"gwallet:enrolment:full:{program_id}")
    assert await pool.fetchval(
        "SELECT enrolled FROM enrolment_counters WHERE program_id = $1", program_id
    ) == 2


async def test_the_wallet_shows_what_is_left_of_each_enrolled_program(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    program_id = await make_program(pool, program_spec())  # daily 200, monthly 1,000, total 2,400
    citizen = await signed_in(wallet_api)
    assert (await wallet_api.post(enrol_path(program_id), headers=citizen.headers)).status_code == 201
    now = datetime.now(UTC)
    today = bangkok(now).date()
    citizen_id = parse_id("cit", citizen.citizen_id)
    usage = ("INSERT INTO subsidy_usage (citizen_id, program_id, day, used_day, month, "
             "used_month, used_total, payments, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, "
             "3, $8) ON CONFLICT (citizen_id, program_id) DO UPDATE SET day = $3, used_day = $4, "
             "month = $5, used_month = $6, used_total = $7")
    # The counters the payment path enforces the caps with: 17,000 today, 47,000 this month.
    await pool.execute(usage, citizen_id, program_id, today, 17_000, today.replace(day=1),
                       47_000, 67_000, now)

    async def shown() -> dict:
        wallet = (await wallet_api.get("/v1/citizen/wallet", headers=citizen.headers)).json()
        [program] = wallet["programs"]
        return program

    program = await shown()
    assert program["program_id"] == format_id("prg", program_id)
    assert (program["daily_cap"], program["monthly_cap"], program["total_cap"]) == (20_000, 100_000, 240_000)
    assert (program["used_today"], program["used_this_month"], program["used_total"]) == (
        17_000, 47_000, 67_000)
    assert program["remaining_today"] == 3_000
    assert program["remaining_this_month"] == 100_000 - 47_000
    assert program["remaining_total"] == 240_000 - 67_000

    # Counters last written on an earlier day (and month) have used nothing of today's.
    last_month = today.replace(day=1) - timedelta(days=1)
    await pool.execute(usage, citizen_id, program_id, last_month, 17_000,
                       last_month.replace(day=1), 47_000, 67_000, now)
    program = await shown()
    assert (program["used_today"], program["used_this_month"], program["used_total"]) == (
        0, 0, 67_000)
    assert (program["remaining_today"], program["remaining_this_month"]) == (20_000, 100_000)


# --- concurrency ---------------------------------------------------------------------------

STORM_QUOTA = 10_000
STORM_CITIZENS = 40_000
STORM_REQUESTS = 50_000


async def seed_citizens(pool: asyncpg.Pool, count: int) -> list[uuid.UUID]:
    """Citizens straight into the table by COPY (personal data as random bytes: enrolment
    reads only birth date, province and district)."""
    ids = [uuid.uuid4() for _ in range(count)]
    noise = os.urandom(32)
    records = [
        (i, secrets.token_bytes(32), "l1", noise, noise, noise, date(1980, 1, 1), "10", "1001",
         uuid.uuid4(), "p1", noise, noise)
        for i in ids
    ]
    await pool.copy_records_to_table(
        "citizens",
        records=records,
        columns=["id", "national_id_digest", "national_id_digest_key_id", "national_id_encrypted",
                 "phone_encrypted", "full_name_encrypted", "birth_date", "province_code",
                 "district_code", "wallet_account_id", "pin_key_id", "pin_hash",
                 "totp_secret_encrypted"],
    )
    return ids


STORM_CONNECTIONS = 10  # PostgreSQL's 100 connections are shared with every test's pools


@pytest.fixture
async def storm_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=STORM_CONNECTIONS)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def bounded_redis(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    """A Redis client with a bounded pool, as the service builds it (gwallet.app)."""
    client = redis_asyncio.Redis(
        connection_pool=redis_asyncio.BlockingConnectionPool.from_url(
            redis_url, max_connections=50, timeout=5
        )
    )
    yield client
    await client.aclose()


async def test_fifty_thousand_concurrent_enrolments_fill_a_quota_of_ten_thousand_exactly(
    storm_pool: asyncpg.Pool, bounded_redis: redis_asyncio.Redis
) -> None:
    pool, redis_client = storm_pool, bounded_redis
    program_id = await make_program(pool, program_spec(quota=STORM_QUOTA))
    citizens = await seed_citizens(pool, STORM_CITIZENS)
    requests = citizens + [secrets.choice(citizens) for _ in range(STORM_REQUESTS - STORM_CITIZENS)]
    secrets.SystemRandom().shuffle(requests)
    now = datetime.now(UTC)

    async def one(citizen_id: uuid.UUID) -> tuple[uuid.UUID, str, str | None]:
        try:
            done = await enrolment.enrol(
                pool, redis_client, citizen_id=citizen_id, program_id=program_id, now=now,
                full_flag_seconds=5.0,
            )
        except enrolment.QuotaExhausted:
            return citizen_id, "quota_exhausted", None
        return citizen_id, "created" if done.created else "repeated", done.enrolment.enrolment_id

    started = time.monotonic()
    results = await asyncio.gather(*(one(c) for c in requests))
    elapsed = time.monotonic() - started

    outcomes = collections.Counter(outcome for _, outcome, _ in results)
    assert set(outcomes) <= {"created", "repeated", "quota_exhausted"}
    assert outcomes["created"] == STORM_QUOTA
    by_citizen: dict[uuid.UUID, set[str | None]] = collections.defaultdict(set)
    for citizen_id, outcome, enrolment_id in results:
        by_citizen[citizen_id].add(enrolment_id)
    enrolled = {c for c, ids in by_citizen.items() if ids - {None}}
    assert len(enrolled) == STORM_QUOTA
    for citizen_id in enrolled:  # one enrolment per citizen, and never also refused
        assert len(by_citizen[citizen_id]) == 1, by_citizen[citizen_id]
    refused = {c for c, ids in by_citizen.items() if ids == {None}}
    assert len(enrolled) + len(refused) == STORM_CITIZENS
    rows = await pool.fetchval(
        "SELECT count(*) FROM enrolments WHERE program_id = $1 AND status = 'active'", program_id
    )
    distinct = await pool.fetchval(
        "SELECT count(DISTINCT citizen_id) FROM enrolments WHERE program_id = $1", program_id
    )
    counted = await pool.fetchval(
        "SELECT enrolled FROM enrolment_counters WHERE program_id = $1", program_id
    )
    assert rows == distinct == counted == STORM_QUOTA
    print(f"\n{STORM_REQUESTS} enrolments in {elapsed:.1f} s ({outcomes})")


async def test_the_quota_stays_exact_when_redis_is_down(storm_pool: asyncpg.Pool) -> None:
    pool = storm_pool
    program_id = await make_program(pool, program_spec(quota=50))
    citizens = await seed_citizens(pool, 200)
    down = redis_asyncio.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2, socket_timeout=0.2
    )
    now = datetime.now(UTC)

    async def one(citizen_id: uuid.UUID) -> str:
        try:
            done = await enrolment.enrol(
                pool, down, citizen_id=citizen_id, program_id=program_id, now=now,
                full_flag_seconds=5.0,
            )
        except enrolment.QuotaExhausted:
            return "quota_exhausted"
        return "created" if done.created else "repeated"

    try:
        outcomes = collections.Counter(await asyncio.gather(*(one(c) for c in citizens + citizens[:50])))
    finally:
        await down.aclose()
        enrolment.forget_programs()  # and the Redis back-off it caused
    assert outcomes["created"] == 50 and set(outcomes) <= {"created", "repeated", "quota_exhausted"}
    assert await pool.fetchval(
        "SELECT enrolled FROM enrolment_counters WHERE program_id = $1", program_id
    ) == 50


async def test_concurrent_enrolments_over_http_are_exact_too(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    program_id = await make_program(pool, program_spec(quota=3))
    citizens = [await signed_in(wallet_api) for _ in range(6)]
    responses = await asyncio.gather(
        *(wallet_api.post(enrol_path(program_id), headers=c.headers) for c in citizens * 3)
    )
    codes = collections.Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 201, 409} and codes[201] == 3
    for response in responses:
        if response.status_code == 409:
            assert problem(response)["code"] == "quota_exhausted"
