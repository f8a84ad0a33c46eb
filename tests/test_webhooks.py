"""Webhooks over real HTTP: the outbox written with the payment, delivery signed per Standard
Webhooks to a receiver on 127.0.0.1, in order per merchant, retried, given up, disabled, and
safe across a crashed worker; the endpoint's PUT refusing bad and private URLs.

The module has a database of its own: every app of the test session runs a delivery worker
(with the default settings, which refuse loopback), and here deliveries go to loopback. Its
API-only app (``webhook_delivery_concurrency=0``) serves the requests; the tests run the
workers themselves (``running_worker``), except the journey, whose app runs its own worker in
its lifespan as the service does.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from gwallet.app import create_app
from gwallet.ids import format_id, parse_id
from gwallet.migrate import migrate
from gwallet.pii import Keyring, PiiCipher
from gwallet.problems import PROBLEM_MEDIA_TYPE
from gwallet.settings import Settings
from merchant_api import webhooks
from merchant_api.webhooks import (
    AddressNotAllowed,
    InvalidWebhookUrl,
    RetryPolicy,
    WebhookConfig,
    WebhookSettingsError,
    WebhookUrlNotAllowed,
    WebhookWorker,
    after_failure,
    check_url,
    is_public_address,
    resolve_target,
    retry_delay_seconds,
)
from tests.backoffice import new_official
from tests.http_service import free_port, serving
from tests.test_merchants import approved
from tests.test_paying import World, key, make_world, pay
from tests.wallet_helpers import Citizen, wallet_settings_for

# --- a receiver: a tiny HTTP server on 127.0.0.1 that records requests ---------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return msgspec.json.decode(self.body)


@dataclass
class Receiver:
    """Answers 200 unless told otherwise per path: ``fail[path]`` statuses first, then
    ``status[path]``; a request to a path in ``hold`` waits until the event is set."""

    received: list[Received] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    hold: dict[str, asyncio.Event] = field(default_factory=dict)
    port: int = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            _, path, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(path, headers, body))
            if path in self.hold:
                await self.hold[path].wait()
            queue = self.fail.get(path)
            status = queue.pop(0) if queue else self.status.get(path, 200)
            writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                         .encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# --- the module's database, app, world ----------------------------------------------------


def _with_database(url: str, database: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{database}"


@pytest.fixture(scope="module")
async def hooks_database(admin_database_url: str) -> AsyncIterator[str]:
    name = f"gwallet_webhooks_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(admin_database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(admin_database_url, name)
    await migrate(url)
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="module")
async def hooks_pool(hooks_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(hooks_database, min_size=1, max_size=10)
    yield pool
    await pool.close()


def hooks_settings_for(database_url: str, redis_url: str, data_dir: Path, **overrides: Any
                       ) -> Settings:
    values: dict[str, Any] = {
        "webhook_allow_http": True,
        "webhook_allow_private_addresses": True,
        "webhook_poll_interval_seconds": 0.05,
        "webhook_timeout_seconds": 2.0,
        "webhook_lease_seconds": 4.0,
        "webhook_retry_base_seconds": 0.05,
        "webhook_retry_max_delay_seconds": 0.2,
        "webhook_retry_window_seconds": 30.0,
        **overrides,
    }
    return wallet_settings_for(database_url, redis_url, data_dir, **values)


@pytest.fixture(scope="module")
def hooks_settings(hooks_database: str, redis_url: str, service_data_dir: Path) -> Settings:
    return hooks_settings_for(hooks_database, redis_url, service_data_dir,
                              webhook_delivery_concurrency=0)  # the tests run the workers


@pytest.fixture(scope="module")
def hooks_url(hooks_settings: Settings) -> Iterator[str]:
    with serving(create_app(hooks_settings)) as url:
        yield url


@pytest.fixture(scope="module")
async def hooks_api(hooks_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hooks_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    server = await receiver.start()
    yield receiver
    for hold in receiver.hold.values():
        hold.set()
    server.close()


@pytest.fixture(scope="module")
async def world(hooks_api: httpx.AsyncClient, hooks_pool: asyncpg.Pool) -> World:
    return await make_world(hooks_api, hooks_pool)


@pytest.fixture(scope="module")
def cipher(hooks_settings: Settings) -> PiiCipher:
    assert hooks_settings.pii_encryption_keys is not None
    return PiiCipher(Keyring.parse(hooks_settings.pii_encryption_keys, "test"))


def worker_config(**overrides: Any) -> WebhookConfig:
    values: dict[str, Any] = {
        "delivery_concurrency": 4, "poll_interval_seconds": 0.05, "timeout_seconds": 2.0,
        "lease_seconds": 4.0, "retry": RetryPolicy(0.05, 0.2, 30.0),
        "allow_http": True, "allow_private_addresses": True, **overrides,
    }
    return WebhookConfig(**values)


@asynccontextmanager
async def running_worker(pool: asyncpg.Pool, cipher: PiiCipher, **overrides: Any
                         ) -> AsyncIterator[WebhookWorker]:
    worker = WebhookWorker(pool, cipher, worker_config(**overrides))
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


# --- helpers ------------------------------------------------------------------------------


@dataclass
class Merchant:
    merchant_id: str
    headers: dict[str, str]
    path: str
    secret: str = ""


async def merchant_with_endpoint(api: httpx.AsyncClient, world: World, receiver: Receiver
                                 ) -> Merchant:
    merchant_id, headers = await approved(api, world.admin.headers)
    merchant = Merchant(merchant_id, headers, f"/hooks/{secrets.token_hex(6)}")
    response = await api.put("/v1/merchant/webhook-endpoint",
                             json={"url": receiver.url(merchant.path)}, headers=headers)
    assert response.status_code == 200, response.text
    merchant.secret = response.json()["secret"]
    return merchant


async def paid(api: httpx.AsyncClient, world: World, citizen: Citizen, merchant: Merchant,
               amount: int = 2_000) -> dict[str, Any]:
    request = await world.payment_request(amount, headers=merchant.headers)
    response = await pay(api, citizen, request["qr_payload"])
    assert response.status_code == 201, response.text
    return response.json()


def event_ids(requests: list[Received]) -> list[str]:
    return [r.headers["webhook-id"] for r in requests]


async def events_of(pool: asyncpg.Pool, merchant: Merchant) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM webhook_events WHERE merchant_id = $1 ORDER BY seq",
        parse_id("mer", merchant.merchant_id))


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``serving`` without blocking this event loop (the receiver runs on it)."""
    context = serving(app)
    url = await asyncio.to_thread(context.__enter__)
    try:
        yield url
    finally:
        await asyncio.to_thread(context.__exit__, None, None, None)


# --- the journey --------------------------------------------------------------------------


async def test_the_whole_journey_from_a_new_program_to_a_settled_payment_and_a_clean_ledger(
    hooks_database: str, redis_url: str, service_data_dir: Path, hooks_pool: asyncpg.Pool,
    receiver: Receiver,
) -> None:
    """Issue 5's journey in one test, over real HTTP to an app that runs as in production
    (its lifespan runs the delivery worker): (1) an official creates, approves, funds and
    activates a half-half program (make_world); (2) a merchant applies and is approved; (3) a
    citizen registers, tops up and enrols; (4) the merchant creates a payment request; (5) the
    citizen quotes and pays; (6) the webhook arrives and verifies with standardwebhooks;
    (7) the payment is refunded; (8) settlement runs; (9) ledger verify is clean."""
    settings = hooks_settings_for(hooks_database, redis_url, service_data_dir,
                                  webhook_delivery_concurrency=4)
    async with served(create_app(settings)) as url, httpx.AsyncClient(
            base_url=url, timeout=30) as api:
        world = await make_world(api, hooks_pool)  # (1)
        merchant = await merchant_with_endpoint(api, world, receiver)  # (2)
        assert merchant.secret.startswith("whsec_")
        citizen = await world.citizen(money=100_000)  # (3)
        request = await world.payment_request(30_000, headers=merchant.headers)  # (4)
        quote = await api.post("/v1/citizen/payments/quote",  # (5)
                               json={"qr_payload": request["qr_payload"]},
                               headers=citizen.headers)
        assert quote.status_code == 200, quote.text
        assert [(line["program_id"], line["subsidy_amount"], line["citizen_amount"])
                for line in quote.json()["programs"]] == [(world.program_id, 15_000, 15_000)]
        response = await pay(api, citizen, request["qr_payload"])
        assert response.status_code == 201, response.text
        payment = response.json()

        first = (await eventually(lambda: receiver.at(merchant.path)))[0]
        event = Webhook(merchant.secret).verify(first.body, first.headers)
        assert first.headers["content-type"] == "application/json"
        assert event["type"] == "payment.succeeded"
        assert event["id"] == first.headers["webhook-id"] and event["id"].startswith("evt_")
        assert datetime.fromisoformat(event["created_at"]).tzinfo is not None
        data = event["data"]
        assert data["payment_id"] == payment["payment_id"]
        assert data["payment_request_id"] == payment["payment_request_id"]
        assert data["merchant_id"] == merchant.merchant_id
        assert data["program_id"] == world.program_id
        assert (data["amount"], data["subsidy_amount"], data["citizen_amount"],
                data["currency"]) == (30_000, 15_000, 15_000, "THB")
        with pytest.raises(WebhookVerificationError):  # another secret does not verify
            Webhook(webhooks.new_secret()).verify(first.body, first.headers)

        refund = await api.post(f"/v1/merchant/payments/{payment['payment_id']}/refunds",
                                json={"amount": 10_000}, headers={**merchant.headers, **key()})
        assert refund.status_code == 201, refund.text
        second = (await eventually(lambda: receiver.at(merchant.path)[1:]))[0]
        event = Webhook(merchant.secret).verify(second.body, second.headers)
        assert event["type"] == "refund.succeeded"
        assert event["data"]["refund_id"] == refund.json()["refund_id"]
        assert event["data"]["payment_id"] == payment["payment_id"]
        assert (event["data"]["amount"], event["data"]["subsidy_amount"],
                event["data"]["citizen_amount"]) == (10_000, 5_000, 5_000)

        view = await api.get("/v1/merchant/webhook-endpoint", headers=merchant.headers)
        assert view.status_code == 200, view.text
        assert {k: view.json()[k] for k in ("url", "enabled", "status", "failure_count")} == {
            "url": receiver.url(merchant.path), "enabled": True, "status": "enabled",
            "failure_count": 0}
        await eventually(lambda: _delivered_all(hooks_pool, merchant))
        assert len(receiver.at(merchant.path)) == 2  # each once

        # (8) T+1 settlement of the sale's business date, in two legs net of the refund. The
        # sale is dated a long-past Monday (a run settles its date once the date is over), a
        # date no other sale of this module's database has.
        day = date(2001, 5, 7)
        await hooks_pool.execute(
            "UPDATE payments SET business_date = $2, created_at = $3 WHERE id = $1",
            parse_id("pay", payment["payment_id"]), day,
            datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=5))
        run = await api.post("/v1/admin/settlements/runs",
                             json={"business_date": day.isoformat()}, headers=world.admin.headers)
        assert run.status_code == 201, run.text
        assert (run.json()["covered_dates"], run.json()["settlement_date"]) == (
            ["2001-05-05", "2001-05-06", "2001-05-07"], "2001-05-08")  # Monday carries Sat, Sun
        legs = await api.get("/v1/merchant/settlements", headers=merchant.headers)
        assert legs.status_code == 200, legs.text
        assert sorted((leg["leg"], leg["amount"], leg["status"]) for leg in legs.json()["data"]
                      ) == [("citizen_share", 10_000, "paid"), ("state_share", 10_000, "paid")]
        settled = await eventually(lambda: receiver.at(merchant.path)[2:4]
                                   if len(receiver.at(merchant.path)) >= 4 else None)
        events = [Webhook(merchant.secret).verify(r.body, r.headers) for r in settled]
        assert [e["type"] for e in events] == ["settlement.paid"] * 2
        assert sum(e["data"]["amount"] for e in events) == 20_000

        # (9) the ledger: balanced, every invariant holds, the signed hash chain intact.
        verify = await api.get("/v1/admin/ledger/verify", headers=world.admin.headers)
        assert verify.status_code == 200, verify.text
        assert verify.json()["ok"] is True, verify.json()


async def _delivered_all(pool: asyncpg.Pool, merchant: Merchant) -> bool:
    return await _pending(pool, merchant) == 0


async def _pending(pool: asyncpg.Pool, merchant: Merchant) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM webhook_events WHERE merchant_id = $1 AND status = 'pending'",
        parse_id("mer", merchant.merchant_id))


async def test_the_outbox_row_is_written_with_the_payment_and_not_for_a_refused_one(
    hooks_api: httpx.AsyncClient, world: World, receiver: Receiver, hooks_pool: asyncpg.Pool,
) -> None:
    merchant = await merchant_with_endpoint(hooks_api, world, receiver)
    citizen = await world.citizen(money=3_000)
    payment = await paid(hooks_api, world, citizen, merchant, 2_000)
    too_much = await world.payment_request(50_000, headers=merchant.headers)
    refused = await pay(hooks_api, citizen, too_much["qr_payload"])
    assert refused.status_code == 422  # insufficient funds: no payment, no event
    rows = await events_of(hooks_pool, merchant)
    assert [(r["type"], r["status"]) for r in rows] == [("payment.succeeded", "pending")]
    payload = msgspec.json.decode(rows[0]["payload"])
    assert payload["data"]["payment_id"] == payment["payment_id"]
    assert payload["id"] == format_id("evt", rows[0]["id"])

    # A merchant without an endpoint: the event is kept as skipped, never delivered.
    other_id, other_headers = await approved(hooks_api, world.admin.headers)
    request = await world.payment_request(1_000, headers=other_headers)
    assert (await pay(hooks_api, citizen, request["qr_payload"])).status_code == 201
    skipped = await hooks_pool.fetch("SELECT status FROM webhook_events WHERE merchant_id = $1",
                                     parse_id("mer", other_id))
    assert [r["status"] for r in skipped] == ["skipped"]


# --- order, retries, giving up, disabling -------------------------------------------------


async def test_a_merchants_second_event_waits_until_the_first_failing_twice_is_delivered(
    hooks_api: httpx.AsyncClient, world: World, receiver: Receiver, hooks_pool: asyncpg.Pool,
    cipher: PiiCipher,
) -> None:
    merchant = await merchant_with_endpoint(hooks_api, world, receiver)
    receiver.fail[merchant.path] = [500, 503]
    citizen = await world.citizen()
    first = await paid(hooks_api, world, citizen, merchant)
    second = await paid(hooks_api, world, citizen, merchant)
    rows = await events_of(hooks_pool, merchant)
    expected = [format_id("evt", r["id"]) for r in rows]

    async with running_worker(hooks_pool, cipher):
        await eventually(lambda: len(receiver.at(merchant.path)) >= 4)
        await eventually(lambda: _delivered_all(hooks_pool, merchant))
    got = receiver.at(merchant.path)
    assert event_ids(got) == [expected[0]] * 3 + [expected[1]]
    assert [r.event["data"]["payment_id"] for r in got] == [first["payment_id"]] * 3 + [
        second["payment_id"]]
    for request in got:
        Webhook(merchant.secret).verify(request.body, request.headers)

    attempts = await hooks_pool.fetch(
        "SELECT attempt, status_code, delivered, duration_ms FROM webhook_attempts "
        "WHERE event_id = $1 ORDER BY attempt", rows[0]["id"])
    assert [(a["attempt"], a["status_code"], a["delivered"]) for a in attempts] == [
        (1, 500, False), (2, 503, False), (3, 200, True)]
    assert all(a["duration_ms"] >= 0 for a in attempts)
    final = await events_of(hooks_pool, merchant)
    assert [(r["status"], r["attempts"]) for r in final] == [("delivered", 3), ("delivered", 1)]
    view = (await hooks_api.get("/v1/merchant/webhook-endpoint", headers=merchant.headers)).json()
    assert (view["enabled"], view["failure_count"]) == (True, 0)  # a success resets it


async def test_an_endpoint_failing_for_the_whole_retry_window_is_disabled_until_a_new_put(
    hooks_api: httpx.AsyncClient, world: World, receiver: Receiver, hooks_pool: asyncpg.Pool,
    cipher: PiiCipher,
) -> None:
    merchant = await merchant_with_endpoint(hooks_api, world, receiver)
    receiver.status[merchant.path] = 500
    citizen = await world.citizen()
    await paid(hooks_api, world, citizen, merchant)
    config = {"retry": RetryPolicy(0.02, 0.05, 0.4), "disable_after_failed_events": 1}
    async with running_worker(hooks_pool, cipher, **config):
        rows = await eventually(lambda: _given_up(hooks_pool, merchant))
        held = await paid(hooks_api, world, citizen, merchant)  # after the endpoint is disabled
        await asyncio.sleep(0.3)
    assert rows[0]["attempts"] >= 2 and rows[0]["finished_at"] is not None
    assert all(r.event["type"] == "payment.succeeded" for r in receiver.at(merchant.path))
    assert held["payment_id"] not in {r.event["data"]["payment_id"]
                                       for r in receiver.at(merchant.path)}
    view = (await hooks_api.get("/v1/merchant/webhook-endpoint", headers=merchant.headers)).json()
    assert (view["enabled"], view["status"], view["pending_events"]) == (False, "disabled", 1)
    assert view["failure_count"] >= 2 and view["disabled_at"] is not None

    # The merchant fixes its receiver and PUTs again: enabled, a new secret, the held event sent.
    receiver.status[merchant.path] = 200
    again = await hooks_api.put("/v1/merchant/webhook-endpoint",
                                json={"url": receiver.url(merchant.path)},
                                headers=merchant.headers)
    assert again.status_code == 200, again.text
    new_secret = again.json()["secret"]
    assert new_secret != merchant.secret and again.json()["enabled"] is True
    before = len(receiver.at(merchant.path))
    async with running_worker(hooks_pool, cipher, **config):
        await eventually(lambda: _delivered_all(hooks_pool, merchant))
    late = receiver.at(merchant.path)[before:]
    assert [r.event["data"]["payment_id"] for r in late] == [held["payment_id"]]
    Webhook(new_secret).verify(late[0].body, late[0].headers)
    assert [r["status"] for r in await events_of(hooks_pool, merchant)] == ["failed", "delivered"]
    view = (await hooks_api.get("/v1/merchant/webhook-endpoint", headers=merchant.headers)).json()
    assert (view["enabled"], view["failure_count"], view["disabled_at"]) == (True, 0, None)


async def _given_up(pool: asyncpg.Pool, merchant: Merchant) -> list[asyncpg.Record]:
    rows = await events_of(pool, merchant)
    enabled = await pool.fetchval("SELECT enabled FROM webhook_endpoints WHERE merchant_id = $1",
                                  parse_id("mer", merchant.merchant_id))
    return rows if rows and rows[0]["status"] == "failed" and not enabled else []


# --- crashes and several workers ----------------------------------------------------------


async def test_a_delivery_cut_short_by_a_crashed_worker_is_sent_again_by_another_worker(
    hooks_api: httpx.AsyncClient, world: World, receiver: Receiver, hooks_pool: asyncpg.Pool,
    cipher: PiiCipher,
) -> None:
    merchant = await merchant_with_endpoint(hooks_api, world, receiver)
    receiver.hold[merchant.path] = asyncio.Event()  # the receiver keeps the request open
    citizen = await world.citizen()
    await paid(hooks_api, world, citizen, merchant)
    config = {"timeout_seconds": 0.5, "lease_seconds": 1.0}

    crashed = WebhookWorker(hooks_pool, cipher, worker_config(**config))
    await crashed.start()
    await eventually(lambda: receiver.at(merchant.path))  # mid-delivery...
    assert crashed.task is not None
    crashed.task.cancel()  # ...the process dies: nothing is recorded, the lease stays
    await asyncio.gather(crashed.task, return_exceptions=True)
    cut_at = time.monotonic()
    rows = await events_of(hooks_pool, merchant)
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0)]
    receiver.hold[merchant.path].set()

    async with running_worker(hooks_pool, cipher, **config):
        await eventually(lambda: _delivered_all(hooks_pool, merchant))
    assert time.monotonic() - cut_at > 0.3  # it waited for the lease to run out
    got = receiver.at(merchant.path)
    assert len(got) == 2 and len(set(event_ids(got))) == 1  # the same event, sent again
    Webhook(merchant.secret).verify(got[1].body, got[1].headers)
    assert [r["status"] for r in await events_of(hooks_pool, merchant)] == ["delivered"]
    await crashed.stop()  # closes its client


async def test_two_workers_share_the_merchants_and_deliver_each_event_once_in_order(
    hooks_api: httpx.AsyncClient, world: World, receiver: Receiver, hooks_pool: asyncpg.Pool,
    cipher: PiiCipher,
) -> None:
    merchants = [await merchant_with_endpoint(hooks_api, world, receiver) for _ in range(3)]
    citizen = await world.citizen()
    for _ in range(3):
        for merchant in merchants:
            await paid(hooks_api, world, citizen, merchant, 1_000)
    async with running_worker(hooks_pool, cipher, delivery_concurrency=2), \
            running_worker(hooks_pool, cipher, delivery_concurrency=2):
        for merchant in merchants:
            await eventually(lambda m=merchant: _delivered_all(hooks_pool, m))
    for merchant in merchants:
        expected = [format_id("evt", r["id"]) for r in await events_of(hooks_pool, merchant)]
        assert event_ids(receiver.at(merchant.path)) == expected  # once each, in order


async def test_a_worker_stops_even_when_a_delivery_ends_as_it_is_cancelled(
    hooks_pool: asyncpg.Pool, cipher: PiiCipher,
) -> None:
    # Regression: asyncio.wait_for (Python 3.11) swallowed the cancellation when the worker's
    # wake-up (a merchant done) came in the same instant, and the shutdown hung.
    worker = WebhookWorker(hooks_pool, cipher, worker_config())
    await worker.start()
    task = worker.task
    assert task is not None
    await asyncio.sleep(0.1)
    worker._wakeup.set()  # what a finished delivery does
    started = time.monotonic()
    await worker.stop()
    assert task.done() and time.monotonic() - started < 2.0


async def test_a_worker_refuses_at_delivery_an_endpoint_that_resolves_to_a_private_address(
    hooks_api: httpx.AsyncClient, world: World, receiver: Receiver, hooks_pool: asyncpg.Pool,
    cipher: PiiCipher,
) -> None:
    merchant = await merchant_with_endpoint(hooks_api, world, receiver)  # stored when allowed
    citizen = await world.citizen()
    await paid(hooks_api, world, citizen, merchant)
    async with running_worker(hooks_pool, cipher, allow_private_addresses=False):
        attempt = await eventually(lambda: hooks_pool.fetchrow(
            "SELECT * FROM webhook_attempts WHERE merchant_id = $1",
            parse_id("mer", merchant.merchant_id)))
    assert attempt["status_code"] is None and not attempt["delivered"]
    assert attempt["error"].startswith("address not allowed")
    assert receiver.at(merchant.path) == []


async def test_a_host_name_that_resolves_to_a_private_address_is_refused() -> None:
    with pytest.raises(AddressNotAllowed):
        await resolve_target("https://localhost/hook", allow_private=False)
    host = socket.gethostname()  # resolves to loopback or a private address on most machines
    addresses = {ipaddress.ip_address(i[4][0].split("%")[0]) for i in socket.getaddrinfo(host, 443)}
    if all(is_public_address(a) for a in addresses):
        pytest.skip("this machine's own name resolves to public addresses")
    with pytest.raises(AddressNotAllowed):
        await resolve_target(f"https://{host}/hook", allow_private=False)
    target = await resolve_target("https://127.0.0.1:8443/h?x=1", allow_private=True)
    assert (target.url, target.host_header, target.tls_name) == (
        "https://127.0.0.1:8443/h?x=1", "127.0.0.1:8443", None)
    target = await resolve_target(f"https://{host}/hook", allow_private=True)
    assert target.host_header == host and target.tls_name == host  # connects to the address


# --- the endpoint's PUT and GET -----------------------------------------------------------


async def test_the_secret_is_shown_on_each_put_stored_encrypted_and_never_read_back(
    hooks_api: httpx.AsyncClient, world: World, receiver: Receiver, hooks_pool: asyncpg.Pool,
) -> None:
    merchant_id, headers = await approved(hooks_api, world.admin.headers)
    missing = await hooks_api.get("/v1/merchant/webhook-endpoint", headers=headers)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    url = receiver.url("/hooks/secret")
    first = await hooks_api.put("/v1/merchant/webhook-endpoint", json={"url": url},
                                headers=headers)
    assert first.status_code == 200, first.text
    secret = first.json()["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
    Webhook(secret)  # the Standard Webhooks form
    stored = await hooks_pool.fetchval(
        "SELECT secret_enc FROM webhook_endpoints WHERE merchant_id = $1",
        parse_id("mer", merchant_id))
    assert secret.encode() not in stored and base64.b64decode(secret[6:]) not in stored
    second = await hooks_api.put("/v1/merchant/webhook-endpoint", json={"url": url},
                                 headers=headers)
    assert second.json()["secret"] != secret  # a PUT rotates it
    view = await hooks_api.get("/v1/merchant/webhook-endpoint", headers=headers)
    assert view.status_code == 200
    assert "secret" not in view.json() and secret not in view.text
    assert view.json()["url"] == url and view.json()["pending_events"] == 0
    anonymous = await hooks_api.get("/v1/merchant/webhook-endpoint")
    assert anonymous.status_code == 401


async def test_a_private_loopback_or_plain_http_url_is_refused_by_default(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    # The session's service has the default settings: https only, public addresses only.
    admin = await new_official(pool, wallet_api, "admin")
    _, headers = await approved(wallet_api, admin.headers)
    for url in ("https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://192.168.1.1:8443/",
                "https://169.254.169.254/latest/meta-data", "https://[::1]/hook",
                "https://[::ffff:127.0.0.1]/hook", "https://0.0.0.0/", "https://224.0.0.1/",
                "https://100.64.0.1/", "https://localhost/hook", "https://api.localhost/"):
        response = await wallet_api.put("/v1/merchant/webhook-endpoint", json={"url": url},
                                        headers=headers)
        assert response.status_code == 422, (url, response.text)
        assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
        body = response.json()
        assert body["code"] == "webhook_url_not_allowed", (url, body)
        assert body["errors"][0]["field"] == "url"
    plain = await wallet_api.put("/v1/merchant/webhook-endpoint",
                                 json={"url": "http://example.com/hook"}, headers=headers)
    assert plain.status_code == 422 and plain.json()["code"] == "invalid_webhook_url"
    public = await wallet_api.put("/v1/merchant/webhook-endpoint",
                                  json={"url": "https://example.com/hook"}, headers=headers)
    assert public.status_code == 200, public.text  # (this merchant has no events to deliver)


async def test_bad_webhook_endpoint_input_is_a_4xx_problem(
    hooks_api: httpx.AsyncClient, world: World,
) -> None:
    _, headers = await approved(hooks_api, world.admin.headers)
    cases: list[tuple[Any, str, str | None]] = [
        ({"url": "not a url"}, "invalid_webhook_url", "url"),
        ({"url": "ftp://example.com/hook"}, "invalid_webhook_url", "url"),
        ({"url": "https://"}, "invalid_webhook_url", "url"),
        ({"url": "https://user:pw@example.com/hook"}, "invalid_webhook_url", "url"),
        ({"url": "https://example.com:99999/"}, "invalid_webhook_url", "url"),
        ({"url": "https://exa mple.com/"}, "invalid_webhook_url", "url"),
        ({"url": "https://example.com/#x"}, "invalid_webhook_url", "url"),
        ({"url": "https://" + "a" * 10_000 + ".com/"}, "invalid_request", "url"),
        ({"url": ""}, "invalid_request", "url"),
        ({"url": 5}, "invalid_request", "url"),
        ({"url": "https://example.com/", "events": ["x"]}, "invalid_request", "events"),
        ({}, "invalid_request", None),
        ([], "invalid_request", None),
    ]
    for body, code, named in cases:
        response = await hooks_api.put("/v1/merchant/webhook-endpoint", json=body,
                                       headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
        problem = response.json()
        assert problem["code"] == code, (body, problem)
        if named is not None:
            assert problem["errors"][0]["field"] == named, problem
    garbled = await hooks_api.put("/v1/merchant/webhook-endpoint", content=b"{not json",
                                  headers={**headers, "content-type": "application/json"})
    assert garbled.status_code == 400 and garbled.json()["code"] == "malformed_json"
    anonymous = await hooks_api.put("/v1/merchant/webhook-endpoint",
                                    json={"url": "https://example.com/"})
    assert anonymous.status_code == 401


# --- pure rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "allow_http", "allow_private", "outcome"), [
    ("https://example.com/hooks?x=1", False, False, "ok"),
    ("https://shop.example.co.th:8443/h", False, False, "ok"),
    ("https://93.184.216.34/h", False, False, "ok"),
    ("http://example.com/h", False, False, InvalidWebhookUrl),
    ("http://example.com/h", True, False, "ok"),
    ("https://10.0.0.1/h", False, False, WebhookUrlNotAllowed),
    ("https://10.0.0.1/h", False, True, "ok"),
    ("https://[fe80::1]/h", False, False, WebhookUrlNotAllowed),
    ("https://[2606:4700::1111]/h", False, False, "ok"),
    ("https://[::ffff:10.0.0.1]/h", False, False, WebhookUrlNotAllowed),
    ("https://2130706433/h", False, False, InvalidWebhookUrl),  # 127.0.0.1 as one number
    ("https://127.1/h", False, False, InvalidWebhookUrl),
    ("https://-bad-.com/h", False, False, InvalidWebhookUrl),
    ("https://ex\u00e4mple.com/h", False, False, InvalidWebhookUrl),
    ("javascript:alert(1)", True, True, InvalidWebhookUrl),
    ("https:///path", False, False, InvalidWebhookUrl),
])
def test_check_url(url: str, allow_http: bool, allow_private: bool, outcome: Any) -> None:
    if outcome == "ok":
        assert check_url(url, allow_http=allow_http, allow_private=allow_private) == url
    else:
        with pytest.raises(outcome) as raised:
            check_url(url, allow_http=allow_http, allow_private=allow_private)
        assert raised.value.errors[0].field == "url"


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("93.184.216.34", True), ("2606:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("239.255.255.250", False), ("240.0.0.1", False),
    ("255.255.255.255", False), ("192.0.2.1", False), ("::1", False), ("::", False),
    ("fe80::1", False), ("fc00::1", False), ("ff02::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:8.8.8.8", True), ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
])
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_backoff_has_full_jitter_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(base_seconds=5.0, max_delay_seconds=3600.0, window_seconds=86400.0)
    ceilings = [retry_delay_seconds(n, policy, lambda: 1.0) for n in (1, 2, 3, 10, 11, 50, 10**6)]
    assert ceilings == [5.0, 10.0, 20.0, 2560.0, 3600.0, 3600.0, 3600.0]
    assert retry_delay_seconds(7, policy, lambda: 0.0) == 0.0
    draws = random.Random(5)
    assert all(0 <= retry_delay_seconds(4, policy, draws.random) < 40 for _ in range(1000))


def test_the_default_schedule_retries_an_event_for_more_than_a_day_and_at_least_20_times() -> None:
    policy = RetryPolicy()  # the settings' defaults
    for seed in range(20):
        draw = random.Random(seed).random
        start = now = datetime(2025, 1, 1, tzinfo=UTC)
        attempt = 1
        while True:
            decision = after_failure(attempt=attempt, first_attempt_at=start, now=now,
                                     policy=policy, draw=draw)
            if decision.give_up:
                break
            assert decision.next_attempt_at >= now
            now, attempt = decision.next_attempt_at, attempt + 1
        assert now - start >= timedelta(days=1) and attempt >= 20


def test_webhook_settings_out_of_range_are_refused() -> None:
    for bad in ({"lease_seconds": 5.0, "timeout_seconds": 10.0},
                {"delivery_concurrency": -1}, {"poll_interval_seconds": 0},
                {"retry": RetryPolicy(10.0, 5.0, 100.0)},
                {"disable_after_failed_events": 0}):
        with pytest.raises(WebhookSettingsError):
            WebhookConfig(**bad)  # type: ignore[arg-type]
    assert WebhookConfig.from_settings(Settings()) == WebhookConfig()


async def test_a_worker_waiting_out_a_database_outage_logs_one_warning_not_a_traceback_a_poll(
    cipher: PiiCipher, caplog: pytest.LogCaptureFixture,
) -> None:
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/x",
                                     min_size=0, max_size=1)
    try:
        with caplog.at_level("WARNING", logger="gwallet.merchant_api.webhooks"):
            async with running_worker(pool, cipher, poll_interval_seconds=0.01):
                await asyncio.sleep(0.5)  # tens of polls, every one refused
    finally:
        await pool.close()
    messages = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert messages == ["webhook deliveries wait: database unavailable (ConnectionRefusedError)"]
    assert not any(r.exc_info for r in caplog.records)
