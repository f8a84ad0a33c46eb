"""T+1 settlement in two legs (merchant_api/settlement.py): the calendar, the legs and their
amounts, holds, the bank files, the merchants' view, reconciliation and the admin API.

Payments are made through the real HTTP path (program, merchant, citizen, QR, pay) and then
dated into 2001 (``business_date`` and ``created_at``), each test its own week: a run for D
settles every sale dated D or earlier, and no other test has sales that old. Each test's
merchants bank with a bank code of their own, so a bank's file holds only that test's lines.
Time-dependent steps (legs scheduled, then paid at 02:00 and 17:30) call the service with an
explicit ``now``; HTTP runs happen long after their settlement day, so they pay at once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import secrets
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from gwallet.ids import parse_id
from gwallet.settings import Settings
from merchant_api import settlement as stl
from merchant_api.settlement import (
    CITIZEN_SHARE,
    STATE_SHARE,
    FileLine,
    LegPlan,
    MerchantDue,
    SettlementConfig,
    Settler,
)
from subsidy_rules.periods import BANGKOK
from tests.backoffice import new_official
from tests.ledger_helpers import running_engine
from tests.test_merchants import approved
from tests.test_paying import World, key, make_world, pay
from tests.wallet_helpers import Citizen, problem
from wallet.context import build_context

RUNS = "/v1/admin/settlements/runs"
MINE = "/v1/merchant/settlements"


# --- the calendar, amounts and file, pure (table-driven) ------------------------------------

HOLIDAYS = frozenset({date(2001, 4, 13), date(2001, 4, 16)})  # a Friday and a Monday


@pytest.mark.parametrize(("day", "business"), [
    (date(2001, 3, 5), True),  # Monday
    (date(2001, 3, 9), True),  # Friday
    (date(2001, 3, 10), False),  # Saturday
    (date(2001, 3, 11), False),  # Sunday
    (date(2001, 4, 13), False),  # a public holiday on a Friday
    (date(2001, 4, 17), True),  # the Tuesday after a long weekend
])
def test_business_days_are_weekdays_that_are_not_public_holidays(day: date, business: bool) -> None:
    assert stl.is_business_day(day, HOLIDAYS) is business


@pytest.mark.parametrize(("day", "carried", "settled_on"), [
    (date(2001, 3, 7), [date(2001, 3, 7)], date(2001, 3, 8)),  # Wednesday: Thursday
    (date(2001, 3, 9), [date(2001, 3, 9)], date(2001, 3, 12)),  # Friday: Monday
    # Monday carries the weekend before it
    (date(2001, 3, 12), [date(2001, 3, 10), date(2001, 3, 11), date(2001, 3, 12)],
     date(2001, 3, 13)),
    # Thursday before a holiday Friday and holiday Monday: settled on Tuesday
    (date(2001, 4, 12), [date(2001, 4, 12)], date(2001, 4, 17)),
    # the Tuesday after carries Friday to Monday
    (date(2001, 4, 17), [date(2001, 4, 13) + timedelta(days=n) for n in range(5)],
     date(2001, 4, 18)),
])
def test_a_run_carries_the_non_business_days_before_it_and_is_paid_the_next_business_day(
    day: date, carried: list[date], settled_on: date,
) -> None:
    config = SettlementConfig(holidays=HOLIDAYS)
    assert stl.carried_dates(day, HOLIDAYS) == carried
    plan = stl.schedule(day, config)
    assert plan.covered_from == carried[0] and plan.settlement_date == settled_on
    assert plan.citizen_at == datetime.combine(settled_on, time(2, 0), tzinfo=BANGKOK)
    assert plan.state_at == datetime.combine(settled_on, time(17, 30), tzinfo=BANGKOK)


@pytest.mark.parametrize(("day", "now", "code"), [
    (date(2001, 3, 10), datetime(2001, 3, 20, tzinfo=UTC), "not_a_business_day"),
    (date(2001, 4, 13), datetime(2001, 4, 20, tzinfo=UTC), "not_a_business_day"),
    # 2001-03-09 23:59 Bangkok is 16:59 UTC: the day is not over yet
    (date(2001, 3, 9), datetime(2001, 3, 9, 16, 59, tzinfo=UTC), "business_date_not_over"),
    (date(2001, 3, 9), datetime(2001, 3, 9, 17, 0, tzinfo=UTC), None),
])
def test_only_a_business_day_that_is_over_can_be_run(
    day: date, now: datetime, code: str | None,
) -> None:
    config = SettlementConfig(holidays=HOLIDAYS)
    if code is None:
        stl.check_business_date(day, now, config)
    else:
        with pytest.raises(stl.DomainError) as refused:
            stl.check_business_date(day, now, config)
        assert refused.value.code == code


def _due(**fields: Any) -> MerchantDue:
    values: dict[str, Any] = {
        "merchant_id": parse_id("mer", "mer_" + "0" * 26), "status": "approved",
        "bank_code": "004", "citizen_payable_account_id": None,
        "state_payable_account_id": None, "citizen_due": 0, "state_new": 0, "state_held": 0,
        "held_ids": (), "payment_count": 1, "covered_from": date(2001, 3, 5)}
    values.update(fields)
    return MerchantDue(**values)


HELD = parse_id("stl", "stl_" + "1" * 26)


@pytest.mark.parametrize(("due", "plans"), [
    (_due(citizen_due=100, state_new=90), [LegPlan(CITIZEN_SHARE, 100, False),
                                           LegPlan(STATE_SHARE, 90, False)]),
    (_due(citizen_due=100, state_new=90, status="suspended"),
     [LegPlan(CITIZEN_SHARE, 100, False), LegPlan(STATE_SHARE, 90, True)]),
    (_due(state_new=10, state_held=90, held_ids=(HELD,)),
     [LegPlan(STATE_SHARE, 100, False, (HELD,), 90)]),
    (_due(state_held=90, held_ids=(HELD,), status="suspended"), []),  # still held
    (_due(citizen_due=-5, state_new=0), []),  # a refund after settlement: nothing owed
])
def test_the_legs_of_a_merchant_follow_its_status_and_holds(
    due: MerchantDue, plans: list[LegPlan],
) -> None:
    assert stl.plan_legs(due) == plans


@pytest.mark.parametrize(("due", "headroom", "amount"), [
    (100, 500, 100), (100, 100, 100), (100, 60, 60), (100, 0, 0), (100, -5, 0), (100, None, 0),
])
def test_a_leg_never_moves_more_than_its_payable_holds(
    due: int, headroom: int | None, amount: int,
) -> None:
    assert stl.settle_amount(due, headroom) == amount


@pytest.mark.parametrize(("satang", "text"), [
    (0, "0.00"), (5, "0.05"), (99, "0.99"), (100, "1.00"), (12350, "123.50"),
    (10**15 + 1, "10000000000000.01"),
])
def test_baht_are_written_with_two_decimals_by_integer_arithmetic(satang: int, text: str) -> None:
    assert stl.baht(satang) == text


def test_a_settlement_file_has_a_header_one_row_per_leg_and_a_trailer_with_a_control_sum(
) -> None:
    lines = [
        FileLine("mer_a", "004", "1234567890", 'Noi "Som Tam", Khon Kaen', CITIZEN_SHARE,
                 15_001, 2, "stl_a"),
        FileLine("mer_a", "004", "1234567890", 'Noi "Som Tam", Khon Kaen', STATE_SHARE,
                 15_000, 2, "stl_b"),
        FileLine("mer_b", "004", "9876543210", "สมชาย", CITIZEN_SHARE, 5, 1, "stl_c"),
    ]
    made = stl.settlement_file(lines)
    rows = list(csv.reader(io.StringIO(made.content.decode("utf-8"), newline="")))
    assert rows[0] == list(stl.FILE_COLUMNS)
    assert rows[1] == ["D", "mer_a", "004", "1234567890", 'Noi "Som Tam", Khon Kaen',
                       CITIZEN_SHARE, "15001", "150.01", "2", "stl_a"]
    assert rows[3][4] == "สมชาย" and rows[3][7] == "0.05"
    body = made.content[: made.content.rindex(b"T,")]
    assert rows[4] == ["T", "3", "30006", "300.06",
                       "sha256:" + hashlib.sha256(body).hexdigest()]
    assert (made.line_count, made.total_amount) == (3, 30_006)
    assert made.sha256 == hashlib.sha256(made.content).digest()
    assert made.content.endswith(b"\r\n") and made.content.count(b"\r\n") == 5
    empty = stl.settlement_file([])
    assert list(csv.reader(io.StringIO(empty.content.decode())))[-1][:4] == ["T", "0", "0", "0.00"]


def test_reconciliation_names_each_broken_rule() -> None:
    row = {
        "citizen_paid": 1000, "citizen_refunded": 100, "citizen_settled": 500,
        "citizen_scheduled": 100, "citizen_held": 0, "citizen_credits_posted": 1000,
        "citizen_debits_posted": 600, "citizen_debits_pending": 100,
    }
    balance, broken = stl.reconcile_share(row, CITIZEN_SHARE)
    assert broken == []
    assert (balance.paid_net, balance.still_payable) == (900, 300)
    assert balance.paid_net == (balance.settled + balance.scheduled + balance.held
                                + balance.still_payable)
    tampered = {**row, "citizen_settled": 499}  # a leg row lost one satang
    _, broken = stl.reconcile_share(tampered, CITIZEN_SHARE)
    assert [check for check, _, _ in broken] == [
        "paid_equals_settled_held_and_payable", "ledger_debits"]


@pytest.mark.parametrize(("field", "value"), [
    ("settlement_holidays", "2001-13-01"),
    ("settlement_holidays", "yesterday"),
    ("settlement_citizen_leg_time", "2:00"),
    ("settlement_state_leg_time", "24:00"),
    ("settlement_submissions_in_flight", 0),
])
def test_a_malformed_settlement_setting_stops_the_app_from_being_built(
    field: str, value: object,
) -> None:
    from gwallet.app import create_app

    with pytest.raises(stl.SettlementSettingsError):
        create_app(Settings(**{field: value}))


# --- the service, over real PostgreSQL and HTTP -----------------------------------------------


@pytest.fixture(scope="module")
async def world(wallet_api: httpx.AsyncClient, pool: asyncpg.Pool) -> World:
    return await make_world(wallet_api, pool, budget=10_000_000,
                            daily=100_000, monthly=1_000_000, total=2_000_000)


@pytest.fixture(scope="module")
async def citizen(world: World) -> Citizen:
    return await world.citizen(money=5_000_000)


@pytest.fixture(scope="module")
async def settler(pool: asyncpg.Pool, wallet_settings: Settings):  # type: ignore[no-untyped-def]
    async with running_engine(pool) as engine:
        yield Settler(pool=pool, engine=engine, pii=build_context(wallet_settings).keys.pii,
                      config=SettlementConfig())


def bank_account(bank_code: str, number: str | None = None) -> dict[str, str]:
    return {"bank_code": bank_code,
            "account_number": number or "".join(secrets.choice("0123456789") for _ in range(12)),
            "account_name": "Malee, \"Khao Man Gai\""}


async def shop(world: World, bank_code: str, number: str | None = None) -> tuple[str, dict]:
    return await approved(world.api, world.admin.headers,
                          bank_account=bank_account(bank_code, number))


async def sell(world: World, citizen: Citizen, headers: dict[str, str], amount: int,
               pool: asyncpg.Pool, day: date | None) -> dict[str, Any]:
    """A payment over HTTP, then dated ``day`` (None: not yet, see ``backdate``)."""
    request = await world.payment_request(amount, headers)
    paid = await pay(world.api, citizen, request["qr_payload"])
    assert paid.status_code == 201, paid.text
    payment = paid.json()
    if day is not None:
        await backdate(pool, payment, day)
    return payment


async def backdate(pool: asyncpg.Pool, payment: dict[str, Any], day: date) -> None:
    """Date a payment ``day`` (noon in Bangkok). Refunds come first: a refund restores the
    citizen's caps by the payment's date, which must be the date it was really made."""
    await pool.execute(
        "UPDATE payments SET business_date = $2, created_at = $3 WHERE id = $1",
        parse_id("pay", payment["payment_id"]), day,
        datetime.combine(day, time(12), tzinfo=BANGKOK))


async def refund(world: World, headers: dict[str, str], payment: dict, amount: int) -> dict:
    response = await world.api.post(
        f"/v1/merchant/payments/{payment['payment_id']}/refunds", json={"amount": amount},
        headers={**headers, **key()})
    assert response.status_code == 201, response.text
    return response.json()


async def run(api: httpx.AsyncClient, official_headers: dict[str, str], day: date,
              headers: dict[str, str] | None = None) -> httpx.Response:
    return await api.post(RUNS, json={"business_date": day.isoformat()},
                          headers={**official_headers, **(headers or {})})


async def legs_of(api: httpx.AsyncClient, merchant_headers: dict[str, str]) -> list[dict]:
    response = await api.get(MINE, params={"limit": 100}, headers=merchant_headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def by_date_and_leg(legs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(leg["business_date"], leg["leg"]): leg for leg in legs}


async def reconciliation(api: httpx.AsyncClient, auditor_headers: dict[str, str],
                         merchant_id: str) -> dict[str, Any]:
    response = await api.get("/v1/admin/settlements/reconciliation",
                             params={"merchant_id": merchant_id}, headers=auditor_headers)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is True, report["mismatches"]
    (mine,) = report["merchants"]
    for share in (mine["citizen_share"], mine["state_share"]):
        assert share["paid_net"] == (share["settled"] + share["scheduled"] + share["held"]
                                     + share["still_payable"])
    return mine


async def ledger_is_clean(api: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    verify = await api.get("/v1/admin/ledger/verify", headers=admin_headers)
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True, verify.json()


async def test_weekend_sales_are_carried_to_monday_and_each_leg_is_its_share_net_of_refunds(
    world: World, citizen: Citizen, pool: asyncpg.Pool, staff: dict,
) -> None:
    api, admin = world.api, world.admin.headers
    friday, saturday, sunday, monday = (date(2001, 3, 2) + timedelta(days=n) for n in range(4))
    tuesday = monday + timedelta(days=1)
    merchant_id, headers = await shop(world, "901", "123456789012")
    friday_sale = await sell(world, citizen, headers, 10_000, pool, friday)
    weekend = [await sell(world, citizen, headers, 20_000, pool, saturday),
               await sell(world, citizen, headers, 30_001, pool, None)]
    monday_sale = await sell(world, citizen, headers, 40_000, pool, monday)
    await sell(world, citizen, headers, 5_000, pool, tuesday)  # Tuesday's run, not Monday's
    refunded = [await refund(world, headers, weekend[1], 10_000),  # two partial refunds
                await refund(world, headers, weekend[1], 3_333)]
    await backdate(pool, weekend[1], sunday)

    first = await run(api, admin, friday)
    assert first.status_code == 201, first.text
    assert first.json()["covered_dates"] == ["2001-03-02"]
    assert first.json()["settlement_date"] == "2001-03-05"

    idempotency = key()
    monday_run = await run(api, admin, monday, idempotency)
    assert monday_run.status_code == 201, monday_run.text
    out = monday_run.json()
    assert out["run_id"].startswith("run_") and out["status"] == "built"
    assert out["covered_dates"] == ["2001-03-03", "2001-03-04", "2001-03-05"]
    assert out["settlement_date"] == "2001-03-06"
    assert out["citizen_share_scheduled_at"] == "2001-03-06T02:00:00+07:00"
    assert out["state_share_scheduled_at"] == "2001-03-06T17:30:00+07:00"
    # Idempotent per date: the same run, 200; the same key replays the first answer.
    again = await run(api, admin, monday)
    assert again.status_code == 200 and again.json()["run_id"] == out["run_id"]
    replay = await run(api, admin, monday, idempotency)
    assert (replay.status_code, replay.json()) == (201, out)
    assert await pool.fetchval(
        "SELECT count(*) FROM settlement_legs l JOIN settlement_runs r ON r.id = l.run_id "
        "WHERE r.business_date = $1 AND l.merchant_id = $2", monday,
        parse_id("mer", merchant_id)) == 2

    legs = by_date_and_leg(await legs_of(api, headers))
    assert set(legs) == {(d, leg) for d in ("2001-03-02", "2001-03-05")
                         for leg in (CITIZEN_SHARE, STATE_SHARE)}
    assert legs[("2001-03-02", CITIZEN_SHARE)]["amount"] == friday_sale["citizen_amount"]
    assert legs[("2001-03-02", STATE_SHARE)]["amount"] == friday_sale["subsidy_amount"]
    carried = weekend + [monday_sale]
    citizen_share = (sum(p["citizen_amount"] for p in carried)
                     - sum(r["citizen_amount"] for r in refunded))
    state_share = (sum(p["subsidy_amount"] for p in carried)
                   - sum(r["subsidy_amount"] for r in refunded))
    monday_citizen, monday_state = (legs[("2001-03-05", leg)] for leg in (CITIZEN_SHARE,
                                                                          STATE_SHARE))
    assert (monday_citizen["amount"], monday_state["amount"]) == (citizen_share, state_share)
    for leg in (monday_citizen, monday_state):
        assert leg["status"] == "paid" and leg["paid_at"] is not None  # long past 17:30
        assert (leg["covered_from"], leg["covered_to"]) == ("2001-03-03", "2001-03-05")
        assert leg["payment_count"] == 3 and leg["currency"] == "THB"
        assert leg["settlement_id"].startswith("stl_")

    # The bank's file: header, the merchant's two legs, a trailer with totals and control sum.
    file = await api.get(f"{RUNS}/{out['run_id']}/files/901", headers=admin)
    assert file.status_code == 200, file.text
    assert file.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(file.content.decode("utf-8"), newline="")))
    assert rows[0] == list(stl.FILE_COLUMNS)
    details, trailer = rows[1:-1], rows[-1]
    assert [(r[1], r[3], r[5], int(r[6])) for r in details] == [
        (merchant_id, "123456789012", CITIZEN_SHARE, citizen_share),
        (merchant_id, "123456789012", STATE_SHARE, state_share)]
    assert details[0][4] == 'Malee, "Khao Man Gai"' and details[0][8] == "3"
    for row in details:
        assert row[7] == f"{int(row[6]) // 100}.{int(row[6]) % 100:02d}"
    total = citizen_share + state_share
    body = file.content[: file.content.rindex(b"\r\nT,") + 2]
    assert trailer == ["T", "2", str(total), f"{total // 100}.{total % 100:02d}",
                       "sha256:" + hashlib.sha256(body).hexdigest()]
    (meta,) = [f for f in out["files"] if f["bank_code"] == "901"]
    assert (meta["line_count"], meta["total_amount"]) == (2, total)
    assert meta["sha256"] == hashlib.sha256(file.content).hexdigest()
    stored = await pool.fetchval("SELECT content_enc FROM settlement_files WHERE bank_code = "
                                 "'901'")
    assert b"123456789012" not in bytes(stored)  # account numbers are encrypted at rest

    # Every satang paid is settled or still payable (Tuesday's sale), per the ledger.
    mine = await reconciliation(api, staff["auditor"].headers, merchant_id)
    assert mine["citizen_share"]["settled"] == friday_sale["citizen_amount"] + citizen_share
    assert mine["citizen_share"]["still_payable"] == 2_500
    assert mine["state_share"]["still_payable"] == 2_500
    await ledger_is_clean(api, admin)


async def test_legs_are_reserved_at_the_run_paid_from_2am_and_5_30pm_and_held_on_suspension(
    world: World, citizen: Citizen, pool: asyncpg.Pool, settler: Settler, staff: dict,
) -> None:
    api, admin = world.api, world.admin.headers
    monday, tuesday, wednesday = (date(2001, 3, 19) + timedelta(days=n) for n in range(3))
    merchant_id, headers = await shop(world, "902")
    sale = await sell(world, citizen, headers, 12_000, pool, monday)

    def at(day: date, hour: int, minute: int = 0) -> datetime:
        return datetime.combine(day, time(hour, minute), tzinfo=BANGKOK)

    made = await stl.run_settlement(settler, monday, at(tuesday, 1), None)
    assert made.created and made.run.citizen_share.scheduled >= sale["citizen_amount"]
    legs = by_date_and_leg(await legs_of(api, headers))
    citizen_leg, state_leg = (legs[("2001-03-19", leg)] for leg in (CITIZEN_SHARE, STATE_SHARE))
    assert (citizen_leg["status"], state_leg["status"]) == ("scheduled", "scheduled")
    mine = await reconciliation(api, staff["auditor"].headers, merchant_id)
    assert mine["citizen_share"]["scheduled"] == sale["citizen_amount"]  # reserved in the ledger

    # A refund cannot take money reserved for the bank.
    refused = await api.post(f"/v1/merchant/payments/{sale['payment_id']}/refunds",
                             json={"amount": 1_000}, headers={**headers, **key()})
    assert refused.status_code == 409
    assert problem(refused)["code"] == "refund_exceeds_unsettled_balance"

    run_id = parse_id("run", made.run.run_id)
    await stl.pay_due(settler, run_id, at(tuesday, 1, 59), None)
    assert {leg["status"] for leg in await legs_of(api, headers)} == {"scheduled"}
    await stl.pay_due(settler, run_id, at(tuesday, 2), None)
    legs = by_date_and_leg(await legs_of(api, headers))
    assert legs[("2001-03-19", CITIZEN_SHARE)]["status"] == "paid"
    assert legs[("2001-03-19", STATE_SHARE)]["status"] == "scheduled"
    events = await pool.fetch(
        "SELECT payload FROM webhook_events WHERE type = 'settlement.paid' AND merchant_id = $1",
        parse_id("mer", merchant_id))
    assert len(events) == 1 and citizen_leg["settlement_id"] in events[0]["payload"]

    # Suspended before 17:30: the state leg is held (its reservation voided), not paid.
    suspended = await api.post(f"/v1/admin/merchants/{merchant_id}/suspend",
                               json={"reason": "cash-out collusion suspected"}, headers=admin)
    assert suspended.status_code == 200, suspended.text
    await stl.pay_due(settler, run_id, at(tuesday, 17, 30), None)
    held = by_date_and_leg(await legs_of(api, headers))[("2001-03-19", STATE_SHARE)]
    assert (held["status"], held["amount"]) == ("held", sale["subsidy_amount"])
    mine = await reconciliation(api, staff["auditor"].headers, merchant_id)
    assert mine["state_share"]["held"] == sale["subsidy_amount"]
    assert mine["state_share"]["settled"] == 0

    # Reinstated: the next run releases the held leg into its own state leg.
    reinstated = await api.post(f"/v1/admin/merchants/{merchant_id}/reinstate", headers=admin)
    assert reinstated.status_code == 200, reinstated.text
    later = await sell(world, citizen, headers, 8_000, pool, tuesday)
    await stl.run_settlement(settler, tuesday, at(wednesday, 18), None)
    legs = by_date_and_leg(await legs_of(api, headers))
    release = legs[("2001-03-20", STATE_SHARE)]
    assert release["status"] == "paid"
    assert release["amount"] == later["subsidy_amount"] + sale["subsidy_amount"]
    assert release["released_amount"] == sale["subsidy_amount"]
    released = legs[("2001-03-19", STATE_SHARE)]
    assert (released["status"], released["released_by"]) == ("released",
                                                               release["settlement_id"])
    mine = await reconciliation(api, staff["auditor"].headers, merchant_id)
    assert mine["state_share"]["held"] == 0 and mine["state_share"]["still_payable"] == 0
    assert mine["state_share"]["settled"] == sale["subsidy_amount"] + later["subsidy_amount"]
    await ledger_is_clean(api, admin)


async def test_a_suspended_merchants_state_share_is_held_until_a_run_after_reinstatement(
    world: World, citizen: Citizen, pool: asyncpg.Pool, staff: dict,
) -> None:
    api, admin = world.api, world.admin.headers
    wednesday, thursday, friday = (date(2001, 3, 14) + timedelta(days=n) for n in range(3))
    merchant_id, headers = await shop(world, "903")
    sale = await sell(world, citizen, headers, 22_000, pool, wednesday)
    suspended = await api.post(f"/v1/admin/merchants/{merchant_id}/suspend",
                               json={"reason": "payers registered far away"}, headers=admin)
    assert suspended.status_code == 200, suspended.text

    assert (await run(api, admin, wednesday)).status_code == 201
    legs = by_date_and_leg(await legs_of(api, headers))
    assert legs[("2001-03-14", CITIZEN_SHARE)]["status"] == "paid"  # the citizen's share goes
    held = legs[("2001-03-14", STATE_SHARE)]
    assert (held["status"], held["amount"], held["paid_at"]) == ("held", sale["subsidy_amount"],
                                                                 None)
    file = await api.get(f"{RUNS}/{(await run(api, admin, wednesday)).json()['run_id']}"
                         "/files/903", headers=admin)
    assert [row[5] for row in list(csv.reader(io.StringIO(file.text)))[1:-1]] == [CITIZEN_SHARE]
    mine = await reconciliation(api, staff["auditor"].headers, merchant_id)
    assert mine["state_share"]["held"] == sale["subsidy_amount"]

    assert (await run(api, admin, thursday)).status_code == 201  # still suspended: still held
    assert len(await legs_of(api, headers)) == 2

    assert (await api.post(f"/v1/admin/merchants/{merchant_id}/reinstate",
                           headers=admin)).status_code == 200
    later = await sell(world, citizen, headers, 6_000, pool, friday)
    assert (await run(api, admin, friday)).status_code == 201
    legs = by_date_and_leg(await legs_of(api, headers))
    release = legs[("2001-03-16", STATE_SHARE)]
    assert (release["status"], release["amount"], release["released_amount"]) == (
        "paid", sale["subsidy_amount"] + later["subsidy_amount"], sale["subsidy_amount"])
    assert legs[("2001-03-14", STATE_SHARE)]["status"] == "released"
    mine = await reconciliation(api, staff["auditor"].headers, merchant_id)
    assert mine["state_share"]["settled"] == sale["subsidy_amount"] + later["subsidy_amount"]
    assert mine["citizen_share"]["still_payable"] == mine["state_share"]["still_payable"] == 0
    await ledger_is_clean(api, admin)


async def test_a_merchant_reads_only_its_own_settlements_with_a_cursor(
    world: World, citizen: Citizen, pool: asyncpg.Pool,
) -> None:
    api, admin = world.api, world.admin.headers
    day = date(2001, 3, 28)  # a Wednesday
    _, headers = await shop(world, "904")
    _, other_headers = await shop(world, "904")
    await sell(world, citizen, headers, 4_000, pool, day)
    await sell(world, citizen, other_headers, 6_000, pool, day)
    assert (await run(api, admin, day)).status_code == 201

    mine = await legs_of(api, headers)
    theirs = await legs_of(api, other_headers)
    assert len(mine) == len(theirs) == 2
    assert {leg["amount"] for leg in mine} == {2_000}
    first = await api.get(MINE, params={"limit": 1}, headers=headers)
    assert first.json()["has_more"] is True
    cursor = first.json()["data"][0]["settlement_id"]
    second = await api.get(MINE, params={"limit": 1, "starting_after": cursor}, headers=headers)
    assert second.json()["has_more"] is False
    assert {first.json()["data"][0]["settlement_id"], second.json()["data"][0]["settlement_id"]} \
        == {leg["settlement_id"] for leg in mine}

    own = await api.get(f"{MINE}/{mine[0]['settlement_id']}", headers=headers)
    assert own.status_code == 200 and own.json() == mine[0]
    for path in (f"{MINE}/{theirs[0]['settlement_id']}", f"{MINE}/stl_nonsense",
                 f"{MINE}/{mine[0]['settlement_id'].replace('stl_', 'pay_')}"):
        response = await api.get(path, headers=headers)
        assert response.status_code == 404, path
        problem(response)
    foreign_cursor = await api.get(MINE, params={"starting_after": theirs[0]["settlement_id"]},
                                   headers=headers)
    assert foreign_cursor.status_code in (400, 422)
    problem(foreign_cursor)
    assert (await api.get(MINE)).status_code == 401
    officials = await api.get(MINE, headers=admin)
    assert officials.status_code == 401


async def test_only_admins_and_checkers_run_settlement_and_bad_input_is_a_4xx_problem(
    world: World, pool: asyncpg.Pool, staff: dict,
) -> None:
    api = world.api
    checker = await new_official(pool, api, "checker")
    day = date(2001, 1, 3)  # nothing was sold that early: an empty run
    for official in (staff["maker"], staff["auditor"]):
        refused = await run(api, official.headers, day)
        assert refused.status_code == 403 and problem(refused)["code"] == "forbidden"
    assert (await api.post(RUNS, json={"business_date": "2001-01-03"})).status_code == 401
    _, merchant_headers = await shop(world, "905")
    assert (await run(api, merchant_headers, day)).status_code == 403

    made = await run(api, checker.headers, day)
    assert made.status_code == 201, made.text
    assert made.json()["files"] == [] and made.json()["merchant_count"] == 0
    run_id = made.json()["run_id"]
    for official in (staff["maker"], staff["auditor"], checker, world.admin):
        seen = await api.get(f"{RUNS}/{run_id}", headers=official.headers)
        assert seen.status_code == 200 and seen.json()["run_id"] == run_id
    listed = await api.get(RUNS, params={"limit": 100}, headers=staff["auditor"].headers)
    assert run_id in {r["run_id"] for r in listed.json()["data"]}
    paid = await api.post(f"{RUNS}/{run_id}/pay-due", headers=checker.headers)
    assert paid.status_code == 200 and paid.json()["run_id"] == run_id
    assert (await api.post(f"{RUNS}/{run_id}/pay-due",
                           headers=staff["auditor"].headers)).status_code == 403
    assert (await api.get(f"{RUNS}/{run_id}/files/004",
                          headers=staff["maker"].headers)).status_code == 403
    report = await api.get("/v1/admin/settlements/reconciliation", headers=checker.headers)
    assert report.status_code == 403
    whole = await api.get("/v1/admin/settlements/reconciliation",
                          headers=staff["auditor"].headers)
    assert whole.status_code == 200 and whole.json()["merchant_count"] >= 1

    today = datetime.now(BANGKOK).date()
    weekday = today if today.weekday() < 5 else today + timedelta(days=7 - today.weekday())
    for body, code in [
        ({"business_date": "2001-01-06"}, "not_a_business_day"),  # a Saturday
        ({"business_date": weekday.isoformat()}, "business_date_not_over"),
        ({"business_date": "2001-02-30"}, "invalid_request"),
        ({"business_date": "2001-1-3"}, "invalid_request"),
        ({"business_date": 20010103}, "invalid_request"),
        ({"business_date": None}, "invalid_request"),
        ({}, "invalid_request"),
        ({"business_date": "2001-01-03", "merchant_id": "mer_x"}, "invalid_request"),
    ]:
        response = await api.post(RUNS, json=body, headers=world.admin.headers)
        assert response.status_code == 422, (body, response.text)
        assert problem(response)["code"] == code, (body, response.text)
    not_json = await api.post(RUNS, content=b"{business_date", headers={
        **world.admin.headers, "content-type": "application/json"})
    assert 400 <= not_json.status_code < 500
    problem(not_json)
    for path in (f"{RUNS}/run_nonsense", f"{RUNS}/{run_id}/files/004",
                 f"{RUNS}/{run_id}/files/abc", f"{RUNS}/{run_id.replace('run_', 'stl_')}"):
        response = await api.get(path, headers=world.admin.headers)
        assert response.status_code == 404, (path, response.text)
        problem(response)
    bad_merchant = await api.get("/v1/admin/settlements/reconciliation",
                                 params={"merchant_id": "pay_x"},
                                 headers=staff["auditor"].headers)
    assert bad_merchant.status_code in (400, 422)
    problem(bad_merchant)


def test_the_command_line_runs_a_business_date_and_refuses_a_weekend(
    database_url: str, redis_url: str, tmp_path: Any,
) -> None:
    env = {**os.environ, "GWALLET_DATABASE_URL": database_url, "GWALLET_REDIS_URL": redis_url,
           "GWALLET_DATA_DIR": str(tmp_path), "GWALLET_LOG_LEVEL": "WARNING",
           "GWALLET_LEDGER_SIGNING_KEY_HEX": bytes(range(32)).hex()}
    def settle(day: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gwallet.cli", "settlement", "run", "--date", day],
            check=False, env=env, capture_output=True, text=True, timeout=60)

    weekend = settle("2001-01-13")
    assert weekend.returncode == 1 and "not_a_business_day" in weekend.stderr
    done = settle("2001-01-10")
    assert done.returncode == 0, done.stderr
    assert '"business_date": "2001-01-10"' in done.stdout and '"status": "built"' in done.stdout
    assert settle("10/01/2001").returncode == 2


async def test_every_settlement_query_prepares_against_the_migrated_schema(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        for name, sql in stl.Q.items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:  # pragma: no cover - the message names it
                pytest.fail(f"query {name}: {exc}")
