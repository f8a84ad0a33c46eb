"""Merchants' API keys: issuing, rotating with a grace period, and the merchant guard.

A key is ``sk_live_`` + ``secrets.token_urlsafe(32)`` (43 characters, 256 random bits). It is
shown once (in the approval's or the rotation's response) and stored as its SHA-256: a key
that random needs no slow hash, and a lookup by hash is one index probe.

Rotation (``POST /v1/merchant/api-keys/rotate``): a new current key is issued and the
presenting key keeps working until the end of its grace period
(``merchant_api_key_grace_seconds``), then stops. Only the *current* key may rotate: a key
already in its grace period gets 403 ``api_key_retiring``, so someone holding a leaked old key
cannot use its last hours to mint a fresh, permanent one. Rotations of one merchant are
serialised by the merchant's row lock; the database allows one current key per merchant.

The guard (every ``/v1/merchant/*`` endpoint but applications): no key, a malformed, unknown
or expired key, or a token of another audience (``cst_`` citizens, ``ost_`` officials) is
401 ``unauthenticated``; then the key's rate limit applies (``merchant_api.ratelimit``: 429
``rate_limited`` with Retry-After). The principal goes into the connection scope, so
idempotency keys are scoped per merchant.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gwallet.ids import format_id
from gwallet.problems import DomainError, RateLimited, Unauthenticated
from ledger_core import new_id
from ledger_core.sql import load_queries

Q = load_queries(Path(__file__).with_name("queries_merchants.sql"))

KEY_PREFIX = "sk_live_"
_KEY_PATTERN = re.compile(r"sk_live_[A-Za-z0-9_-]{43}")
_AUTHORIZATION_MAX_LENGTH = 200
HINT_LENGTH = 4

_log = logging.getLogger("gwallet.merchant_api.keys")


class ApiKeyRetiring(DomainError):
    """Only the merchant's current API key may rotate; this one is in its grace period."""

    status = 403
    code = "api_key_retiring"
    title = "API key retiring"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


async def issue(conn: asyncpg.Connection, merchant_id: uuid.UUID, now: datetime) -> str:
    """A new current key for the merchant, in the caller's transaction; returns it (once)."""
    assert conn.is_in_transaction(), "a key is issued with the change that calls for it"
    key = new_key()
    await conn.execute(
        Q["insert_api_key"], new_id(), merchant_id, key_hash(key), key[-HINT_LENGTH:], now
    )
    return key


class NewApiKey(msgspec.Struct, frozen=True, kw_only=True):
    api_key: str  # shown once
    previous_key_expires_at: datetime


class MerchantPrincipal(msgspec.Struct, frozen=True, kw_only=True):
    """The merchant a request acts for (``request.scope["user"]``), and by which key."""

    merchant_id: uuid.UUID
    key_id: uuid.UUID
    status: str  # approved | suspended
    key_expires_at: datetime | None  # None: the current key

    @property
    def principal_id(self) -> str:  # scopes idempotency keys (gwallet.idempotency)
        return format_id("mer", self.merchant_id)


async def rotate(
    pool: asyncpg.Pool, principal: MerchantPrincipal, grace_seconds: int, now: datetime
) -> NewApiKey:
    """Issue a new current key; the presenting key works ``grace_seconds`` more."""
    expires_at = now + timedelta(seconds=grace_seconds)
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchrow(Q["lock_merchant"], principal.merchant_id)
        retired = await conn.fetchval(
            Q["retire_current_api_key"], principal.merchant_id, expires_at, principal.key_id
        )
        if retired is None:
            raise ApiKeyRetiring()
        key = await issue(conn, principal.merchant_id, now)
    _log.info(
        "merchant API key rotated",
        extra={"merchant_id": principal.principal_id, "grace_seconds": grace_seconds},
    )
    return NewApiKey(api_key=key, previous_key_expires_at=expires_at)


async def reissue(
    pool: asyncpg.Pool, merchant_id: uuid.UUID, grace_seconds: int, now: datetime
) -> str:
    """A new current key for an approved merchant whose key is lost (``gwallet demo`` shows
    its merchants' keys again this way): the current key keeps its grace period."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q["lock_merchant"], merchant_id)
        assert row is not None and row["status"] in ("approved", "suspended")
        await conn.execute(
            Q["retire_current_api_keys"], merchant_id, now + timedelta(seconds=grace_seconds)
        )
        return await issue(conn, merchant_id, now)


# --- the guard ------------------------------------------------------------------------------


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if header is None or len(header) > _AUTHORIZATION_MAX_LENGTH:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


async def authenticate(
    pool: asyncpg.Pool, token: str | None, now: datetime
) -> MerchantPrincipal:
    if token is not None and token.startswith(("cst_", "ost_")):
        raise Unauthenticated("this endpoint is for merchants: Authorization: Bearer sk_live_...")
    if token is None or not _KEY_PATTERN.fullmatch(token):
        raise Unauthenticated("a merchant API key is required: Authorization: Bearer sk_live_...")
    row = await pool.fetchrow(Q["api_key_principal"], key_hash(token), now)
    if row is None:
        raise Unauthenticated("the API key is unknown or expired")
    return MerchantPrincipal(
        merchant_id=row["merchant_id"],
        key_id=row["key_id"],
        status=row["status"],
        key_expires_at=row["expires_at"],
    )


async def merchant_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Admit a request with a valid merchant API key that is within its rate limit."""
    context = connection.app.state.merchants
    principal = await authenticate(
        connection.app.state.pool, bearer_token(connection), context.clock()
    )
    decision = await context.limiter.hit(principal.key_id.hex)
    if not decision.allowed:
        raise RateLimited(
            "this API key's rate limit is reached", retry_after_seconds=decision.retry_after_seconds
        )
    connection.scope["user"] = principal


def principal_of(request: Request[Any, Any, Any]) -> MerchantPrincipal:
    user = request.scope.get("user")
    assert isinstance(user, MerchantPrincipal), "the handler is behind merchant_guard"
    return user


def utc_now() -> datetime:
    return datetime.now(UTC)
