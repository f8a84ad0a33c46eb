"""Idempotency-Key: replays, reuse, concurrency, bad keys, storage in the effect's transaction."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import asyncpg
import httpx
import pytest

from gwallet.idempotency import (
    IdempotencyClaim,
    derive_uuid,
    fingerprint,
    purge_expired,
    record,
)
from tests.test_problems import assert_problem


def new_key() -> str:
    return "key-" + secrets.token_hex(8)


async def post_effect(
    client: httpx.AsyncClient,
    key: str | bytes | None,
    body: dict | bytes,
    path: str = "/test/effects",
) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    if isinstance(body, bytes):
        return await client.post(
            path, content=body, headers={**headers, "Content-Type": "application/json"}
        )
    return await client.post(path, json=body, headers=headers)


async def effects_with_key(pool: asyncpg.Pool, key: str) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM test_http_effects WHERE idempotency_key = $1", key
    )


async def test_the_same_key_and_body_replays_the_first_status_and_body(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    key = new_key()
    first = await post_effect(api, key, {"amount": 12350, "note": "lunch"})
    assert first.status_code == 201, first.text
    again = await post_effect(api, key, {"amount": 12350, "note": "lunch"})
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert await effects_with_key(pool, key) == 1


async def test_the_same_json_written_differently_is_the_same_request(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    key = new_key()
    first = await post_effect(api, key, b'{"amount": 500, "note": "x"}')
    again = await post_effect(api, key, b'{ "note":"x",\n "amount":500 }')
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert await effects_with_key(pool, key) == 1


async def test_the_same_key_with_a_different_body_is_refused_as_reused(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    key = new_key()
    assert (await post_effect(api, key, {"amount": 100})).status_code == 201
    assert_problem(await post_effect(api, key, {"amount": 101}), 422, "idempotency_key_reused")
    assert await effects_with_key(pool, key) == 1


async def test_the_same_key_on_a_different_path_is_refused_as_reused(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    key = new_key()
    assert (await post_effect(api, key, {"amount": 100})).status_code == 201
    response = await post_effect(api, key, {"amount": 100}, path="/test/other-effects")
    assert_problem(response, 422, "idempotency_key_reused")
    assert await effects_with_key(pool, key) == 1


async def test_concurrent_requests_with_one_key_have_one_effect_and_the_others_wait_or_replay(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    key = new_key()
    body = {"amount": 777, "hold_ms": 300}
    responses = await asyncio.gather(*(post_effect(api, key, body) for _ in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "idempotency_request_in_progress")
            assert response.headers["retry-after"] == "1"
    created = [r for r in responses if r.status_code == 201]
    assert len({r.content for r in created}) == 1
    assert await effects_with_key(pool, key) == 1
    # Once the first request is done, a retry replays it.
    retry = await post_effect(api, key, body)
    assert (retry.status_code, retry.content) == (201, created[0].content)


async def test_without_redis_concurrent_requests_still_have_exactly_one_effect(
    api_without_redis: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    key = new_key()
    body = {"amount": 321, "hold_ms": 200}
    responses = await asyncio.gather(*(post_effect(api_without_redis, key, body) for _ in range(6)))
    # Postgres decides: the losers' transactions roll back and they replay the winner.
    assert [r.status_code for r in responses] == [201] * 6, [r.text for r in responses]
    assert len({r.content for r in responses}) == 1
    assert await effects_with_key(pool, key) == 1


async def test_a_money_moving_post_without_a_key_is_refused(api: httpx.AsyncClient) -> None:
    assert_problem(await post_effect(api, None, {"amount": 1}), 400, "idempotency_key_required")


@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, "caf\u00e9".encode(), "\u0e1a\u0e32\u0e17".encode(), "ab\tcd"],
    ids=["empty", "256 characters", "latin-1", "thai", "tab (control)"],
)
async def test_a_key_that_is_not_1_to_255_printable_ascii_is_refused(
    api: httpx.AsyncClient, key: str | bytes
) -> None:
    assert_problem(await post_effect(api, key, {"amount": 1}), 400, "invalid_idempotency_key")


@pytest.mark.parametrize(
    "key", ["a", "k" * 255, "order 42/~!@#$%^&*()"], ids=["1", "255", "punctuation"]
)
async def test_keys_of_1_to_255_printable_ascii_are_accepted(
    api: httpx.AsyncClient, key: str
) -> None:
    key = key if len(key) > 200 else key + secrets.token_hex(4)
    key = key[:255]
    assert (await post_effect(api, key, {"amount": 1})).status_code == 201


async def test_the_derived_transfer_id_comes_from_the_key(api: httpx.AsyncClient) -> None:
    key = new_key()
    response = await post_effect(api, key, {"amount": 5})
    assert response.json()["derived_transfer_id"] == str(
        derive_uuid("public", key, "test_transfer")
    )


def test_derived_ids_are_deterministic_and_differ_by_scope_key_and_purpose() -> None:
    base = derive_uuid("cit_1", "k1", "payment")
    assert base == derive_uuid("cit_1", "k1", "payment")
    assert base.version == 5
    others = {
        derive_uuid("cit_2", "k1", "payment"),
        derive_uuid("cit_1", "k2", "payment"),
        derive_uuid("cit_1", "k1", "subsidy"),
        derive_uuid("cit_1k", "1", "payment"),
    }
    assert base not in others and len(others) == 4


def test_the_fingerprint_ignores_json_formatting_but_not_method_path_or_content() -> None:
    one = fingerprint("POST", "/v1/x", b'{"a": 1, "b": [1, 2]}')
    assert one == fingerprint("post", "/v1/x", b'{"b":[1,2],"a":1}')
    assert one != fingerprint("PUT", "/v1/x", b'{"a": 1, "b": [1, 2]}')
    assert one != fingerprint("POST", "/v1/y", b'{"a": 1, "b": [1, 2]}')
    assert one != fingerprint("POST", "/v1/x", b'{"a": 1, "b": [2, 1]}')
    assert fingerprint("POST", "/v1/x", b"not json") != fingerprint("POST", "/v1/x", b"not json!")


async def test_the_stored_response_exists_only_if_the_effect_committed(pool: asyncpg.Pool) -> None:
    claim = IdempotencyClaim(scope="public", key=new_key(), fingerprint=b"\x01" * 32)
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            assert await record(conn, claim, 201, b'{"ok": true}')
            raise RuntimeError("the effect failed after the response was recorded")
    stored = await pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE scope = $1 AND key = $2",
        claim.scope,
        claim.key,
    )
    assert stored == 0
    async with pool.acquire() as conn, conn.transaction():
        assert await record(conn, claim, 201, b'{"ok": true}')
    async with pool.acquire() as conn, conn.transaction():
        assert not await record(conn, claim, 201, b'{"ok": false}')


async def test_the_purge_deletes_only_keys_older_than_the_retention(pool: asyncpg.Pool) -> None:
    old, fresh = uuid.uuid4().hex, uuid.uuid4().hex
    await pool.execute(
        "INSERT INTO idempotency_keys (scope, key, request_fingerprint, response_status, "
        "response_body, created_at) VALUES "
        "('purge-test', $1, $3, 201, '\\x7b7d', now() - interval '49 hours'), "
        "('purge-test', $2, $3, 201, '\\x7b7d', now() - interval '47 hours')",
        old,
        fresh,
        b"\x00" * 32,
    )
    assert await purge_expired(pool, retention_hours=48) >= 1
    left = await pool.fetch("SELECT key FROM idempotency_keys WHERE scope = 'purge-test'")
    assert [row["key"] for row in left] == [fresh]


async def test_the_purge_refuses_a_retention_below_the_contracts_24_hours(
    pool: asyncpg.Pool,
) -> None:
    with pytest.raises(ValueError, match="24 hours"):
        await purge_expired(pool, retention_hours=23)


# --- money through the ledger engine: ids derived from the key, response stored in the batch --


@pytest.fixture
async def funded_accounts(pool: asyncpg.Pool) -> tuple[uuid.UUID, uuid.UUID]:
    """A wallet holding 1,000 satang (debits must not exceed credits) and a shop."""
    from ledger_core import Account, Transfer, create_accounts
    from tests.ledger_helpers import running_engine

    bank, wallet, shop = (
        Account(id=uuid.uuid4(), ledger=764, code=1, debits_must_not_exceed_credits=limited)
        for limited in (False, True, False)
    )
    await create_accounts(pool, [bank, wallet, shop])
    async with running_engine(pool) as engine:
        funding = Transfer(
            id=uuid.uuid4(),
            debit_account_id=bank.id,
            credit_account_id=wallet.id,
            amount=1_000,
            ledger=764,
            code=1,
        )
        assert (await engine.create_transfers([funding]))[0].succeeded
    return wallet.id, shop.id


async def posted_debits(pool: asyncpg.Pool, account_id: uuid.UUID) -> int:
    return await pool.fetchval(
        "SELECT debits_posted FROM ledger_accounts WHERE id = $1", account_id
    )


def transfer_body(wallet: uuid.UUID, shop: uuid.UUID, amount: int) -> dict:
    return {"debit_account_id": str(wallet), "credit_account_id": str(shop), "amount": amount}


async def test_a_retried_money_move_moves_money_once_and_replays_the_answer(
    api: httpx.AsyncClient, pool: asyncpg.Pool, funded_accounts: tuple[uuid.UUID, uuid.UUID]
) -> None:
    wallet, shop = funded_accounts
    key = new_key()
    first = await post_effect(api, key, transfer_body(wallet, shop, 300), path="/test/transfers")
    assert first.status_code == 201, first.text
    assert first.json()["transfer_id"] == str(derive_uuid("public", key, "transfer"))
    again = await post_effect(api, key, transfer_body(wallet, shop, 300), path="/test/transfers")
    assert (again.status_code, again.content) == (201, first.content)
    assert await posted_debits(pool, wallet) == 300


async def test_a_refused_money_move_is_replayed_as_refused(
    api: httpx.AsyncClient, pool: asyncpg.Pool, funded_accounts: tuple[uuid.UUID, uuid.UUID]
) -> None:
    wallet, shop = funded_accounts
    key = new_key()
    refused = await post_effect(
        api, key, transfer_body(wallet, shop, 5_000), path="/test/transfers"
    )
    assert_problem(refused, 422, "insufficient_funds")
    again = await post_effect(api, key, transfer_body(wallet, shop, 5_000), path="/test/transfers")
    assert (again.status_code, again.content) == (422, refused.content)
    assert again.headers["content-type"] == "application/problem+json"
    assert await posted_debits(pool, wallet) == 0


async def test_concurrent_money_moves_with_one_key_and_no_redis_move_money_once(
    api_without_redis: httpx.AsyncClient,
    pool: asyncpg.Pool,
    funded_accounts: tuple[uuid.UUID, uuid.UUID],
) -> None:
    wallet, shop = funded_accounts
    key = new_key()
    body = transfer_body(wallet, shop, 400)
    responses = await asyncio.gather(
        *(post_effect(api_without_redis, key, body, path="/test/transfers") for _ in range(8))
    )
    assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
    assert len({r.content for r in responses}) == 1
    assert await posted_debits(pool, wallet) == 400
