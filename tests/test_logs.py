"""JSON logs: one line per request with its id, and no personal data or secrets."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from gwallet.logs import JsonFormatter

NATIONAL_ID = "1101700230708"
PIN = "845216"
BEARER = "sess_9f8e7d6c5b4a39281706"
API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"


def json_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    """The service's log lines (the test's own HTTP client logs what it sends: not ours)."""
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(record))
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    ]


async def access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict]:
    """The access lines, once ``count`` are there: the server logs a request just after it
    sent the response, so the client can be a moment ahead of the line (at most 2 s)."""
    for _ in range(200):
        access = [line for line in json_lines(caplog) if line["logger"] == "gwallet.access"]
        if len(access) >= count:
            return access
        await asyncio.sleep(0.01)
    return access


async def test_logs_carry_no_national_id_pin_authorization_or_api_key(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_headers = {
        "Authorization": f"Bearer {BEARER}",
        "X-API-Key": API_KEY,
        "Idempotency-Key": f"pin-{PIN}",
    }
    body = {"national_id": NATIONAL_ID, "pin": PIN, "amount": 1}
    # A refused body, an accepted body, a 404 and a 500, each with the secrets on board.
    await api.post("/test/effects", json=body, headers=secret_headers)
    await api.post("/test/effects", json={"amount": 1, "note": NATIONAL_ID}, headers=secret_headers)
    await api.get(f"/v1/citizens/{NATIONAL_ID}?pin={PIN}&api_key={API_KEY}", headers=secret_headers)
    await api.get(f"/test/boom?national_id={NATIONAL_ID}", headers=secret_headers)
    await api.get(f"/test/items/{NATIONAL_ID}", headers=secret_headers)

    await access_lines(caplog, 5)
    lines = json_lines(caplog)
    text = "\n".join(json.dumps(line) for line in lines)
    for secret in (NATIONAL_ID, PIN, BEARER, API_KEY):
        assert secret not in text, secret
    access = [line for line in lines if line["logger"] == "gwallet.access"]
    assert len(access) == 5
    for line in access:
        assert {
            "ts",
            "level",
            "msg",
            "request_id",
            "method",
            "route",
            "status",
            "duration_ms",
        } <= line.keys()
        assert len(line["request_id"]) == 32
    assert [line["status"] for line in access] == [422, 201, 404, 500, 200]
    assert access[-1]["route"] == "/test/items/{item_id}"
    crash = [line for line in lines if line["msg"] == "unhandled exception"]
    assert crash and crash[0]["request_id"] == access[3]["request_id"] and "exc" in crash[0]


async def test_the_access_log_uses_the_request_id_the_client_sent(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await api.get("/healthz", headers={"X-Request-ID": "trace-abc-123"})
    access = await access_lines(caplog, 1)
    assert access[-1]["request_id"] == "trace-abc-123"


def test_the_formatter_masks_extra_fields_whose_names_are_sensitive() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "registered", (), None)
    for name, value in {
        "national_id": NATIONAL_ID,
        "pin": PIN,
        "authorization": BEARER,
        "api_key": API_KEY,
        "citizen_id": "cit_1",
    }.items():
        setattr(record, name, value)
    line = json.loads(JsonFormatter().format(record))
    assert line["national_id"] == line["pin"] == line["authorization"] == line["api_key"] == "***"
    assert line["citizen_id"] == "cit_1"
