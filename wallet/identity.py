"""Citizens' identity: validating a registration, storing personal data encrypted, rekeying.

Validation is pure (``validate_registration``); ``register`` opens one transaction: the
wallet's ledger account and the citizen row, or neither. One account per national ID is
decided by the unique HMAC digest of the national ID: of concurrent duplicate registrations
exactly one inserts, the others get 409 ``already_registered``.

Where digits are expected only the ASCII digits 0-9 are accepted: ``int()``, python-stdnum
and phonenumbers all accept Thai (๐-๙) and full-width digits, so every such field is matched
against ``[0-9]`` first.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import asyncpg
import phonenumbers
from stdnum.th import pin as thai_pin

from gwallet import totp
from gwallet.ids import format_id
from gwallet.pii import LookupIndex, PiiCipher
from gwallet.problems import DomainError, FieldError, InvalidRequest
from ledger_core import create_accounts, new_id
from ledger_core.sql import load_queries
from subsidy_rules.periods import bangkok
from wallet.accounts import wallet_account
from wallet.auth import PinHasher, check_pin_strength

Q = load_queries(Path(__file__).with_name("queries_citizens.sql"))

NATIONAL_ID = "national_id"  # purpose of the lookup digest
FULL_NAME_MAX_LENGTH = 200
BIRTH_DATE_MIN = date(1900, 1, 1)
_NATIONAL_ID = re.compile(r"[0-9]{13}")
_PHONE = re.compile(r"\+?[0-9]{9,15}")
_PROVINCE = re.compile(r"[0-9]{2}")
_DISTRICT = re.compile(r"[0-9]{4}")
_THAI_MOBILE = {phonenumbers.PhoneNumberType.MOBILE}


class InvalidNationalId(DomainError):
    """A national ID is 13 ASCII digits whose last digit is the mod-11 checksum of the others."""

    status = 422
    code = "invalid_national_id"
    title = "Invalid national ID"


class InvalidPhone(DomainError):
    """A phone number is a Thai mobile number in ASCII digits: 0XXXXXXXXX or +66XXXXXXXXX."""

    status = 422
    code = "invalid_phone"
    title = "Invalid phone number"


class AlreadyRegistered(DomainError):
    """A national ID registers one account only."""

    status = 409
    code = "already_registered"
    title = "Already registered"


def _field(error: type[DomainError], field: str, message: str) -> DomainError:
    return error(f"{field}: {message}", errors=[FieldError(field=field, message=message)])


# --- validation (pure) --------------------------------------------------------------------


def parse_national_id(text: str) -> str:
    if not _NATIONAL_ID.fullmatch(text):
        raise _field(InvalidNationalId, "national_id", "expected 13 ASCII digits")
    if not thai_pin.is_valid(text):
        raise _field(InvalidNationalId, "national_id", "the check digit does not match")
    return text


def parse_thai_mobile(text: str) -> str:
    """The number in E.164 form (+66XXXXXXXXX)."""
    if not _PHONE.fullmatch(text):
        raise _field(InvalidPhone, "phone", "expected ASCII digits, optionally after a +")
    try:
        number = phonenumbers.parse(text, "TH")
    except phonenumbers.NumberParseException:
        raise _field(InvalidPhone, "phone", "not a phone number") from None
    if (
        number.country_code != 66
        or not phonenumbers.is_valid_number(number)
        or phonenumbers.number_type(number) not in _THAI_MOBILE
    ):
        raise _field(InvalidPhone, "phone", "not a Thai mobile number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_full_name(text: str) -> str:
    name = unicodedata.normalize("NFC", text).strip()
    if not name:
        raise _field(InvalidRequest, "full_name", "must not be empty")
    if len(name) > FULL_NAME_MAX_LENGTH:
        raise _field(InvalidRequest, "full_name", f"at most {FULL_NAME_MAX_LENGTH} characters")
    # Control, format (zero-width), surrogate, private-use and unassigned characters.
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise _field(InvalidRequest, "full_name", "contains control or invisible characters")
    return name


@dataclass(frozen=True, slots=True)
class NewCitizen:
    national_id: str
    phone: str  # E.164
    full_name: str
    birth_date: date
    province_code: str
    district_code: str
    pin: str


def validate_registration(
    *,
    national_id: str,
    phone: str,
    full_name: str,
    birth_date: date,
    province_code: str,
    district_code: str,
    pin: str,
    now: datetime,
) -> NewCitizen:
    """Check every field (the first broken rule is raised) and normalise."""
    national_id = parse_national_id(national_id)
    phone = parse_thai_mobile(phone)
    full_name = parse_full_name(full_name)
    if not BIRTH_DATE_MIN <= birth_date <= bangkok(now).date():
        raise _field(InvalidRequest, "birth_date", "must be between 1900-01-01 and today")
    if not _PROVINCE.fullmatch(province_code):
        raise _field(InvalidRequest, "province_code", "expected 2 ASCII digits")
    if not _DISTRICT.fullmatch(district_code):
        raise _field(InvalidRequest, "district_code", "expected 4 ASCII digits")
    if not district_code.startswith(province_code):
        raise _field(InvalidRequest, "district_code", "is not a district of the province")
    check_pin_strength(pin, birth_date)
    return NewCitizen(
        national_id=national_id,
        phone=phone,
        full_name=full_name,
        birth_date=birth_date,
        province_code=province_code,
        district_code=district_code,
        pin=pin,
    )


# --- registration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    citizen_id: uuid.UUID
    wallet_account_id: uuid.UUID
    totp_provisioning_uri: str
    totp_qr_svg: str


@dataclass(frozen=True, slots=True)
class IdentityKeys:
    pii: PiiCipher
    lookup: LookupIndex
    pins: PinHasher


async def register(
    pool: asyncpg.Pool, keys: IdentityKeys, citizen: NewCitizen
) -> Registration:
    digests = keys.lookup.digests(citizen.national_id, purpose=NATIONAL_ID)
    # Fast path for the common repeat; the unique digest below decides under concurrency.
    if await pool.fetchval(Q["citizen_by_national_id"], digests) is not None:
        raise AlreadyRegistered()
    citizen_id, wallet_id = new_id(), new_id()
    secret = totp.new_secret()
    pin_key_id, pin_hash = keys.pins.hash(citizen_id, citizen.pin)
    encrypt = keys.pii.encrypt
    async with pool.acquire() as conn, conn.transaction():
        await create_accounts(conn, [wallet_account(wallet_id, citizen_id)])
        inserted = await conn.fetchval(
            Q["insert_citizen"],
            citizen_id,
            digests[0],
            keys.lookup.keyring.current,
            encrypt(citizen.national_id, row_id=citizen_id, field="national_id"),
            encrypt(citizen.phone, row_id=citizen_id, field="phone"),
            encrypt(citizen.full_name, row_id=citizen_id, field="full_name"),
            citizen.birth_date,
            citizen.province_code,
            citizen.district_code,
            wallet_id,
            pin_key_id,
            pin_hash,
            encrypt(secret, row_id=citizen_id, field="totp_secret"),
        )
        if inserted is None:
            raise AlreadyRegistered()  # rolls back the wallet account too
    uri = totp.provisioning_uri(secret, format_id("cit", citizen_id))
    return Registration(
        citizen_id=citizen_id,
        wallet_account_id=wallet_id,
        totp_provisioning_uri=uri,
        totp_qr_svg=totp.qr_svg(uri),
    )


@dataclass(frozen=True, slots=True)
class Identity:
    citizen_id: uuid.UUID
    national_id: str
    phone: str
    full_name: str
    birth_date: date
    province_code: str
    district_code: str


async def load_identity(
    conn: asyncpg.Connection | asyncpg.Pool, pii: PiiCipher, citizen_id: uuid.UUID
) -> Identity | None:
    row = await conn.fetchrow(Q["citizen_identity"], citizen_id)
    if row is None:
        return None
    return Identity(
        citizen_id=citizen_id,
        national_id=pii.decrypt(row["national_id_encrypted"], row_id=citizen_id, field="national_id"),
        phone=pii.decrypt(row["phone_encrypted"], row_id=citizen_id, field="phone"),
        full_name=pii.decrypt(row["full_name_encrypted"], row_id=citizen_id, field="full_name"),
        birth_date=row["birth_date"],
        province_code=row["province_code"],
        district_code=row["district_code"],
    )


def mask_national_id(national_id: str) -> str:
    """Only the last 4 digits, for display: ``x-xxxx-xxxxx-07-8`` style."""
    return "x-xxxx-xxxxx-" + national_id[-3:-1] + "-" + national_id[-1]


def mask_phone(phone: str) -> str:
    return phone[:3] + "x" * (len(phone) - 7) + phone[-4:]


# --- key rotation -------------------------------------------------------------------------

REKEY_BATCH_ROWS = 500


async def rekey_citizens(pool: asyncpg.Pool, keys: IdentityKeys) -> int:
    """Re-encrypt every ciphertext and lookup digest not made with the current keys.

    Run after putting a new key first in ``pii_encryption_keys`` / ``pii_lookup_keys``; once
    it returns, the old keys can be removed. Batches of ``REKEY_BATCH_ROWS`` rows in id
    order, each row updated only if it still has the ciphertext that was read (a concurrent
    writer wins, and the next run picks the row up). Returns the number of rows changed.
    """
    changed = 0
    after = uuid.UUID(int=0)
    lookup_key = keys.lookup.keyring.current
    fields = ("national_id", "phone", "full_name", "totp_secret")
    while True:
        rows = await pool.fetch(Q["citizens_to_rekey"], after, REKEY_BATCH_ROWS)
        if not rows:
            return changed
        for row in rows:
            citizen_id = row["id"]
            blobs = {f: bytes(row[f + "_encrypted"]) for f in fields}
            stale = [f for f, b in blobs.items() if keys.pii.needs_rekey(b)]
            if not stale and row["national_id_digest_key_id"] == lookup_key:
                continue
            plain = {
                f: keys.pii.decrypt(blobs[f], row_id=citizen_id, field=f) for f in fields
            }
            fresh = {
                f: keys.pii.encrypt(plain[f], row_id=citizen_id, field=f) if f in stale else blobs[f]
                for f in fields
            }
            status = await pool.execute(
                Q["rekey_citizen"],
                citizen_id,
                blobs["national_id"],
                keys.lookup.digest(plain["national_id"], purpose=NATIONAL_ID),
                lookup_key,
                fresh["national_id"],
                fresh["phone"],
                fresh["full_name"],
                fresh["totp_secret"],
            )
            changed += int(status.split()[-1])
        after = rows[-1]["id"]
