"""Every citizens' and bank endpoint answers bad input with a 4xx problem+json, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.wallet_helpers import (
    Citizen,
    national_id,
    problem,
    registration_body,
    signed_in,
    with_wrong_check_digit,
)

THAI = str.maketrans("0123456789", "๐๑๒๓๔๕๖๗๘๙")
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _bad_registrations() -> list[tuple[str, dict[str, Any] | bytes, str]]:
    good = registration_body(national_id="1101700230708")
    nid = str(good["national_id"])
    cases: list[tuple[str, dict[str, Any] | bytes, str]] = [
        ("wrong checksum", {**good, "national_id": with_wrong_check_digit(nid)}, "invalid_national_id"),
        ("Thai digits in the national ID", {**good, "national_id": nid.translate(THAI)}, "invalid_national_id"),
        ("full-width national ID", {**good, "national_id": nid.translate(FULL_WIDTH)}, "invalid_national_id"),
        ("national ID as a number", {**good, "national_id": int(nid)}, "invalid_request"),
        ("huge national ID", {**good, "national_id": 10**40}, "invalid_request"),
        ("overlong national ID", {**good, "national_id": "1" * 5000}, "invalid_request"),
        ("NUL in the national ID", {**good, "national_id": nid[:12] + "\x00"}, "invalid_national_id"),
        ("Thai digits in the phone", {**good, "phone": "0812345678".translate(THAI)}, "invalid_phone"),
        ("a landline", {**good, "phone": "021234567"}, "invalid_phone"),
        ("NUL in the name", {**good, "full_name": "สม\x00ชาย"}, "invalid_request"),
        ("overlong name", {**good, "full_name": "ก" * 401}, "invalid_request"),
        ("empty name", {**good, "full_name": "  "}, "invalid_request"),
        ("birth date not a date", {**good, "birth_date": "12/04/1985"}, "invalid_request"),
        ("birth date in the future", {**good, "birth_date": "2999-01-01"}, "invalid_request"),
        ("birth date as a number", {**good, "birth_date": 19850412}, "invalid_request"),
        ("Thai digits in the province", {**good, "province_code": "๑๐"}, "invalid_request"),
        ("district of another province", {**good, "district_code": "5001"}, "invalid_request"),
        ("PIN as a number", {**good, "pin": 482915}, "invalid_request"),
        ("PIN as a float", {**good, "pin": 482915.0}, "invalid_request"),
        ("Thai digits in the PIN", {**good, "pin": "482915".translate(THAI)}, "invalid_pin"),
        ("full-width PIN", {**good, "pin": "482915".translate(FULL_WIDTH)}, "invalid_pin"),
        ("short PIN", {**good, "pin": "48291"}, "invalid_pin"),
        ("weak PIN", {**good, "pin": "123456"}, "weak_pin"),
        ("an unknown field", {**good, "is_admin": True}, "invalid_request"),
        ("a missing field", {k: v for k, v in good.items() if k != "pin"}, "invalid_request"),
        ("null", {**good, "phone": None}, "invalid_request"),
        ("not an object", b"[1, 2, 3]", "invalid_request"),
        ("not JSON", b"{national_id: 1}", "malformed_json"),
    ]
    return cases


@pytest.mark.parametrize(("why", "body", "code"), _bad_registrations(), ids=lambda v: v if isinstance(v, str) else "")
async def test_bad_registrations_are_refused_with_a_named_code(
    wallet_api: httpx.AsyncClient, why: str, body: dict[str, Any] | bytes, code: str
) -> None:
    if isinstance(body, bytes):
        response = await wallet_api.post(
            "/v1/citizen/registrations", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = await wallet_api.post("/v1/citizen/registrations", json=body)
    assert 400 <= response.status_code < 500, (why, response.text)
    assert problem(response)["code"] == code, (why, response.text)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"citizen_id": "cit_x", "code": "123456"}, "not_found"),
        ({"citizen_id": "cit_" + "0" * 26, "code": "123456".translate(THAI)}, "invalid_request"),
        ({"citizen_id": "cit_" + "0" * 26, "code": "１２３４５６"}, "invalid_request"),
        ({"citizen_id": "cit_" + "0" * 26, "code": 123456}, "invalid_request"),
        ({"citizen_id": "cit_" + "0" * 26, "code": "12345\x00"}, "invalid_request"),
        ({"citizen_id": "c" * 65, "code": "123456"}, "invalid_request"),
        ({"citizen_id": "cit_" + "0" * 26, "code": "123456", "pin": "1"}, "invalid_request"),
        ({"citizen_id": "cit_" + "0" * 26}, "invalid_request"),
    ],
)
async def test_bad_totp_confirmations_are_4xx(
    wallet_api: httpx.AsyncClient, body: dict[str, Any], code: str
) -> None:
    response = await wallet_api.post("/v1/citizen/totp/confirm", json=body)
    assert 400 <= response.status_code < 500 and problem(response)["code"] == code, response.text


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"national_id": with_wrong_check_digit("1101700230708")}, "invalid_national_id"),
        ({"national_id": "1101700230708".translate(THAI)}, "invalid_national_id"),
        ({"pin": "482915".translate(FULL_WIDTH)}, "invalid_pin"),
        ({"pin": 482915}, "invalid_request"),
        ({"totp_code": "123456".translate(THAI)}, "invalid_request"),
        ({"totp_code": 123456.0}, "invalid_request"),
        ({"totp_code": "9" * 17}, "invalid_request"),
        ({"remember_me": True}, "invalid_request"),
    ],
)
async def test_bad_session_requests_are_4xx(
    wallet_api: httpx.AsyncClient, change: dict[str, Any], code: str
) -> None:
    body = {"national_id": national_id(), "pin": "482915", "totp_code": "123456", **change}
    response = await wallet_api.post("/v1/citizen/sessions", json=body)
    assert 400 <= response.status_code < 500 and problem(response)["code"] == code, response.text


@pytest.fixture(scope="module")
async def citizen(wallet_api: httpx.AsyncClient) -> Citizen:
    return await signed_in(wallet_api)


@pytest.mark.parametrize(
    ("method", "path", "params", "status"),
    [
        ("GET", "/v1/citizen/transactions", {"limit": "0"}, 400),
        ("GET", "/v1/citizen/transactions", {"limit": "101"}, 400),
        ("GET", "/v1/citizen/transactions", {"limit": "1.5"}, 400),
        ("GET", "/v1/citizen/transactions", {"limit": "๑๐"}, 400),
        ("GET", "/v1/citizen/transactions", {"limit": str(10**30)}, 400),
        ("GET", "/v1/citizen/transactions", {"starting_after": "x" * 200}, 400),
        ("GET", "/v1/citizen/transactions", {"starting_after": "txn_\x00"}, 400),
        ("GET", "/v1/citizen/transactions", {"starting_after": "txn_" + "0" * 26}, 400),
        ("GET", "/v1/citizen/sessions", {"starting_after": "ses_" + "0" * 26}, 400),
        ("GET", "/v1/citizen/programs", {"starting_after": "nonsense"}, 400),
        ("GET", "/v1/citizen/programs", {"limit": "-1"}, 400),
        ("GET", "/v1/citizen/transactions/txn_nonsense", {}, 404),
        ("GET", "/v1/citizen/transactions/" + "9" * 300, {}, 404),
        ("GET", "/v1/citizen/payments/pay_%00", {}, 404),
        ("GET", "/v1/citizen/wallets/wal_" + "z" * 26, {}, 404),
        ("DELETE", "/v1/citizen/sessions/ses_x", {}, 404),
        ("POST", "/v1/citizen/programs/prg_๑๒/enrolment", {}, 404),
        ("PUT", "/v1/citizen/wallet", {}, 405),
    ],
)
async def test_bad_parameters_of_authenticated_endpoints_are_4xx(
    wallet_api: httpx.AsyncClient,
    citizen: Citizen,
    method: str,
    path: str,
    params: dict[str, str],
    status: int,
) -> None:
    response = await wallet_api.request(method, path, params=params, headers=citizen.headers)
    assert response.status_code == status, response.text
    problem(response)


async def test_bodies_over_the_size_limit_are_413(wallet_api: httpx.AsyncClient) -> None:
    body = registration_body(full_name="ก" * 70_000)
    for path in ("/v1/citizen/registrations", "/v1/bank/topups", "/v1/citizen/sessions"):
        response = await wallet_api.post(path, json=body)
        assert response.status_code == 413 and problem(response)["code"] == "request_too_large"
