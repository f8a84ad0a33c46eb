"""Merchants: applying, the officials' approval, suspension and reinstatement, and reading.

Lifecycle (one row of ``merchants``; every change under the row's lock, in one transaction
with its audit entry):

    pending --approve--> approved --suspend--> suspended --reinstate--> approved

Anything else is 409 ``invalid_transition`` (approving an approved merchant too, so a retried
approval never issues a second key). Approval creates the merchant's two ledger accounts
(code 300 citizen-share payable, 301 state-share payable: shared, never negative; their ids
are derived from the merchant's, so a retry finds them) and issues its first API key, which
the approving official sees once.

Personal data: the owner's national ID and the bank account (number and name) are stored
AES-GCM encrypted and bound to the row (``gwallet.pii``, the same keys as the citizens'),
the national ID also as an HMAC lookup digest. Only the ``admin`` and ``checker`` roles see
them decrypted, the account number masked but for its last 4 digits; each such read is an
audit entry. Audit entries carry statuses and ids, never personal data.

Validation is pure (``validate_application``); where digits are expected only ASCII 0-9 are
accepted (python-stdnum and ``int()`` accept Thai and full-width digits).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from stdnum.th import pin as thai_pin

from gwallet import audit
from gwallet.ids import format_id
from gwallet.officials import OfficialPrincipal
from gwallet.pii import LookupIndex, PiiCipher
from gwallet.problems import DomainError, FieldError, InvalidRequest, NotFound
from ledger_core import Account, CreateAccountResult, create_accounts, new_id
from ledger_core.sql import load_queries
from merchant_api import keys
from subsidy_rules.spec import BusinessType

Q = load_queries(Path(__file__).with_name("queries_merchants.sql"))

THB = 764  # the baht ledger, by its ISO 4217 number

# Ledger account codes of this package.
CITIZEN_SHARE_PAYABLE = 300  # what citizens paid the merchant, owed to it until settlement
STATE_SHARE_PAYABLE = 301  # the subsidies paid for the merchant's sales, owed likewise

# The lookup digest of a national ID has the citizens' purpose, so that an owner's digest
# equals their citizen digest (an owner paying their own shop is a fraud signal).
NATIONAL_ID_PURPOSE = "national_id"

NAME_MAX_LENGTH = 100
ACCOUNT_NAME_MAX_LENGTH = 100
REASON_MAX_LENGTH = 500
CATEGORY_PATTERN = r"^[a-z][a-z0-9_]{1,39}$"

# Fixed namespace of the payable account ids. Never change it.
_ACCOUNTS_NAMESPACE = uuid.UUID("b6a0f3f2-1a54-4d3c-8d0e-7c2f5e9a4b61")

_NATIONAL_ID = re.compile(r"[0-9]{13}")
_PROVINCE = re.compile(r"[0-9]{2}")
_DISTRICT = re.compile(r"[0-9]{4}")
_BANK_CODE = re.compile(r"[0-9]{3}")
_ACCOUNT_NUMBER = re.compile(r"[0-9]{10,15}")
_CATEGORY = re.compile(CATEGORY_PATTERN[1:-1])


class MerchantStatus:
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUSPENDED = "suspended"


# --- refusals -------------------------------------------------------------------------------


class InvalidNationalId(DomainError):
    """A national ID is 13 ASCII digits whose last digit is the mod-11 checksum of the others."""

    status = 422
    code = "invalid_national_id"
    title = "Invalid national ID"


class InvalidTransition(DomainError):
    """Merchants go pending -> approved -> suspended -> approved; no other step exists."""

    status = 409
    code = "invalid_transition"
    title = "Invalid transition"


class MerchantSuspended(DomainError):
    """A suspended merchant cannot create payment requests until an official reinstates it."""

    status = 403
    code = "merchant_suspended"
    title = "Merchant suspended"


def _field(error: type[DomainError], field: str, message: str) -> DomainError:
    return error(f"{field}: {message}", errors=[FieldError(field=field, message=message)])


# --- validation (pure) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BankAccount:
    bank_code: str  # 3 digits, the Bank of Thailand's bank code ("004" KBank, "014" SCB...)
    account_number: str  # 10 to 15 digits
    account_name: str


@dataclass(frozen=True, slots=True)
class NewMerchant:
    name: str
    owner_national_id: str
    business_type: BusinessType
    category: str
    province_code: str
    district_code: str
    bank_account: BankAccount


def parse_national_id(text: str, field: str = "owner_national_id") -> str:
    if not _NATIONAL_ID.fullmatch(text):
        raise _field(InvalidNationalId, field, "expected 13 ASCII digits")
    if not thai_pin.is_valid(text):
        raise _field(InvalidNationalId, field, "the check digit does not match")
    return text


def parse_text(text: str, field: str, max_length: int) -> str:
    """NFC, trimmed, 1..max_length characters, no control or invisible characters."""
    value = unicodedata.normalize("NFC", text).strip()
    if not value:
        raise _field(InvalidRequest, field, "must not be empty")
    if len(value) > max_length:
        raise _field(InvalidRequest, field, f"at most {max_length} characters")
    # Control (NUL...), format (zero-width), surrogate, private-use and unassigned characters.
    if any(unicodedata.category(c).startswith("C") for c in value):
        raise _field(InvalidRequest, field, "contains control or invisible characters")
    return value


def _match(pattern: re.Pattern[str], text: str, field: str, message: str) -> str:
    if not pattern.fullmatch(text):
        raise _field(InvalidRequest, field, message)
    return text


def validate_application(
    *,
    name: str,
    owner_national_id: str,
    business_type: BusinessType,
    category: str,
    province_code: str,
    district_code: str,
    bank_code: str,
    account_number: str,
    account_name: str,
) -> NewMerchant:
    """Check every field (the first broken rule is raised, naming the field) and normalise."""
    name = parse_text(name, "name", NAME_MAX_LENGTH)
    owner_national_id = parse_national_id(owner_national_id)
    _match(_CATEGORY, category, "category", "expected a slug: a-z, 0-9 and _, 2-40 characters")
    _match(_PROVINCE, province_code, "province_code", "expected 2 ASCII digits")
    _match(_DISTRICT, district_code, "district_code", "expected 4 ASCII digits")
    if not district_code.startswith(province_code):
        raise _field(InvalidRequest, "district_code", "is not a district of the province")
    _match(_BANK_CODE, bank_code, "bank_account.bank_code", "expected 3 ASCII digits")
    _match(
        _ACCOUNT_NUMBER,
        account_number,
        "bank_account.account_number",
        "expected 10 to 15 ASCII digits",
    )
    account_name = parse_text(account_name, "bank_account.account_name", ACCOUNT_NAME_MAX_LENGTH)
    return NewMerchant(
        name=name,
        owner_national_id=owner_national_id,
        business_type=business_type,
        category=category,
        province_code=province_code,
        district_code=district_code,
        bank_account=BankAccount(bank_code, account_number, account_name),
    )


def parse_reason(text: str) -> str:
    return parse_text(text, "reason", REASON_MAX_LENGTH)


# --- ledger accounts --------------------------------------------------------------------------


def payable_account_ids(merchant_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """(citizen-share payable, state-share payable): derived, so a retried approval finds them."""
    return (
        uuid.uuid5(_ACCOUNTS_NAMESPACE, f"{merchant_id}/citizen_share_payable"),
        uuid.uuid5(_ACCOUNTS_NAMESPACE, f"{merchant_id}/state_share_payable"),
    )


def payable_accounts(merchant_id: uuid.UUID) -> list[Account]:
    citizen_share, state_share = payable_account_ids(merchant_id)
    return [
        Account(
            id=account_id,
            ledger=THB,
            code=code,
            debits_must_not_exceed_credits=True,
            # Credited by many concurrent payments (and refunds, settlement): locked last.
            shared=True,
            user_data_128=merchant_id,
        )
        for account_id, code in (
            (citizen_share, CITIZEN_SHARE_PAYABLE),
            (state_share, STATE_SHARE_PAYABLE),
        )
    ]


# --- the merchant's keys for personal data ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersonalDataKeys:
    """The citizens' cipher and lookup index (``app.state.wallet.keys``), reused."""

    pii: PiiCipher
    lookup: LookupIndex


class _BankAccountPlain(msgspec.Struct, frozen=True):
    account_number: str
    account_name: str


def encrypt_bank_account(
    keys_: PersonalDataKeys, merchant_id: uuid.UUID, account: BankAccount
) -> bytes:
    plain = msgspec.json.encode(_BankAccountPlain(account.account_number, account.account_name))
    return keys_.pii.encrypt(plain.decode(), row_id=merchant_id, field="bank_account")


# --- applying -------------------------------------------------------------------------------


async def apply(
    conn: asyncpg.Connection,
    keys_: PersonalDataKeys,
    merchant: NewMerchant,
    now: datetime,
    merchant_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Insert a pending merchant in the caller's transaction; return its id (a new random
    one unless given: the demo derives its merchants' ids from their names)."""
    merchant_id = merchant_id or new_id()
    await conn.execute(
        Q["insert_merchant"],
        merchant_id,
        merchant.name,
        str(merchant.business_type),
        merchant.category,
        merchant.province_code,
        merchant.district_code,
        keys_.pii.encrypt(
            merchant.owner_national_id, row_id=merchant_id, field="owner_national_id"
        ),
        keys_.lookup.digest(merchant.owner_national_id, purpose=NATIONAL_ID_PURPOSE),
        keys_.lookup.keyring.current,
        merchant.bank_account.bank_code,
        encrypt_bank_account(keys_, merchant_id, merchant.bank_account),
        now,
    )
    return merchant_id


# --- the officials' actions -----------------------------------------------------------------


def _public(row: asyncpg.Record) -> dict[str, Any]:
    """What the audit log keeps of a merchant: no personal data."""
    return {
        "status": row["status"],
        "suspension_reason": row["suspension_reason"],
        "citizen_payable_account_id": _str(row["citizen_payable_account_id"]),
        "state_payable_account_id": _str(row["state_payable_account_id"]),
    }


def _str(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


async def _locked(conn: asyncpg.Connection, merchant_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(Q["lock_merchant"], merchant_id)
    if row is None:
        raise NotFound("no merchant has this id")
    return row


async def _audit(
    conn: asyncpg.Connection,
    official: OfficialPrincipal | None,
    action: str,
    before: asyncpg.Record,
    after: asyncpg.Record,
) -> None:
    await audit.append(
        conn,
        actor_id=None if official is None else official.official_id,
        actor=audit.CLI_ACTOR if official is None else official.username,
        action=action,
        target_type="merchant",
        target_id=format_id("mer", before["id"]),
        before=_public(before),
        after=_public(after),
    )


@dataclass(frozen=True, slots=True)
class Approval:
    merchant: asyncpg.Record
    api_key: str  # shown once


async def approve(
    pool: asyncpg.Pool, merchant_id: uuid.UUID, official: OfficialPrincipal | None, now: datetime
) -> Approval:
    """pending -> approved: the payable accounts, the first API key, the audit entry; one
    transaction (the ledger accounts are created in it too). ``official`` None: the command
    line (``gwallet demo``)."""
    async with pool.acquire() as conn, conn.transaction():
        before = await _locked(conn, merchant_id)
        if before["status"] != MerchantStatus.PENDING:
            raise InvalidTransition(f"a merchant that is {before['status']} cannot be approved")
        accounts = payable_accounts(merchant_id)
        for account, result in zip(accounts, await create_accounts(conn, accounts), strict=True):
            # Created in this transaction (a rolled-back approval leaves none behind);
            # EXISTS only if someone made them before, with the same fields.
            if result not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
                raise RuntimeError(f"merchant account {account.id}: {result.name.lower()}")
        after = await conn.fetchrow(
            Q["approve_merchant"], merchant_id, now, accounts[0].id, accounts[1].id
        )
        assert after is not None, "the row is locked and pending"
        api_key = await keys.issue(conn, merchant_id, now)
        await _audit(conn, official, "merchant.approve", before, after)
    return Approval(merchant=after, api_key=api_key)


async def suspend(
    pool: asyncpg.Pool,
    merchant_id: uuid.UUID,
    reason: str,
    official: OfficialPrincipal,
    now: datetime,
) -> asyncpg.Record:
    """approved -> suspended, with the reason and time. It cannot create payment requests
    from now on (its unpaid state share is held at settlement: a later issue)."""
    async with pool.acquire() as conn, conn.transaction():
        before = await _locked(conn, merchant_id)
        if before["status"] != MerchantStatus.APPROVED:
            raise InvalidTransition(f"a merchant that is {before['status']} cannot be suspended")
        after = await conn.fetchrow(Q["suspend_merchant"], merchant_id, now, reason)
        assert after is not None, "the row is locked and approved"
        await _audit(conn, official, "merchant.suspend", before, after)
    return after


async def reinstate(
    pool: asyncpg.Pool, merchant_id: uuid.UUID, official: OfficialPrincipal
) -> asyncpg.Record:
    """suspended -> approved (the suspension's reason and time stay in the audit log)."""
    async with pool.acquire() as conn, conn.transaction():
        before = await _locked(conn, merchant_id)
        if before["status"] != MerchantStatus.SUSPENDED:
            raise InvalidTransition(
                f"a merchant that is {before['status']} cannot be reinstated"
            )
        after = await conn.fetchrow(Q["reinstate_merchant"], merchant_id)
        assert after is not None, "the row is locked and suspended"
        await _audit(conn, official, "merchant.reinstate", before, after)
    return after


# --- reading --------------------------------------------------------------------------------


class BankAccountView(msgspec.Struct, frozen=True, kw_only=True):
    bank_code: str
    account_number_masked: str  # "xxxxxx7890": only the last 4 digits
    account_name: str


class PersonalData(msgspec.Struct, frozen=True, kw_only=True):
    owner_national_id: str
    bank_account: BankAccountView


class MerchantView(msgspec.Struct, frozen=True, kw_only=True):
    merchant_id: str
    status: str
    name: str
    business_type: str
    category: str
    province_code: str
    district_code: str
    bank_code: str
    created_at: datetime
    approved_at: datetime | None
    suspended_at: datetime | None
    suspension_reason: str | None
    # Only for the admin and checker roles; null for the others.
    personal_data: PersonalData | None


def mask_account_number(number: str) -> str:
    return "x" * (len(number) - 4) + number[-4:]


def decrypt_personal_data(pii: PiiCipher, row: asyncpg.Record) -> PersonalData:
    merchant_id = row["id"]
    account = msgspec.json.decode(
        pii.decrypt(row["bank_account_enc"], row_id=merchant_id, field="bank_account"),
        type=_BankAccountPlain,
    )
    return PersonalData(
        owner_national_id=pii.decrypt(
            row["owner_national_id_enc"], row_id=merchant_id, field="owner_national_id"
        ),
        bank_account=BankAccountView(
            bank_code=row["bank_code"],
            account_number_masked=mask_account_number(account.account_number),
            account_name=account.account_name,
        ),
    )


def merchant_view(row: asyncpg.Record, personal_data: PersonalData | None) -> MerchantView:
    return MerchantView(
        merchant_id=format_id("mer", row["id"]),
        status=row["status"],
        name=row["name"],
        business_type=row["business_type"],
        category=row["category"],
        province_code=row["province_code"],
        district_code=row["district_code"],
        bank_code=row["bank_code"],
        created_at=row["created_at"],
        approved_at=row["approved_at"],
        suspended_at=row["suspended_at"],
        suspension_reason=row["suspension_reason"],
        personal_data=personal_data,
    )


async def read_merchants(
    pool: asyncpg.Pool,
    pii: PiiCipher,
    official: OfficialPrincipal,
    *,
    merchant_id: uuid.UUID | None = None,
    status: str | None = None,
    after: uuid.UUID | None = None,
    limit: int = 1,
    disclose: bool,
) -> tuple[list[MerchantView], bool]:
    """One merchant (``merchant_id``) or a page of at most ``limit`` in id order, and whether
    more follow. With ``disclose`` the personal data is decrypted, and that read is an audit
    entry (which merchants, by whom; not the data)."""
    async with pool.acquire() as conn, conn.transaction():
        if merchant_id is not None:
            row = await conn.fetchrow(Q["merchant"], merchant_id)
            rows = [] if row is None else [row]
        else:
            rows = await conn.fetch(Q["list_merchants"], status, after, limit + 1)
        has_more = len(rows) > limit
        rows = rows[:limit]
        views = [
            merchant_view(row, decrypt_personal_data(pii, row) if disclose else None)
            for row in rows
        ]
        if disclose and rows:
            ids = [format_id("mer", row["id"]) for row in rows]
            await audit.append(
                conn,
                actor_id=official.official_id,
                actor=official.username,
                action="merchant.personal_data_read",
                target_type="merchant",
                target_id=ids[0] if merchant_id is not None else None,
                after={"merchant_ids": ids},
            )
    return views, has_more
