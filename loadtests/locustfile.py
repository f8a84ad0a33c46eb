"""Locust users walking G-Wallet's real journeys against a seeded database.

    GWALLET_LOAD_MANIFEST=run/manifest.json GWALLET_LOAD_SCENARIO=lunch \\
        locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 \\
        CitizenPayer WalletReader MerchantPoller

(``python -m loadtests.run`` does all of it: seed, service, references, Locust, invariants.)

Users (``FastHttpUser``), each request drawing a random seeded citizen or merchant: every
credential comes from the manifest's secret and the index (``loadtests.population``):

- ``CitizenPayer``: a random merchant creates a payment request (dynamic QR), its status is
  polled once, a random *enrolled* citizen quotes it and pays it with the PIN, the merchant
  polls again and must see it ``paid``. Money-moving POSTs carry an Idempotency-Key; a pay
  refused fast (429/503 + Retry-After) or lost on the network is retried once with the SAME
  key, so duplicated effects would show in the invariants.
- ``WalletReader``: a random citizen reads the wallet and the transactions.
- ``MerchantPoller``: a merchant polls a payment request it created (recently, in this
  process), or creates one first.
- ``RushCitizen``: a new citizen (national IDs beyond the seeded ones, unique per Locust worker
  process) registers, confirms the authenticator (pyotp with the returned secret), signs in and
  enrols in the rush program (``GWALLET_LOAD_RUSH_PROGRAM``, else the manifest's) against its
  quota.
- ``PingUser``: ``GET /healthz`` without think time (R_ping).

Outcomes, as the request's type in Locust's statistics (names group by endpoint template):
- ``GET``/``POST``: answered as expected (or a failure, counted as an error);
- ``REFUSED``: 429/503 with Retry-After, named ``<endpoint> [<code>]``: overload refused fast,
  not a correctness failure (the user then waits a little: half to all of Retry-After, at
  most 2 s);
- ``EXPECTED``: a business refusal the journey can meet, named ``<endpoint> [<code>]``
  (``quota_exhausted``, ``registration_closed``, ``insufficient_funds``, ...).

The shape comes from ``GWALLET_LOAD_SCENARIO`` (``loadtests.shapes``); think time is up to
``GWALLET_LOAD_THINK_SECONDS`` (default 1.0) between journeys.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import secrets
import time
import uuid
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import gevent
import pyotp
from locust import FastHttpUser, between, constant, task

from loadtests import population
from loadtests.population import Manifest
from loadtests.shapes import shape_for

MANIFEST_ENV = "GWALLET_LOAD_MANIFEST"
SCENARIO_ENV = "GWALLET_LOAD_SCENARIO"
RUSH_PROGRAM_ENV = "GWALLET_LOAD_RUSH_PROGRAM"
THINK_ENV = "GWALLET_LOAD_THINK_SECONDS"

THINK_SECONDS = float(os.environ.get(THINK_ENV, "1.0"))
RETRY_AFTER_MAX_SECONDS = 2.0
# National IDs of rush citizens: population index RUSH_INDEX_BASE + worker * RUSH_INDEX_STRIDE
# + n; far beyond any seeded index, and disjoint between Locust worker processes.
RUSH_INDEX_BASE = 50_000_000_000
RUSH_INDEX_STRIDE = 1_000_000_000
RECENT_REQUESTS_MAX = 1_000  # payment requests a poller may pick from, per process
TOTP_INTERVAL_SECONDS = 30

# Business refusals that a journey may meet without anything being wrong.
PAY_EXPECTED = ("insufficient_funds",)
ENROL_EXPECTED = ("quota_exhausted", "registration_closed", "registration_not_open")


@cache
def manifest() -> Manifest:
    path = os.environ.get(MANIFEST_ENV)
    if not path:
        raise RuntimeError(f"set {MANIFEST_ENV} to the seed's manifest (loadtests.seed)")
    return Manifest.read(Path(path))


# The one shape of this run (Locust takes the first LoadTestShape it finds in the module).
Shape = shape_for(os.environ.get(SCENARIO_ENV, "lunch"))

# (merchant index, payment request id) created by this process, for the pollers.
_recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=RECENT_REQUESTS_MAX)
_rush_numbers = itertools.count()


def _idempotency_key() -> str:
    return uuid.uuid4().hex


class Outcome:
    """What ``call`` saw: ``kind`` is ok, refused, expected or failed."""

    __slots__ = ("status", "body", "kind", "code")

    def __init__(self, status: int, body: Any, kind: str, code: str | None) -> None:
        self.status = status
        self.body = body
        self.kind = kind
        self.code = code

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class _Api(FastHttpUser):
    abstract = True
    network_timeout = 30.0
    connection_timeout = 5.0

    def call(
        self,
        method: str,
        path: str,
        name: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        expected: tuple[str, ...] = (),
        check: Any = None,
    ) -> Outcome:
        """One request, classified; ``check(body)`` returns an error text for a wrong 2xx."""
        with self.client.request(method, path, name=name, json=json, headers=headers,
                                 catch_response=True) as response:
            status = response.status_code or 0
            body: Any = None
            if response.content:
                try:
                    body = response.json()
                except ValueError:
                    body = None
            code = body.get("code") if isinstance(body, dict) else None
            if status in ok:
                problem = check(body) if check is not None else None
                if problem:
                    response.failure(f"{status} but {problem}")
                    return Outcome(status, body, "failed", code)
                response.success()
                return Outcome(status, body, "ok", code)
            retry_after = _retry_after(response.headers)
            if status in (429, 503) and retry_after is not None:
                response.request_meta["request_type"] = "REFUSED"
                response.request_meta["name"] = f"{name} [{code or status}]"
                response.success()
                gevent.sleep(min(retry_after, RETRY_AFTER_MAX_SECONDS) * random.uniform(0.5, 1.0))
                return Outcome(status, body, "refused", code)
            if code in expected:
                response.request_meta["request_type"] = "EXPECTED"
                response.request_meta["name"] = f"{name} [{code}]"
                response.success()
                return Outcome(status, body, "expected", code)
            if status == 0:
                response.failure(f"no answer: {response.error!r}"[:200])
            else:
                response.failure(f"{status} {code or (response.text or '')[:80]}")
            return Outcome(status, body, "failed", code)


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0  # an HTTP date: just wait a little


# -- credentials of the seeded population --------------------------------------------------


def citizen_headers(index: int) -> dict[str, str]:
    token = population.citizen_session_token(manifest().secret, index)
    return {"Authorization": f"Bearer {token}"}


def merchant_headers(index: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {population.merchant_api_key(manifest().secret, index)}"}


def random_citizen() -> int:
    return random.randrange(manifest().citizens)


def random_enrolled_citizen() -> int:
    m = manifest()
    return random.randrange(m.enrolled if m.enrolled > 0 else m.citizens)


def random_merchant() -> int:
    return random.randrange(manifest().merchants)


# -- checks of 2xx bodies (correctness under load) ----------------------------------------------


def _check_payment(amount: int) -> Any:
    def check(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "no JSON body"
        if body.get("amount") != amount:
            return f"amount {body.get('amount')} != {amount}"
        if body.get("subsidy_amount", -1) + body.get("citizen_amount", -1) != amount:
            return "subsidy + citizen share != amount"
        if not 0 <= body["subsidy_amount"] <= amount:
            return "subsidy out of range"
        return None

    return check


def _check_status(wanted: str) -> Any:
    def check(body: Any) -> str | None:
        status = body.get("status") if isinstance(body, dict) else None
        return None if status == wanted else f"status {status!r}, expected {wanted!r}"

    return check


# -- users ------------------------------------------------------------------------------------


class CitizenPayer(_Api):
    """A lunch purchase: the shop's dynamic QR, the citizen's quote and payment."""

    weight = 6
    wait_time = between(0.0, THINK_SECONDS)

    def create_request(self, merchant: int, amount: int) -> Outcome:
        return self.call(
            "POST", "/v1/merchant/payment-requests", "/v1/merchant/payment-requests",
            json={"amount": amount, "reference": f"lunch-{secrets.token_hex(6)}",
                  "item_category": "food"},
            headers={**merchant_headers(merchant), "Idempotency-Key": _idempotency_key()},
            ok=(201,),
        )

    @task
    def pay_a_qr(self) -> None:
        merchant = random_merchant()
        amount = random.randint(2_000, 30_000)  # 20-300 THB: a street-food lunch
        created = self.create_request(merchant, amount)
        if not created.ok:
            return
        request_id = created.body["payment_request_id"]
        _recent.append((merchant, request_id))
        status_path = f"/v1/merchant/payment-requests/{request_id}"
        status_name = "/v1/merchant/payment-requests/{payment_request_id}"
        self.call("GET", status_path, status_name, headers=merchant_headers(merchant),
                  check=_check_status("open"))
        citizen = random_enrolled_citizen()
        headers = citizen_headers(citizen)
        qr = created.body["qr_payload"]
        self.call("POST", "/v1/citizen/payments/quote", "/v1/citizen/payments/quote",
                  json={"qr_payload": qr}, headers=headers)
        pin = population.citizen_pin(manifest().secret, citizen)
        key = _idempotency_key()
        paid = None
        for attempt in range(2):  # a refused or lost attempt is retried once, same key
            paid = self.call(
                "POST", "/v1/citizen/payments",
                "/v1/citizen/payments" if attempt == 0 else "/v1/citizen/payments (retry)",
                json={"qr_payload": qr, "pin": pin},
                headers={**headers, "Idempotency-Key": key},
                ok=(201,), expected=PAY_EXPECTED, check=_check_payment(amount),
            )
            if paid.kind != "refused" and paid.status != 0:
                break
        if paid is not None and paid.ok:
            self.call("GET", status_path, status_name, headers=merchant_headers(merchant),
                      check=_check_status("paid"))


class WalletReader(_Api):
    """A citizen looking at the wallet: balance, caps left, and the movements."""

    weight = 3
    wait_time = between(0.0, THINK_SECONDS)

    @task(3)
    def wallet(self) -> None:
        self.call("GET", "/v1/citizen/wallet", "/v1/citizen/wallet",
                  headers=citizen_headers(random_citizen()))

    @task(2)
    def transactions(self) -> None:
        self.call("GET", "/v1/citizen/transactions?limit=20", "/v1/citizen/transactions",
                  headers=citizen_headers(random_citizen()))


class MerchantPoller(_Api):
    """A point-of-sale system polling the status of a payment request it made."""

    weight = 1
    wait_time = between(0.0, THINK_SECONDS)

    @task
    def poll(self) -> None:
        if not _recent:
            merchant = random_merchant()
            created = self.call(
                "POST", "/v1/merchant/payment-requests", "/v1/merchant/payment-requests",
                json={"amount": random.randint(2_000, 30_000),
                      "reference": f"poll-{secrets.token_hex(6)}"},
                headers={**merchant_headers(merchant), "Idempotency-Key": _idempotency_key()},
                ok=(201,),
            )
            if not created.ok:
                return
            _recent.append((merchant, created.body["payment_request_id"]))
        merchant, request_id = random.choice(_recent)
        self.call("GET", f"/v1/merchant/payment-requests/{request_id}",
                  "/v1/merchant/payment-requests/{payment_request_id}",
                  headers=merchant_headers(merchant))


def _totp_code(secret: str, step_offset: int) -> str:
    step = int(time.time()) // TOTP_INTERVAL_SECONDS + step_offset
    return pyotp.TOTP(secret, digits=6, interval=TOTP_INTERVAL_SECONDS).generate_otp(step)


class RushCitizen(_Api):
    """A new citizen at a program's opening minute: register, confirm, sign in, enrol."""

    weight = 1
    wait_time = constant(0)

    def rush_index(self) -> int:
        worker = getattr(self.environment.runner, "worker_index", 0)
        if worker is None or worker < 0:
            worker = os.getpid() % 1000  # not yet told by the master: still disjoint per process
        return RUSH_INDEX_BASE + worker * RUSH_INDEX_STRIDE + next(_rush_numbers)

    @task
    def rush(self) -> None:
        m = manifest()
        program = os.environ.get(RUSH_PROGRAM_ENV) or m.program_id
        index = self.rush_index()
        national_id = population.national_id(index)
        pin = population.citizen_pin(m.secret, index)
        registered = self.call(
            "POST", "/v1/citizen/registrations", "/v1/citizen/registrations",
            json={
                "national_id": national_id,
                "phone": f"081{random.randrange(10**7):07d}",
                "full_name": "ผู้ทดสอบ โหลด",
                "birth_date": "1985-04-12",
                "province_code": "10",
                "district_code": "1001",
                "pin": pin,
            },
            ok=(201,),
        )
        if not registered.ok:
            return
        citizen_id = registered.body["citizen_id"]
        uri = registered.body["totp_provisioning_uri"]
        secret = parse_qs(urlsplit(uri).query)["secret"][0]
        # The current step's code confirms and the next step's signs in (a code, and any
        # earlier one, is accepted once; the server takes a step either side of its own). The
        # previous step's code failed at a step boundary: two steps old on the server's clock.
        confirmed = self.call(
            "POST", "/v1/citizen/totp/confirm", "/v1/citizen/totp/confirm",
            json={"citizen_id": citizen_id, "code": _totp_code(secret, 0)},
        )
        if not confirmed.ok:
            return
        session = self.call(
            "POST", "/v1/citizen/sessions", "/v1/citizen/sessions",
            json={"national_id": national_id, "pin": pin, "totp_code": _totp_code(secret, 1)},
            ok=(201,),
        )
        if not session.ok:
            return
        headers = {"Authorization": f"Bearer {session.body['access_token']}"}
        self.call(
            "POST", f"/v1/citizen/programs/{program}/enrolment",
            "/v1/citizen/programs/{program_id}/enrolment",
            headers=headers, ok=(200, 201), expected=ENROL_EXPECTED,
        )


class PingUser(_Api):
    """R_ping: the HTTP ceiling of the stack with this load generator."""

    weight = 1
    wait_time = constant(0)

    @task
    def ping(self) -> None:
        self.call("GET", "/healthz", "/healthz")
