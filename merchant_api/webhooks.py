"""Webhooks: a merchant's endpoint, the outbox of events, and the worker that delivers them.

Nouns: a **webhook endpoint** (one per merchant: a URL and a Standard Webhooks secret
``whsec_...``), an **event** (``payment.succeeded``, ``refund.succeeded``,
``settlement.paid``: ``{type, id, created_at, data}``, id ``evt_...``), an **attempt** (one
POST of an event, its status code or error and its duration).

Invariants and how they hold:

- **An event exists exactly when its effect does.** It is written in the effect's own
  transaction: the payment's and the refund's through a ledger ``Effect`` (``EVENT_WRITER``,
  whose rows the engine writes in the batch's transaction), a settlement's by
  ``enqueue_events(conn, events)``. Its id is derived from its subject (``event_id``), so
  writing it twice writes it once. A merchant with no endpoint gets its events as
  ``skipped``: a later endpoint does not receive the past.
- **In order per merchant.** The endpoint row is the merchant's delivery lease
  (``locked_until``, ``lease_id``): a worker claims due endpoints with ``FOR UPDATE SKIP
  LOCKED`` (several processes share the work, none waits on another, no merchant is claimed
  twice) and then delivers that merchant's oldest pending event, and the next only after it
  was delivered (2xx) or given up. Events are ordered by a sequence taken when they are
  written, so an event caused by another (a refund of a payment) always comes after it. (Two
  events written at the same moment by concurrent transactions have no order of their own:
  whichever commits first may be sent first.)
- **Nothing is lost.** Every state lives in PostgreSQL. An attempt is recorded after the HTTP
  call, in one transaction with the event's and the endpoint's new state. A process that dies
  mid-delivery records nothing and keeps its lease until ``locked_until``: then another worker
  claims the merchant and sends the event again. Delivery is therefore *at least once*; the
  ``webhook-id`` header (the event id) is the same on every attempt, for receivers to dedupe.
- **Retries for at least a day.** A failed attempt (anything but 2xx, a timeout, a refused
  address) is retried after an exponential backoff with full jitter
  (``uniform(0, min(max_delay, base * 2^(n-1)))``, ``retry_delay_seconds``); the event is given
  up only by a failure at least ``webhook_retry_window_seconds`` after its first attempt.
  ``webhook_disable_after_failed_events`` events given up in a row disable the endpoint: its
  later events are held (pending) until the merchant PUTs the endpoint again, which re-enables
  it, makes the held events due at once and gives them a fresh retry window.
- **Never to a private address** (unless ``webhook_allow_private_addresses``): the PUT refuses a
  literal private, loopback, link-local, multicast, reserved or unspecified address and
  ``localhost`` names; at delivery the host name is resolved and refused if ANY address is not
  public, and the connection goes to the checked address (the TLS name and Host header stay the
  merchant's), so a DNS answer cannot change between the check and the connection. No
  redirects are followed (3xx is a failure), no proxy from the environment, short timeouts,
  no keep-alive (a connection checked for one merchant's name is never reused for another's).
- **The secret** is shown once per PUT (a PUT rotates it), stored encrypted with the personal
  data cipher (``gwallet.pii``, bound to the merchant's row), and never logged.

Imports: ``ledger_core``, ``gwallet`` helpers (ids, pii, problems, request bodies, settings),
``merchant_api.keys`` for the merchant guard. ``wallet.paying_http`` and
``merchant_api.refunds`` import this module to attach the events to their ledger batches.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import random
import re
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
from litestar import Controller, Litestar, Request, get, put
from litestar.datastructures import State
from litestar.params import JSONBody
from standardwebhooks import Webhook

from gwallet.ids import format_id
from gwallet.pii import DecryptionError, PiiCipher
from gwallet.problems import (
    DomainError,
    FieldError,
    NotFound,
    RateLimited,
    Unauthenticated,
    database_gone,
    problem_responses,
)
from gwallet.request import RequestBody
from gwallet.settings import Settings
from ledger_core.sql import load_queries
from merchant_api import keys

Q = load_queries(Path(__file__).with_name("queries_webhooks.sql"))

_log = logging.getLogger("gwallet.merchant_api.webhooks")

EVENT_TYPES = frozenset({"payment.succeeded", "refund.succeeded", "settlement.paid"})
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
SECRET_FIELD = "webhook_secret"  # the cipher's associated data: bound to row and field
URL_MAX_LENGTH = 2048
EVENTS_PER_LEASE = 100  # a merchant's events delivered in a row before others get a turn
_ERROR_MAX_LENGTH = 300
_STOP_TIMEOUT_SECONDS = 10.0
_USER_AGENT = "G-Wallet-Webhooks/1"
_EVENT_NAMESPACE = uuid.UUID("0b8f6f57-3a52-4d4e-9c1e-52a8f0e1d7c3")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_LOCAL_NAMES = ("localhost", "localhost.localdomain")


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to write to the outbox (``enqueue_events``, or a ledger ``Effect``'s row)."""

    id: uuid.UUID
    merchant_id: uuid.UUID
    type: str
    data: dict[str, Any]  # JSON-ready, with public ids (gwallet.ids.format_id)
    created_at: datetime

    def payload(self) -> str:
        """The body delivered: ``{type, id, created_at, data}``."""
        return msgspec.json.encode({
            "type": self.type,
            "id": format_id("evt", self.id),
            "created_at": self.created_at.isoformat(),
            "data": self.data,
        }).decode()


def event_id(type_: str, subject_id: uuid.UUID) -> uuid.UUID:
    """The id of the event ``type_`` about ``subject_id`` (a payment, refund, settlement...).

    Derived, so an event written twice (a retried settlement run) is written once; not
    guessable, since the subject's id is random."""
    assert type_ in EVENT_TYPES, type_
    return uuid.uuid5(_EVENT_NAMESPACE, f"{type_}:{subject_id}")


def new_event(
    type_: str, *, merchant_id: uuid.UUID, subject_id: uuid.UUID, data: dict[str, Any],
    created_at: datetime,
) -> NewEvent:
    """An event about ``subject_id`` (for ``settlement.paid``: the settlement's id)."""
    return NewEvent(event_id(type_, subject_id), merchant_id, type_, data, created_at)


def payment_succeeded(
    *, payment_id: uuid.UUID, payment_request_id: uuid.UUID, merchant_id: uuid.UUID,
    program_id: str | None, amount: int, subsidy_amount: int, created_at: datetime,
) -> NewEvent:
    return new_event("payment.succeeded", merchant_id=merchant_id, subject_id=payment_id,
                     created_at=created_at, data={
                         "payment_id": format_id("pay", payment_id),
                         "payment_request_id": format_id("preq", payment_request_id),
                         "merchant_id": format_id("mer", merchant_id),
                         "program_id": program_id,
                         "status": "succeeded",
                         "amount": amount,
                         "subsidy_amount": subsidy_amount,
                         "citizen_amount": amount - subsidy_amount,
                         "currency": "THB",
                         "created_at": created_at.isoformat(),
                     })


def refund_succeeded(
    *, refund_id: uuid.UUID, payment_id: uuid.UUID, merchant_id: uuid.UUID, amount: int,
    subsidy_amount: int, created_at: datetime,
) -> NewEvent:
    return new_event("refund.succeeded", merchant_id=merchant_id, subject_id=refund_id,
                     created_at=created_at, data={
                         "refund_id": format_id("ref", refund_id),
                         "payment_id": format_id("pay", payment_id),
                         "merchant_id": format_id("mer", merchant_id),
                         "status": "succeeded",
                         "amount": amount,
                         "subsidy_amount": subsidy_amount,
                         "citizen_amount": amount - subsidy_amount,
                         "currency": "THB",
                         "created_at": created_at.isoformat(),
                     })


async def enqueue_events(conn: asyncpg.Connection, events: Sequence[NewEvent]) -> None:
    """Write ``events`` to the outbox in the caller's transaction (the effect's own)."""
    assert conn.is_in_transaction(), "an event is written with the effect it announces"
    if not events:
        return
    await conn.execute(
        Q["insert_events"],
        [e.id for e in events], [e.merchant_id for e in events], [e.type for e in events],
        [e.payload() for e in events], [e.created_at for e in events],
    )


class _EventWriter:
    """A ledger ``Effect`` writer: the batch's events in the batch's transaction."""

    async def write(self, conn: asyncpg.Connection, rows: list[NewEvent]) -> None:
        await enqueue_events(conn, rows)


EVENT_WRITER = _EventWriter()


# --- URLs and addresses (pure) ----------------------------------------------------------------


class InvalidWebhookUrl(DomainError):
    """A webhook endpoint is an absolute https URL (http only where the service allows it)
    with a host name or address, no user name or password, at most 2048 characters."""

    status = 422
    code = "invalid_webhook_url"
    title = "Invalid webhook URL"


class WebhookUrlNotAllowed(DomainError):
    """Webhooks are never delivered to private, loopback, link-local, multicast or reserved
    addresses (nor to localhost)."""

    status = 422
    code = "webhook_url_not_allowed"
    title = "Webhook URL not allowed"


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address on the public internet (not private, loopback, link-local,
    multicast, reserved, unspecified, shared, documentation...)."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_public_address(mapped)
        if address.teredo is not None:
            return is_public_address(address.teredo[1])
    return address.is_global and not (
        address.is_multicast or address.is_private or address.is_loopback
        or address.is_link_local or address.is_reserved or address.is_unspecified
    )


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, *, allow_http: bool, allow_private: bool) -> str:
    """The URL to store, or ``InvalidWebhookUrl`` / ``WebhookUrlNotAllowed`` naming ``url``."""

    def invalid(message: str) -> InvalidWebhookUrl:
        return InvalidWebhookUrl(f"url: {message}", errors=[FieldError("url", message)])

    if len(url) > URL_MAX_LENGTH:
        raise invalid(f"at most {URL_MAX_LENGTH} characters")
    if url != url.strip() or any(ord(c) < 0x21 or ord(c) > 0x7e for c in url):
        raise invalid("printable ASCII without spaces (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise invalid("not a URL") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise invalid("the scheme must be " + " or ".join(schemes))
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise invalid("a host is required")
    if parts.username is not None or parts.password is not None:
        raise invalid("no user name or password in the URL (authenticate by the signature)")
    if parts.fragment:
        raise invalid("no fragment (#...)")
    if port == 0:
        raise invalid("port 0")
    address = _literal_address(host)
    if address is None:
        labels = host.split(".")
        if not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise invalid("the host is not a valid name (use the IDNA/punycode form)")
        if labels[-1].isdigit():
            raise invalid("the host is not a valid name or address")
    if not allow_private:
        local_name = host in _LOCAL_NAMES or host.endswith(".localhost")
        if local_name or (address is not None and not is_public_address(address)):
            message = "a private, loopback, link-local, multicast or reserved address"
            raise WebhookUrlNotAllowed(f"url: {message}", errors=[FieldError("url", message)])
    return url


class AddressNotAllowed(Exception):
    """At delivery: the endpoint's host resolved to an address that is not public."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt connects: the checked address, and the merchant's own host name for
    the Host header and TLS (SNI and certificate check)."""

    url: str
    host_header: str
    tls_name: str | None


async def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Resolve the endpoint's host now; refuse if any address is not public (unless allowed)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        if not allow_private and (host in _LOCAL_NAMES or host.endswith(".localhost")):
            raise AddressNotAllowed(f"{host} is local")
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
        if not addresses:
            raise OSError(f"{host} has no address")
    if not allow_private:
        refused = [str(a) for a in addresses if not is_public_address(a)]
        if refused:
            raise AddressNotAllowed(f"{host} resolves to {', '.join(refused[:3])}")
    chosen = addresses[0]
    netloc = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    if parts.port is not None:
        netloc += f":{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Target(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        host_header=host_header,
        tls_name=host if parts.scheme == "https" and literal is None else None,
    )


# --- retries (pure) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 5.0
    max_delay_seconds: float = 3600.0
    window_seconds: float = 86400.0


def retry_delay_seconds(attempt: int, policy: RetryPolicy, draw: Callable[[], float]) -> float:
    """Full jitter: ``draw() * min(max_delay, base * 2^(attempt-1))`` with ``draw()`` in [0, 1)."""
    assert attempt >= 1
    ceiling = min(policy.max_delay_seconds, policy.base_seconds * 2.0 ** min(attempt - 1, 60))
    return draw() * ceiling


@dataclass(frozen=True, slots=True)
class AfterFailure:
    give_up: bool
    next_attempt_at: datetime


def after_failure(
    *, attempt: int, first_attempt_at: datetime, now: datetime, policy: RetryPolicy,
    draw: Callable[[], float],
) -> AfterFailure:
    """An event whose attempt number ``attempt`` failed: retry later, or give it up if it has
    been tried for the whole window (so it is tried for at least the window)."""
    if (now - first_attempt_at).total_seconds() >= policy.window_seconds:
        return AfterFailure(give_up=True, next_attempt_at=now)
    delay = retry_delay_seconds(attempt, policy, draw)
    return AfterFailure(give_up=False, next_attempt_at=now + timedelta(seconds=delay))


# --- configuration --------------------------------------------------------------------------


class WebhookSettingsError(ValueError):
    """A webhooks setting is out of its range."""


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    delivery_concurrency: int = 8
    poll_interval_seconds: float = 1.0
    timeout_seconds: float = 10.0
    lease_seconds: float = 60.0
    retry: RetryPolicy = RetryPolicy()
    disable_after_failed_events: int = 1
    allow_http: bool = False
    allow_private_addresses: bool = False

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("webhook_delivery_concurrency", self.delivery_concurrency, 0, 256),
            ("webhook_poll_interval_seconds", self.poll_interval_seconds, 0.01, 60.0),
            ("webhook_timeout_seconds", self.timeout_seconds, 0.1, 60.0),
            ("webhook_lease_seconds", self.lease_seconds, 0.5, 3600.0),
            ("webhook_retry_base_seconds", self.retry.base_seconds, 0.001, 3600.0),
            ("webhook_retry_max_delay_seconds", self.retry.max_delay_seconds, 0.001, 86400.0),
            ("webhook_retry_window_seconds", self.retry.window_seconds, 0.1, 30 * 86400.0),
            ("webhook_disable_after_failed_events", self.disable_after_failed_events, 1, 1000),
        ):
            if not low <= value <= high:
                raise WebhookSettingsError(f"GWALLET_{name.upper()} must be within {low}..{high}")
        if self.retry.max_delay_seconds < self.retry.base_seconds:
            raise WebhookSettingsError(
                "GWALLET_WEBHOOK_RETRY_MAX_DELAY_SECONDS must be at least the base delay")
        # A lease outlives the slowest attempt (name resolution + request), so a live worker
        # never loses its merchant to another one mid-delivery.
        if self.lease_seconds < 2 * self.timeout_seconds:
            raise WebhookSettingsError(
                "GWALLET_WEBHOOK_LEASE_SECONDS must be at least twice the timeout")

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig:
        return cls(
            delivery_concurrency=settings.webhook_delivery_concurrency,
            poll_interval_seconds=settings.webhook_poll_interval_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
            lease_seconds=settings.webhook_lease_seconds,
            retry=RetryPolicy(
                base_seconds=settings.webhook_retry_base_seconds,
                max_delay_seconds=settings.webhook_retry_max_delay_seconds,
                window_seconds=settings.webhook_retry_window_seconds,
            ),
            disable_after_failed_events=settings.webhook_disable_after_failed_events,
            allow_http=settings.webhook_allow_http,
            allow_private_addresses=settings.webhook_allow_private_addresses,
        )


# --- one attempt ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, event_id_text: str, timestamp: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": event_id_text,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id_text, timestamp, body),
    }


def new_client(config: WebhookConfig) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(config.timeout_seconds),
        follow_redirects=False,
        trust_env=False,  # no proxy or certificates from the environment
        limits=httpx.Limits(
            max_connections=max(1, config.delivery_concurrency), max_keepalive_connections=0),
        headers={"user-agent": _USER_AGENT},
    )


async def attempt_delivery(
    client: httpx.AsyncClient, config: WebhookConfig, *, url: str, secret: str,
    event_id_text: str, body: str, now: datetime,
) -> Attempt:
    """POST the event once; never raises (but for cancellation): the outcome is the result."""
    started = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(config.timeout_seconds):
            target = await resolve_target(url, allow_private=config.allow_private_addresses)
            headers = {
                "content-type": "application/json",
                "host": target.host_header,
                **signed_headers(secret, event_id_text, now, body),
            }
            extensions = {"sni_hostname": target.tls_name} if target.tls_name else {}
            async with client.stream("POST", target.url, content=body.encode(),
                                     headers=headers, extensions=extensions) as response:
                status_code = response.status_code  # the body is not read: only the status
    except AddressNotAllowed as exc:
        error = f"address not allowed: {exc}"
    except TimeoutError:
        error = "timeout"
    except Exception as exc:  # noqa: BLE001 - any failure is this attempt's outcome, retried
        # (httpx errors, OSError from the resolver, a malformed stored URL...); recording it
        # keeps a persistent failure on the backoff schedule instead of the lease's.
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    duration_ms = int((time.monotonic() - started) * 1000)
    if error is not None:
        error = error[:_ERROR_MAX_LENGTH]
    return Attempt(now, duration_ms, status_code, error)


# --- the delivery worker --------------------------------------------------------------------


_OUTAGE_LOG_SECONDS = 10.0  # one "database unavailable" warning per this while down


class WebhookWorker:
    """Delivers the outbox: an asyncio task per process, at most ``delivery_concurrency``
    merchants at once, each merchant's events one by one in order.

    ``stop()`` is the clean shutdown: it cancels the deliveries in flight and releases their
    leases so that another process takes them at once. Cancelling ``task`` instead is what a
    crash does: the leases run out after ``lease_seconds`` and another worker resends.
    """

    def __init__(
        self, pool: asyncpg.Pool, cipher: PiiCipher, config: WebhookConfig, *,
        clock: Callable[[], datetime] = _utc_now, draw: Callable[[], float] = random.random,
    ) -> None:
        assert config.delivery_concurrency >= 1, "a worker delivers at least one at a time"
        self._pool = pool
        self._cipher = cipher
        self._config = config
        self._clock = clock
        self._draw = draw
        self._client: httpx.AsyncClient | None = None
        self._active: dict[uuid.UUID, tuple[uuid.UUID, asyncio.Task[None]]] = {}
        self._wakeup = asyncio.Event()
        self._outage_logged_at = float("-inf")
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        assert self.task is None, "worker already started"
        self._client = new_client(self._config)
        self.task = asyncio.create_task(self._run(), name="webhook-delivery")

    async def stop(self) -> None:
        leases = [lease for lease, _ in self._active.values()]
        if self.task is not None:
            self.task.cancel()
            done, _ = await asyncio.wait([self.task], timeout=_STOP_TIMEOUT_SECONDS)
            if not done:  # a bug, not a reason to hang the shutdown
                _log.error("the webhook worker did not stop in time")
            self.task = None
        if leases:
            try:
                await self._pool.execute(Q["release_leases"], leases)
            except Exception:  # noqa: BLE001 - the leases then simply run out
                _log.warning("could not release webhook leases at shutdown", exc_info=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        try:
            while True:
                self._wakeup.clear()
                free = self._config.delivery_concurrency - len(self._active)
                claimed = 0
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                    except Exception as exc:  # noqa: BLE001 - the loop must survive a bad round
                        self._log_claim_failure(exc)
                # All claimed: there may be more, so poll again as soon as a merchant is done
                # (or at once if slots are left); otherwise at the interval.
                if claimed < free or free <= 0:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation that arrives as the event is set, and stop() then hangs.
                    try:
                        async with asyncio.timeout(self._config.poll_interval_seconds):
                            await self._wakeup.wait()
                    except TimeoutError:
                        pass
        finally:
            tasks = [task for _, task in self._active.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _log_claim_failure(self, exc: Exception) -> None:
        """A failed round is logged with its traceback, except while PostgreSQL is down: then
        one warning without it per ``_OUTAGE_LOG_SECONDS`` (the loop polls every few tens of
        milliseconds, and an outage is not a defect of this code)."""
        if not database_gone(exc):
            _log.exception("claiming webhook deliveries failed")
            return
        now = time.monotonic()
        if now - self._outage_logged_at >= _OUTAGE_LOG_SECONDS:
            self._outage_logged_at = now
            _log.warning("webhook deliveries wait: database unavailable (%s)",
                         type(exc).__name__)

    async def _claim(self, limit: int) -> int:
        now = self._clock()
        lease_id = uuid.uuid4()
        rows = await self._pool.fetch(
            Q["claim_endpoints"], now, now + timedelta(seconds=self._config.lease_seconds),
            lease_id, limit)
        for row in rows:
            merchant_id = row["merchant_id"]
            if merchant_id in self._active:
                # Our own lease ran out while we still deliver (a stalled database): keep
                # one delivery per merchant, give the new lease back.
                await self._pool.execute(Q["release_lease"], merchant_id, lease_id)
                continue
            task = asyncio.create_task(self._serve(merchant_id, lease_id))
            self._active[merchant_id] = (lease_id, task)
            task.add_done_callback(lambda _, m=merchant_id: self._done(m))
        return len(rows)

    def _done(self, merchant_id: uuid.UUID) -> None:
        self._active.pop(merchant_id, None)
        self._wakeup.set()

    async def _serve(self, merchant_id: uuid.UUID, lease_id: uuid.UUID) -> None:
        """Deliver the merchant's due events in order while holding its lease."""
        holding = True
        try:
            for _ in range(EVENTS_PER_LEASE):
                row = await self._pool.fetchrow(Q["next_event"], merchant_id, lease_id)
                if row is None or row["next_attempt_at"] > self._clock():
                    break
                attempt = await self._attempt(merchant_id, row)
                holding = await self._record(merchant_id, lease_id, row, attempt)
                if not holding or not attempt.delivered:
                    return
        except asyncio.CancelledError:
            holding = False  # a crash-like stop: the lease runs out by itself
            raise
        except Exception:  # noqa: BLE001 - the lease runs out; another round retries
            holding = False
            _log.exception("webhook delivery failed", extra={
                "merchant_id": format_id("mer", merchant_id)})
        finally:
            if holding:
                try:
                    await self._pool.execute(Q["release_lease"], merchant_id, lease_id)
                except Exception:  # noqa: BLE001 - the lease then runs out by itself
                    _log.warning("could not release a webhook lease", exc_info=True)

    async def _attempt(self, merchant_id: uuid.UUID, row: asyncpg.Record) -> Attempt:
        now = self._clock()
        try:
            secret = self._cipher.decrypt(row["secret_enc"], row_id=merchant_id, field=SECRET_FIELD)
        except DecryptionError:
            _log.error("a webhook secret cannot be decrypted (its key is no longer configured)",
                       extra={"merchant_id": format_id("mer", merchant_id)})
            return Attempt(now, 0, None, "the endpoint's secret cannot be decrypted")
        assert self._client is not None
        return await attempt_delivery(
            self._client, self._config, url=row["url"], secret=secret,
            event_id_text=format_id("evt", row["id"]), body=row["body"], now=now)

    async def _record(
        self, merchant_id: uuid.UUID, lease_id: uuid.UUID, row: asyncpg.Record, attempt: Attempt
    ) -> bool:
        """Record the attempt and its consequences in one transaction; True while the lease
        is still ours."""
        now = self._clock()
        number = row["attempts"] + 1
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                Q["insert_attempt"], row["id"], merchant_id, number, row["url"],
                attempt.started_at, attempt.duration_ms, attempt.status_code, attempt.error,
                attempt.delivered)
            if attempt.delivered:
                held = await conn.fetchval(
                    Q["endpoint_delivered"], merchant_id, lease_id,
                    now + timedelta(seconds=self._config.lease_seconds))
                await conn.execute(Q["event_delivered"], row["id"], now)
                return held is not None
            decision = after_failure(
                attempt=number, first_attempt_at=row["first_attempt_at"] or now,
                now=now, policy=self._config.retry, draw=self._draw)
            enabled = await conn.fetchval(
                Q["endpoint_failed"], merchant_id, lease_id, decision.give_up,
                self._config.disable_after_failed_events, now)
            if enabled is None:
                return False  # the lease was lost: its new holder keeps the books
            await conn.execute(
                Q["event_failed"], row["id"], now, decision.next_attempt_at, decision.give_up)
        fields = {"merchant_id": format_id("mer", merchant_id),
                  "event_id": format_id("evt", row["id"]), "attempt": number,
                  "status_code": attempt.status_code, "error": attempt.error}
        if decision.give_up:
            _log.warning("webhook event given up", extra=fields)
        if not enabled:
            _log.warning("webhook endpoint disabled after repeated failures", extra=fields)
        return False  # the failure released the lease


# --- the endpoint service -------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class EndpointWithSecret(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    secret: str  # shown in this response only; a PUT makes a new one
    enabled: bool


class EndpointView(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    enabled: bool
    status: str  # enabled | disabled
    failure_count: int  # attempts failed in a row since the last delivery
    pending_events: int
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime


async def put_endpoint(
    pool: asyncpg.Pool, cipher: PiiCipher, merchant_id: uuid.UUID, url: str, now: datetime
) -> EndpointWithSecret:
    """Register, move or re-enable the merchant's endpoint, with a new secret."""
    secret = new_secret()
    sealed = cipher.encrypt(secret, row_id=merchant_id, field=SECRET_FIELD)
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchrow(Q["put_endpoint"], merchant_id, url, sealed, now)
        await conn.execute(Q["restart_pending_events"], merchant_id, now)
    _log.info("webhook endpoint set", extra={"merchant_id": format_id("mer", merchant_id)})
    return EndpointWithSecret(url=url, secret=secret, enabled=True)


async def get_endpoint(pool: asyncpg.Pool, merchant_id: uuid.UUID) -> EndpointView:
    row = await pool.fetchrow(Q["endpoint"], merchant_id)
    if row is None:
        raise NotFound("no webhook endpoint is set: PUT /v1/merchant/webhook-endpoint")
    return EndpointView(
        url=row["url"], enabled=row["enabled"],
        status="enabled" if row["enabled"] else "disabled",
        failure_count=row["failure_count"], pending_events=row["pending_events"],
        disabled_at=row["disabled_at"], created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookContext:
    config: WebhookConfig
    cipher: PiiCipher
    worker: WebhookWorker | None


class WebhookEndpointIn(RequestBody):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=URL_MAX_LENGTH)]


class WebhookEndpointController(Controller):
    path = "/v1/merchant/webhook-endpoint"
    tags = ["merchants: webhooks"]
    guards = [keys.merchant_guard]

    @put("/", status_code=200, responses=problem_responses(
        Unauthenticated, RateLimited, InvalidWebhookUrl, WebhookUrlNotAllowed))
    async def put_endpoint(
        self, data: JSONBody[WebhookEndpointIn], request: Request[Any, Any, Any], state: State
    ) -> EndpointWithSecret:
        """Set the URL that receives the merchant's events (``payment.succeeded``,
        ``refund.succeeded``, ``settlement.paid``), signed per Standard Webhooks with the
        ``secret`` of this response (``whsec_...``, shown only here: each PUT makes a new one
        and re-enables a disabled endpoint). https only; never a private address. Events are
        retried with backoff for at least a day, in order per merchant."""
        context: WebhookContext = state.webhooks
        url = check_url(data.url, allow_http=context.config.allow_http,
                        allow_private=context.config.allow_private_addresses)
        return await put_endpoint(state.pool, context.cipher,
                                  keys.principal_of(request).merchant_id, url,
                                  state.merchants.clock())

    @get("/", responses=problem_responses(Unauthenticated, RateLimited, NotFound))
    async def get_endpoint(self, request: Request[Any, Any, Any], state: State) -> EndpointView:
        """The merchant's endpoint: URL, enabled or disabled (after repeated failures; a PUT
        re-enables it), failed attempts in a row, events waiting. Never the secret."""
        return await get_endpoint(state.pool, keys.principal_of(request).merchant_id)


def webhook_lifespan(settings: Settings) -> Callable[[Litestar], Any]:
    """``app.state.webhooks``, and the delivery worker while the app runs (unless
    ``webhook_delivery_concurrency`` is 0). Comes after the wallet's lifespan (its cipher)."""
    config = WebhookConfig.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        cipher = app.state.wallet.keys.pii
        worker = None
        if config.delivery_concurrency > 0:
            worker = WebhookWorker(app.state.pool, cipher, config)
            await worker.start()
        app.state.webhooks = WebhookContext(config=config, cipher=cipher, worker=worker)
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()

    return lifespan
