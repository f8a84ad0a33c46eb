"""Faults under load (issue 6): Redis killed, PostgreSQL stopped at once, in the middle of a run.

The real service (``gwallet serve``, granian, two workers) runs as a subprocess against a
PostgreSQL and a Redis of this module's own (loadtests/faults.py: initdb + pg_ctl on a free
port, redis-server on a free port), so that they can be killed without disturbing anyone.
A world is set up over HTTP as tests/test_paying.py does (officials, an active funded
half-half program, an approved merchant, citizens topped up and enrolled), then payments are
driven concurrently the way a real client pays: each with its own Idempotency-Key, retried
with the same key after a 5xx or a lost connection (after the Retry-After, capped to keep
the test short).

What must hold (issue 6):
- Redis killed: payments keep working; the daily cap and the PIN lockout stay exact (they
  live in PostgreSQL; Redis only makes things faster).
- PostgreSQL stopped with ``-m immediate`` and started again: meanwhile every answer is a
  fast 503 (never a hang to the 10 s time limit) and /readyz is 503; afterwards the service
  serves again by itself; every acknowledged payment exists exactly once with its transfers;
  an unacknowledged one is either wholly there or wholly absent; the ledger verifies.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gwallet.ids import parse_id
from gwallet.migrate import migrate
from gwallet.problems import to_domain_error
from loadtests.faults import FaultSetupError, PrivatePostgres, PrivateRedis, ServiceProcess
from tests.conftest import TEST_LEDGER_SIGNING_KEY_HEX
from tests.test_paying import World, make_world
from tests.wallet_helpers import (
    OTHER_PARTNER,
    OTHER_PARTNER_SECRET,
    PARTNER,
    PARTNER_SECRET,
    Citizen,
    key_list,
    problem,
)

LOCKOUT_FAILURES = 3
DAILY_CAP = 20_000
RETRY_PAUSE_MAX_SECONDS = 0.3  # a real client waits the Retry-After; the test keeps it short
# An answer during an outage must come at once: far below the 10 s request time limit.
OUTAGE_ANSWER_SECONDS_MAX = 2.0


# --- the mapping, table-driven -------------------------------------------------------------


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connect call failed"),  # the server is down
    ConnectionResetError(104, "Connection reset by peer"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CrashShutdownError("terminating connection because of crash of another process"),
    asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
])
def test_the_drivers_ways_of_losing_the_database_are_a_503_database_unavailable(
    exc: Exception,
) -> None:
    error = to_domain_error(exc)
    assert (error.status, error.code, error.headers()) == (
        503, "database_unavailable", {"Retry-After": "2"})


def test_a_database_that_does_not_answer_in_time_is_a_503_database_timeout() -> None:
    # asyncpg's command_timeout and connect timeout raise the builtin TimeoutError.
    error = to_domain_error(TimeoutError())
    assert (error.status, error.code, error.headers()) == (
        503, "database_timeout", {"Retry-After": "2"})


def test_other_driver_errors_stay_internal_errors() -> None:
    for exc in (asyncpg.InterfaceError("another operation is in progress"),
                asyncpg.UndefinedTableError("relation does not exist")):
        assert to_domain_error(exc).code == "internal_error"


# --- the private world --------------------------------------------------------------------


@dataclass
class Servers:
    postgres: PrivatePostgres
    redis: PrivateRedis
    service: ServiceProcess
    database_url: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    try:
        postgres = PrivatePostgres()
    except FaultSetupError as exc:  # no PostgreSQL binaries on this machine
        pytest.skip(f"no private PostgreSQL: {exc}")
    with postgres, PrivateRedis() as redis:
        database_url = postgres.url("postgres")
        asyncio.run(migrate(database_url))
        data_dir = tmp_path_factory.mktemp("faults-service")
        env = {
            "GWALLET_DATABASE_URL": database_url,
            "GWALLET_REDIS_URL": redis.url,
            "GWALLET_DATA_DIR": str(data_dir),
            "GWALLET_LEDGER_SIGNING_KEY_HEX": TEST_LEDGER_SIGNING_KEY_HEX,
            "GWALLET_LEDGER_BATCH_WINDOW_MS": "1",
            "GWALLET_PII_ENCRYPTION_KEYS": key_list("t1"),
            "GWALLET_PII_LOOKUP_KEYS": key_list("l1"),
            "GWALLET_PIN_PEPPER_KEYS": key_list("p1"),
            "GWALLET_BANK_PARTNER_SECRETS": (
                f"{PARTNER}:{PARTNER_SECRET},{OTHER_PARTNER}:{OTHER_PARTNER_SECRET}"),
            "GWALLET_AUTH_LOCKOUT_FAILURES": str(LOCKOUT_FAILURES),
            "GWALLET_DB_POOL_MIN_SIZE": "2",
            "GWALLET_DB_POOL_MAX_SIZE": "8",
            "GWALLET_LOG_LEVEL": "WARNING",
        }
        with ServiceProcess(env, workers=2, log_dir=data_dir) as service:
            yield Servers(postgres, redis, service, database_url)
            print(f"\n--- service log (tail) ---\n{service.log_tail(3000)}")


@pytest.fixture(scope="module")
async def db(servers: Servers) -> AsyncIterator[asyncpg.Pool]:
    # min_size 0: no floor to restore (and log about) while the server is down.
    pool = await asyncpg.create_pool(servers.database_url, min_size=0, max_size=4)
    assert pool is not None
    yield pool
    pool.terminate()  # its connections may have died with the server: no goodbye needed


@pytest.fixture(scope="module")
async def api(servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=servers.service.base_url, timeout=30,
                                 limits=limits) as client:
        yield client


@pytest.fixture(scope="module")
async def world(api: httpx.AsyncClient, db: asyncpg.Pool) -> World:
    return await make_world(api, db, daily=DAILY_CAP, monthly=100_000,
                            total=240_000)


# --- a paying client --------------------------------------------------------------------------


@dataclass
class Answer:
    sent: float  # time.monotonic() when sent
    seconds: float
    status: int | None  # None: the connection failed
    code: str | None


@dataclass
class Payment:
    citizen: Citizen
    request: dict[str, Any]
    key: str = field(default_factory=lambda: secrets.token_hex(12))
    answers: list[Answer] = field(default_factory=list)
    final: httpx.Response | None = None

    @property
    def acknowledged(self) -> bool:
        return self.final is not None and self.final.status_code == 201


async def pay_once(api: httpx.AsyncClient, payment: Payment, pin: str | None = None) -> (
    httpx.Response | None
):
    sent = time.monotonic()
    try:
        response = await api.post(
            "/v1/citizen/payments",
            json={"qr_payload": payment.request["qr_payload"],
                  "pin": payment.citizen.pin if pin is None else pin},
            headers={**payment.citizen.headers, "Idempotency-Key": payment.key},
        )
    except httpx.TransportError:
        payment.answers.append(Answer(sent, time.monotonic() - sent, None, None))
        return None
    code = problem(response)["code"] if response.status_code >= 400 else None
    payment.answers.append(Answer(sent, time.monotonic() - sent, response.status_code, code))
    return response


async def pay_until_answered(api: httpx.AsyncClient, payment: Payment,
                             deadline_seconds: float = 40.0) -> httpx.Response:
    """A real client: retry with the same key after a 5xx, a 409 in progress or a lost
    connection, waiting the Retry-After (capped), until a definitive answer."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        response = await pay_once(api, payment)
        definitive = response is not None and response.status_code < 500 and not (
            response.status_code == 409
            and problem(response)["code"] == "idempotency_request_in_progress")
        if definitive:
            assert response is not None
            payment.final = response
            return response
        assert time.monotonic() < deadline, f"no answer for {payment.key}: {payment.answers}"
        retry_after = float(response.headers.get("retry-after", "1")) if response else 0.2
        await asyncio.sleep(min(retry_after, RETRY_PAUSE_MAX_SECONDS) * random.uniform(0.5, 1))


async def requests_for(world: World, count: int, amount: int) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(world.payment_request(amount) for _ in range(count))))


# --- the checks after a run -----------------------------------------------------------------------


async def assert_payments_whole(db: asyncpg.Pool, payments: list[Payment]) -> None:
    """Every acknowledged payment is in ``payments`` once, with exactly its transfers; no
    payment row lacks a transfer and no payment transfer lacks its row; paid requests and
    payment rows match one to one."""
    for payment in payments:
        if not payment.acknowledged:
            continue
        assert payment.final is not None
        body = payment.final.json()
        payment_uuid = parse_id("pay", body["payment_id"])
        row = await db.fetchrow("SELECT * FROM payments WHERE id = $1", payment_uuid)
        assert row is not None, body
        assert (row["amount"], row["subsidy_amount"], row["citizen_amount"]) == (
            body["amount"], body["subsidy_amount"], body["citizen_amount"])
        transfers = {r["code"]: r["amount"] for r in await db.fetch(
            "SELECT code, amount FROM ledger_transfers WHERE user_data_128 = $1", payment_uuid)}
        expected = {code: amount for code, amount in (
            (400, body["citizen_amount"]), (401, body["subsidy_amount"])) if amount}
        assert transfers == expected, (body, transfers)
    orphans = await db.fetchval(
        """
        SELECT count(*) FROM payments p
        WHERE NOT EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.user_data_128 = p.id)
           OR NOT EXISTS (SELECT 1 FROM payment_requests r
                          WHERE r.id = p.payment_request_id AND r.status = 'paid')
        """)
    assert orphans == 0
    stray = await db.fetchval(
        """
        SELECT count(*) FROM ledger_transfers t
        WHERE t.code IN (400, 401)
          AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.id = t.user_data_128)
        """)
    assert stray == 0
    unpaid = await db.fetchval(
        """
        SELECT count(*) FROM payment_requests r
        WHERE r.status = 'paid' AND NOT EXISTS (
            SELECT 1 FROM payments p WHERE p.payment_request_id = r.id)
        """)
    assert unpaid == 0
    # Every stored answer (idempotency key) of a payment names a payment that exists.
    stored = [json.loads(bytes(row["response_body"])) for row in await db.fetch(
        "SELECT response_body FROM idempotency_keys WHERE response_status = 201")]
    named = [parse_id("pay", body["payment_id"]) for body in stored
             if isinstance(body, dict) and "payment_id" in body and "subsidy_amount" in body]
    assert named, "no stored payment answers found"
    found = await db.fetchval("SELECT count(*) FROM payments WHERE id = ANY($1::uuid[])", named)
    assert found == len(named)


async def assert_ledger_verifies(api: httpx.AsyncClient, world: World) -> None:
    verify = await api.get("/v1/admin/ledger/verify", headers=world.admin.headers)
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True, verify.json()


async def wait_ready(api: httpx.AsyncClient, seconds: float = 30.0) -> float:
    started = time.monotonic()
    while True:
        try:
            if (await api.get("/readyz")).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        assert time.monotonic() - started < seconds, "the service did not become ready"
        await asyncio.sleep(0.05)


# --- Redis killed -------------------------------------------------------------------------------


async def test_with_redis_killed_mid_run_payments_go_on_and_caps_and_lockouts_stay_exact(
    servers: Servers, api: httpx.AsyncClient, db: asyncpg.Pool, world: World,
) -> None:
    citizens = [await world.citizen(money=1_000_000) for _ in range(4)]
    locked_out = await world.citizen(money=100_000)
    # 8 payments of 100 THB per citizen: 50% would be 400 THB of subsidy, the daily cap
    # is 200 THB, so exactly the first 200 THB of subsidy are paid, whatever the order.
    payments = [Payment(citizen, request) for citizen in citizens
                for request in await requests_for(world, 8, 10_000)]
    lockout_request = (await requests_for(world, 1, 5_000))[0]
    random.shuffle(payments)

    async def later(payment: Payment, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await pay_until_answered(api, payment)

    # A run of ~1 s: the first payments before the kill, some in flight at it, most after.
    running = [asyncio.create_task(later(p, random.uniform(0, 1.0))) for p in payments]
    await asyncio.sleep(0.3)
    killed_at = time.monotonic()
    servers.redis.kill()
    await asyncio.gather(*running)

    # PIN failures count in PostgreSQL: exactly LOCKOUT_FAILURES wrong PINs are refused as
    # such, however concurrent; every later attempt, the right PIN too, finds the lock.
    wrong = "000001" if locked_out.pin != "000001" else "000002"
    attempts = [Payment(locked_out, lockout_request) for _ in range(LOCKOUT_FAILURES + 3)]
    answers = await asyncio.gather(*(pay_once(api, p, pin=wrong) for p in attempts))
    codes = sorted(problem(r)["code"] for r in answers if r is not None)
    assert codes == ["account_locked"] * 3 + ["invalid_pin"] * LOCKOUT_FAILURES, codes
    right = await pay_once(api, Payment(locked_out, lockout_request))
    assert right is not None and right.status_code == 429
    assert problem(right)["code"] == "account_locked"
    readiness = await api.get("/readyz")
    assert readiness.status_code == 503 and "redis: unreachable" in problem(readiness)["detail"]
    # The whole journey works without Redis: a citizen registers, signs in, is topped up and
    # enrolled; a merchant makes a QR (its rate limit lets requests through); the citizen pays.
    newcomer = await world.citizen(money=50_000)
    first_payment = Payment(newcomer, (await requests_for(world, 1, 10_000))[0])
    paid = await pay_until_answered(api, first_payment)
    assert paid.status_code == 201 and paid.json()["subsidy_amount"] == 5_000, paid.text
    assert len(first_payment.answers) == 1
    payments.append(first_payment)

    # Every payment was acknowledged; with Redis dead none needed a retry.
    assert all(p.acknowledged for p in payments), [p.final.text for p in payments
                                                   if p.final is not None and not p.acknowledged]
    after_kill = [a for p in payments for a in p.answers if a.sent + a.seconds >= killed_at]
    failed = [a for a in after_kill if a.status != 201]
    print(f"\nRedis killed: {len(after_kill)} answers after the kill, {len(failed)} not 201 "
          f"({failed[:3]}); slowest {max(a.seconds for a in after_kill) * 1000:.0f} ms")
    assert failed == []
    for citizen in citizens:
        mine = [p.final.json() for p in payments if p.citizen is citizen and p.final]
        assert sum(body["subsidy_amount"] for body in mine) == DAILY_CAP
        used = await db.fetchval(
            "SELECT used_day FROM subsidy_usage WHERE citizen_id = $1",
            parse_id("cit", citizen.citizen_id))
        assert used == DAILY_CAP
        wallet = await api.get("/v1/citizen/wallet", headers=citizen.headers)
        assert int(wallet.json()["balance"]) == 1_000_000 - sum(
            body["citizen_amount"] for body in mine)

    # Redis comes back (empty): the service uses it again without a restart.
    servers.redis.start()
    assert await wait_ready(api) < 5.0
    afterwards = Payment(citizens[0], (await requests_for(world, 1, 1_000))[0])
    assert (await pay_until_answered(api, afterwards)).status_code == 201
    await assert_payments_whole(db, [*payments, afterwards])
    await assert_ledger_verifies(api, world)


# --- PostgreSQL stopped at once and started again -----------------------------------------------


async def test_with_postgres_stopped_at_once_mid_run_answers_are_fast_503s_and_nothing_is_lost(
    servers: Servers, api: httpx.AsyncClient, db: asyncpg.Pool, world: World,
) -> None:
    await wait_ready(api)  # Redis is back after the test above
    citizens = [await world.citizen(money=1_000_000) for _ in range(10)]
    # 10 payments of 10 THB per citizen, paid one after another by each citizen's client.
    plans = {c.citizen_id: [Payment(c, r) for r in await requests_for(world, 10, 1_000)]
             for c in citizens}
    # Clients that try once and give up whatever the answer: sent just before the stop, so
    # that some are in flight when PostgreSQL dies (their outcome unknown to them).
    abandoned = [Payment(c, r) for c in citizens for r in await requests_for(world, 2, 1_000)]
    outage: dict[str, float] = {}
    readiness: list[tuple[int, float]] = []

    async def citizen_pays(citizen: Citizen) -> None:
        for payment in plans[citizen.citizen_id]:
            await pay_until_answered(api, payment)
            await asyncio.sleep(random.uniform(0, 0.05))

    async def give_up_after_one_try(payment: Payment, after_seconds: float) -> None:
        await asyncio.sleep(after_seconds)
        await pay_once(api, payment)

    async def probe_readiness() -> None:
        while "started" not in outage:
            sent = time.monotonic()
            response = await api.get("/readyz")
            readiness.append((response.status_code, time.monotonic() - sent))
            await asyncio.sleep(0.2)

    async def fault() -> None:
        # Let the run get going, then stop PostgreSQL at once, keep it down, start it.
        while sum(p.acknowledged for ps in plans.values() for p in ps) < 12:
            await asyncio.sleep(0.01)
        one_shots = [asyncio.create_task(give_up_after_one_try(p, i * 0.002))
                     for i, p in enumerate(abandoned)]
        await asyncio.sleep(0.02)  # the first one-shots are being processed
        outage["stopping"] = time.monotonic()
        await asyncio.to_thread(servers.postgres.stop, "immediate")
        outage["stopped"] = time.monotonic()
        prober = asyncio.create_task(probe_readiness())
        await asyncio.sleep(3.0)
        outage["starting"] = time.monotonic()
        await asyncio.to_thread(servers.postgres.start)
        outage["started"] = time.monotonic()
        await prober
        await asyncio.gather(*one_shots)

    await asyncio.gather(fault(), *(citizen_pays(c) for c in citizens))
    payments = [p for ps in plans.values() for p in ps]

    # During the outage: every request sent got its answer fast, a 503 problem.
    during = [a for p in [*payments, *abandoned] for a in p.answers
              if outage["stopped"] <= a.sent <= outage["starting"]]
    assert during, "no request was answered during the outage"
    slowest = max(a.seconds for a in during)
    codes = sorted({(a.status, a.code) for a in during})
    first_ok = min(a.sent + a.seconds for p in payments for a in p.answers
                   if a.status == 201 and a.sent >= outage["started"])
    everything = Counter((a.status, a.code) for p in [*payments, *abandoned] for a in p.answers)
    print(f"\nall answers of the run: {dict(everything)}")
    print(f"PostgreSQL down {outage['starting'] - outage['stopped']:.1f} s: {len(during)} "
          f"answers, slowest {slowest * 1000:.0f} ms, {codes}; /readyz "
          f"{sorted({status for status, _ in readiness})} in at most "
          f"{max(s for _, s in readiness) * 1000:.0f} ms; first payment after the start "
          f"{(first_ok - outage['started']) * 1000:.0f} ms after pg_ctl start returned "
          f"(start took {(outage['started'] - outage['starting']) * 1000:.0f} ms)")
    assert slowest < OUTAGE_ANSWER_SECONDS_MAX
    assert all(status == 503 for status, _ in codes), codes
    assert {code for _, code in codes} <= {"database_unavailable", "ledger_unavailable"}, codes
    assert all(a.status is not None for a in during)  # no connection was dropped either
    outage_readiness = [r for r in readiness]
    assert outage_readiness and all(status == 503 for status, _ in outage_readiness[:-1])
    assert max(s for _, s in outage_readiness) < OUTAGE_ANSWER_SECONDS_MAX

    # Afterwards: the service reconnected by itself and every payment got through.
    assert first_ok - outage["started"] < 10.0
    assert all(p.acknowledged for p in payments), [
        (p.final.status_code, p.final.text) for p in payments if p.final and not p.acknowledged]

    # An abandoned payment is wholly there or wholly absent; its retry with the same key
    # then pays it exactly once.
    print(f"one-shot payments around the stop: "
          f"{Counter((a.status, a.code) for p in abandoned for a in p.answers)}")
    for payment in abandoned:
        request_uuid = parse_id("preq", payment.request["payment_request_id"])
        rows = await db.fetchval(
            "SELECT count(*) FROM payments WHERE payment_request_id = $1", request_uuid)
        status = await db.fetchval(
            "SELECT status FROM payment_requests WHERE id = $1", request_uuid)
        assert (rows, status) in ((0, "open"), (1, "paid")), (rows, status, payment.answers)
        existing = await db.fetchval(
            "SELECT id FROM payments WHERE payment_request_id = $1", request_uuid)
        retried = await pay_until_answered(api, payment)
        assert retried.status_code == 201, retried.text
        if existing is not None:  # committed before the crash: the retry is its replay
            assert parse_id("pay", retried.json()["payment_id"]) == existing
        assert await db.fetchval(
            "SELECT count(*) FROM payments WHERE payment_request_id = $1", request_uuid) == 1
    await assert_payments_whole(db, [*payments, *abandoned])
    for citizen in citizens:
        mine = [p.final.json() for p in [*payments, *abandoned]
                if p.citizen is citizen and p.final]
        wallet = await api.get("/v1/citizen/wallet", headers=citizen.headers)
        assert int(wallet.json()["balance"]) == 1_000_000 - sum(
            body["citizen_amount"] for body in mine)
    await assert_ledger_verifies(api, world)
