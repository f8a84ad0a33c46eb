"""Payment requests (issue 5): the merchant's dynamic QR, its status, cancelling, the QR parser
for the payment path, and the merchant's payments; bad input and IDOR.

Real PostgreSQL, real Redis, real HTTP (the merchants' test service of tests/test_merchants.py).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import httpx
import pytest

from gwallet.ids import format_id, parse_id
from ledger_core import new_id
from merchant_api import qr
from merchant_api.payment_requests import (
    BILLER_ID,
    InvalidQr,
    load_payable,
    parse_payment_request_qr,
    qr_merchant_name,
)
from tests.test_merchants import (  # noqa: F401 - fixtures
    admin,
    approved,
    merchant_api,
    merchant_service_url,
    merchant_settings,
)
from tests.wallet_helpers import problem

PATH = "/v1/merchant/payment-requests"


def idem() -> dict[str, str]:
    return {"Idempotency-Key": secrets.token_hex(12)}


async def create(
    api: httpx.AsyncClient, key: dict[str, str], **body: object
) -> httpx.Response:
    return await api.post(PATH, json={"amount": 12_350, "reference": "INV-1", **body},
                          headers={**key, **idem()})


@pytest.fixture(scope="module")
async def shop(
    merchant_api: httpx.AsyncClient, admin: dict[str, str]
) -> tuple[str, dict[str, str]]:
    return await approved(merchant_api, admin)


@pytest.fixture(scope="module")
async def other_shop(
    merchant_api: httpx.AsyncClient, admin: dict[str, str]
) -> tuple[str, dict[str, str]]:
    return await approved(merchant_api, admin, name="Kafae Boran", province_code="50",
                          district_code="5001")


# --- creating ---------------------------------------------------------------------------------


async def test_a_payment_request_is_a_dynamic_thai_qr_that_identifies_it(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]]
) -> None:
    _, key = shop
    response = await create(merchant_api, key, amount=12_350, reference="INV-42",
                            item_category="grocery")
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["payment_request_id"].startswith("preq_")
    assert (out["status"], out["amount"], out["currency"]) == ("open", 12_350, "THB")
    created, expires = (datetime.fromisoformat(out[k]) for k in ("created_at", "expires_at"))
    assert expires - created == timedelta(minutes=5)
    assert out["qr_svg"].startswith("<svg") and "</svg>" in out["qr_svg"]

    decoded = qr.decode(out["qr_payload"])
    assert decoded.point_of_initiation == qr.PointOfInitiation.DYNAMIC
    assert decoded.amount_satang == 12_350
    assert (decoded.currency, decoded.country) == ("764", "TH")
    assert decoded.merchant_name == "Som Tam Pa Noi"
    assert decoded.merchant_city == "TH-40"
    assert isinstance(decoded.merchant_account, qr.BillPayment)
    assert decoded.merchant_account.biller_id == BILLER_ID
    assert "A000000677010112" in out["qr_payload"]
    assert qr.crc16(out["qr_payload"][:-4]) == out["qr_payload"][-4:]
    request_id = parse_id("preq", out["payment_request_id"])
    assert parse_payment_request_qr(out["qr_payload"]) == request_id

    seen = await merchant_api.get(f"{PATH}/{out['payment_request_id']}", headers=key)
    assert seen.status_code == 200
    assert seen.json()["status"] == "open" and seen.json()["qr_payload"] == out["qr_payload"]
    assert seen.json()["payment_id"] is None and seen.json()["item_category"] == "grocery"


async def test_the_qr_carries_an_ascii_merchant_name_or_else_the_merchant_id(
    merchant_api: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    merchant_id, key = await approved(merchant_api, admin, name="ร้านส้มตำป้าน้อย")
    payload = (await create(merchant_api, key)).json()["qr_payload"]
    assert qr.decode(payload).merchant_name == merchant_id[:25]
    any_id = uuid.uuid4()
    assert qr_merchant_name("Café  Ñandú", any_id) == "Cafe Nandu"
    assert qr_merchant_name("A" * 40, any_id) == "A" * 25
    assert qr_merchant_name("ร้าน Coffee", any_id) == format_id("mer", any_id)[:25]


async def test_the_same_idempotency_key_replays_the_request_and_another_body_is_refused(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]]
) -> None:
    _, key = shop
    headers = {**key, **idem()}
    body = {"amount": 5_000, "reference": "INV-7"}
    first = await merchant_api.post(PATH, json=body, headers=headers)
    again = await merchant_api.post(PATH, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = await merchant_api.post(PATH, json={**body, "amount": 5_001}, headers=headers)
    assert other.status_code == 422 and problem(other)["code"] == "idempotency_key_reused"
    missing = await merchant_api.post(PATH, json=body, headers=key)
    assert missing.status_code == 400 and problem(missing)["code"] == "idempotency_key_required"


async def test_concurrent_retries_with_one_idempotency_key_make_one_payment_request(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]], pool: asyncpg.Pool
) -> None:
    merchant_id, key = shop
    reference = "RACE-" + secrets.token_hex(4)
    headers = {**key, **idem()}
    responses = await asyncio.gather(*(
        merchant_api.post(PATH, json={"amount": 4_200, "reference": reference}, headers=headers)
        for _ in range(10)
    ))
    statuses = {r.status_code for r in responses}
    assert statuses <= {201, 409} and 201 in statuses, statuses
    assert len({r.json()["payment_request_id"] for r in responses if r.status_code == 201}) == 1
    assert await pool.fetchval(
        "SELECT count(*) FROM payment_requests WHERE merchant_id = $1 AND reference = $2",
        parse_id("mer", merchant_id), reference,
    ) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": 123.5}, "amount"),
        ({"amount": 100.0}, "amount"),
        ({"amount": "12350"}, "amount"),
        ({"amount": "๑๒๓"}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": None}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": 10**12}, "amount"),  # a QR holds at most 9,999,999,999.99 THB
        ({"amount": 10**12 + 1}, "amount"),
        ({"amount": 10**30}, "amount"),
        ({"reference": ""}, "reference"),
        ({"reference": " INV"}, "reference"),
        ({"reference": "INV\x00"}, "reference"),
        ({"reference": "INV\n1"}, "reference"),
        ({"reference": "x" * 65}, "reference"),
        ({"reference": "๑๒๓"}, "reference"),
        ({"reference": 12}, "reference"),
        ({"item_category": "Alcohol"}, "item_category"),
        ({"item_category": ""}, "item_category"),
        ({"item_category": "x" * 41}, "item_category"),
        ({"tip": 5}, "tip"),
    ],
)
async def test_a_bad_payment_request_is_a_422_naming_the_field(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]], body: dict[str, object],
    field: str,
) -> None:
    _, key = shop
    response = await merchant_api.post(
        PATH, json={"amount": 100, "reference": "INV-1", **body}, headers={**key, **idem()}
    )
    assert response.status_code == 422, response.text
    document = problem(response)
    assert document["code"] == "invalid_request"
    assert field in {e["field"] for e in document.get("errors") or []}, document


async def test_the_largest_amount_a_qr_can_carry_is_accepted(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]]
) -> None:
    _, key = shop
    response = await create(merchant_api, key, amount=10**12 - 1)
    assert response.status_code == 201, response.text
    assert qr.decode(response.json()["qr_payload"]).amount_satang == 10**12 - 1


async def test_a_suspended_merchant_cannot_create_payment_requests_until_reinstated(
    merchant_api: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    merchant_id, key = await approved(merchant_api, admin)
    open_request = (await create(merchant_api, key)).json()["payment_request_id"]
    await merchant_api.post(
        f"/v1/admin/merchants/{merchant_id}/suspend", json={"reason": "fraud"}, headers=admin
    )
    refused = await create(merchant_api, key)
    assert refused.status_code == 403 and problem(refused)["code"] == "merchant_suspended"
    # It can still read and cancel what it has.
    assert (await merchant_api.get(f"{PATH}/{open_request}", headers=key)).status_code == 200
    await merchant_api.post(f"/v1/admin/merchants/{merchant_id}/reinstate", headers=admin)
    assert (await create(merchant_api, key)).status_code == 201


# --- status and cancelling --------------------------------------------------------------------


async def test_an_open_request_can_be_cancelled_once(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]]
) -> None:
    _, key = shop
    request_id = (await create(merchant_api, key)).json()["payment_request_id"]
    cancelled = await merchant_api.post(f"{PATH}/{request_id}/cancel", headers=key)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["cancelled_at"]
    again = await merchant_api.post(f"{PATH}/{request_id}/cancel", headers=key)
    assert again.status_code == 409 and problem(again)["code"] == "payment_request_not_open"
    assert (await merchant_api.get(f"{PATH}/{request_id}", headers=key)).json()["status"] == (
        "cancelled"
    )


async def test_a_cancel_with_an_idempotency_key_replays_its_first_answer(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]]
) -> None:
    _, key = shop
    request_id = (await create(merchant_api, key)).json()["payment_request_id"]
    headers = {**key, **idem()}
    first = await merchant_api.post(f"{PATH}/{request_id}/cancel", headers=headers)
    again = await merchant_api.post(f"{PATH}/{request_id}/cancel", headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()


async def test_a_request_past_its_expiry_is_expired_and_cannot_be_cancelled(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]], pool: asyncpg.Pool
) -> None:
    _, key = shop
    request_id = (await create(merchant_api, key)).json()["payment_request_id"]
    await pool.execute(
        "UPDATE payment_requests SET created_at = now() - interval '10 minutes',"
        " expires_at = now() - interval '5 minutes' WHERE id = $1",
        parse_id("preq", request_id),
    )
    assert (await merchant_api.get(f"{PATH}/{request_id}", headers=key)).json()["status"] == (
        "expired"
    )
    refused = await merchant_api.post(f"{PATH}/{request_id}/cancel", headers=key)
    assert refused.status_code == 409 and "expired" in problem(refused)["detail"]


async def insert_payment(
    pool: asyncpg.Pool,
    merchant_id: str,
    *,
    amount: int = 10_000,
    subsidy: int = 5_000,
    request_id: uuid.UUID | None = None,
    created_at: datetime | None = None,
) -> str:
    """A payment row as the payment path (another issue) writes it."""
    payment_id = new_id()
    created_at = created_at or datetime.now(UTC)
    await pool.execute(
        """INSERT INTO payments (id, payment_request_id, citizen_id, merchant_id, program_id,
               program_version, amount, subsidy_amount, citizen_amount, item_category,
               merchant_category, merchant_province_code, merchant_district_code,
               citizen_province_code, citizen_district_code, business_date, created_at)
           VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, 'grocery', 'street_food', '40', '4001',
                   '10', '1001', $9, $10)""",
        payment_id, request_id or new_id(), new_id(), parse_id("mer", merchant_id), new_id(),
        amount, subsidy, amount - subsidy, date(2026, 6, 1), created_at,
    )
    return format_id("pay", payment_id)


async def test_a_paid_request_shows_its_payment_and_cannot_be_cancelled(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]], pool: asyncpg.Pool
) -> None:
    merchant_id, key = shop
    request_id = (await create(merchant_api, key)).json()["payment_request_id"]
    request_uuid = parse_id("preq", request_id)
    payment_id = await insert_payment(pool, merchant_id, amount=12_350, subsidy=6_175,
                                      request_id=request_uuid)
    await pool.execute(
        "UPDATE payment_requests SET status = 'paid', payment_id = $2, paid_at = now()"
        " WHERE id = $1", request_uuid, parse_id("pay", payment_id),
    )
    seen = (await merchant_api.get(f"{PATH}/{request_id}", headers=key)).json()
    assert (seen["status"], seen["payment_id"]) == ("paid", payment_id)
    refused = await merchant_api.post(f"{PATH}/{request_id}/cancel", headers=key)
    assert refused.status_code == 409 and problem(refused)["code"] == "payment_request_not_open"
    payable = await load_payable(pool, request_uuid)
    assert payable is not None and payable.status == "paid"


# --- the QR parser for the payment path ---------------------------------------------------------


async def test_the_payment_path_loads_an_open_request_from_its_qr(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]], pool: asyncpg.Pool
) -> None:
    merchant_id, key = shop
    payload = (await create(merchant_api, key, amount=777)).json()["qr_payload"]
    payable = await load_payable(pool, parse_payment_request_qr(payload))
    assert payable is not None
    assert (payable.amount, payable.qr_payload) == (777, payload)
    assert payable.merchant_status == "approved"
    assert payable.status_at(datetime.now(UTC)) == "open"
    profile = payable.merchant_profile()
    assert profile.merchant_id == merchant_id and not profile.suspended
    assert payable.citizen_payable_account_id != payable.state_payable_account_id
    assert await load_payable(pool, uuid.uuid4()) is None


def _ours(**changes: object) -> str:
    values: dict[str, object] = {
        "biller_id": BILLER_ID,
        "reference_1": "0123456789ABC",
        "reference_2": "DEFGHJKMNPQRS",
        "amount_satang": 100,
        "merchant_name": "Shop",
        "merchant_city": "TH-10",
    }
    values.update(changes)
    return qr.encode(qr.payment_request_qr(**values))  # type: ignore[arg-type]


def test_the_qr_parser_reads_back_a_payment_request_id() -> None:
    request_id = uuid.uuid4()
    body = format_id("preq", request_id)[5:].upper()
    assert parse_payment_request_qr(_ours(reference_1=body[:13], reference_2=body[13:])) == (
        request_id
    )


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "hello",
        "0" * 600,
        # A static PromptPay credit transfer (a citizen's mobile number).
        qr.encode(qr.ThaiQR(
            point_of_initiation=qr.PointOfInitiation.STATIC,
            merchant_account=qr.CreditTransfer(proxy_kind=qr.ProxyKind.MOBILE,
                                               proxy_id="0066812345678"),
        )),
        # A dynamic credit transfer with an amount.
        qr.encode(qr.ThaiQR(
            point_of_initiation=qr.PointOfInitiation.DYNAMIC,
            merchant_account=qr.CreditTransfer(proxy_kind=qr.ProxyKind.NATIONAL_ID,
                                               proxy_id="1234567890121"),
            amount_satang=100,
        )),
        _ours(biller_id="010555012345601"),  # another biller's bill payment
        _ours(reference_2=None),
        _ours(reference_1="0123456789AB"),
        _ours(reference_1="ZZZZZZZZZZZZZ", reference_2="ZZZZZZZZZZZZZ"),  # over 128 bits
        _ours(reference_1="0123456789AB!"),
        _ours(amount_satang=None),
        qr.encode(qr.ThaiQR(  # static bill payment
            point_of_initiation=qr.PointOfInitiation.STATIC,
            merchant_account=qr.BillPayment(biller_id=BILLER_ID, reference_1="0123456789ABC",
                                            reference_2="DEFGHJKMNPQRS"),
            amount_satang=100,
        )),
        _ours()[:-1] + ("0" if _ours()[-1] != "0" else "1"),  # bad CRC
        _ours().replace("5802TH", "5802TX"),  # changed field, stale CRC
        _ours() + "0000",
    ],
)
def test_the_qr_parser_refuses_anything_but_our_dynamic_qr(payload: str) -> None:
    with pytest.raises(InvalidQr) as refused:
        parse_payment_request_qr(payload)
    assert refused.value.code == "invalid_qr" and refused.value.status == 422


def test_the_qr_parser_refuses_what_is_not_text() -> None:
    for payload in (None, 12, b"000201"):
        with pytest.raises(InvalidQr):
            parse_payment_request_qr(payload)  # type: ignore[arg-type]


# --- IDOR and malformed ids ---------------------------------------------------------------------


async def test_a_merchant_key_never_reads_or_cancels_another_merchants_requests_or_payments(
    merchant_api: httpx.AsyncClient,
    shop: tuple[str, dict[str, str]],
    other_shop: tuple[str, dict[str, str]],
    pool: asyncpg.Pool,
) -> None:
    merchant_a, key_a = shop
    _, key_b = other_shop
    request_id = (await create(merchant_api, key_a)).json()["payment_request_id"]
    payment_id = await insert_payment(pool, merchant_a)
    for method, path in (
        ("GET", f"{PATH}/{request_id}"),
        ("POST", f"{PATH}/{request_id}/cancel"),
        ("GET", f"/v1/merchant/payments/{payment_id}"),
    ):
        response = await merchant_api.request(method, path, headers=key_b)
        assert response.status_code == 404, (method, path, response.text)
        assert problem(response)["code"] == "not_found"
    listed = (await merchant_api.get("/v1/merchant/payments?limit=100", headers=key_b)).json()
    assert payment_id not in {p["payment_id"] for p in listed["data"]}
    cursor = await merchant_api.get(
        f"/v1/merchant/payments?starting_after={payment_id}", headers=key_b
    )
    assert cursor.status_code == 400 and problem(cursor)["code"] == "invalid_parameter"
    # Still open for its owner.
    assert (await merchant_api.get(f"{PATH}/{request_id}", headers=key_a)).json()["status"] == (
        "open"
    )


@pytest.mark.parametrize(
    "bad_id",
    [
        "x",
        "preq_",
        "preq_0000000000000000000000000",  # 25 characters
        "preq_000000000000000000000000000",  # 27
        "preq_zzzzzzzzzzzzzzzzzzzzzzzzzz",  # more than 128 bits
        "preq_0000000000000000000000000U",  # not Crockford (u)
        "PREQ_00000000000000000000000000",
        "pay_00000000000000000000000000",
        "preq_%00%00",
        "preq_%E0%B9%91%E0%B9%92",
        "1' OR '1'='1",
    ],
)
async def test_a_malformed_payment_request_or_payment_id_is_a_404(
    merchant_api: httpx.AsyncClient, shop: tuple[str, dict[str, str]], bad_id: str
) -> None:
    _, key = shop
    for method, path in (
        ("GET", f"{PATH}/{bad_id}"),
        ("POST", f"{PATH}/{bad_id}/cancel"),
        ("GET", f"/v1/merchant/payments/{bad_id.replace('preq', 'pay')}"),
    ):
        response = await merchant_api.request(method, path, headers=key)
        assert response.status_code == 404, (method, path, response.text)
        problem(response)


# --- the merchant's payments ------------------------------------------------------------------


async def test_a_merchant_lists_its_payments_newest_first_with_the_split(
    merchant_api: httpx.AsyncClient, admin: dict[str, str], pool: asyncpg.Pool
) -> None:
    merchant_id, key = await approved(merchant_api, admin)
    start = datetime.now(UTC) - timedelta(hours=1)
    ids = [
        await insert_payment(pool, merchant_id, amount=1_000 * (i + 1), subsidy=500 * (i + 1),
                             created_at=start + timedelta(minutes=i))
        for i in range(5)
    ]
    await pool.execute(
        "UPDATE payments SET refunded_amount = 1000, refunded_subsidy_amount = 500 WHERE id = $1",
        parse_id("pay", ids[0]),
    )
    seen: list[dict[str, object]] = []
    cursor = None
    while True:
        url = "/v1/merchant/payments?limit=2" + (f"&starting_after={cursor}" if cursor else "")
        page = await merchant_api.get(url, headers=key)
        assert page.status_code == 200, page.text
        seen.extend(page.json()["data"])
        if not page.json()["has_more"]:
            break
        cursor = page.json()["data"][-1]["payment_id"]
    assert [p["payment_id"] for p in seen] == list(reversed(ids))
    newest = seen[0]
    assert (newest["amount"], newest["subsidy_amount"], newest["citizen_amount"]) == (
        5_000, 2_500, 2_500
    )
    assert newest["currency"] == "THB" and newest["status"] == "succeeded"
    assert "citizen_id" not in newest
    one = await merchant_api.get(f"/v1/merchant/payments/{ids[0]}", headers=key)
    assert one.status_code == 200 and one.json()["status"] == "refunded"
    for bad in ("?limit=0", "?limit=101", "?limit=1.5", "?starting_after=nope"):
        response = await merchant_api.get("/v1/merchant/payments" + bad, headers=key)
        assert response.status_code == 400, (bad, response.text)
        problem(response)
