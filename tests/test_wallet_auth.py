"""Citizens' authentication: the authenticator, sessions, replays, lockout, the guard."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar import Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency

from gwallet.app import create_app
from gwallet.embedded import start_redis, stop_redis
from gwallet.idempotency import IDEMPOTENT, IdempotencyClaim
from gwallet.ids import format_id, parse_id
from gwallet.pii import Keyring, PiiCipher
from gwallet.problems import problem_responses
from gwallet.settings import Settings
from tests.http_service import serving
from tests.wallet_helpers import (
    avoid_step_boundary,
    code,
    confirm,
    key_list,
    login,
    problem,
    register,
    signed_in,
    top_up,
)
from wallet import auth
from wallet.auth import AccountLocked, LockoutPolicy, PinHasher
from wallet.context import WalletConfig, WalletContext, build_context


async def test_the_authenticator_is_confirmed_once_with_a_right_code(
    wallet_api: httpx.AsyncClient,
) -> None:
    avoid_step_boundary()
    citizen = await register(wallet_api)
    wrong = await wallet_api.post(
        "/v1/citizen/totp/confirm",
        json={"citizen_id": citizen.citizen_id, "code": code(citizen.totp_secret, 5)},
    )
    assert wrong.status_code == 401 and problem(wrong)["code"] == "invalid_credentials"
    assert (await confirm(wallet_api, citizen)).json() == {
        "citizen_id": citizen.citizen_id,
        "totp_confirmed": True,
    }
    again = await confirm(wallet_api, citizen, offset=0)
    assert again.status_code == 409 and problem(again)["code"] == "totp_already_confirmed"
    unknown = await wallet_api.post(
        "/v1/citizen/totp/confirm",
        json={"citizen_id": format_id("cit", uuid.uuid4()), "code": "123456"},
    )
    assert unknown.status_code == 404 and problem(unknown)["code"] == "not_found"


async def test_no_session_before_the_authenticator_is_confirmed(
    wallet_api: httpx.AsyncClient,
) -> None:
    avoid_step_boundary()
    citizen = await register(wallet_api)
    response = await login(wallet_api, citizen)
    assert response.status_code == 403 and problem(response)["code"] == "totp_not_confirmed"


async def test_a_replayed_totp_code_is_rejected(wallet_api: httpx.AsyncClient) -> None:
    avoid_step_boundary()
    citizen = await register(wallet_api)
    assert (await confirm(wallet_api, citizen, offset=-1)).status_code == 200
    # The confirmation's code cannot log in afterwards: it was accepted once already.
    reused = await login(wallet_api, citizen, offset=-1)
    assert reused.status_code == 401 and problem(reused)["code"] == "invalid_credentials"
    first = await login(wallet_api, citizen, offset=0)
    assert first.status_code == 201, first.text
    replayed = await login(wallet_api, citizen, offset=0)
    assert replayed.status_code == 401 and problem(replayed)["code"] == "invalid_credentials"
    assert (await login(wallet_api, citizen, offset=1)).status_code == 201  # the next step


async def test_a_session_token_is_random_bearer_with_an_expiry(wallet_api: httpx.AsyncClient) -> None:
    avoid_step_boundary()
    citizen = await register(wallet_api)
    await confirm(wallet_api, citizen)
    out = (await login(wallet_api, citizen)).json()
    assert out["access_token"].startswith("cst_") and len(out["access_token"]) == 47
    assert out["token_type"] == "Bearer" and out["session_id"].startswith("ses_")
    expires = datetime.fromisoformat(out["expires_at"])
    assert timedelta(hours=11) < expires - datetime.now(UTC) <= timedelta(hours=12)


async def test_wrong_national_id_pin_or_code_all_answer_the_same_401(
    wallet_api: httpx.AsyncClient,
) -> None:
    citizen = await signed_in(wallet_api)
    for body in (
        {"national_id": "1101700230708", "pin": citizen.pin, "totp_code": "123456"},
        {"national_id": citizen.national_id, "pin": "482916", "totp_code": code(citizen.totp_secret, 1)},
        {"national_id": citizen.national_id, "pin": citizen.pin, "totp_code": "000000"},
    ):
        response = await wallet_api.post("/v1/citizen/sessions", json=body)
        assert response.status_code == 401, response.text
        assert problem(response)["detail"] == auth.InvalidCredentials().detail


async def test_ten_failures_lock_the_account_for_thirty_minutes(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    avoid_step_boundary()
    citizen = await register(wallet_api)
    assert (await confirm(wallet_api, citizen)).status_code == 200
    for n in range(10):
        response = await login(wallet_api, citizen, pin="111222" if n % 2 else "999888")
        assert response.status_code == 401, (n, response.text)
    locked = await login(wallet_api, citizen)  # right credentials, but locked
    assert locked.status_code == 429 and problem(locked)["code"] == "account_locked"
    assert 1790 <= int(locked.headers["Retry-After"]) <= 1801
    citizen_id = parse_id("cit", citizen.citizen_id)
    until = await pool.fetchval("SELECT locked_until FROM citizens WHERE id = $1", citizen_id)
    assert timedelta(minutes=29) < until - datetime.now(UTC) <= timedelta(minutes=30)


async def test_a_success_resets_the_count_of_consecutive_failures(
    wallet_api: httpx.AsyncClient,
) -> None:
    avoid_step_boundary()
    citizen = await register(wallet_api)
    assert (await confirm(wallet_api, citizen, offset=-1)).status_code == 200
    for _ in range(9):
        assert (await login(wallet_api, citizen, pin="111222")).status_code == 401
    assert (await login(wallet_api, citizen, offset=0)).status_code == 201
    for _ in range(9):
        assert (await login(wallet_api, citizen, pin="111222")).status_code == 401
    assert (await login(wallet_api, citizen, offset=1)).status_code == 201


async def test_concurrent_guesses_are_counted_one_by_one(wallet_api: httpx.AsyncClient) -> None:
    avoid_step_boundary()
    citizen = await register(wallet_api)
    assert (await confirm(wallet_api, citizen)).status_code == 200
    guesses = [f"{n:06d}" for n in range(300_001, 300_031)]
    responses = await asyncio.gather(*(login(wallet_api, citizen, pin=g) for g in guesses))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * 10 + [429] * 20


def _restart_settings(database_url: str, redis_url: str, keys: Settings) -> Settings:
    return msgspec.structs.replace(keys, database_url=database_url, redis_url=redis_url)


async def test_the_lockout_holds_while_redis_is_down_and_after_it_restarts(
    database_url: str, tmp_path: Path, wallet_settings: Settings
) -> None:
    redis_dir = tmp_path / "redis-of-this-test"
    first_url = start_redis(redis_dir)
    settings = _restart_settings(database_url, first_url, wallet_settings)
    avoid_step_boundary()
    with serving(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as api:
            citizen = await register(api)
            await confirm(api, citizen)
            for _ in range(10):
                assert (await login(api, citizen, pin="111222")).status_code == 401
            assert (await login(api, citizen)).status_code == 429
            stop_redis(redis_dir)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                ready = await api.get("/readyz")
                if ready.status_code == 503:
                    break
                await asyncio.sleep(0.1)
            assert ready.status_code == 503  # Redis is down for this service
            down = await login(api, citizen)
            assert down.status_code == 429 and problem(down)["code"] == "account_locked"
    second_url = start_redis(redis_dir)  # a restarted Redis (its data directory kept)
    try:
        restarted = _restart_settings(database_url, second_url, wallet_settings)
        with serving(create_app(restarted)) as base:
            async with httpx.AsyncClient(base_url=base, timeout=30) as api:
                assert (await api.get("/readyz")).status_code == 200
                after = await login(api, citizen)
                assert after.status_code == 429 and problem(after)["code"] == "account_locked"
    finally:
        stop_redis(redis_dir)


# --- the guard -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ost_" + "a" * 43,  # an official's token
        "Bearer sk_live_" + "a" * 40,  # a merchant's API key
        "Basic dXNlcjpwYXNz",
        "Bearer cst_" + "a" * 43,  # well-formed, unknown
        ("Bearer cst_" + "a" * 42 + "\u0e51").encode(),  # a Thai digit, sent as UTF-8
        "Bearer cst_" + "a" * 5000,
    ],
)
async def test_citizen_endpoints_answer_401_without_a_valid_citizen_token(
    wallet_api: httpx.AsyncClient, authorization: str | bytes | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in ("/v1/citizen/wallet", "/v1/citizen/transactions", "/v1/citizen/sessions",
                 "/v1/citizen/programs", "/v1/citizen/me"):
        response = await wallet_api.get(path, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert problem(response)["code"] == "unauthenticated"


async def test_an_ended_or_expired_session_is_refused(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    avoid_step_boundary()
    citizen = await register(wallet_api)
    await confirm(wallet_api, citizen, offset=-1)
    first = (await login(wallet_api, citizen, offset=0)).json()
    second = (await login(wallet_api, citizen, offset=1)).json()
    one = {"Authorization": f"Bearer {first['access_token']}"}
    two = {"Authorization": f"Bearer {second['access_token']}"}

    listed = (await wallet_api.get("/v1/citizen/sessions", headers=one)).json()
    assert [s["session_id"] for s in listed["data"]] == [second["session_id"], first["session_id"]]
    assert [s["current"] for s in listed["data"]] == [False, True]
    assert listed["has_more"] is False
    paged = await wallet_api.get(
        "/v1/citizen/sessions",
        params={"limit": 1, "starting_after": second["session_id"]},
        headers=one,
    )
    assert [s["session_id"] for s in paged.json()["data"]] == [first["session_id"]]

    assert (await wallet_api.delete("/v1/citizen/sessions/current", headers=one)).status_code == 204
    assert (await wallet_api.get("/v1/citizen/wallet", headers=one)).status_code == 401
    assert (await wallet_api.get("/v1/citizen/wallet", headers=two)).status_code == 200
    ended_again = await wallet_api.delete(f"/v1/citizen/sessions/{first['session_id']}", headers=two)
    assert ended_again.status_code == 404

    await pool.execute(
        "UPDATE citizen_sessions SET created_at = now() - interval '2 days', "
        "expires_at = now() - interval '1 second' WHERE id = $1",
        parse_id("ses", second["session_id"]),
    )
    expired = await wallet_api.get("/v1/citizen/wallet", headers=two)
    assert expired.status_code == 401 and problem(expired)["code"] == "unauthenticated"


async def test_a_citizen_can_end_only_their_own_sessions(wallet_api: httpx.AsyncClient) -> None:
    alice = await signed_in(wallet_api)
    bob = await signed_in(wallet_api)
    bob_session = (await wallet_api.get("/v1/citizen/sessions", headers=bob.headers)).json()
    bob_session_id = bob_session["data"][0]["session_id"]
    for session_id in (bob_session_id, "ses_nonsense", format_id("ses", uuid.uuid4())):
        response = await wallet_api.delete(f"/v1/citizen/sessions/{session_id}", headers=alice.headers)
        assert response.status_code == 404 and problem(response)["code"] == "not_found"
    assert (await wallet_api.get("/v1/citizen/wallet", headers=bob.headers)).status_code == 200


async def test_a_new_session_beyond_the_maximum_ends_the_oldest(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    citizen = await signed_in(wallet_api)
    citizen_id = parse_id("cit", citizen.citizen_id)
    assert citizen_id is not None
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        sessions = [
            await auth.create_session(
                conn, citizen_id, now=now + timedelta(seconds=n), ttl_seconds=3600, sessions_max=3
            )
            for n in range(1, 5)
        ]
    active = await pool.fetch(
        "SELECT id FROM citizen_sessions WHERE citizen_id = $1 AND ended_at IS NULL "
        "ORDER BY created_at",
        citizen_id,
    )
    assert [r["id"] for r in active] == [s.session_id for s in sessions[1:]]


# --- one citizen never reads another's data ----------------------------------------------------


async def test_one_citizens_token_never_reads_another_citizens_wallet_payments_or_transactions(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    alice = await signed_in(wallet_api)
    bob = await signed_in(wallet_api)
    assert (await top_up(wallet_api, bob.wallet_id, 5_000)).status_code == 201
    bob_txn = (await wallet_api.get("/v1/citizen/transactions", headers=bob.headers)).json()
    bob_txn_id = bob_txn["data"][0]["id"]
    payment_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO payments (id, payment_request_id, citizen_id, merchant_id, amount, "
        "subsidy_amount, citizen_amount, merchant_category, merchant_province_code, "
        "merchant_district_code, citizen_province_code, citizen_district_code, business_date, "
        "created_at) VALUES ($1, $2, $3, $4, 1000, 0, 1000, 'grocery', '10', '1001', '10', "
        "'1001', current_date, now())",
        payment_id, uuid.uuid4(), parse_id("cit", bob.citizen_id), uuid.uuid4(),
    )
    bob_payment = format_id("pay", payment_id)

    mine = await wallet_api.get(f"/v1/citizen/payments/{bob_payment}", headers=bob.headers)
    assert mine.status_code == 200 and mine.json()["amount"] == 1000
    assert (await wallet_api.get(f"/v1/citizen/wallets/{bob.wallet_id}", headers=bob.headers)).status_code == 200
    assert (await wallet_api.get(f"/v1/citizen/transactions/{bob_txn_id}", headers=bob.headers)).status_code == 200

    for path in (
        f"/v1/citizen/wallets/{bob.wallet_id}",
        f"/v1/citizen/transactions/{bob_txn_id}",
        f"/v1/citizen/payments/{bob_payment}",
    ):
        response = await wallet_api.get(path, headers=alice.headers)
        assert response.status_code == 404, (path, response.text)
        assert problem(response)["code"] == "not_found"
    own = (await wallet_api.get("/v1/citizen/wallet", headers=alice.headers)).json()
    assert own["wallet_id"] == alice.wallet_id and own["balance"] == 0
    listed = (await wallet_api.get("/v1/citizen/transactions", headers=alice.headers)).json()
    assert listed == {"data": [], "has_more": False}
    cursor = await wallet_api.get(
        "/v1/citizen/transactions", params={"starting_after": bob_txn_id}, headers=alice.headers
    )
    assert cursor.status_code == 400 and problem(cursor)["code"] == "invalid_parameter"


# --- the payment path's PIN check ------------------------------------------------------------


def _context(wallet_settings: Settings, **changes: object) -> WalletContext:
    context = build_context(wallet_settings)
    return WalletContext(
        keys=context.keys,
        partners=context.partners,
        config=WalletConfig(**{"lockout": LockoutPolicy(failures=10, lock_seconds=1800), **changes}),
    )


async def test_the_payment_pin_check_counts_failures_and_locks_like_a_login(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool, wallet_settings: Settings
) -> None:
    citizen = await signed_in(wallet_api)
    citizen_id = parse_id("cit", citizen.citizen_id)
    context = _context(wallet_settings)
    async with pool.acquire() as conn:
        assert await context.verify_payment_pin(conn, citizen_id, citizen.pin) is True
        for _ in range(9):
            assert await context.verify_payment_pin(conn, citizen_id, "111222") is False
        assert await context.verify_payment_pin(conn, citizen_id, citizen.pin) is True  # reset
        for _ in range(10):
            assert await context.verify_payment_pin(conn, citizen_id, "๑๑๑๒๒๒") is False
        with pytest.raises(AccountLocked):
            await context.verify_payment_pin(conn, citizen_id, citizen.pin)
    locked = await wallet_api.get("/v1/citizen/wallet", headers=citizen.headers)
    assert locked.status_code == 200  # a lock stops credentials, not the session's reads


async def test_a_pin_hashed_under_an_old_pepper_still_verifies_and_moves_to_the_new_one(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool, wallet_settings: Settings
) -> None:
    citizen = await signed_in(wallet_api)
    citizen_id = parse_id("cit", citizen.citizen_id)
    old = build_context(wallet_settings)
    rotated_peppers = Keyring.parse(
        f"{key_list('p2')},p1:{old.keys.pins.peppers.keys['p1'].hex()}", "peppers"
    )
    keys = type(old.keys)(pii=old.keys.pii, lookup=old.keys.lookup, pins=PinHasher(rotated_peppers))
    rotated = WalletContext(keys=keys, partners=old.partners, config=old.config)
    async with pool.acquire() as conn:
        assert await rotated.verify_payment_pin(conn, citizen_id, "111222") is False
        assert await rotated.verify_payment_pin(conn, citizen_id, citizen.pin) is True
    assert await pool.fetchval("SELECT pin_key_id FROM citizens WHERE id = $1", citizen_id) == "p2"
    async with pool.acquire() as conn:
        assert await rotated.verify_payment_pin(conn, citizen_id, citizen.pin) is True


def test_a_pin_hash_is_keyed_salted_by_the_citizen_and_cheap() -> None:
    hasher = PinHasher(Keyring.parse(key_list("p1"), "p"))
    other = PinHasher(Keyring.parse(key_list("p1"), "p"))
    a, b = uuid.uuid4(), uuid.uuid4()
    assert hasher.hash(a, "482915") != hasher.hash(b, "482915")  # salted per citizen
    assert hasher.hash(a, "482915") != other.hash(a, "482915")  # keyed by the pepper
    key_id, digest = hasher.hash(a, "482915")
    assert hasher.matches(a, "482915", key_id, digest)
    assert not hasher.matches(a, "482916", key_id, digest)
    started = time.perf_counter()
    for _ in range(10_000):
        hasher.matches(a, "482915", key_id, digest)
    assert time.perf_counter() - started < 0.5  # well over 20,000 checks/s on one core


def test_totp_secrets_are_stored_encrypted_like_personal_data() -> None:
    pii = PiiCipher(Keyring.parse(key_list("t1"), "t"))
    row = uuid.uuid4()
    blob = pii.encrypt("JBSWY3DPEHPK3PXP", row_id=row, field="totp_secret")
    assert b"JBSWY3DPEHPK3PXP" not in blob
    assert pii.decrypt(blob, row_id=row, field="totp_secret") == "JBSWY3DPEHPK3PXP"


# --- the guard authenticates before any dependency (idempotency keys are per citizen) -------


@post(
    "/test/citizen-effects",
    guards=[auth.citizen_guard],
    dependencies={"citizen": auth.CITIZEN, "claim": IDEMPOTENT},
    status_code=201,
    responses=problem_responses(),
)
async def citizen_effect(
    citizen: NamedDependency[auth.CitizenPrincipal],
    claim: NamedDependency[IdempotencyClaim],
    state: State,
) -> Response[Any]:
    async with state.pool.acquire() as conn, conn.transaction():
        return await claim.respond(conn, 201, {"scope": claim.scope, "citizen": citizen.principal_id})


async def test_the_citizen_guard_scopes_idempotency_keys_to_the_citizen(
    wallet_settings: Settings,
) -> None:
    with serving(create_app(wallet_settings, route_handlers=[citizen_effect])) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as api:
            alice, bob = await signed_in(api), await signed_in(api)
            key = {"Idempotency-Key": f"same-key-{uuid.uuid4()}"}
            for citizen in (alice, bob, alice):
                response = await api.post("/test/citizen-effects", headers={**citizen.headers, **key})
                assert response.status_code == 201, response.text
                assert response.json() == {"scope": citizen.citizen_id, "citizen": citizen.citizen_id}
            anonymous = await api.post("/test/citizen-effects", headers=key)
            assert anonymous.status_code == 401
