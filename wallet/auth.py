"""Citizens' authentication: PINs, TOTP, lockout, sessions and the request guard.

- **PIN** (docs/SECURITY.md): ``HMAC-SHA256(pepper, citizen id || PIN)``. The pepper is a key
  held outside the database (``pin_pepper_keys``), so a stolen database alone cannot be
  brute-forced even though a PIN has only a million values; the citizen's random id is the
  salt, so equal PINs never hash alike. One HMAC costs about a microsecond: the payment hot
  path can afford it. Peppers rotate: the row names its pepper (``pin_key_id``), and a PIN
  checked under an old pepper is re-hashed under the current one.
- **Lockout**: ``auth_lockout_failures`` consecutive failures of the PIN or of a TOTP code
  lock the account for ``auth_lockout_seconds``. Every attempt reads the citizen's row
  ``FOR UPDATE`` and writes its outcome before it commits, so concurrent guesses are
  counted one by one (a burst of parallel guesses cannot slip past the limit) and the
  counter, in PostgreSQL, survives a Redis restart. While locked, nothing is checked.
- **TOTP**: ``gwallet.totp`` (ASCII digits, ±1 step, constant time); the step accepted is
  stored in the same locked update, so a code is accepted once only.
- **Sessions**: a random bearer token ``cst_...`` (256 bits), stored as its sha256, with an
  expiry; at most ``citizen_sessions_max`` active per citizen.
- **Guard**: ``citizen_guard`` (and the ``CITIZEN`` dependency) answers 401 ``unauthenticated`` for a missing,
  malformed, unknown, ended or expired token, and for tokens of other audiences
  (``ost_`` officials, ``sk_live_`` merchants).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.params import HeaderParameter

from gwallet import totp
from gwallet.ids import format_id
from gwallet.pii import Keyring, PiiCipher
from gwallet.problems import DomainError, FieldError, InvalidRequest, NotFound, Unauthenticated
from ledger_core.sql import load_queries

Q = load_queries(Path(__file__).with_name("queries_citizens.sql"))

PIN_LENGTH = 6
_PIN = re.compile(r"[0-9]{6}")
TOKEN_PREFIX = "cst_"
_TOKEN = re.compile(r"cst_[A-Za-z0-9_-]{43}")
_BEARER = "bearer "


class InvalidPin(DomainError):
    """A PIN is exactly 6 ASCII digits."""

    status = 422
    code = "invalid_pin"
    title = "Invalid PIN"


class WeakPin(DomainError):
    """A PIN may not be one digit repeated, a run (123456, 987654), a repeated pattern
    (121212, 123123) or the birth date (DDMMYY or YYMMDD, Christian or Buddhist era)."""

    status = 422
    code = "weak_pin"
    title = "Weak PIN"


class InvalidCredentials(DomainError):
    """The national ID, PIN or authenticator code is wrong (which one is not said)."""

    status = 401
    code = "invalid_credentials"
    title = "Invalid credentials"


class AccountLocked(DomainError):
    """Too many consecutive PIN or authenticator failures: the account is locked for a while."""

    status = 429
    code = "account_locked"
    title = "Account locked"
    retry_after_seconds = 1800


class TotpNotConfirmed(DomainError):
    """The authenticator must be confirmed with a first code before the first session."""

    status = 403
    code = "totp_not_confirmed"
    title = "Authenticator not confirmed"


class TotpAlreadyConfirmed(DomainError):
    """The authenticator of this citizen is already confirmed."""

    status = 409
    code = "totp_already_confirmed"
    title = "Authenticator already confirmed"


# --- PINs -----------------------------------------------------------------------------------


def check_pin_format(pin: str, field: str = "pin") -> str:
    if not _PIN.fullmatch(pin):
        raise InvalidPin(
            f"{field}: expected 6 ASCII digits",
            errors=[FieldError(field=field, message="expected 6 ASCII digits")],
        )
    return pin


def weak_pins(birth_date: date | None = None) -> frozenset[str]:
    """The PINs refused at registration."""
    weak = {d * 6 for d in "0123456789"}
    digits = "0123456789" * 2
    for start in range(10):
        run = digits[start : start + 6]
        weak.update({run, run[::-1]})
    for a in "0123456789":
        for b in "0123456789":
            weak.add((a + b) * 3)
            for c in "0123456789":
                weak.add((a + b + c) * 2)
    if birth_date is not None:
        for year in (birth_date.year, birth_date.year + 543):  # Buddhist era: +543
            yy, mm, dd = f"{year % 100:02d}", f"{birth_date.month:02d}", f"{birth_date.day:02d}"
            weak.update({dd + mm + yy, yy + mm + dd, mm + dd + yy})
    return frozenset(weak)


_WEAK_WITHOUT_BIRTH_DATE = weak_pins()


def check_pin_strength(pin: str, birth_date: date | None) -> str:
    check_pin_format(pin)
    weak = _WEAK_WITHOUT_BIRTH_DATE if birth_date is None else weak_pins(birth_date)
    if pin in weak:
        raise WeakPin(errors=[FieldError(field="pin", message="too easy to guess")])
    return pin


@dataclass(frozen=True, slots=True)
class PinHasher:
    """``HMAC-SHA256(pepper, b"pin" | citizen id | PIN)`` under named, rotating peppers."""

    peppers: Keyring

    def hash(self, citizen_id: uuid.UUID, pin: str) -> tuple[str, bytes]:
        """(pepper id, digest) under the current pepper."""
        return self.peppers.current, self._mac(self.peppers.current_key, citizen_id, pin)

    def matches(self, citizen_id: uuid.UUID, pin: str, key_id: str, stored: bytes) -> bool:
        key = self.peppers.keys.get(key_id)
        if key is None or not _PIN.fullmatch(pin):
            return False
        return hmac.compare_digest(self._mac(key, citizen_id, pin), bytes(stored))

    @staticmethod
    def _mac(key: bytes, citizen_id: uuid.UUID, pin: str) -> bytes:
        return hmac.new(key, b"pin\x1f" + citizen_id.bytes + pin.encode("ascii"), hashlib.sha256).digest()


# --- attempts and lockout -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    failures: int = 10
    lock_seconds: int = 1800


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one attempt presents; None means "not checked in this attempt"."""

    pin: str | None = None
    totp_code: str | None = None
    confirm_totp: bool = False  # the attempt confirms the authenticator (first code)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    ok: bool
    totp_confirmed: bool


async def attempt(
    conn: asyncpg.Connection,
    *,
    citizen_id: uuid.UUID,
    credentials: Credentials,
    pins: PinHasher,
    pii: PiiCipher,
    policy: LockoutPolicy,
    now: datetime,
) -> AttemptResult:
    """Check credentials against the citizen's row, counting the outcome; commit it.

    Raises ``AccountLocked`` while the account is locked (nothing is checked then). Runs its
    own transaction: the count must commit whatever the caller does next, so ``conn`` must
    not be inside a transaction.
    """
    assert not conn.is_in_transaction(), "a failed attempt must commit on its own"
    assert credentials.pin is not None or credentials.totp_code is not None
    async with conn.transaction():
        row = await conn.fetchrow(Q["lock_credentials"], citizen_id)
        if row is None:
            raise InvalidCredentials()
        if row["locked_until"] is not None and row["locked_until"] > now:
            raise _locked(row["locked_until"], now)
        ok = True
        if credentials.pin is not None:
            ok = pins.matches(citizen_id, credentials.pin, row["pin_key_id"], row["pin_hash"])
        step: int | None = None
        if credentials.totp_code is not None:
            secret = pii.decrypt(
                row["totp_secret_encrypted"], row_id=citizen_id, field="totp_secret"
            )
            step = totp.matching_step(secret, credentials.totp_code, now)
            last = row["totp_last_step"]
            fresh = step is not None and (last is None or step > last)
            ok = ok and fresh
        confirmed = row["totp_confirmed_at"] is not None
        if not ok:
            failures = row["failed_attempts"] + 1
            if failures >= policy.failures:
                locked_until = now + timedelta(seconds=policy.lock_seconds)
                await conn.execute(Q["record_failure"], citizen_id, 0, locked_until)
            else:
                await conn.execute(Q["record_failure"], citizen_id, failures, None)
            return AttemptResult(ok=False, totp_confirmed=confirmed)
        rehash = None
        if credentials.pin is not None and row["pin_key_id"] != pins.peppers.current:
            rehash = pins.hash(citizen_id, credentials.pin)
        confirm_now = credentials.confirm_totp and not confirmed
        if row["failed_attempts"] or row["locked_until"] or step is not None or rehash or confirm_now:
            await conn.execute(
                Q["record_success"],
                citizen_id,
                step,
                rehash[0] if rehash else None,
                rehash[1] if rehash else None,
                now if confirm_now else None,
            )
        return AttemptResult(ok=True, totp_confirmed=confirmed or confirm_now)


def _locked(until: datetime, now: datetime) -> AccountLocked:
    seconds = max(1, int((until - now).total_seconds()) + 1)
    return AccountLocked(
        f"the account is locked until {until.isoformat()} after too many failed attempts",
        retry_after_seconds=seconds,
    )


# --- login and confirming the authenticator ---------------------------------------------------


def check_totp_format(code: str, field: str) -> str:
    if not totp.is_wellformed(code):
        raise InvalidRequest(
            f"{field}: expected 6 ASCII digits",
            errors=[FieldError(field=field, message="expected 6 ASCII digits")],
        )
    return code


async def login(
    pool: asyncpg.Pool,
    *,
    national_id_digests: list[bytes],
    pin: str,
    totp_code: str,
    pins: PinHasher,
    pii: PiiCipher,
    policy: LockoutPolicy,
    now: datetime,
    ttl_seconds: int,
    sessions_max: int,
) -> NewSession:
    """PIN and TOTP code of the citizen with this national ID -> a new session."""
    check_pin_format(pin)
    check_totp_format(totp_code, "totp_code")
    async with pool.acquire() as conn:
        citizen_id = await conn.fetchval(Q["citizen_by_national_id"], national_id_digests)
        if citizen_id is None:
            raise InvalidCredentials()
        result = await attempt(
            conn,
            citizen_id=citizen_id,
            credentials=Credentials(pin=pin, totp_code=totp_code),
            pins=pins,
            pii=pii,
            policy=policy,
            now=now,
        )
        if not result.ok:
            raise InvalidCredentials()
        if not result.totp_confirmed:
            raise TotpNotConfirmed()
        return await create_session(
            conn, citizen_id, now=now, ttl_seconds=ttl_seconds, sessions_max=sessions_max
        )


async def confirm_totp(
    pool: asyncpg.Pool,
    *,
    citizen_id: uuid.UUID,
    code: str,
    pins: PinHasher,
    pii: PiiCipher,
    policy: LockoutPolicy,
    now: datetime,
) -> None:
    """Activate the authenticator with its first code (counted like any credential)."""
    check_totp_format(code, "code")
    async with pool.acquire() as conn:
        row = await conn.fetchrow(Q["totp_state"], citizen_id)
        if row is None:
            raise NotFound("no citizen has this id")
        if row["totp_confirmed_at"] is not None:
            raise TotpAlreadyConfirmed()
        result = await attempt(
            conn,
            citizen_id=citizen_id,
            credentials=Credentials(totp_code=code, confirm_totp=True),
            pins=pins,
            pii=pii,
            policy=policy,
            now=now,
        )
        if not result.ok:
            raise InvalidCredentials("the authenticator code is wrong or was already used")


# --- sessions -----------------------------------------------------------------------------


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


@dataclass(frozen=True, slots=True)
class NewSession:
    session_id: uuid.UUID
    access_token: str
    expires_at: datetime


async def create_session(
    conn: asyncpg.Connection,
    citizen_id: uuid.UUID,
    *,
    now: datetime,
    ttl_seconds: int,
    sessions_max: int,
) -> NewSession:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    assert _TOKEN.fullmatch(token)
    session_id = uuid.uuid4()
    expires_at = now + timedelta(seconds=ttl_seconds)
    async with conn.transaction():
        await conn.execute(
            Q["insert_session"], session_id, citizen_id, token_hash(token), now, expires_at
        )
        await conn.execute(Q["end_sessions_beyond"], citizen_id, now, sessions_max)
    return NewSession(session_id=session_id, access_token=token, expires_at=expires_at)


@dataclass(frozen=True, slots=True)
class CitizenPrincipal:
    """Who is calling: set by the guard. ``principal_id`` scopes idempotency keys."""

    citizen_id: uuid.UUID
    session_id: uuid.UUID
    wallet_account_id: uuid.UUID

    @property
    def principal_id(self) -> str:
        return format_id("cit", self.citizen_id)


def bearer_token(request: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization")
    if header is None or len(header) > 200 or header[: len(_BEARER)].lower() != _BEARER:
        return None
    token = header[len(_BEARER) :].strip()
    return token if _TOKEN.fullmatch(token) else None


async def authenticate_request(
    request: ASGIConnection[Any, Any, Any, Any], now: datetime
) -> CitizenPrincipal:
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated("a citizen session token is required: Authorization: Bearer cst_...")
    row = await request.app.state.pool.fetchrow(Q["session_by_token"], token_hash(token), now)
    if row is None:
        raise Unauthenticated("the session token is unknown, expired or ended")
    principal = CitizenPrincipal(
        citizen_id=row["citizen_id"],
        session_id=row["id"],
        wallet_account_id=row["wallet_account_id"],
    )
    request.scope["user"] = principal  # type: ignore[typeddict-unknown-key]
    return principal


_AuthorizationHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Authorization",
        required=False,
        description="`Bearer cst_...`: a citizen's session token from POST /v1/citizen/sessions.",
    ),
]


async def citizen_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The guard: authenticates before any dependency is resolved.

    Litestar resolves independent dependencies concurrently, so a dependency that reads the
    principal (the ``IDEMPOTENT`` claim scopes keys by ``scope["user"]``) could run before a
    dependency that sets it. A guard runs first: handlers that take a citizen declare both
    ``guards=[citizen_guard]`` and ``dependencies={"citizen": CITIZEN}``.
    """
    if not isinstance(connection.scope.get("user"), CitizenPrincipal):
        await authenticate_request(connection, connection.app.state.wallet.clock())


async def _citizen(
    request: Request[Any, Any, Any], authorization: _AuthorizationHeader = None
) -> CitizenPrincipal:
    # ``authorization`` is declared so that OpenAPI documents the header; it is read again
    # (with length limits) by ``bearer_token``.
    user = request.scope.get("user")
    if isinstance(user, CitizenPrincipal):
        return user  # authenticated by citizen_guard
    return await authenticate_request(request, request.app.state.wallet.clock())


# The principal for the handler: ``citizen: CitizenPrincipal`` (with ``citizen_guard``).
CITIZEN = Provide(_citizen)
