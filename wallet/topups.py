"""Bank top-ups: a bank partner credits a citizen's wallet with a signed request.

The request is signed in Standard Webhooks form (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``: HMAC-SHA256 of ``id.timestamp.body`` with the partner's ``whsec_``
secret) and verified with the ``standardwebhooks`` package, before the body is even decoded.
The partner is the one whose secret verifies (a partner may be listed with two secrets
while it rotates them).

- A signature that verifies under no secret: 401 ``invalid_signature``; a timestamp more
  than 5 minutes from now: 401 ``stale_signature``; a ``webhook-id`` already processed:
  409 ``webhook_replayed``. Nothing is credited in any of these cases.
- Idempotent on ``bank_reference`` (per partner): the transfer's id is derived from
  (partner, bank_reference), so the same top-up sent again (a bank's retry, with a new
  webhook-id) is the same transfer: the ledger answers ``exists`` and the same 201 is
  returned. The same reference with another wallet or amount: 409 ``bank_reference_reused``.
- The processed ``webhook-id`` and the top-up row commit in the ledger batch's own
  transaction (an engine ``Effect``), so they exist exactly when the transfer does. Two
  copies of one message racing each other both reach the ledger with one transfer id: one
  credits, the other is ``exists``; the money moves once.
- Ids are kept ``bank_webhook_id_retention_seconds`` (more than the tolerance), then purged.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec
from standardwebhooks import Webhook

from gwallet.ids import format_id, parse_id
from gwallet.pii import dev_secret
from gwallet.problems import (
    DomainError,
    FieldError,
    InvalidParameter,
    InvalidRequest,
    MalformedJson,
)
from gwallet.request import RequestBody, field_error
from ledger_core import CreateTransferResult, Effect, LedgerEngine, Transfer
from ledger_core.sql import load_queries
from wallet.accounts import THB, TOP_UP, bank_clearing_account, topup_transfer_id

Q = load_queries(Path(__file__).with_name("queries_topups.sql"))

TOLERANCE_SECONDS = 300  # Standard Webhooks' (and the package's) tolerance: 5 minutes
AMOUNT_MAX_SATANG = 10**12
_PARTNER_ID = re.compile(r"^[a-z0-9_-]{1,32}$")
_WEBHOOK_ID = re.compile(r"[\x21-\x7e]{1,255}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[\x20-\x7e]{1,2048}")  # the package parses it
_SECRET_BYTES_MIN = 24
DEV_PARTNER = "demo_bank"
DEV_SECRETS_FILE = "bank-partner-secrets.txt"


class InvalidSignature(DomainError):
    """The webhook signature does not verify with any bank partner's secret."""

    status = 401
    code = "invalid_signature"
    title = "Invalid signature"


class StaleSignature(DomainError):
    """The webhook-timestamp is more than 5 minutes away from now."""

    status = 401
    code = "stale_signature"
    title = "Stale signature"


class WebhookReplayed(DomainError):
    """A webhook-id is processed once only; a replayed message is refused."""

    status = 409
    code = "webhook_replayed"
    title = "Webhook replayed"


class BankReferenceReused(DomainError):
    """A bank_reference names one top-up: the same wallet and amount every time."""

    status = 409
    code = "bank_reference_reused"
    title = "Bank reference reused"


class WalletNotFound(DomainError):
    """The wallet_id names no citizen's wallet."""

    status = 422
    code = "wallet_not_found"
    title = "Wallet not found"


class TopupRefused(DomainError):
    """The ledger refused the top-up transfer."""

    status = 422
    code = "topup_refused"
    title = "Top-up refused"


TOPUP_ERRORS: tuple[type[DomainError], ...] = (
    InvalidSignature,
    StaleSignature,
    WebhookReplayed,
    BankReferenceReused,
    WalletNotFound,
    TopupRefused,
)


# --- partners and their secrets -------------------------------------------------------------


class BankPartnerConfigError(ValueError):
    """``bank_partner_secrets`` is malformed."""


@dataclass(frozen=True, slots=True)
class BankPartners:
    """(partner id, secret) pairs; a partner listed twice has two valid secrets."""

    secrets: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str, source: str = "GWALLET_BANK_PARTNER_SECRETS") -> BankPartners:
        pairs: list[tuple[str, str]] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            partner, sep, secret = part.partition(":")
            if not sep or not _PARTNER_ID.fullmatch(partner.strip()):
                raise BankPartnerConfigError(
                    f"{source}: each entry is `partner_id:whsec_...`, partner id of [a-z0-9_-]"
                )
            secret = secret.strip()
            if not secret.startswith("whsec_"):
                raise BankPartnerConfigError(f"{source}: {partner}'s secret must start whsec_")
            try:
                raw = base64.b64decode(secret[len("whsec_") :], validate=True)
            except (binascii.Error, ValueError):
                raise BankPartnerConfigError(f"{source}: {partner}'s secret is not base64") from None
            if len(raw) < _SECRET_BYTES_MIN:
                raise BankPartnerConfigError(
                    f"{source}: {partner}'s secret must be at least {_SECRET_BYTES_MIN} bytes"
                )
            pairs.append((partner.strip(), secret))
        if not pairs:
            raise BankPartnerConfigError(f"{source}: no bank partner given")
        return cls(secrets=tuple(pairs))

    @property
    def partner_ids(self) -> list[str]:
        return sorted({p for p, _ in self.secrets})

    def secret_of(self, partner_id: str) -> str:
        """The first listed (current) secret of a partner, for signing (the simulator)."""
        for partner, secret in self.secrets:
            if partner == partner_id:
                return secret
        raise KeyError(partner_id)


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def load_bank_partners(configured: str | None, data_path: Path) -> BankPartners:
    if configured is not None:
        return BankPartners.parse(configured)
    path = data_path / DEV_SECRETS_FILE
    text = dev_secret(path, lambda: f"{DEV_PARTNER}:{new_webhook_secret()}")
    return BankPartners.parse(text, str(path))


# --- signatures -----------------------------------------------------------------------------


def sign(secret: str, webhook_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (what a bank sends)."""
    signature = Webhook(secret).sign(webhook_id, timestamp, body.decode("utf-8"))
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }


def verify_signature(
    partners: BankPartners, body: bytes, headers: Mapping[str, str], now: datetime
) -> tuple[str, str]:
    """(partner id, webhook id) of a correctly signed, fresh message; raise otherwise."""
    values: dict[str, str] = {}
    for name, pattern in (
        ("webhook-id", _WEBHOOK_ID),
        ("webhook-timestamp", _TIMESTAMP),
        ("webhook-signature", _SIGNATURE),
    ):
        value = headers.get(name)
        if value is None or not pattern.fullmatch(value):
            message = "missing" if value is None else "malformed"
            raise InvalidParameter(
                f"{name}: {message} Standard Webhooks header",
                errors=[FieldError(field=name, message=f"{message} header")],
            )
        values[name] = value
    sent_at = int(values["webhook-timestamp"])
    if abs(now.timestamp() - sent_at) > TOLERANCE_SECONDS:
        raise StaleSignature()
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature("the body is not UTF-8") from None
    for partner, secret in partners.secrets:
        try:
            Webhook(secret).verify(body, values, json_parse=False)
        except Exception:  # noqa: BLE001, S112 - every failure of the package: "not this secret"
            continue
        return partner, values["webhook-id"]
    raise InvalidSignature()


# --- the top-up -----------------------------------------------------------------------------

BankReference = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")]


class TopupIn(RequestBody):
    wallet_id: Annotated[str, msgspec.Meta(max_length=64)]
    amount: Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_MAX_SATANG)]
    bank_reference: BankReference


class TopupOut(msgspec.Struct, frozen=True):
    topup_id: str
    wallet_id: str
    amount: int
    currency: str
    bank_reference: str
    created_at: datetime


_DECODER = msgspec.json.Decoder(TopupIn, strict=True)


def decode_topup(body: bytes) -> TopupIn:
    try:
        return _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        error = field_error(str(exc))
        raise InvalidRequest(f"{error.field}: {error.message}", errors=[error]) from None
    except msgspec.DecodeError:
        raise MalformedJson() from None


class _TopupWriter:
    """Writes processed webhook ids and new top-up rows in the ledger batch's transaction."""

    async def write(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        topups = [row[1] for row in rows if row[1] is not None]
        await conn.executemany(Q["record_webhook_id"], [row[0] for row in rows])
        if topups:
            await conn.executemany(Q["insert_topup"], topups)


_WRITER = _TopupWriter()


async def top_up(
    pool: asyncpg.Pool,
    engine: LedgerEngine,
    *,
    partner_id: str,
    webhook_id: str,
    request: TopupIn,
) -> TopupOut:
    if await pool.fetchval(Q["webhook_id_seen"], partner_id, webhook_id):
        raise WebhookReplayed()
    wallet_account_id = parse_id("wal", request.wallet_id)
    citizen_id = None
    if wallet_account_id is not None:
        citizen_id = await pool.fetchval(Q["citizen_of_wallet"], wallet_account_id)
    if wallet_account_id is None or citizen_id is None:
        raise WalletNotFound(
            errors=[FieldError(field="wallet_id", message="names no citizen's wallet")]
        )
    transfer_id = topup_transfer_id(partner_id, request.bank_reference)
    transfer = Transfer(
        id=transfer_id,
        debit_account_id=bank_clearing_account(partner_id).id,
        credit_account_id=wallet_account_id,
        amount=request.amount,
        ledger=THB,
        code=TOP_UP,
    )

    def make_row(results: list[CreateTransferResult]) -> tuple[Any, ...]:
        topup = None
        if results[0] is CreateTransferResult.OK:
            topup = (
                transfer_id,
                partner_id,
                request.bank_reference,
                citizen_id,
                wallet_account_id,
                request.amount,
            )
        return ((partner_id, webhook_id), topup)

    [result] = await engine.create_transfers([transfer], effects=[Effect(_WRITER, make_row)])
    if result in (CreateTransferResult.OK, CreateTransferResult.EXISTS):
        row = await pool.fetchrow(Q["topup_by_id"], transfer_id)
        assert row is not None, "the top-up row commits with its transfer"
        return TopupOut(
            topup_id=format_id("top", transfer_id),
            wallet_id=format_id("wal", row["wallet_account_id"]),
            amount=row["amount"],
            currency="THB",
            bank_reference=row["bank_reference"],
            created_at=row["created_at"],
        )
    if result.name.startswith("EXISTS_WITH_DIFFERENT"):
        raise BankReferenceReused(
            f"bank_reference {request.bank_reference!r} was used for a top-up with another "
            "wallet or amount",
            errors=[FieldError(field="bank_reference", message="already used")],
        )
    raise TopupRefused(f"the ledger refused the top-up: {result.name.lower()}")


async def purge_webhook_ids(pool: asyncpg.Pool, retention_seconds: int, now: datetime) -> int:
    status = await pool.execute(
        Q["purge_webhook_ids"], now - timedelta(seconds=retention_seconds), 10_000
    )
    return int(status.split()[-1])


def new_webhook_id() -> str:
    return "msg_" + uuid.uuid4().hex


def post_signed_topup(
    base_url: str,
    secret: str,
    *,
    wallet_id: str,
    amount: int,
    bank_reference: str | None = None,
    timeout_seconds: float = 10.0,
) -> tuple[int, str]:
    """What a bank does (``gwallet bank topup``, the demo): sign and POST; (status, body)."""
    import urllib.error
    import urllib.request

    reference = bank_reference or f"SIM-{uuid.uuid4().hex[:16]}"
    body = msgspec.json.encode(
        {"wallet_id": wallet_id, "amount": amount, "bank_reference": reference}
    )
    headers = sign(secret, new_webhook_id(), datetime.now(UTC), body)
    request = urllib.request.Request(
        base_url.rstrip("/") + "/v1/bank/topups",
        data=body,
        headers={**headers, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
