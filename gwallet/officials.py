"""Finance officials: accounts, roles, login (password + TOTP), sessions and the admin guard.

Nouns: an **official** (username, one role, an argon2id password hash, a TOTP secret), a
**session** (a random bearer token ``ost_...``; only its SHA-256 is stored) and a
**principal** (the official a request acts for, put in the connection scope by the guard,
so idempotency keys are scoped per official).

Roles:
- ``maker``: creates, edits and submits programs; requests funding;
- ``checker``: approves program versions and funding requests it did not make itself;
- ``auditor``: reads only (programs, stats, the audit log, ledger verification);
- ``admin``: manages officials and runs the program lifecycle (activate, pause, ...).

Rules:
- a login needs username, password and a TOTP code, and every failure is the same 401
  ``invalid_credentials`` (which part failed is written to the audit log only);
- ``login_max_failures`` consecutive failures lock the account for ``lockout_minutes``
  (the counter lives in PostgreSQL, updated atomically); a locked account refuses even the
  right credentials, without counting them;
- a TOTP code is accepted once only (login and step-up share the official's last step);
- on admin endpoints: no, malformed, unknown or expired ``ost_`` token -> 401
  ``unauthenticated``; a token of another audience (``cst_...`` citizens, ``sk_live_...``
  merchants) -> 403 ``forbidden``; a role the endpoint does not admit -> 403 ``forbidden``.

Endpoints declare the roles they admit with ``opt={"roles": ...}`` and get
``guards=[official_guard]``; a handler that declares no roles admits nobody (fail closed).
Every action is written to the audit log (``gwallet.audit``) in its own transaction.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gwallet import audit, totp
from gwallet.ids import format_id
from gwallet.problems import DomainError, Forbidden, Unauthenticated
from gwallet.settings import Settings
from ledger_core import new_id
from ledger_core.sql import load_queries

Q = load_queries(Path(__file__).with_name("queries_officials.sql"))

TOKEN_PREFIX = "ost_"
# Tokens of the other audiences: recognised so that they get 403, not 401, here.
FOREIGN_TOKEN_PREFIXES = ("cst_", "sk_live_")
_TOKEN_PATTERN = re.compile(r"ost_[A-Za-z0-9_-]{43}")  # token_urlsafe(32)
USERNAME_PATTERN = r"^[a-z][a-z0-9._-]{2,63}$"
PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 128  # argon2 hashes anything; a bound keeps a login cheap
TOTP_ISSUER = "G-Wallet back office"
SESSION_PURGE_BATCH_ROWS = 5_000

# argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): ~30 ms per hash on
# one core. Stored hashes carry their parameters, so raising these later still verifies old
# hashes (and a login rehashes them, see ``_verify_password``).
PASSWORD_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
# Verified against when the username is unknown, so that answer takes as long as the others.
_DUMMY_HASH = PASSWORD_HASHER.hash(secrets.token_urlsafe(16))


class Role(enum.StrEnum):
    ADMIN = "admin"
    MAKER = "maker"
    CHECKER = "checker"
    AUDITOR = "auditor"


ALL_ROLES = frozenset(Role)
READERS = ALL_ROLES  # every official may read programs and their stats


class OfficialPrincipal(msgspec.Struct, frozen=True, kw_only=True):
    """The official a request acts for (``request.scope["user"]``)."""

    official_id: uuid.UUID
    username: str
    role: Role

    @property
    def principal_id(self) -> str:  # scopes idempotency keys (gwallet.idempotency)
        return format_id("off", self.official_id)


# --- refusals -------------------------------------------------------------------------------


class InvalidCredentials(DomainError):
    """Username, password and TOTP code do not match an official who may log in now."""

    status = 401
    code = "invalid_credentials"
    title = "Invalid credentials"


class UsernameTaken(DomainError):
    """Usernames are unique among officials."""

    status = 409
    code = "username_taken"
    title = "Username taken"


class TotpCodeInvalid(DomainError):
    """This action needs a fresh code of the official's authenticator (each code works once)."""

    status = 403
    code = "totp_code_invalid"
    title = "TOTP code invalid"


AUTH_ERRORS: tuple[type[DomainError], ...] = (Unauthenticated, Forbidden)


# --- passwords and tokens -------------------------------------------------------------------


def generate_password() -> str:
    return secrets.token_urlsafe(18)  # 24 characters, 144 random bits


def check_password_policy(password: str) -> None:
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise ValueError(
            f"a password has {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters"
        )


def hash_password(password: str) -> str:
    return PASSWORD_HASHER.hash(password)


def _verify_password(password_hash: str, password: str) -> bool:
    try:
        return PASSWORD_HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


# --- creating officials ---------------------------------------------------------------------


class OfficialOut(msgspec.Struct, frozen=True, kw_only=True):
    official_id: str
    username: str
    role: Role
    disabled: bool
    created_at: datetime


class NewOfficial(msgspec.Struct, frozen=True, kw_only=True):
    """What the creator sees once: the password (unless they chose it) and the TOTP secret."""

    official: OfficialOut
    password: str | None
    totp_secret: str
    totp_provisioning_uri: str


def official_out(row: asyncpg.Record) -> OfficialOut:
    return OfficialOut(
        official_id=format_id("off", row["id"]),
        username=row["username"],
        role=Role(row["role"]),
        disabled=row["disabled"],
        created_at=row["created_at"],
    )


async def create_official(
    conn: asyncpg.Connection,
    *,
    username: str,
    role: Role,
    password: str | None,
    created_by: OfficialPrincipal | None,
) -> NewOfficial:
    """Create an official in the caller's transaction (with its audit entry).

    ``password`` None: one is generated and returned once. ``created_by`` None: the
    command line.
    """
    assert re.fullmatch(USERNAME_PATTERN, username), "usernames are validated by the caller"
    generated = password is None
    password = generate_password() if password is None else password
    check_password_policy(password)
    password_hash = await asyncio.to_thread(hash_password, password)
    secret = totp.new_secret()
    row = await conn.fetchrow(
        Q["insert_official"],
        new_id(),
        username,
        str(role),
        password_hash,
        secret,
        None if created_by is None else created_by.official_id,
    )
    if row is None:
        raise UsernameTaken()
    official = official_out(row)
    await audit.append(
        conn,
        actor_id=None if created_by is None else created_by.official_id,
        actor=audit.CLI_ACTOR if created_by is None else created_by.username,
        action="official.create",
        target_type="official",
        target_id=official.official_id,
        after={"username": username, "role": str(role)},
    )
    return NewOfficial(
        official=official,
        password=password if generated else None,
        totp_secret=secret,
        totp_provisioning_uri=totp.provisioning_uri(secret, username, issuer=TOTP_ISSUER),
    )


# --- login ----------------------------------------------------------------------------------


class Session(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    token_type: str
    expires_at: datetime
    official_id: str
    role: Role


async def login(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    username: str,
    password: str,
    totp_code: str,
    now: datetime | None = None,
) -> Session:
    """A session for username + password + TOTP code, or ``InvalidCredentials``.

    Every outcome, success or failure, is an audit entry; failures are counted and the
    ``official_login_max_failures``-th in a row locks the account.
    """
    now = now or datetime.now(UTC)
    # A name no official can have (control characters...) is never sent to the database.
    row = None
    if re.fullmatch(USERNAME_PATTERN, username):
        row = await pool.fetchrow(Q["official_for_login"], username)
    if row is None:
        await asyncio.to_thread(_verify_password, _DUMMY_HASH, password)
        async with pool.acquire() as conn, conn.transaction():
            await audit.append(
                conn,
                actor_id=None,
                actor=audit.UNKNOWN_ACTOR,
                action="official.login_failed",
                target_type="official",
                after={"reason": "unknown_username"},
            )
        raise InvalidCredentials()
    locked = row["disabled"] or (row["locked_until"] is not None and row["locked_until"] > now)
    if locked:
        reason = "disabled" if row["disabled"] else "locked"
        password_ok, step = False, None
    else:
        password_ok = await asyncio.to_thread(_verify_password, row["password_hash"], password)
        step = totp.matching_step(row["totp_secret"], totp_code, now) if password_ok else None
        reason = "wrong_password" if not password_ok else "wrong_totp_code"
    session: Session | None = None
    async with pool.acquire() as conn, conn.transaction():
        if step is not None:
            if await conn.fetchval(Q["accept_login"], row["id"], step, now) is not None:
                session = await _open_session(conn, settings, row, now)
            else:
                reason = "totp_code_reused_or_locked"
        official_id = format_id("off", row["id"])
        if session is None:
            failures = await conn.fetchrow(
                Q["count_login_failure"],
                row["id"],
                settings.official_login_max_failures,
                now + timedelta(minutes=settings.official_lockout_minutes),
                not locked,
            )
            await audit.append(  # who tried is unknown: the target is the account tried
                conn,
                actor_id=None,
                actor=audit.UNKNOWN_ACTOR,
                action="official.login_failed",
                target_type="official",
                target_id=official_id,
                after={
                    "reason": reason,
                    "failed_logins": failures["failed_logins"],
                    "locked_until": _iso(failures["locked_until"]),
                },
            )
        else:
            await audit.append(
                conn,
                actor_id=row["id"],
                actor=row["username"],
                action="official.login",
                target_type="official",
                target_id=official_id,
                after={"expires_at": _iso(session.expires_at)},
            )
    if session is None:
        raise InvalidCredentials()
    return session


async def _open_session(
    conn: asyncpg.Connection, settings: Settings, row: asyncpg.Record, now: datetime
) -> Session:
    # Expired sessions are swept a bounded batch at a time, here: logins are rare enough.
    await conn.execute(Q["purge_expired_sessions"], now, SESSION_PURGE_BATCH_ROWS)
    token = new_token()
    expires_at = now + timedelta(seconds=settings.official_session_ttl_seconds)
    await conn.execute(Q["insert_session"], token_hash(token), row["id"], now, expires_at)
    return Session(
        access_token=token,
        token_type="Bearer",
        expires_at=expires_at,
        official_id=format_id("off", row["id"]),
        role=Role(row["role"]),
    )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


async def accept_totp_code(
    conn: asyncpg.Connection, official_id: uuid.UUID, code: object, now: datetime
) -> None:
    """Step-up: accept a fresh TOTP code of this official, once, or raise ``TotpCodeInvalid``.

    In the caller's transaction: if it rolls back, the code is not spent.
    """
    secret = await conn.fetchval(Q["official_totp"], official_id)
    step = None if secret is None else totp.matching_step(secret, code, now)
    if step is None or await conn.fetchval(Q["accept_totp_step"], official_id, step) is None:
        raise TotpCodeInvalid()


async def list_officials(
    db: asyncpg.Pool | asyncpg.Connection, *, after: uuid.UUID | None, limit: int
) -> list[OfficialOut]:
    return [official_out(row) for row in await db.fetch(Q["list_officials"], after, limit)]


async def log_out(pool: asyncpg.Pool, token: str, official: OfficialPrincipal) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q["delete_session"], token_hash(token))
        await audit.append(
            conn,
            actor_id=official.official_id,
            actor=official.username,
            action="official.logout",
            target_type="official",
            target_id=official.principal_id,
        )


# --- the guard ------------------------------------------------------------------------------


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def _refuse_foreign(token: str | None) -> None:
    if token is not None and token.startswith(FOREIGN_TOKEN_PREFIXES):
        raise Forbidden("this endpoint is for finance officials only")


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> OfficialPrincipal:
    token = bearer_token(connection)
    _refuse_foreign(token)
    if token is None or not _TOKEN_PATTERN.fullmatch(token):
        raise Unauthenticated("an official's session token (Bearer ost_...) is required")
    row = await connection.app.state.pool.fetchrow(
        Q["session_principal"], token_hash(token), datetime.now(UTC)
    )
    if row is None:
        raise Unauthenticated("the session token is unknown or expired")
    return OfficialPrincipal(
        official_id=row["id"], username=row["username"], role=Role(row["role"])
    )


async def official_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Admit an official whose role is in the handler's ``opt["roles"]``."""
    principal = await authenticate(connection)
    roles = handler.opt.get("roles") or ()
    if principal.role not in roles:
        raise Forbidden(f"the {principal.role} role may not do this")
    connection.scope["user"] = principal


async def foreign_token_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """For the public admin endpoint (login): another audience's token is still a 403."""
    _refuse_foreign(bearer_token(connection))


def principal_of(request: Request[Any, Any, Any]) -> OfficialPrincipal:
    user = request.scope.get("user")
    assert isinstance(user, OfficialPrincipal), "the handler is behind official_guard"
    return user


def roles(*admitted: Role) -> dict[str, Any]:
    """``opt`` of a handler: ``@post(..., opt=roles(Role.MAKER))``."""
    return {"roles": frozenset(admitted)}
