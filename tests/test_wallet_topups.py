"""Bank top-ups: Standard Webhooks signatures, replays, idempotency on bank_reference."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from gwallet.ids import format_id, parse_id
from gwallet.settings import Settings
from tests.wallet_helpers import (
    OTHER_PARTNER,
    OTHER_PARTNER_SECRET,
    PARTNER,
    problem,
    signed_in,
    signed_topup,
    top_up,
)
from wallet.accounts import bank_clearing_account
from wallet.topups import (
    BankPartnerConfigError,
    BankPartners,
    new_webhook_secret,
    purge_webhook_ids,
)

TOPUPS = "/v1/bank/topups"


async def balance(api: httpx.AsyncClient, headers: dict[str, str]) -> int:
    return (await api.get("/v1/citizen/wallet", headers=headers)).json()["balance"]


async def test_a_signed_top_up_credits_the_wallet_and_is_listed(wallet_api: httpx.AsyncClient) -> None:
    citizen = await signed_in(wallet_api)
    response = await top_up(wallet_api, citizen.wallet_id, 50_000, "BBL-2026-000001")
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["topup_id"].startswith("top_") and out["wallet_id"] == citizen.wallet_id
    assert (out["amount"], out["currency"], out["bank_reference"]) == (50_000, "THB", "BBL-2026-000001")
    assert await balance(wallet_api, citizen.headers) == 50_000
    listed = (await wallet_api.get("/v1/citizen/transactions", headers=citizen.headers)).json()
    [movement] = listed["data"]
    assert movement["kind"] == "top_up" and movement["direction"] == "credit"
    assert movement["topup_id"] == out["topup_id"] and movement["status"] == "posted"
    assert movement["bank_reference"] == "BBL-2026-000001" and movement["amount"] == 50_000


async def test_the_same_bank_reference_and_body_answers_the_same_201_and_credits_once(
    wallet_api: httpx.AsyncClient,
) -> None:
    citizen = await signed_in(wallet_api)
    first = await top_up(wallet_api, citizen.wallet_id, 20_000, "KBANK-77")
    again = await top_up(wallet_api, citizen.wallet_id, 20_000, "KBANK-77")  # a new webhook-id
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    concurrent = await asyncio.gather(
        *(top_up(wallet_api, citizen.wallet_id, 20_000, "KBANK-77") for _ in range(10))
    )
    assert {r.status_code for r in concurrent} == {201}
    assert all(r.json() == first.json() for r in concurrent)
    assert await balance(wallet_api, citizen.headers) == 20_000


async def test_a_bank_reference_reused_with_another_amount_or_wallet_is_409_and_moves_nothing(
    wallet_api: httpx.AsyncClient,
) -> None:
    alice = await signed_in(wallet_api)
    bob = await signed_in(wallet_api)
    assert (await top_up(wallet_api, alice.wallet_id, 10_000, "SCB-1")).status_code == 201
    for wallet_id, amount in ((alice.wallet_id, 10_001), (bob.wallet_id, 10_000)):
        response = await top_up(wallet_api, wallet_id, amount, "SCB-1")
        assert response.status_code == 409 and problem(response)["code"] == "bank_reference_reused"
    assert await balance(wallet_api, alice.headers) == 10_000
    assert await balance(wallet_api, bob.headers) == 0


async def test_forged_stale_and_replayed_signatures_are_rejected_and_nothing_is_credited(
    wallet_api: httpx.AsyncClient,
) -> None:
    citizen = await signed_in(wallet_api)
    body = {"wallet_id": citizen.wallet_id, "amount": 99_999, "bank_reference": "FORGED-1"}

    raw, headers = signed_topup(body, secret=new_webhook_secret())  # not a partner's secret
    forged = await wallet_api.post(TOPUPS, content=raw, headers=headers)
    assert forged.status_code == 401 and problem(forged)["code"] == "invalid_signature"

    raw, headers = signed_topup(body)
    tampered = raw.replace(b"99999", b"999999")  # the body changed after signing
    response = await wallet_api.post(TOPUPS, content=tampered, headers=headers)
    assert response.status_code == 401 and problem(response)["code"] == "invalid_signature"

    raw, headers = signed_topup(body)
    for wrong in ("v1,AAAA", "v2," + headers["webhook-signature"][3:], "garbage", "v1,!!!"):
        response = await wallet_api.post(
            TOPUPS, content=raw, headers={**headers, "webhook-signature": wrong}
        )
        assert response.status_code == 401 and problem(response)["code"] == "invalid_signature"
    other_id = await wallet_api.post(TOPUPS, content=raw, headers={**headers, "webhook-id": "msg_x"})
    assert other_id.status_code == 401  # the id is signed too

    for minutes in (-6, 6):
        raw, headers = signed_topup(body, at=datetime.now(UTC) + timedelta(minutes=minutes))
        stale = await wallet_api.post(TOPUPS, content=raw, headers=headers)
        assert stale.status_code == 401 and problem(stale)["code"] == "stale_signature"

    raw, headers = signed_topup({**body, "bank_reference": "REPLAYED-1", "amount": 700})
    assert (await wallet_api.post(TOPUPS, content=raw, headers=headers)).status_code == 201
    replayed = await wallet_api.post(TOPUPS, content=raw, headers=headers)
    assert replayed.status_code == 409 and problem(replayed)["code"] == "webhook_replayed"

    assert await balance(wallet_api, citizen.headers) == 700
    listed = (await wallet_api.get("/v1/citizen/transactions", headers=citizen.headers)).json()
    assert [m["bank_reference"] for m in listed["data"]] == ["REPLAYED-1"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": "msg_1", "webhook-timestamp": "1700000000"},
        {"webhook-id": "msg 1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,x"},
        {"webhook-id": "msg_1", "webhook-timestamp": "17000000.5", "webhook-signature": "v1,x"},
        {"webhook-id": "msg_1", "webhook-timestamp": "1e9", "webhook-signature": "v1,x"},
        {"webhook-id": "msg_1", "webhook-timestamp": "9" * 40, "webhook-signature": "v1,x"},
        {"webhook-id": "m" * 256, "webhook-timestamp": "1700000000", "webhook-signature": "v1,x"},
    ],
)
async def test_missing_or_malformed_webhook_headers_are_400(
    wallet_api: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await wallet_api.post(TOPUPS, content=b"{}", headers=headers)
    assert response.status_code == 400 and problem(response)["code"] == "invalid_parameter"


async def test_a_thai_digit_timestamp_header_is_refused(wallet_api: httpx.AsyncClient) -> None:
    raw, headers = signed_topup({"wallet_id": "wal_x", "amount": 1, "bank_reference": "R"})
    thai = headers["webhook-timestamp"].translate(str.maketrans("0123456789", "๐๑๒๓๔๕๖๗๘๙"))
    response = await wallet_api.post(
        TOPUPS, content=raw, headers={**headers, "webhook-timestamp": thai.encode()}  # type: ignore[dict-item]
    )
    assert response.status_code == 400 and problem(response)["code"] == "invalid_parameter"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"amount": 100.0}, "invalid_request"),
        ({"amount": "100"}, "invalid_request"),
        ({"amount": True}, "invalid_request"),
        ({"amount": 0}, "invalid_request"),
        ({"amount": -5}, "invalid_request"),
        ({"amount": 10**12 + 1}, "invalid_request"),
        ({"amount": 10**30}, "invalid_request"),
        ({"amount": None}, "invalid_request"),
        ({"currency": "THB"}, "invalid_request"),  # an unknown field
        ({"bank_reference": "REF\x00"}, "invalid_request"),
        ({"bank_reference": "R" * 65}, "invalid_request"),
        ({"bank_reference": ""}, "invalid_request"),
        ({"bank_reference": "๑๒๓"}, "invalid_request"),
        ({"wallet_id": "w" * 65}, "invalid_request"),
        ({"wallet_id": "wal_nonsense"}, "wallet_not_found"),
        ({"wallet_id": format_id("wal", uuid.uuid4())}, "wallet_not_found"),
    ],
)
async def test_signed_bodies_with_bad_input_are_4xx_and_credit_nothing(
    wallet_api: httpx.AsyncClient, change: dict[str, object], code: str
) -> None:
    citizen = await signed_in(wallet_api)
    body = {"wallet_id": citizen.wallet_id, "amount": 1_000, "bank_reference": f"BAD-{uuid.uuid4().hex[:8]}"}
    body.update(change)
    raw, headers = signed_topup(body)
    response = await wallet_api.post(TOPUPS, content=raw, headers=headers)
    assert 400 <= response.status_code < 500 and problem(response)["code"] == code, response.text
    assert await balance(wallet_api, citizen.headers) == 0


async def test_a_body_that_is_not_json_or_not_utf8_is_refused(wallet_api: httpx.AsyncClient) -> None:
    raw, headers = signed_topup(b"{not json")
    response = await wallet_api.post(TOPUPS, content=raw, headers=headers)
    assert response.status_code == 400 and problem(response)["code"] == "malformed_json"
    raw, headers = signed_topup(b"ok")
    response = await wallet_api.post(TOPUPS, content=b"\xff\xfe", headers=headers)
    assert response.status_code == 401 and problem(response)["code"] == "invalid_signature"


async def test_each_partner_signs_with_its_own_secret_into_its_own_clearing_account(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    citizen = await signed_in(wallet_api)
    body = {"wallet_id": citizen.wallet_id, "amount": 3_000, "bank_reference": "SAME-REF"}
    raw, headers = signed_topup(body, secret=OTHER_PARTNER_SECRET)
    assert (await wallet_api.post(TOPUPS, content=raw, headers=headers)).status_code == 201
    raw, headers = signed_topup(body)  # the same reference at another bank: another top-up
    assert (await wallet_api.post(TOPUPS, content=raw, headers=headers)).status_code == 201
    assert await balance(wallet_api, citizen.headers) == 6_000
    for partner in (PARTNER, OTHER_PARTNER):
        clearing = bank_clearing_account(partner)
        row = await pool.fetchrow("SELECT code, shared FROM ledger_accounts WHERE id = $1", clearing.id)
        assert (row["code"], row["shared"]) == (201, True)


def test_bank_partner_secrets_must_be_whsec_base64_of_24_bytes_or_more() -> None:
    assert BankPartners.parse(f"a:{new_webhook_secret()},a:{new_webhook_secret()}").partner_ids == ["a"]
    for bad in ("", "a", "a:secret", "A:" + new_webhook_secret(), "a:whsec_!!", "a:whsec_AAAA"):
        with pytest.raises(BankPartnerConfigError):
            BankPartners.parse(bad)


async def test_old_webhook_ids_are_purged_after_the_retention(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO bank_webhook_ids (partner_id, webhook_id, received_at) VALUES "
        "('purge_bank', 'old', now() - interval '20 minutes'), ('purge_bank', 'new', now())"
    )
    assert await purge_webhook_ids(pool, 900, datetime.now(UTC)) >= 1
    left = await pool.fetch("SELECT webhook_id FROM bank_webhook_ids WHERE partner_id = 'purge_bank'")
    assert [r["webhook_id"] for r in left] == ["new"]


async def test_the_bank_simulator_command_signs_and_posts_a_top_up(
    wallet_api: httpx.AsyncClient, wallet_service_url: str, wallet_settings: Settings
) -> None:
    citizen = await signed_in(wallet_api)
    env = {
        **os.environ,
        "GWALLET_BANK_PARTNER_SECRETS": wallet_settings.bank_partner_secrets or "",
        "GWALLET_DATA_DIR": wallet_settings.data_dir,
        "GWALLET_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "gwallet.cli", "bank", "topup", "--url", wallet_service_url,
               "--wallet-id", citizen.wallet_id, "--amount", "12345", "--bank-reference", "CLI-1"]
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)

    done = await asyncio.to_thread(run, *command)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["amount"] == 12345 and out["wallet_id"] == citizen.wallet_id
    again = await asyncio.to_thread(run, *command)
    assert again.returncode == 0 and json.loads(again.stdout) == out  # idempotent
    assert await balance(wallet_api, citizen.headers) == 12345
    bad = await asyncio.to_thread(run, *command[:-4], "--amount", "1.5")
    assert bad.returncode != 0
    assert parse_id("top", out["topup_id"]) is not None
