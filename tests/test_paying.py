"""Paying by QR over HTTP: the journey from a program to a verified ledger, and the storms.

Real HTTP through the app (the wallet's session service), real PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from gwallet.app import create_app
from gwallet.settings import Settings
from gwallet.ids import parse_id
from ledger_core.accounts import close_account
from subsidy_rules.periods import bangkok
from wallet import enrolment
from wallet.paying import RightForfeitedWhilePaying, Usage, UsageStore
from tests.backoffice import Official, approved_program, fund, lifecycle, new_official
from tests.test_merchants import approved
from tests.http_service import free_port, serving
from tests.wallet_helpers import Citizen, problem, program_spec, signed_in, top_up


def key() -> dict[str, str]:
    return {"Idempotency-Key": secrets.token_hex(12)}


def open_all_day_spec(**caps: int) -> dict[str, Any]:
    today = bangkok(datetime.now(UTC)).date()
    spending = {
        "start_date": (today - timedelta(days=1)).isoformat(),
        "end_date": (today + timedelta(days=60)).isoformat(),
        "hours": {"start": "00:00", "end": "24:00"},
    }
    rule = {"kind": "co_payment", "share_bp": 5000,
            "caps": caps or {"daily": 20_000, "monthly": 100_000, "total": 240_000}}
    return program_spec(spending=spending, rule=rule)


class World:
    """An active, funded half-half program, an approved merchant, and the officials."""

    def __init__(self, api: httpx.AsyncClient, program: dict[str, Any],
                 merchant_id: str, merchant_headers: dict[str, str], admin: Official) -> None:
        self.api = api
        self.program = program
        self.program_id = program["program_id"]
        self.merchant_id = merchant_id
        self.merchant_headers = merchant_headers
        self.admin = admin

    async def payment_request(self, amount: int, headers: dict[str, str] | None = None) -> dict:
        response = await self.api.post(
            "/v1/merchant/payment-requests",
            json={"amount": amount, "reference": f"order-{secrets.token_hex(4)}"},
            headers={**(headers or self.merchant_headers), **key()},
        )
        assert response.status_code == 201, response.text
        return response.json()

    async def citizen(self, money: int = 1_000_000) -> Citizen:
        citizen = await signed_in(self.api)
        assert (await top_up(self.api, citizen.wallet_id, money)).status_code == 201
        response = await self.api.post(
            f"/v1/citizen/programs/{self.program_id}/enrolment", headers=citizen.headers)
        assert response.status_code == 201, response.text
        return citizen


async def make_world(api: httpx.AsyncClient, pool: asyncpg.Pool, *, budget: int = 10_000_000,
                     **caps: int) -> World:
    maker = await new_official(pool, api, "maker")
    checker = await new_official(pool, api, "checker")
    treasurer = await new_official(pool, api, "checker")  # TOTP codes are once-only
    admin = await new_official(pool, api, "admin")
    program = await approved_program(api, maker, checker, open_all_day_spec(**caps))
    await fund(api, maker, treasurer, program, budget)
    response = await lifecycle(api, admin, program, "activate")
    assert response.status_code == 200, response.text
    merchant_id, merchant_headers = await approved(api, admin.headers)
    return World(api, program, merchant_id, merchant_headers, admin)


async def pay(api: httpx.AsyncClient, citizen: Citizen, qr_payload: str,
              headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    return await api.post(
        "/v1/citizen/payments",
        json={"qr_payload": qr_payload, "pin": citizen.pin, **extra},
        headers={**citizen.headers, **(headers or key())},
    )


async def balance(api: httpx.AsyncClient, citizen: Citizen) -> int:
    response = await api.get("/v1/citizen/wallet", headers=citizen.headers)
    assert response.status_code == 200, response.text
    return int(response.json()["balance"])


async def test_the_journey_from_a_new_program_to_a_paid_qr_and_a_clean_ledger(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    world = await make_world(wallet_api, pool)
    citizen = await world.citizen(money=100_000)
    request = await world.payment_request(30_000)

    quote = await wallet_api.post("/v1/citizen/payments/quote",
                                  json={"qr_payload": request["qr_payload"]},
                                  headers=citizen.headers)
    assert quote.status_code == 200, quote.text
    line = quote.json()["programs"][0]
    assert (line["program_id"], line["subsidy_amount"], line["citizen_amount"]) == (
        world.program_id, 15_000, 15_000)

    headers = key()
    paid = await pay(wallet_api, citizen, request["qr_payload"], headers)
    assert paid.status_code == 201, paid.text
    payment = paid.json()
    assert (payment["amount"], payment["subsidy_amount"], payment["citizen_amount"]) == (
        30_000, 15_000, 15_000)
    assert payment["program_id"] == world.program_id
    assert payment["merchant_id"] == world.merchant_id

    replay = await pay(wallet_api, citizen, request["qr_payload"], headers)
    assert (replay.status_code, replay.json()) == (201, payment)
    again = await pay(wallet_api, citizen, request["qr_payload"])
    assert again.status_code == 409
    assert problem(again)["code"] == "payment_request_already_paid"

    status = await wallet_api.get(
        f"/v1/merchant/payment-requests/{request['payment_request_id']}",
        headers=world.merchant_headers)
    assert status.json()["status"] == "paid"
    assert status.json()["payment_id"] == payment["payment_id"]
    assert await balance(wallet_api, citizen) == 85_000

    mine = await wallet_api.get(f"/v1/merchant/payments/{payment['payment_id']}",
                                headers=world.merchant_headers)
    assert mine.status_code == 200, mine.text
    assert mine.json()["subsidy_amount"] == 15_000

    verify = await wallet_api.get("/v1/admin/ledger/verify", headers=world.admin.headers)
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True, verify.json()


async def test_a_wrong_pin_or_an_empty_wallet_moves_nothing(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    world = await make_world(wallet_api, pool)
    citizen = await world.citizen(money=1_000)
    request = await world.payment_request(30_000)
    wrong = await wallet_api.post(
        "/v1/citizen/payments",
        json={"qr_payload": request["qr_payload"], "pin": "000001" if citizen.pin != "000001"
              else "000002"},
        headers={**citizen.headers, **key()})
    assert wrong.status_code == 403 and problem(wrong)["code"] == "invalid_pin"
    poor = await pay(wallet_api, citizen, request["qr_payload"])
    assert poor.status_code == 422 and problem(poor)["code"] == "insufficient_funds"
    assert await balance(wallet_api, citizen) == 1_000
    status = await wallet_api.get(
        f"/v1/merchant/payment-requests/{request['payment_request_id']}",
        headers=world.merchant_headers)
    assert status.json()["status"] == "open"


async def test_a_closed_wallet_or_merchant_account_is_a_422_and_moves_nothing(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    world = await make_world(wallet_api, pool)
    citizen = await world.citizen(money=100_000)
    earlier = await pay(wallet_api, citizen, (await world.payment_request(2_000))["qr_payload"])
    assert earlier.status_code == 201, earlier.text
    request = await world.payment_request(10_000)
    wallet_id = await pool.fetchval("SELECT wallet_account_id FROM citizens WHERE id = $1",
                                    parse_id("cit", citizen.citizen_id))
    assert await close_account(pool, wallet_id)
    closed = await pay(wallet_api, citizen, request["qr_payload"])
    assert closed.status_code == 422 and problem(closed)["code"] == "wallet_closed", closed.text
    refund = await wallet_api.post(
        f"/v1/merchant/payments/{earlier.json()['payment_id']}/refunds", json={"amount": 2_000},
        headers={**world.merchant_headers, **key()})
    assert refund.status_code == 409 and problem(refund)["code"] == "refund_account_closed"

    other = await world.citizen(money=100_000)
    payable = await pool.fetchval(
        "SELECT citizen_payable_account_id FROM merchants WHERE id = $1",
        parse_id("mer", world.merchant_id))
    assert await close_account(pool, payable)
    shop_closed = await pay(wallet_api, other, request["qr_payload"])
    assert shop_closed.status_code == 422, shop_closed.text
    assert problem(shop_closed)["code"] == "merchant_unavailable"
    assert await balance(wallet_api, other) == 100_000
    status = await wallet_api.get(
        f"/v1/merchant/payment-requests/{request['payment_request_id']}",
        headers=world.merchant_headers)
    assert status.json()["status"] == "open"


@pytest.mark.parametrize("body", [
    {"qr_payload": "not a qr", "pin": "123456"},
    {"qr_payload": "", "pin": "123456"},
    {"qr_payload": "x" * 513, "pin": "123456"},
    {"qr_payload": "0002", "pin": "123456", "amount": 1.5},
    {"qr_payload": "0002", "pin": "123456", "amount": "100"},
    {"qr_payload": "0002", "pin": "123456", "amount": 10**13},
    {"qr_payload": "0002", "pin": "123456", "amount": 0},
    {"qr_payload": "0002", "pin": "123456", "unknown": 1},
    {"pin": "123456"},
    {"qr_payload": "0002\x00", "pin": "123456"},
])
async def test_bad_payment_input_is_a_4xx_problem_and_moves_nothing(
    wallet_api: httpx.AsyncClient, body: dict[str, Any],
) -> None:
    citizen = await signed_in(wallet_api)
    response = await wallet_api.post("/v1/citizen/payments", json=body,
                                     headers={**citizen.headers, **key()})
    assert 400 <= response.status_code < 500, response.text
    problem(response)
    quote = await wallet_api.post("/v1/citizen/payments/quote",
                                  json={k: v for k, v in body.items() if k != "pin"},
                                  headers=citizen.headers)
    assert 400 <= quote.status_code < 500, quote.text


async def test_paying_needs_a_citizen_session_and_an_idempotency_key(
    wallet_api: httpx.AsyncClient,
) -> None:
    citizen = await signed_in(wallet_api)
    anonymous = await wallet_api.post("/v1/citizen/payments",
                                      json={"qr_payload": "x", "pin": "123456"}, headers=key())
    assert anonymous.status_code == 401
    keyless = await wallet_api.post("/v1/citizen/payments",
                                    json={"qr_payload": "x", "pin": citizen.pin},
                                    headers=citizen.headers)
    assert keyless.status_code == 400 and problem(keyless)["code"] == "idempotency_key_required"


async def test_one_payment_request_paid_concurrently_a_hundred_times_is_paid_once(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    world = await make_world(wallet_api, pool)
    citizens = [await world.citizen() for _ in range(4)]
    request = await world.payment_request(10_000)
    responses = await asyncio.gather(*(
        pay(wallet_api, citizens[i % 4], request["qr_payload"]) for i in range(100)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1, [r.text for r in responses if r.status_code >= 500]
    assert all(r.status_code in (201, 409) for r in responses), [r.text for r in responses if r.status_code not in (201, 409)][:3]
    assert await pool.fetchval(
        "SELECT count(*) FROM payments WHERE merchant_id = (SELECT merchant_id FROM "
        "payment_requests WHERE qr_payload = $1)", request["qr_payload"]) == 1
    total = sum([await balance(wallet_api, c) for c in citizens])
    assert total == 4 * 1_000_000 - 5_000


async def test_two_hundred_concurrent_payments_by_one_citizen_get_exactly_the_daily_cap(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    world = await make_world(wallet_api, pool, daily=20_000, total=240_000)
    others = [await approved(wallet_api, world.admin.headers) for _ in range(9)]
    shops = [world.merchant_headers] + [headers for _, headers in others]
    citizen = await world.citizen(money=10_000_000)
    requests = [await world.payment_request(10_000, shops[i % 10]) for i in range(200)]
    responses = await asyncio.gather(*(
        pay(wallet_api, citizen, r["qr_payload"]) for r in requests))
    assert all(r.status_code == 201 for r in responses), [
        r.text for r in responses if r.status_code != 201][:3]
    subsidies = [r.json()["subsidy_amount"] for r in responses]
    assert sum(subsidies) == 20_000
    assert await balance(wallet_api, citizen) == 10_000_000 - 200 * 10_000 + 20_000
    # The wallet shows the counters the caps were enforced with.
    wallet = await wallet_api.get("/v1/citizen/wallet", headers=citizen.headers)
    [shown] = wallet.json()["programs"]
    assert (shown["used_today"], shown["remaining_today"], shown["used_total"]) == (
        20_000, 0, 20_000)


async def test_refunds_split_like_the_payment_restore_the_caps_and_never_exceed_it(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    world = await make_world(wallet_api, pool, daily=20_000, total=240_000)
    citizen = await world.citizen(money=100_000)
    request = await world.payment_request(30_001)  # odd: the split needs the rounding rule
    paid = await pay(wallet_api, citizen, request["qr_payload"])
    assert paid.status_code == 201, paid.text
    payment = paid.json()
    assert (payment["subsidy_amount"], payment["citizen_amount"]) == (15_000, 15_001)
    url = f"/v1/merchant/payments/{payment['payment_id']}/refunds"

    headers = {**world.merchant_headers, **key()}
    first = await wallet_api.post(url, json={"amount": 10_000}, headers=headers)
    assert first.status_code == 201, first.text
    assert (first.json()["subsidy_amount"], first.json()["citizen_amount"]) == (4_999, 5_001)
    replay = await wallet_api.post(url, json={"amount": 10_000}, headers=headers)
    assert (replay.status_code, replay.json()) == (201, first.json())

    too_much = await wallet_api.post(url, json={"amount": 20_002},
                                     headers={**world.merchant_headers, **key()})
    assert too_much.status_code == 422
    assert problem(too_much)["code"] == "refund_exceeds_payment"
    rest = await wallet_api.post(url, json={"amount": 20_001},
                                 headers={**world.merchant_headers, **key()})
    assert rest.status_code == 201, rest.text
    assert first.json()["subsidy_amount"] + rest.json()["subsidy_amount"] == 15_000
    assert await balance(wallet_api, citizen) == 100_000  # the whole own share came back

    # The caps are restored: a new payment gets the full daily cap's share again.
    again = await pay(wallet_api, citizen, (await world.payment_request(40_000))["qr_payload"])
    assert again.status_code == 201 and again.json()["subsidy_amount"] == 20_000

    other_id, other_headers = await approved(wallet_api, world.admin.headers)
    foreign = await wallet_api.post(url, json={"amount": 1},
                                    headers={**other_headers, **key()})
    assert foreign.status_code == 404  # another merchant's payment
    for bad in ({"amount": 0}, {"amount": -5}, {"amount": 1.5}, {"amount": "1"}, {},
                {"amount": 1, "x": 1}):
        response = await wallet_api.post(url, json=bad,
                                         headers={**world.merchant_headers, **key()})
        assert response.status_code == 422, (bad, response.text)
    verify = await wallet_api.get("/v1/admin/ledger/verify", headers=world.admin.headers)
    assert verify.json()["ok"] is True, verify.json()


async def test_a_payment_marks_the_enrolment_used_and_keys_are_scoped_to_the_citizen(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    world = await make_world(wallet_api, pool)
    first, second = await world.citizen(), await world.citizen()
    shared_key = key()
    paid = await pay(wallet_api, first, (await world.payment_request(10_000))["qr_payload"],
                     shared_key)
    assert paid.status_code == 201, paid.text
    # The same Idempotency-Key from another citizen is another request, not a replay.
    other = await pay(wallet_api, second, (await world.payment_request(10_000))["qr_payload"],
                      shared_key)
    assert other.status_code == 201, other.text
    assert other.json()["payment_id"] != paid.json()["payment_id"]
    used = await pool.fetch(
        "SELECT citizen_id, first_used_at FROM enrolments WHERE program_id = $1",
        parse_id("prg", world.program_id))
    assert len(used) == 2 and all(row["first_used_at"] is not None for row in used)


async def test_when_the_budget_runs_out_payments_go_on_without_subsidy_and_officials_see_it(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    world = await make_world(wallet_api, pool, budget=7_000)
    citizen = await world.citizen()
    splits = []
    for _ in range(3):  # 5,000 asked each time; the budget holds 7,000
        response = await pay(wallet_api, citizen,
                             (await world.payment_request(10_000))["qr_payload"])
        assert response.status_code == 201, response.text
        splits.append(response.json()["subsidy_amount"])
    assert splits == [5_000, 2_000, 0]
    assert await balance(wallet_api, citizen) == 1_000_000 - 30_000 + 7_000
    stats = await wallet_api.get(f"/v1/admin/programs/{world.program_id}/stats",
                                 headers=world.admin.headers)
    assert stats.status_code == 200, stats.text
    budget = stats.json()["budget"]
    assert (budget["remaining"], budget["budget_exhausted"]) == (0, True)


async def test_a_right_unused_by_its_deadline_pays_no_more_and_is_released_only_after_the_grace(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    """A payment racing the forfeiture of its right at the deadline: the right stops paying at
    the deadline, its place returns to the quota only after FORFEIT_GRACE (by when any payment
    decided before the deadline has committed and counts as a use), and a batch that would
    still mark a right forfeited meanwhile fails rather than subsidise it."""
    world = await make_world(wallet_api, pool)
    program_id = parse_id("prg", world.program_id)
    lapsing, used = await world.citizen(), await world.citizen()
    ids = {name: parse_id("cit", c.citizen_id) for name, c in (("lapsing", lapsing),
                                                                ("used", used))}
    paid = await pay(wallet_api, used, (await world.payment_request(2_000))["qr_payload"])
    assert paid.status_code == 201 and paid.json()["subsidy_amount"] == 1_000
    await pool.execute(
        "UPDATE enrolments SET first_use_deadline = now() - interval '1 second' "
        "WHERE program_id = $1 AND citizen_id = ANY($2::uuid[])", program_id, list(ids.values()))

    late = await pay(wallet_api, lapsing, (await world.payment_request(2_000))["qr_payload"])
    assert late.status_code == 201 and late.json()["subsidy_amount"] == 0, late.text
    named = await pay(wallet_api, lapsing, (await world.payment_request(2_000))["qr_payload"],
                      program_id=world.program_id)
    assert named.status_code == 422 and problem(named)["code"] == "program_not_applicable"
    again = await pay(wallet_api, used, (await world.payment_request(2_000))["qr_payload"])
    assert again.json()["subsidy_amount"] == 1_000  # a used right keeps paying

    now = datetime.now(UTC)
    assert await enrolment.release_forfeited(pool, program_id, now) == 0  # within the grace
    assert await enrolment.release_forfeited(
        pool, program_id, now + enrolment.FORFEIT_GRACE + timedelta(seconds=2)) == 1
    statuses = dict(await pool.fetch(
        "SELECT citizen_id, status FROM enrolments WHERE program_id = $1", program_id))
    assert (statuses[ids["lapsing"]], statuses[ids["used"]]) == ("forfeited", "active")

    # A batch that would mark the forfeited right as used (a payment slower than the grace)
    # fails: nothing of it is written.
    async with pool.acquire() as conn:
        with pytest.raises(RightForfeitedWhilePaying):
            async with conn.transaction():
                await UsageStore().write(conn, {(ids["lapsing"], program_id): Usage(
                    now.date(), 1_000, now.date().replace(day=1), 1_000, 1_000, 1, now)})
    assert await pool.fetchval(
        "SELECT count(*) FROM subsidy_usage WHERE citizen_id = $1", ids["lapsing"]) == 0


async def test_wrong_pins_at_the_till_count_exactly_and_lock_even_the_right_pin_out(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    """The payment's PIN check reads the row without a lock when all is well; a wrong PIN, an
    earlier failure or a lock go the counting path, so the lockout stays exact."""
    world = await make_world(wallet_api, pool)
    citizen = await world.citizen()
    citizen_id = parse_id("cit", citizen.citizen_id)
    wrong = "000001" if citizen.pin != "000001" else "000002"
    qr = (await world.payment_request(1_000))["qr_payload"]

    first = await wallet_api.post("/v1/citizen/payments", json={"qr_payload": qr, "pin": wrong},
                                  headers={**citizen.headers, **key()})
    assert first.status_code == 403 and problem(first)["code"] == "invalid_pin"
    assert await pool.fetchval("SELECT failed_attempts FROM citizens WHERE id = $1",
                               citizen_id) == 1
    right = await pay(wallet_api, citizen, qr)  # the right PIN resets the count
    assert right.status_code == 201, right.text
    assert await pool.fetchval("SELECT failed_attempts FROM citizens WHERE id = $1",
                               citizen_id) == 0

    request = await world.payment_request(1_000)
    qr = request["qr_payload"]
    failures = 10  # Settings.auth_lockout_failures
    wrongs = await asyncio.gather(*(
        wallet_api.post("/v1/citizen/payments", json={"qr_payload": qr, "pin": wrong},
                        headers={**citizen.headers, **key()}) for _ in range(failures + 5)))
    codes = sorted(problem(r)["code"] for r in wrongs)
    assert codes == ["account_locked"] * 5 + ["invalid_pin"] * failures, codes
    locked = await pay(wallet_api, citizen, qr)
    assert locked.status_code == 429 and problem(locked)["code"] == "account_locked"
    assert "retry-after" in locked.headers
    status = await wallet_api.get(f"/v1/merchant/payment-requests/{request['payment_request_id']}",
                                  headers=world.merchant_headers)
    assert status.json()["status"] == "open"


async def test_without_redis_one_idempotency_key_pays_once_whatever_races_with_it(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool, wallet_settings: Settings,
) -> None:
    """Redis down: the in-progress claim is skipped, so twenty requests with one key (each for
    another QR) all reach the ledger at once. The payment's transfer ids derive from the key,
    so the ledger takes one: one payment, and every other request gets the key's stored
    answer (422 idempotency_key_reused: another body)."""
    world = await make_world(wallet_api, pool)
    citizen = await world.citizen()
    qrs = [(await world.payment_request(1_000 + i))["qr_payload"] for i in range(20)]
    settings = msgspec.structs.replace(  # the same keys, a Redis nobody listens on
        wallet_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_timeout_seconds=0.05)
    one_key = key()
    with serving(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as no_redis:
            responses = await asyncio.gather(*(pay(no_redis, citizen, qr, one_key)
                                               for qr in qrs))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1, [r.text for r in responses if r.status_code != 422][:3]
    assert all(problem(r)["code"] == "idempotency_key_reused"
               for r in responses if r.status_code != 201)
    citizen_id = parse_id("cit", citizen.citizen_id)
    assert await pool.fetchval("SELECT count(*) FROM payments WHERE citizen_id = $1",
                               citizen_id) == 1
    paid = next(r.json() for r in responses if r.status_code == 201)
    assert await balance(wallet_api, citizen) == 1_000_000 - paid["citizen_amount"]
