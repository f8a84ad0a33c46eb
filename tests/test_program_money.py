"""Program money over HTTP: funding (maker-checker, through the ledger, once), the budget that
never goes below zero, stats on recorded payments, and simulations of a version."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from gwallet.ids import parse_id
from gwallet.keys import load_signing_key
from gwallet.settings import Settings
from ledger_core import (
    Account,
    CreateAccountResult,
    CreateTransferResult,
    EngineConfig,
    LedgerEngine,
    Transfer,
    create_accounts,
)
from subsidy_rules.service import (
    TREASURY_ACCOUNT,
    TREASURY_ACCOUNT_ID,
    budget_account_id,
    funding_transfer_id,
)
from tests.backoffice import (
    PROGRAMS,
    approved_program,
    bangkok_time,
    days_ago,
    fund,
    insert_payment,
    key,
    lifecycle,
    new_official,
    spec,
)


async def balance(pool: asyncpg.Pool, account_id: uuid.UUID) -> int:
    row = await pool.fetchrow(
        "SELECT credits_posted - debits_posted - debits_pending AS headroom FROM ledger_accounts "
        "WHERE id = $1",
        account_id,
    )
    return row["headroom"]


async def test_the_treasury_of_migration_0004_is_the_one_the_service_names(
    pool: asyncpg.Pool,
) -> None:
    (result,) = await create_accounts(pool, [TREASURY_ACCOUNT])
    assert result is CreateAccountResult.EXISTS


async def test_funding_is_maker_checker_and_moves_money_once_under_replay(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    maker, checker = team["maker"], team["checker"]
    program = await approved_program(api, maker, checker)
    program_uuid = parse_id("prg", program["program_id"])
    base = f"{PROGRAMS}/{program['program_id']}/funding"
    treasury_before = await balance(pool, TREASURY_ACCOUNT_ID)

    request_key = key()
    requested = await api.post(
        base, json={"amount": 4_000_000}, headers={**maker.headers, **request_key}
    )
    assert requested.status_code == 201, requested.text
    funding = requested.json()
    assert (funding["status"], funding["amount"], funding["currency"]) == (
        "requested",
        4_000_000,
        "THB",
    )
    replayed = await api.post(
        base, json={"amount": 4_000_000}, headers={**maker.headers, **request_key}
    )
    assert replayed.json() == funding  # the same request, not a second one
    url = f"{base}/{funding['funding_id']}/approve"

    # The maker may not approve it.
    assert (
        await api.post(url, json={"totp_code": "000000"}, headers={**maker.headers, **key()})
    ).status_code == 403
    assert (await balance(pool, budget_account_id(program_uuid))) == 0

    checker = await new_official(pool, api, "checker")  # the first one used its fresh codes
    approve_key = key()
    body = {"totp_code": checker.code()}
    approved = await api.post(url, json=body, headers={**checker.headers, **approve_key})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    assert approved.json()["approved_by"] == checker.official_id
    replay = await api.post(url, json=body, headers={**checker.headers, **approve_key})
    assert (replay.status_code, replay.json()) == (200, approved.json())
    assert replay.headers["idempotent-replayed"] == "true"
    other = await new_official(pool, api, "checker")
    again = await api.post(
        url, json={"totp_code": other.code()}, headers={**other.headers, **key()}
    )
    assert again.status_code == 409 and again.json()["code"] == "funding_already_approved"

    assert await balance(pool, budget_account_id(program_uuid)) == 4_000_000
    assert await balance(pool, TREASURY_ACCOUNT_ID) == treasury_before - 4_000_000
    transfer = await pool.fetchrow(
        "SELECT debit_account_id, credit_account_id, amount, code FROM ledger_transfers "
        "WHERE id = $1",
        funding_transfer_id(parse_id("fnd", funding["funding_id"])),
    )
    assert dict(transfer) == {
        "debit_account_id": TREASURY_ACCOUNT_ID,
        "credit_account_id": budget_account_id(program_uuid),
        "amount": 4_000_000,
        "code": 100,
    }
    actions = await pool.fetch(
        "SELECT action FROM audit_log WHERE target_id = $1 ORDER BY seq", funding["funding_id"]
    )
    assert [a["action"] for a in actions] == ["funding.request", "funding.approve"]
    listed = await api.get(base, headers=team["auditor"].headers)
    assert [f["status"] for f in listed.json()["data"]] == ["approved"]


async def test_two_concurrent_funding_approvals_move_the_money_once(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    maker = team["maker"]
    program = await approved_program(api, maker, team["checker"])
    base = f"{PROGRAMS}/{program['program_id']}/funding"
    requested = await api.post(base, json={"amount": 1_000}, headers={**maker.headers, **key()})
    url = f"{base}/{requested.json()['funding_id']}/approve"
    checkers = [await new_official(pool, api, "checker") for _ in range(3)]
    responses = await asyncio.gather(
        *(
            api.post(url, json={"totp_code": c.code()}, headers={**c.headers, **key()})
            for c in checkers
        )
    )
    assert sorted(r.status_code for r in responses) == [200, 409, 409], [r.text for r in responses]
    assert await balance(pool, budget_account_id(parse_id("prg", program["program_id"]))) == 1_000


async def test_funding_stays_within_the_approved_budget_and_needs_an_approved_program(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    maker = team["maker"]
    draft = (
        await api.post(PROGRAMS, json={"spec": spec()}, headers={**maker.headers, **key()})
    ).json()
    not_yet = await api.post(
        f"{PROGRAMS}/{draft['program_id']}/funding",
        json={"amount": 1},
        headers={**maker.headers, **key()},
    )
    assert not_yet.status_code == 409 and not_yet.json()["code"] == "program_not_fundable"
    program = await approved_program(api, maker, team["checker"], spec(budget_satang=1_000))
    base = f"{PROGRAMS}/{program['program_id']}/funding"
    assert (
        await api.post(base, json={"amount": 600}, headers={**maker.headers, **key()})
    ).status_code == 201
    over = await api.post(base, json={"amount": 401}, headers={**maker.headers, **key()})
    assert over.status_code == 422 and over.json()["code"] == "funding_exceeds_budget"
    assert (
        await api.post(base, json={"amount": 400}, headers={**maker.headers, **key()})
    ).status_code == 201
    unknown = await api.post(
        f"{base}/fnd_{'0' * 26}/approve",
        json={"totp_code": "000000"},
        headers={**team["checker"].headers, **key()},
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "funding_request_not_found"


@pytest.fixture
async def engine(pool: asyncpg.Pool, service_data_dir: Any) -> Any:
    """A ledger engine of the test's own, standing in for the payment path."""
    settings = Settings(data_dir=str(service_data_dir))
    engine = LedgerEngine(pool, EngineConfig(batch_window_ms=0.5), load_signing_key(settings))
    await engine.start()
    yield engine
    await engine.stop()


async def test_the_budget_never_goes_below_zero_and_stats_show_it_exhausted(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any], engine: LedgerEngine
) -> None:
    maker, admin = team["maker"], team["admin"]
    program = await approved_program(api, maker, team["checker"])
    await lifecycle(api, admin, program, "activate")
    await fund(api, maker, await new_official(pool, api, "checker"), program, 10_000)
    budget = budget_account_id(parse_id("prg", program["program_id"]))
    merchant = Account(id=uuid.uuid4(), ledger=764, code=300)
    await create_accounts(pool, [merchant])

    def pay(amount: int) -> Transfer:
        return Transfer(
            id=uuid.uuid4(),
            debit_account_id=budget,
            credit_account_id=merchant.id,
            amount=amount,
            ledger=764,
            code=9,
        )

    assert await engine.create_transfers([pay(10_001)]) == [CreateTransferResult.EXCEEDS_CREDITS]
    assert await engine.create_transfers([pay(7_000)]) == [CreateTransferResult.OK]
    stats = (
        await api.get(f"{PROGRAMS}/{program['program_id']}/stats", headers=team["auditor"].headers)
    ).json()
    assert stats["budget"] == {
        "funded": 10_000,
        "disbursed": 7_000,
        "remaining": 3_000,
        "reserved": 0,
        "requested": 0,
        "budget_exhausted": False,
    }
    results = await asyncio.gather(*(engine.create_transfers([pay(1_000)]) for _ in range(5)))
    assert sorted(r[0] for r in results).count(CreateTransferResult.OK) == 3
    stats = (
        await api.get(f"{PROGRAMS}/{program['program_id']}/stats", headers=admin.headers)
    ).json()
    assert stats["budget"]["remaining"] == 0 and stats["budget"]["budget_exhausted"] is True
    assert stats["budget"]["disbursed"] == 10_000
    assert stats["forecast"]["days_until_exhausted"] == 0


async def test_stats_break_payments_down_by_day_province_and_category_and_forecast_the_burn(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    maker = team["maker"]
    program = await approved_program(api, maker, team["checker"])
    await fund(api, maker, await new_official(pool, api, "checker"), program, 7_000_000)
    program_uuid = parse_id("prg", program["program_id"])
    rows = [  # (days ago, province, category, amount, subsidy)
        (0, "10", "grocery", 10_000, 5_000),
        (1, "10", "restaurant", 20_000, 10_000),
        (1, "40", "grocery", 4_000, 2_000),
        (3, "50", "grocery", 30_000, 15_000),
        (20, "40", "restaurant", 1_000, 500),  # outside the forecast's 7 days
    ]
    for ago, province, category, amount, subsidy in rows:
        await insert_payment(
            pool,
            program_uuid=program_uuid,
            at=bangkok_time(days_ago(ago), 12),
            amount=amount,
            subsidy=subsidy,
            province=province,
            district=province + "01",
            category=category,
        )
    await insert_payment(
        pool, program_uuid=None, at=bangkok_time(days_ago(0), 9), amount=500, subsidy=0
    )
    # Enrolments are the wallet's (issue 4); its counter is what stats read.
    await pool.execute(
        "INSERT INTO enrolment_counters (program_id, enrolled, quota) VALUES ($1, 5, 100)",
        program_uuid,
    )
    response = await api.get(
        f"{PROGRAMS}/{program['program_id']}/stats", headers=team["auditor"].headers
    )
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["currency"] == "THB" and stats["status"] == "approved"
    assert stats["enrolled"] == 5
    assert stats["payments"]["count"] == 5
    assert stats["payments"]["amount"] == 65_000 and stats["payments"]["subsidy_amount"] == 32_500
    assert stats["payments"]["citizens"] == 5
    assert [(d["key"], d["payments"], d["subsidy_amount"]) for d in stats["by_day"]] == [
        (str(days_ago(0)), 1, 5_000),
        (str(days_ago(1)), 2, 12_000),
        (str(days_ago(3)), 1, 15_000),
        (str(days_ago(20)), 1, 500),
    ]
    assert {d["key"]: d["amount"] for d in stats["by_province"]} == {
        "10": 30_000,
        "40": 5_000,
        "50": 30_000,
    }
    assert {d["key"]: d["subsidy_amount"] for d in stats["by_merchant_category"]} == {
        "grocery": 22_000,
        "restaurant": 10_500,
    }
    forecast = stats["forecast"]
    average = (5_000 + 12_000 + 15_000) // 7
    assert forecast["average_daily_subsidy"] == average
    # Nothing moved out of the ledger budget here (the payments were inserted), so the
    # forecast burns the whole funded budget.
    assert stats["budget"]["remaining"] == 7_000_000
    days = -(-7_000_000 // average)
    assert forecast["days_until_exhausted"] == days
    assert forecast["exhausted_on"] == str(days_ago(0) + timedelta(days=days))
    unfunded = await approved_program(api, maker, await new_official(pool, api, "checker"))
    empty = (
        await api.get(f"{PROGRAMS}/{unfunded['program_id']}/stats", headers=maker.headers)
    ).json()
    assert empty["budget"]["budget_exhausted"] is True and empty["payments"]["count"] == 0
    assert empty["forecast"]["average_daily_subsidy"] == 0 and empty["enrolled"] == 0
    missing = await api.get(f"{PROGRAMS}/prg_{'0' * 26}/stats", headers=maker.headers)
    assert missing.status_code == 404 and missing.json()["code"] == "program_not_found"


# --- simulation -------------------------------------------------------------------------------

SIMULATED_DAYS = [date(2025, 11, 2) + timedelta(days=n) for n in range(5)]


async def test_a_simulation_replays_recorded_payments_with_a_draft_version_against_its_budget(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    maker = team["maker"]
    body = spec(budget_satang=30_000)
    body["rule"] = {"kind": "co_payment", "share_bp": 5000, "caps": {"daily": 20_000}}
    program = await approved_program(api, maker, team["checker"], body)
    program_uuid = parse_id("prg", program["program_id"])
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    history = [  # (citizen, day, hour, amount, item category); actual subsidy: half
        (a, date(2025, 11, 3), 10, 20_000, None),
        (a, date(2025, 11, 3), 11, 10_000, None),
        (b, date(2025, 11, 3), 12, 10_000, "alcohol"),
        (a, date(2025, 11, 4), 10, 10_000, None),
        (b, date(2025, 11, 4), 5, 4_000, None),  # before the 06:00 spending hours
        (c, date(2025, 11, 5), 10, 50_000, None),
    ]
    for citizen, day, hour, amount, item in history:
        await insert_payment(
            pool,
            program_uuid=program_uuid,
            at=bangkok_time(day, hour),
            amount=amount,
            subsidy=amount // 2,
            citizen_id=citizen,
            item_category=item,
        )
    # A draft: 60 %, a daily cap of 150 THB.
    url = f"{PROGRAMS}/{program['program_id']}"
    draft = await api.patch(
        url,
        json={"spec": {"rule": {"share_bp": 6000, "caps": {"daily": 15_000}}}},
        headers=maker.headers,
    )
    assert draft.json()["version"] == 2
    response = await api.post(
        f"{url}/simulate",
        json={"version": 2, "from": "2025-11-02", "to": "2025-11-06"},
        headers=team["auditor"].headers,
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["version"], report["budget"], report["population"]) == (2, 30_000, "program")
    days = {d["date"]: d for d in report["days"]}
    assert list(days) == [str(d) for d in SIMULATED_DAYS]
    expected = {  # date: (payments, subsidy, cumulative, remaining, refused, actual)
        "2025-11-02": (0, 0, 0, 30_000, 0, 0),
        # 60 % of 200 THB = 120 THB; then only 30 THB of the 150 THB daily cap is left.
        "2025-11-03": (3, 15_000, 15_000, 15_000, 1, 20_000),
        "2025-11-04": (2, 6_000, 21_000, 9_000, 1, 7_000),
        # 60 % of 500 THB is 300, the daily cap 150, but only 90 THB of budget is left.
        "2025-11-05": (1, 9_000, 30_000, 0, 0, 25_000),
        "2025-11-06": (0, 0, 30_000, 0, 0, 0),
    }
    for day, (payments, subsidy, cumulative, remaining, refused, actual) in expected.items():
        got = days[day]
        assert (
            got["payments"],
            got["subsidy_amount"],
            got["cumulative_subsidy_amount"],
            got["budget_remaining"],
            got["refused"],
            got["actual_subsidy_amount"],
        ) == (payments, subsidy, cumulative, remaining, refused, actual), day
    assert report["budget_exhausted_on"] == "2025-11-05"
    assert report["refused"] == {"item_category_excluded": 1, "outside_spending_hours": 1}
    assert report["bounded_by"] == {"budget": 1, "daily_cap": 1, "share": 2}
    assert report["subsidy_amount"] == 30_000 and report["actual_subsidy_amount"] == 52_000
    # The approved version 1 over the same payments, and the whole population.
    v1 = (
        await api.post(
            f"{url}/simulate",
            json={"version": 1, "from": "2025-11-02", "to": "2025-11-06"},
            headers=maker.headers,
        )
    ).json()
    assert [d["subsidy_amount"] for d in v1["days"]] == [0, 15_000, 5_000, 10_000, 0]
    everyone = (
        await api.post(
            f"{url}/simulate",
            json={"version": 1, "from": "2025-11-02", "to": "2025-11-06", "population": "all"},
            headers=maker.headers,
        )
    ).json()
    assert everyone["payments"] >= 6
    # Simulating moved nothing.
    assert (
        await pool.fetchval("SELECT count(*) FROM payments WHERE program_id = $1", program_uuid)
        == 6
    )


async def test_a_simulation_is_bounded_and_its_input_strict(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    program = (
        await api.post(PROGRAMS, json={"spec": spec()}, headers={**team["maker"].headers, **key()})
    ).json()
    url = f"{PROGRAMS}/{program['program_id']}/simulate"
    headers = team["maker"].headers
    cases = [
        ({"version": 1, "from": "2025-01-01", "to": "2025-04-03"}, 422, "simulation_too_large"),
        ({"version": 1, "from": "2025-01-02", "to": "2025-01-01"}, 422, "invalid_request"),
        ({"version": 9, "from": "2025-01-01", "to": "2025-01-02"}, 404, "version_not_found"),
        (
            {"version": 1, "from": "2025-01-01", "to": "2025-01-02", "population": "x"},
            422,
            "invalid_request",
        ),
        ({"version": 1.0, "from": "2025-01-01", "to": "2025-01-02"}, 422, "invalid_request"),
        ({"version": 1, "from": "2025-02-30", "to": "2025-03-01"}, 422, "invalid_request"),
        ({"version": 1, "from": "2025-01-01"}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        response = await api.post(url, json=body, headers=headers)
        assert (response.status_code, response.json()["code"]) == (status, code), (
            body,
            response.text,
        )
    ok = await api.post(
        url, json={"version": 1, "from": "2025-01-01", "to": "2025-04-02"}, headers=headers
    )
    assert ok.status_code == 200 and len(ok.json()["days"]) == 92


async def test_the_demo_seeds_an_active_funded_half_half_program_once(
    pool: asyncpg.Pool, engine: LedgerEngine
) -> None:
    from gwallet.demo_back_office import BUDGET_SATANG, seed_back_office

    first = await seed_back_office(pool, engine)
    assert first.created and first.program_status == "active"
    assert first.funded_satang == BUDGET_SATANG
    assert [o.role for o in first.officials] == ["admin", "maker", "checker"]
    again = await seed_back_office(pool, engine)
    assert not again.created and again.program_id == first.program_id
    assert again.funded_satang == BUDGET_SATANG
