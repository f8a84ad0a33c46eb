"""Merchants (issue 5): applications, the officials' approval / suspension / reinstatement,
API keys (rotation with a grace period, the guard) and the per-key rate limit across workers.

Real PostgreSQL, real Redis, real HTTP. The helpers and fixtures at the top are shared with
tests/test_payment_requests.py.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as redis_asyncio

from gwallet.app import create_app
from gwallet.ids import parse_id
from gwallet.officials import Q as OFFICIAL_QUERIES
from gwallet.officials import Role, create_official, new_token, token_hash
from gwallet.settings import Settings
from merchant_api.ratelimit import RateLimiter
from tests.http_service import free_port, serving
from tests.wallet_helpers import (
    national_id,
    problem,
    signed_in,
    wallet_settings_for,
    with_wrong_check_digit,
)

GRACE_SECONDS = 2


# --- the service and its actors -------------------------------------------------------------


def merchant_settings_for(
    database_url: str, redis_url: str, data_dir: Path, **overrides: object
) -> Settings:
    values: dict[str, object] = {"merchant_rotation_grace_seconds": GRACE_SECONDS}
    values.update(overrides)
    return wallet_settings_for(database_url, redis_url, data_dir, **values)


@pytest.fixture(scope="session")
def merchant_settings(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return merchant_settings_for(database_url, redis_url, tmp_path_factory.mktemp("merchant-data"))


@pytest.fixture(scope="session")
def merchant_service_url(merchant_settings: Settings) -> Iterator[str]:
    with serving(create_app(merchant_settings)) as url:
        yield url


@pytest.fixture(scope="session")
async def merchant_api(merchant_service_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=merchant_service_url, timeout=30) as client:
        yield client


async def official_headers(pool: asyncpg.Pool, role: Role) -> dict[str, str]:
    """A new official of ``role`` and a session of theirs (made directly: no TOTP dance)."""
    async with pool.acquire() as conn, conn.transaction():
        new = await create_official(
            conn,
            username=f"{role}.{secrets.token_hex(4)}",
            role=role,
            password=None,
            created_by=None,
        )
    official_id = await pool.fetchval(
        "SELECT id FROM officials WHERE username = $1", new.official.username
    )
    token = new_token()
    now = datetime.now(UTC)
    await pool.execute(
        OFFICIAL_QUERIES["insert_session"], token_hash(token), official_id, now,
        now + timedelta(hours=1),
    )
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
async def admin(pool: asyncpg.Pool) -> dict[str, str]:
    return await official_headers(pool, Role.ADMIN)


def application_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "Som Tam Pa Noi",
        "owner_national_id": national_id(),
        "business_type": "individual",
        "category": "street_food",
        "province_code": "40",
        "district_code": "4001",
        "bank_account": {
            "bank_code": "004",
            "account_number": "1234567890",
            "account_name": "Noi Sukjai",
        },
    }
    body.update(overrides)
    return body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def applied(api: httpx.AsyncClient, **overrides: object) -> str:
    response = await api.post("/v1/merchant/applications", json=application_body(**overrides))
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    return str(response.json()["merchant_id"])


async def approved(
    api: httpx.AsyncClient, admin_headers: dict[str, str], **overrides: object
) -> tuple[str, dict[str, str]]:
    """An approved merchant: (merchant_id, headers with its API key)."""
    merchant_id = await applied(api, **overrides)
    response = await api.post(f"/v1/admin/merchants/{merchant_id}/approve", headers=admin_headers)
    assert response.status_code == 200, response.text
    return merchant_id, bearer(response.json()["api_key"])


MISSING = "/v1/merchant/payment-requests/preq_00000000000000000000000000"


# --- applications -----------------------------------------------------------------------------


async def test_an_application_is_pending_and_its_personal_data_is_encrypted_at_rest(
    merchant_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = application_body(bank_account={
        "bank_code": "014", "account_number": "987654321098", "account_name": "Malee Rakdee",
    })
    response = await merchant_api.post("/v1/merchant/applications", json=body)
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["status"] == "pending" and out["merchant_id"].startswith("mer_")
    row = await pool.fetchrow(
        "SELECT * FROM merchants WHERE name = $1 ORDER BY created_at DESC LIMIT 1", body["name"]
    )
    stored = b"".join(
        bytes(value) if isinstance(value, bytes) else str(value).encode()
        for value in dict(row).values()
    )
    for secret_value in (str(body["owner_national_id"]), "987654321098", "Malee Rakdee"):
        assert secret_value.encode() not in stored
    assert len(row["owner_national_id_index"]) == 32


async def test_an_application_with_an_idempotency_key_is_made_once(
    merchant_api: httpx.AsyncClient,
) -> None:
    body = application_body()
    headers = {"Idempotency-Key": secrets.token_hex(8)}
    first = await merchant_api.post("/v1/merchant/applications", json=body, headers=headers)
    again = await merchant_api.post("/v1/merchant/applications", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers.get("idempotent-replayed") == "true"
    other = await merchant_api.post(
        "/v1/merchant/applications", json=application_body(), headers=headers
    )
    assert problem(other)["code"] == "idempotency_key_reused"
    # Without a key, each application is a new one.
    plain = [await merchant_api.post("/v1/merchant/applications", json=body) for _ in range(2)]
    assert plain[0].json()["merchant_id"] != plain[1].json()["merchant_id"]


THAI_DIGITS = str.maketrans("0123456789", "๐๑๒๓๔๕๖๗๘๙")


@pytest.mark.parametrize(
    ("overrides", "status", "code", "field"),
    [
        ({"owner_national_id": "123"}, 422, "invalid_national_id", "owner_national_id"),
        ({"owner_national_id": with_wrong_check_digit(national_id())}, 422, "invalid_national_id",
         "owner_national_id"),
        ({"owner_national_id": national_id().translate(THAI_DIGITS)}, 422, "invalid_national_id",
         "owner_national_id"),
        ({"owner_national_id": 1234567890123}, 422, "invalid_request", "owner_national_id"),
        ({"name": ""}, 422, "invalid_request", "name"),
        ({"name": "Shop\x00"}, 422, "invalid_request", "name"),
        ({"name": "x" * 101}, 422, "invalid_request", "name"),
        ({"name": "x" * 401}, 422, "invalid_request", "name"),
        ({"business_type": "company"}, 422, "invalid_request", "business_type"),
        ({"category": "Street Food"}, 422, "invalid_request", "category"),
        ({"province_code": "๔๐"}, 422, "invalid_request", "province_code"),
        ({"district_code": "1001"}, 422, "invalid_request", "district_code"),
        ({"district_code": "40011"}, 422, "invalid_request", "district_code"),
        ({"bank_account": {"bank_code": "04", "account_number": "1234567890",
                           "account_name": "A"}}, 422, "invalid_request", "bank_account.bank_code"),
        ({"bank_account": {"bank_code": "004", "account_number": "123456789",
                           "account_name": "A"}}, 422, "invalid_request",
         "bank_account.account_number"),
        ({"bank_account": {"bank_code": "004", "account_number": "๑๒๓๔๕๖๗๘๙๐",
                           "account_name": "A"}}, 422, "invalid_request",
         "bank_account.account_number"),
        ({"bank_account": {"bank_code": "004", "account_number": "1234567890",
                           "account_name": "A", "iban": "x"}}, 422, "invalid_request",
         "bank_account.iban"),
        ({"bank_account": {"bank_code": "004", "account_number": "1234567890"}}, 422,
         "invalid_request", "bank_account.account_name"),
        ({"extra": 1}, 422, "invalid_request", "extra"),
    ],
)
async def test_a_bad_application_is_refused_naming_the_field(
    merchant_api: httpx.AsyncClient, overrides: dict[str, object], status: int, code: str,
    field: str,
) -> None:
    response = await merchant_api.post(
        "/v1/merchant/applications", json=application_body(**overrides)
    )
    assert response.status_code == status, response.text
    document = problem(response)
    assert document["code"] == code
    assert field in {error["field"] for error in document.get("errors") or []}, document


async def test_a_body_that_is_not_json_or_not_an_object_is_a_4xx_problem(
    merchant_api: httpx.AsyncClient,
) -> None:
    for content in (b"{", b"[]", b"null", b"\x00"):
        response = await merchant_api.post(
            "/v1/merchant/applications", content=content,
            headers={"content-type": "application/json"},
        )
        assert 400 <= response.status_code < 500, (content, response.text)
        problem(response)


# --- the officials' actions -----------------------------------------------------------------


async def test_approval_creates_the_two_shared_payable_accounts_and_returns_the_key_once(
    merchant_api: httpx.AsyncClient, admin: dict[str, str], pool: asyncpg.Pool
) -> None:
    merchant_id = await applied(merchant_api)
    response = await merchant_api.post(f"/v1/admin/merchants/{merchant_id}/approve", headers=admin)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["merchant"]["status"] == "approved"
    key = out["api_key"]
    assert key.startswith("sk_live_") and len(key) == len("sk_live_") + 43
    accounts = await pool.fetch(
        "SELECT a.* FROM ledger_accounts a JOIN merchants m"
        " ON a.id IN (m.citizen_payable_account_id, m.state_payable_account_id)"
        " WHERE m.id = $1 ORDER BY a.code",
        parse_id("mer", merchant_id),
    )
    assert [(a["code"], a["ledger"], a["shared"], a["debits_must_not_exceed_credits"])
            for a in accounts] == [(300, 764, True, True), (301, 764, True, True)]
    # Only the hash is stored.
    assert await pool.fetchval("SELECT count(*) FROM merchant_api_keys WHERE key_hint = $1 "
                               "AND key_hash = sha256($2::bytea)", key[-4:], key.encode()) == 1
    # Approving again is a refusal, never a second key.
    again = await merchant_api.post(f"/v1/admin/merchants/{merchant_id}/approve", headers=admin)
    assert again.status_code == 409 and problem(again)["code"] == "invalid_transition"
    # The key works.
    assert (await merchant_api.get(MISSING, headers=bearer(key))).status_code == 404


async def test_suspension_and_reinstatement_are_audited_without_personal_data(
    merchant_api: httpx.AsyncClient, admin: dict[str, str], pool: asyncpg.Pool
) -> None:
    body = application_body()
    response = await merchant_api.post("/v1/merchant/applications", json=body)
    merchant_id = response.json()["merchant_id"]
    base = f"/v1/admin/merchants/{merchant_id}"
    early = await merchant_api.post(f"{base}/suspend", json={"reason": "x"}, headers=admin)
    assert early.status_code == 409 and problem(early)["code"] == "invalid_transition"
    assert (await merchant_api.post(f"{base}/approve", headers=admin)).status_code == 200
    suspended = await merchant_api.post(
        f"{base}/suspend", json={"reason": "cash-out collusion suspected"}, headers=admin
    )
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["status"] == "suspended"
    assert suspended.json()["suspension_reason"] == "cash-out collusion suspected"
    assert suspended.json()["suspended_at"] is not None
    twice = await merchant_api.post(f"{base}/suspend", json={"reason": "x"}, headers=admin)
    assert problem(twice)["code"] == "invalid_transition"
    reinstated = await merchant_api.post(f"{base}/reinstate", headers=admin)
    assert reinstated.status_code == 200 and reinstated.json()["status"] == "approved"
    again = await merchant_api.post(f"{base}/reinstate", headers=admin)
    assert problem(again)["code"] == "invalid_transition"

    rows = await pool.fetch(
        "SELECT action, before::text, after::text FROM audit_log WHERE target_id = $1 ORDER BY seq",
        merchant_id,
    )
    assert [r["action"] for r in rows] == [
        "merchant.approve", "merchant.suspend", "merchant.reinstate"
    ]
    assert '"suspended"' in rows[1]["after"] and '"approved"' in rows[1]["before"]
    for row in rows:
        text = (row["before"] or "") + (row["after"] or "")
        assert str(body["owner_national_id"]) not in text and "1234567890" not in text


@pytest.mark.parametrize("reason", ["", "   ", "a\x00b", "x" * 501, 5])
async def test_a_suspension_needs_a_readable_reason(
    merchant_api: httpx.AsyncClient, admin: dict[str, str], reason: object
) -> None:
    merchant_id, _ = await approved(merchant_api, admin)
    response = await merchant_api.post(
        f"/v1/admin/merchants/{merchant_id}/suspend", json={"reason": reason}, headers=admin
    )
    assert response.status_code == 422 and problem(response)["code"] == "invalid_request"


async def test_only_admins_and_checkers_act_and_see_personal_data_masked(
    merchant_api: httpx.AsyncClient, admin: dict[str, str], pool: asyncpg.Pool
) -> None:
    checker = await official_headers(pool, Role.CHECKER)
    maker = await official_headers(pool, Role.MAKER)
    auditor = await official_headers(pool, Role.AUDITOR)
    body = application_body(bank_account={
        "bank_code": "002", "account_number": "11122233344455", "account_name": "Anan Jaidee",
    })
    merchant_id = (await merchant_api.post("/v1/merchant/applications", json=body)).json()[
        "merchant_id"
    ]
    for headers in (maker, auditor):
        refused = await merchant_api.post(
            f"/v1/admin/merchants/{merchant_id}/approve", headers=headers
        )
        assert refused.status_code == 403 and problem(refused)["code"] == "forbidden"
    assert (await merchant_api.post(
        f"/v1/admin/merchants/{merchant_id}/approve", headers=checker
    )).status_code == 200

    for headers in (admin, checker):
        response = await merchant_api.get(f"/v1/admin/merchants/{merchant_id}", headers=headers)
        seen = response.json()
        assert seen["personal_data"] == {
            "owner_national_id": body["owner_national_id"],
            "bank_account": {
                "bank_code": "002",
                "account_number_masked": "xxxxxxxxxx4455",
                "account_name": "Anan Jaidee",
            },
        }
    for headers in (maker, auditor):
        response = await merchant_api.get(f"/v1/admin/merchants/{merchant_id}", headers=headers)
        assert response.status_code == 200 and response.json()["personal_data"] is None
        assert "11122233344455" not in response.text and "Anan" not in response.text
    reads = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'merchant.personal_data_read'"
        " AND target_id = $1", merchant_id,
    )
    assert reads == 2


async def test_officials_list_merchants_by_status_with_a_cursor(
    merchant_api: httpx.AsyncClient, admin: dict[str, str], pool: asyncpg.Pool
) -> None:
    auditor = await official_headers(pool, Role.AUDITOR)
    for _ in range(3):
        await applied(merchant_api)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "status": "pending"}
        if cursor:
            params["starting_after"] = cursor
        page = await merchant_api.get("/v1/admin/merchants", params=params, headers=auditor)
        assert page.status_code == 200, page.text
        data = page.json()["data"]
        assert all(m["status"] == "pending" and m["personal_data"] is None for m in data)
        seen.extend(m["merchant_id"] for m in data)
        if not page.json()["has_more"]:
            break
        cursor = data[-1]["merchant_id"]
    assert len(seen) == len(set(seen)) >= 3 and seen == sorted(seen, key=_uuid_order)
    for params in ({"status": "open"}, {"limit": 0}, {"limit": 101}, {"starting_after": "x"},
                   {"starting_after": "pay_00000000000000000000000000"}):
        bad = await merchant_api.get("/v1/admin/merchants", params=params, headers=auditor)
        assert bad.status_code == 400, (params, bad.text)
        problem(bad)


def _uuid_order(public_id: str) -> str:
    return public_id  # Crockford base32 of the UUID, fixed width: sorts as the UUID does


@pytest.mark.parametrize(
    "path",
    [
        "/v1/admin/merchants/nope",
        "/v1/admin/merchants/mer_",
        "/v1/admin/merchants/cit_00000000000000000000000000",
        "/v1/admin/merchants/mer_00000000000000000000000000",
        "/v1/admin/merchants/mer_zzzzzzzzzzzzzzzzzzzzzzzzzz",
        "/v1/admin/merchants/mer_0000000000000000000000000%C3%A9",
    ],
)
async def test_a_malformed_or_unknown_merchant_id_is_a_404(
    merchant_api: httpx.AsyncClient, admin: dict[str, str], path: str
) -> None:
    for method, suffix in (("GET", ""), ("POST", "/approve"), ("POST", "/reinstate")):
        response = await merchant_api.request(method, path + suffix, headers=admin)
        assert response.status_code == 404, (method, path, response.text)
        assert problem(response)["code"] == "not_found"


# --- API keys and the guard -----------------------------------------------------------------


async def test_a_rotated_key_works_for_the_grace_period_then_stops(
    merchant_api: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    _, old = await approved(merchant_api, admin)
    rotated = await merchant_api.post("/v1/merchant/api-keys/rotate", headers=old)
    assert rotated.status_code == 201, rotated.text
    new = bearer(rotated.json()["api_key"])
    assert new != old
    assert (await merchant_api.get(MISSING, headers=old)).status_code == 404  # still works
    assert (await merchant_api.get(MISSING, headers=new)).status_code == 404
    # A retiring key cannot mint another one.
    refused = await merchant_api.post("/v1/merchant/api-keys/rotate", headers=old)
    assert refused.status_code == 403 and problem(refused)["code"] == "api_key_retiring"
    expires_at = datetime.fromisoformat(rotated.json()["previous_key_expires_at"])
    await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.2)
    gone = await merchant_api.get(MISSING, headers=old)
    assert gone.status_code == 401 and problem(gone)["code"] == "unauthenticated"
    assert (await merchant_api.get(MISSING, headers=new)).status_code == 404


async def test_citizen_and_official_tokens_and_bad_keys_are_401_on_merchant_endpoints(
    merchant_api: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    citizen = await signed_in(merchant_api)
    candidates = [
        {},
        citizen.headers,
        admin,
        bearer("cst_" + secrets.token_urlsafe(32)),
        bearer("ost_" + secrets.token_urlsafe(32)),
        bearer("sk_live_" + secrets.token_urlsafe(32)),  # well formed, unknown
        bearer("sk_live_short"),
        bearer("sk_test_" + secrets.token_urlsafe(32)),
        {"Authorization": "Basic c2tfbGl2ZV86"},
        {"Authorization": "Bearer " + "x" * 500},
    ]
    endpoints = [
        ("GET", MISSING, None),
        ("POST", "/v1/merchant/payment-requests", {"amount": 100, "reference": "A"}),
        ("POST", MISSING + "/cancel", None),
        ("GET", "/v1/merchant/payments", None),
        ("GET", "/v1/merchant/payments/pay_00000000000000000000000000", None),
        ("POST", "/v1/merchant/api-keys/rotate", None),
    ]
    for headers in candidates:
        for method, path, body in endpoints:
            response = await merchant_api.request(
                method, path, json=body, headers={**headers, "Idempotency-Key": "k1"}
            )
            assert response.status_code == 401, (headers, method, path, response.text)
            assert problem(response)["code"] == "unauthenticated"


async def test_a_suspended_merchants_key_still_reads_but_a_pending_merchant_has_none(
    merchant_api: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    merchant_id, key = await approved(merchant_api, admin)
    await merchant_api.post(
        f"/v1/admin/merchants/{merchant_id}/suspend", json={"reason": "fraud"}, headers=admin
    )
    assert (await merchant_api.get("/v1/merchant/payments", headers=key)).status_code == 200


async def test_admin_endpoints_refuse_merchant_keys_with_403(
    merchant_api: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    merchant_id, key = await approved(merchant_api, admin)
    for method, path in (
        ("GET", "/v1/admin/merchants"),
        ("GET", f"/v1/admin/merchants/{merchant_id}"),
        ("POST", f"/v1/admin/merchants/{merchant_id}/suspend"),
        ("POST", f"/v1/admin/merchants/{merchant_id}/reinstate"),
        ("POST", f"/v1/admin/merchants/{merchant_id}/approve"),
    ):
        response = await merchant_api.request(method, path, headers=key, json={"reason": "x"})
        assert response.status_code == 403, (method, path, response.text)
        assert problem(response)["code"] == "forbidden"


# --- the rate limit -------------------------------------------------------------------------


async def test_the_rate_limit_is_exact_across_two_app_instances_sharing_redis(
    merchant_api: httpx.AsyncClient,
    admin: dict[str, str],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    _, key = await approved(merchant_api, admin)
    burst = 7
    # One token per 1000 s: nothing refills during the test, so exactly `burst` pass. A
    # generous Redis timeout: on a busy machine a slow answer would let a request through
    # (the limiter fails open), which is right in production and not what is tested here.
    settings = merchant_settings_for(
        database_url, redis_url, tmp_path,
        merchant_rate_limit_per_second=0.001, merchant_rate_limit_burst=burst,
        redis_timeout_seconds=5.0,
    )
    with ExitStack() as stack:
        urls = [stack.enter_context(serving(create_app(settings))) for _ in range(2)]
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(client.get(urls[i % 2] + MISSING, headers=key) for i in range(40))
            )
    statuses = [r.status_code for r in responses]
    assert statuses.count(404) == burst and statuses.count(429) == 40 - burst, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert problem(limited)["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1


async def test_the_rate_limiter_lets_requests_through_when_redis_is_down() -> None:
    redis = redis_asyncio.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2, socket_timeout=0.2
    )
    try:
        limiter = RateLimiter(redis, rate_per_second=0.001, burst=1, prefix="test:")
        decisions = [await limiter.hit("k") for _ in range(3)]
    finally:
        await redis.aclose()
    assert all(d.allowed for d in decisions)


async def test_the_rate_limiter_refills_at_its_rate(redis_url: str) -> None:
    redis = redis_asyncio.Redis.from_url(redis_url)
    name = secrets.token_hex(8)
    try:
        limiter = RateLimiter(redis, rate_per_second=20.0, burst=2, prefix="test:ratelimit:")
        first = [(await limiter.hit(name)).allowed for _ in range(3)]
        await asyncio.sleep(0.12)  # 2.4 tokens' worth, capped at the burst of 2
        second = [(await limiter.hit(name)).allowed for _ in range(3)]
    finally:
        await redis.aclose()
    assert first == [True, True, False]
    assert second == [True, True, False]


# --- the demo -------------------------------------------------------------------------------


async def test_the_demo_approves_two_merchants_and_shows_working_keys_on_every_run(
    merchant_api: httpx.AsyncClient, merchant_settings: Settings, pool: asyncpg.Pool
) -> None:
    from gwallet.demo import seed_merchants

    first = await seed_merchants(merchant_settings, pool)
    again = await seed_merchants(merchant_settings, pool)
    assert [m[:2] for m in first] == [m[:2] for m in again] and len(first) == 2
    for (_, _, old_key), (_, merchant_id, new_key) in zip(first, again, strict=True):
        assert old_key != new_key
        for key in (old_key, new_key):  # the earlier key keeps its grace period
            assert (await merchant_api.get(MISSING, headers=bearer(key))).status_code == 404
        assert await pool.fetchval(
            "SELECT status FROM merchants WHERE id = $1", parse_id("mer", merchant_id)
        ) == "approved"
