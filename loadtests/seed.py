"""Seed a database for load tests: citizens, merchants and an active, funded half-half program.

    python -m loadtests.seed --database-url URL --citizens N --merchants M --manifest PATH
        [--secret S] [--enrolled K] [--top-up SATANG] [--budget SATANG] [--quota Q]
        [--session-days D] [--first-use-days D] [--quiet]

Defaults: 1,000,000 citizens, 100,000 merchants, a random secret, every citizen enrolled,
a top-up of 1,000,000 satang (10,000 THB) each, a budget of every citizen's total cap.
Exit 2 when the database already has citizens (or this seed's program, or another seed is
running on it): seeding is for a fresh database, so that no balance is ever credited twice.

What it writes, and how each part stays what the service itself would have written:

- **Officials and the program** through ``subsidy_rules.service`` (as ``gwallet demo`` does):
  a maker creates and submits the spec (validated), a checker approves it with a TOTP code
  (which creates the budget account), an admin activates it, the maker requests funding and
  the checker approves it: the treasury pays the budget by a ledger transfer through the
  engine. Half-half: 50 %, caps per day / month / total, open all day, registration and
  spending from yesterday to 60 days from now, quota >= the enrolled, ``first_use_deadline_days``
  none by default (so a seeded database stays usable for the whole period). The officials'
  usernames and passwords derive from the secret (``loadtests.population``).
- **Merchants** by COPY, as ``merchant_api.merchants.apply`` + ``approve`` would leave them:
  approved, personal data encrypted with ``gwallet.pii`` bound to the row and field, the
  owner's lookup digest, the two payable accounts (``payable_accounts``, codes 300/301,
  shared, never negative) and the API key stored as ``keys.key_hash``. One audit entry
  (``loadtest.seed``) records the bulk approval instead of one per merchant.
- **Citizens** by COPY, as ``wallet.identity.register`` would: the wallet account
  (``wallet_account``: code 200, never negative), the national ID, phone, name and TOTP
  secret encrypted bound to row and field, the lookup digest of the national ID
  (``LookupIndex.digest``, purpose ``national_id``), the PIN as ``PinHasher.hash``; the
  authenticator confirmed; one session (``token_hash`` of the derived token) valid
  ``--session-days``.
- **Enrolments** by COPY, and ``enrolment_counters`` (enrolled = the rows, quota = the spec's)
  in the same transaction; ``first_use_deadline`` as ``subsidy_rules.enrolment`` computes it.
- **Top-ups**: real ledger transfers through ``ledger_core.LedgerEngine`` from the first bank
  partner's clearing account (code 201, as ``wallet.topups``): transfer id =
  ``topup_transfer_id(partner, bank_reference)`` with the reference derived from the secret
  and the index, and the ``topups`` row written by an engine effect in the batch's own
  transaction. Big submissions, several in flight.

Ledger accounts go in by COPY with exactly the columns ``ledger_core.create_accounts``
inserts; every satang moves by a transfer, so ``gwallet ledger verify`` stays clean. The keys
are the service's: ``Settings.from_env()`` (``GWALLET_PII_*``, ``GWALLET_PIN_PEPPER_KEYS``,
``GWALLET_BANK_PARTNER_SECRETS``, ``GWALLET_LEDGER_SIGNING_KEY_HEX``, or the development
keys in ``GWALLET_DATA_DIR``), so a service started with the same environment reads the data.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets as random_secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from tqdm import tqdm

from gwallet import audit, totp
from gwallet.idempotency import IdempotencyClaim
from gwallet.ids import format_id, parse_id
from gwallet.keys import load_signing_key
from gwallet.migrate import migrate
from gwallet.officials import (
    OfficialPrincipal,
    Role,
    TotpCodeInvalid,
    UsernameTaken,
    create_official,
)
from gwallet.officials import Q as OFFICIAL_QUERIES
from gwallet.settings import Settings
from ledger_core import (
    Account,
    CreateTransferResult,
    Effect,
    EngineConfig,
    LedgerEngine,
    LedgerOverloaded,
    LedgerUnavailable,
    Transfer,
    new_id,
)
from ledger_core.accounts import check_account
from loadtests import population as P
from merchant_api import keys as merchant_keys
from merchant_api import merchants as merchant_service
from subsidy_rules import service as programs
from subsidy_rules.enrolment import first_use_deadline
from subsidy_rules.periods import bangkok
from subsidy_rules.spec import BusinessType
from wallet import identity
from wallet.accounts import THB, TOP_UP, bank_clearing_account, topup_transfer_id, wallet_account
from wallet.auth import check_pin_strength, token_hash
from wallet.context import WalletContext, build_context, ensure_clearing_accounts

PROGRAM_CODE = "loadtest-half-half"
DEFAULT_CITIZENS = 1_000_000
DEFAULT_MERCHANTS = 100_000
DEFAULT_TOP_UP = 1_000_000  # satang: 10,000 THB per citizen
DEFAULT_SESSION_DAYS = 14
CAPS = {"daily": 20_000, "monthly": 100_000, "total": 240_000}  # 200 / 1,000 / 2,400 THB
SHARE_BP = 5_000  # the state pays 50 %
PERIOD_DAYS = 60  # registration and spending stay open until 60 days from today

CHUNK_ROWS = 20_000  # rows generated and copied per transaction
# Chunks copied at once: 300k citizens on a loaded machine took 59 s with 1, 39 s with 2, 49 s
# with 3 (noisy: other test runs shared the 2 cores).
COPIES_IN_FLIGHT = 2
TOPUP_SUBMISSION = 1_000  # transfers per engine submission
TOPUP_WORKERS = 12  # submissions in flight
ENGINE = EngineConfig(
    batch_window_ms=1.0,
    batch_max_transfers=4_000,
    batch_concurrency=3,
    queue_max_transfers=50_000,
)
POOL_MAX = ENGINE.batch_concurrency + 2  # PostgreSQL's connections are shared: stay small
SUBMIT_RETRIES = 5

OWNER_ID_OFFSET = 90_000_000_000  # merchants' owners: national IDs apart from citizens'
MAX_CITIZENS = OWNER_ID_OFFSET
_ADVISORY_LOCK = 0x67776C6473656564  # "gwldseed": one seed per database at a time
_PROVINCES = ("10", "11", "12", "13", "20", "30", "40", "50", "83", "90")
_CATEGORIES = ("street_food", "grocery", "restaurant", "coffee_shop", "fresh_market", "beverage")
_BANKS = ("002", "004", "006", "014", "025")
_BUSINESS_TYPES = (BusinessType.INDIVIDUAL, BusinessType.COOPERATIVE)
_EXCLUDED_GOODS = ["alcohol", "tobacco", "lottery", "gift_card", "prepaid"]
_BIRTH_BASE = date(1950, 1, 1)
_BIRTH_SPAN_DAYS = 18_262  # 50 years: everyone is an adult

ACCOUNT_COLUMNS = [
    "id", "ledger", "code", "debits_must_not_exceed_credits", "credits_must_not_exceed_debits",
    "user_data_128", "user_data_64", "user_data_32", "shared", "history",
]  # what ledger_core.create_accounts inserts (queries.sql, insert_accounts)
CITIZEN_COLUMNS = [
    "id", "national_id_digest", "national_id_digest_key_id", "national_id_encrypted",
    "phone_encrypted", "full_name_encrypted", "birth_date", "province_code", "district_code",
    "wallet_account_id", "pin_key_id", "pin_hash", "totp_secret_encrypted", "totp_confirmed_at",
    "created_at",
]
SESSION_COLUMNS = ["id", "citizen_id", "token_hash", "created_at", "expires_at"]
MERCHANT_COLUMNS = [
    "id", "status", "name", "business_type", "category", "province_code", "district_code",
    "owner_national_id_enc", "owner_national_id_index", "owner_national_id_index_key_id",
    "bank_code", "bank_account_enc", "citizen_payable_account_id", "state_payable_account_id",
    "created_at", "approved_at",
]
API_KEY_COLUMNS = ["id", "merchant_id", "key_hash", "key_hint", "created_at"]
ENROLMENT_COLUMNS = [
    "id", "program_id", "citizen_id", "program_version", "status", "enrolled_at",
    "first_use_deadline",
]
COUNT_ENROLMENTS = """
INSERT INTO enrolment_counters AS n (program_id, enrolled, quota) VALUES ($1, $2, $3)
ON CONFLICT (program_id) DO UPDATE SET enrolled = n.enrolled + excluded.enrolled,
                                       quota = excluded.quota
"""
TOPUP_COLUMNS = ["id", "partner_id", "bank_reference", "citizen_id", "wallet_account_id", "amount"]
VACUUMED = (
    "ledger_accounts", "ledger_transfers", "ledger_chain", "citizens", "citizen_sessions",
    "topups", "enrolments", "merchants", "merchant_api_keys",
)


class SeedRefused(Exception):
    """The database cannot be seeded (it already holds citizens, or a seed runs on it)."""


class SeedError(RuntimeError):
    """Something the seed wrote did not come out as the service would have it."""


@dataclass
class SeedReport:
    manifest: P.Manifest
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, in order
    total_seconds: float = 0.0
    database_bytes: int = 0
    top_up_partner: str = ""
    budget: int = 0
    quota: int = 0

    def lines(self) -> list[str]:
        m = self.manifest
        out = [
            f"seeded {m.citizens:,} citizens ({m.enrolled:,} enrolled, {m.top_up:,} satang "
            f"each from {self.top_up_partner}), {m.merchants:,} merchants, program "
            f"{m.program_id} (budget {self.budget:,} satang, quota {self.quota:,})",
        ]
        out += [f"  {name:<11} {seconds:9.1f} s" for name, seconds in self.phases.items()]
        out.append(f"  {'total':<11} {self.total_seconds:9.1f} s")
        out.append(f"  database size {self.database_bytes / 2**20:,.0f} MiB "
                   f"({self.database_bytes:,} bytes, pg_database_size)")
        return out


# --- what each seeded row holds (deterministic in the index) --------------------------------


def phone(i: int) -> str:
    """A Thai mobile number in the E.164 form that registration stores."""
    return f"+668{i % 100_000_000:08d}"


def full_name(i: int) -> str:
    return f"ประชาชนทดสอบ {i}"


def place(i: int) -> tuple[str, str]:
    province = _PROVINCES[i % len(_PROVINCES)]
    return province, f"{province}{(i // len(_PROVINCES)) % 9 + 1:02d}"


def _birth_patterns(day: date) -> set[str]:
    """The PINs ``wallet.auth.weak_pins(birth_date)`` adds for this birth date."""
    out = set()
    for year in (day.year, day.year + 543):
        yy, mm, dd = f"{year % 100:02d}", f"{day.month:02d}", f"{day.day:02d}"
        out.update({dd + mm + yy, yy + mm + dd, mm + dd + yy})
    return out


def birth_date(i: int, pin: str) -> date:
    """An adult's birth date that does not make the citizen's PIN weak."""
    day = _BIRTH_BASE + timedelta(days=(i * 7_919) % _BIRTH_SPAN_DAYS)
    while pin in _birth_patterns(day):
        day += timedelta(days=1)
    return day


def bank_reference(tag: str, i: int) -> str:
    return f"SEED-{tag}-{i}"


def run_tag(secret: str) -> str:
    """Short, secret-derived: keeps bank references of different seeds apart."""
    return hashlib.sha256(f"gwallet-seed\x1f{secret}".encode()).hexdigest()[:12]


def merchant_application(j: int) -> merchant_service.NewMerchant:
    province, district = place(j)
    name = f"Seed Shop {j}"
    return merchant_service.NewMerchant(
        name=name,
        owner_national_id=P.national_id(OWNER_ID_OFFSET + j),
        business_type=_BUSINESS_TYPES[j % len(_BUSINESS_TYPES)],
        category=_CATEGORIES[j % len(_CATEGORIES)],
        province_code=province,
        district_code=district,
        bank_account=merchant_service.BankAccount(
            bank_code=_BANKS[j % len(_BANKS)],
            account_number=f"1{j:09d}",
            account_name=f"{name} owner",
        ),
    )


def seed_spec(
    today: date, *, budget: int, quota: int, first_use_days: int | None
) -> dict[str, Any]:
    window = {
        "start_date": (today - timedelta(days=1)).isoformat(),
        "end_date": (today + timedelta(days=PERIOD_DAYS)).isoformat(),
        "hours": {"start": "00:00", "end": "24:00"},
    }
    spec: dict[str, Any] = {
        "spec_version": 1,
        "code": PROGRAM_CODE,
        "name_th": "คนละครึ่ง (ทดสอบโหลด)",
        "name_en": "Half-half (load test)",
        "kind": "co_payment",
        "budget_satang": budget,
        "quota": quota,
        "registration": window,
        "spending": window,
        "citizen_eligibility": {"min_age": 18, "nationalities": ["TH"]},
        "merchant_eligibility": {"business_types": [str(b) for b in _BUSINESS_TYPES]},
        "excluded_item_categories": _EXCLUDED_GOODS,
        "rule": {"kind": "co_payment", "share_bp": SHARE_BP, "caps": dict(CAPS)},
    }
    if first_use_days is not None:
        spec["first_use_deadline_days"] = first_use_days
    return spec


def _account_row(account: Account) -> tuple[Any, ...]:
    return (
        account.id, account.ledger, account.code, account.debits_must_not_exceed_credits,
        account.credits_must_not_exceed_debits, account.user_data_128, account.user_data_64,
        account.user_data_32, account.shared, account.history,
    )


# --- row generation (plain functions: they run in a thread while the previous chunk copies) ---


@dataclass(frozen=True, slots=True)
class _Rows:
    start: int
    stop: int
    tables: list[tuple[str, list[str], list[tuple[Any, ...]]]]


def citizen_rows(
    context: WalletContext, secret: str, start: int, stop: int, now: datetime, expires_at: datetime
) -> _Rows:
    keys = context.keys
    encrypt = keys.pii.encrypt
    digest = keys.lookup.digest
    lookup_key = keys.lookup.keyring.current
    hash_pin = keys.pins.hash
    accounts, citizens, sessions = [], [], []
    for i in range(start, stop):
        citizen_id = P.citizen_id(secret, i)
        wallet_id = P.wallet_account_id(secret, i)
        national_id = P.national_id(i)
        pin = P.citizen_pin(secret, i)
        province, district = place(i)
        pin_key_id, pin_hash = hash_pin(citizen_id, pin)
        accounts.append(_account_row(wallet_account(wallet_id, citizen_id)))
        citizens.append((
            citizen_id,
            digest(national_id, purpose=identity.NATIONAL_ID),
            lookup_key,
            encrypt(national_id, row_id=citizen_id, field="national_id"),
            encrypt(phone(i), row_id=citizen_id, field="phone"),
            encrypt(full_name(i), row_id=citizen_id, field="full_name"),
            birth_date(i, pin),
            province,
            district,
            wallet_id,
            pin_key_id,
            pin_hash,
            encrypt(P.citizen_totp_secret(secret, i), row_id=citizen_id, field="totp_secret"),
            now,
            now,
        ))
        sessions.append(
            (new_id(), citizen_id, token_hash(P.citizen_session_token(secret, i)), now, expires_at)
        )
    return _Rows(start, stop, [
        ("ledger_accounts", ACCOUNT_COLUMNS, accounts),
        ("citizens", CITIZEN_COLUMNS, citizens),
        ("citizen_sessions", SESSION_COLUMNS, sessions),
    ])


def merchant_rows(
    context: WalletContext, secret: str, start: int, stop: int, now: datetime
) -> _Rows:
    personal = merchant_service.PersonalDataKeys(pii=context.keys.pii, lookup=context.keys.lookup)
    encrypt = personal.pii.encrypt
    lookup_key = personal.lookup.keyring.current
    accounts, merchants, api_keys = [], [], []
    for j in range(start, stop):
        merchant_id = P.merchant_id(secret, j)
        new = merchant_application(j)
        payables = merchant_service.payable_accounts(merchant_id)
        accounts.extend(_account_row(a) for a in payables)
        merchants.append((
            merchant_id,
            merchant_service.MerchantStatus.APPROVED,
            new.name,
            str(new.business_type),
            new.category,
            new.province_code,
            new.district_code,
            encrypt(new.owner_national_id, row_id=merchant_id, field="owner_national_id"),
            personal.lookup.digest(
                new.owner_national_id, purpose=merchant_service.NATIONAL_ID_PURPOSE
            ),
            lookup_key,
            new.bank_account.bank_code,
            # The service's own encoding of the bank account (JSON, encrypted, row-bound).
            merchant_service.encrypt_bank_account(personal, merchant_id, new.bank_account),
            payables[0].id,
            payables[1].id,
            now,
            now,
        ))
        api_key = P.merchant_api_key(secret, j)
        api_keys.append((
            new_id(), merchant_id, merchant_keys.key_hash(api_key),
            api_key[-merchant_keys.HINT_LENGTH:], now,
        ))
    return _Rows(start, stop, [
        ("ledger_accounts", ACCOUNT_COLUMNS, accounts),
        ("merchants", MERCHANT_COLUMNS, merchants),
        ("merchant_api_keys", API_KEY_COLUMNS, api_keys),
    ])


def check_samples(context: WalletContext, secret: str, citizens: int, merchants: int) -> None:
    """The service's own validation of the first rows of each kind: what is seeded is what
    registration and a merchant application would accept."""
    now = datetime.now(UTC)
    for i in range(min(citizens, 50)):
        pin = P.citizen_pin(secret, i)
        province, district = place(i)
        done = identity.validate_registration(
            national_id=P.national_id(i), phone=phone(i), full_name=full_name(i),
            birth_date=birth_date(i, pin), province_code=province, district_code=district,
            pin=pin, now=now,
        )
        assert done.phone == phone(i), "the phone is stored in its E.164 form"
        check_pin_strength(pin, done.birth_date)
        wallet = wallet_account(P.wallet_account_id(secret, i), P.citizen_id(secret, i))
        assert check_account(wallet).name == "OK"
    for j in range(min(merchants, 50)):
        new = merchant_application(j)
        merchant_service.validate_application(
            name=new.name, owner_national_id=new.owner_national_id,
            business_type=new.business_type, category=new.category,
            province_code=new.province_code, district_code=new.district_code,
            bank_code=new.bank_account.bank_code,
            account_number=new.bank_account.account_number,
            account_name=new.bank_account.account_name,
        )
        for account in merchant_service.payable_accounts(P.merchant_id(secret, j)):
            assert check_account(account).name == "OK"


async def _pipelined(
    ranges: list[tuple[int, int]],
    make: Callable[[int, int], _Rows],
    consume: Callable[[_Rows], Awaitable[None]],
    copies: int = 1,
) -> None:
    """Generate chunks in a thread (one after another) while up to ``copies`` earlier chunks
    are being copied: PostgreSQL works meanwhile."""
    queue: asyncio.Queue[_Rows | None] = asyncio.Queue(maxsize=copies)

    async def produce() -> None:
        for start, stop in ranges:
            await queue.put(await asyncio.to_thread(make, start, stop))
        for _ in range(copies):
            await queue.put(None)

    async def copy() -> None:
        while (rows := await queue.get()) is not None:
            await consume(rows)

    tasks = [asyncio.ensure_future(produce())]
    tasks += [asyncio.ensure_future(copy()) for _ in range(copies)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _chunks(total: int, size: int = CHUNK_ROWS) -> list[tuple[int, int]]:
    return [(start, min(total, start + size)) for start in range(0, total, size)]


async def _copy(conn: asyncpg.Connection, rows: _Rows) -> None:
    for table, columns, records in rows.tables:
        if records:
            await conn.copy_records_to_table(table, columns=columns, records=records)


# --- the program, through the officials' service --------------------------------------------


async def _official(conn: asyncpg.Connection, secret: str, role: Role) -> OfficialPrincipal:
    username = P.official_username(secret, str(role))
    try:
        async with conn.transaction():
            await create_official(
                conn, username=username, role=role,
                password=P.official_password(secret, str(role)), created_by=None,
            )
    except UsernameTaken:
        pass
    row = await conn.fetchrow(OFFICIAL_QUERIES["official_by_username"], username)
    return OfficialPrincipal(official_id=row["id"], username=username, role=Role(row["role"]))


async def _with_fresh_code(
    conn: asyncpg.Connection, official: OfficialPrincipal, action: Any
) -> Any:
    """Run ``action(code)`` with this step's TOTP code, or the next one if it was used."""
    secret = await conn.fetchval("SELECT totp_secret FROM officials WHERE id = $1",
                                 official.official_id)
    step = totp.step_at(datetime.now(UTC))
    for candidate in (step, step + 1):
        try:
            return await action(totp.code_at_step(secret, candidate))
        except TotpCodeInvalid:
            continue
    raise SeedError("no fresh TOTP code for the checker; run the seed again on a fresh database")


async def create_program(
    pool: asyncpg.Pool, engine: LedgerEngine, secret: str, *, budget: int, quota: int,
    first_use_days: int | None,
) -> uuid.UUID:
    """Create, submit, approve, activate and fund the program (maker-checker, audited)."""
    async with pool.acquire() as conn:
        admin = await _official(conn, secret, Role.ADMIN)
        maker = await _official(conn, secret, Role.MAKER)
        checker = await _official(conn, secret, Role.CHECKER)
        spec = seed_spec(bangkok(datetime.now(UTC)).date(), budget=budget, quota=quota,
                         first_use_days=first_use_days)
        async with conn.transaction():
            program = await programs.create_program(conn, maker, spec)
            program_id = parse_id("prg", program.program_id)
            assert program_id is not None
            await programs.submit_version(conn, maker, program_id, 1)

        async def approve(code: str) -> Any:
            async with conn.transaction():
                return await programs.approve_version(
                    conn, checker, program_id, version=1,
                    content_hash_hex=program.content_hash, totp_code=code,
                )

        await _with_fresh_code(conn, checker, approve)
        async with conn.transaction():
            await programs.change_lifecycle(
                conn, admin, program_id, programs.LifecycleAction.ACTIVATE, "load test seed"
            )
            funding = await programs.request_funding(conn, maker, program_id, budget)
        funding_id = parse_id("fnd", funding.funding_id)
        assert funding_id is not None
        claim = IdempotencyClaim(
            scope=checker.principal_id,
            key=f"loadtest-seed-funding-{funding.funding_id}",
            fingerprint=hashlib.sha256(funding.funding_id.encode()).digest(),
        )

        async def approve_funding(code: str) -> Any:
            return await programs.approve_funding(
                pool, engine, checker, program_id, funding_id, totp_code=code, claim=claim
            )

        response = await _with_fresh_code(conn, checker, approve_funding)
    if response.status_code != 200:
        raise SeedError(f"funding was refused: {response.status_code} {response.body!r}")
    budget_account = programs.budget_account_id(program_id)
    balance = (await engine.lookup_accounts([budget_account]))[budget_account]
    if balance.balance_posted != budget:
        raise SeedError(f"the budget holds {balance.balance_posted}, not {budget}")
    return program_id


# --- top-ups, through the ledger engine -------------------------------------------------------


class _TopupCopyWriter:
    """The ``topups`` rows of a batch's successful top-ups, in the batch's own transaction
    (the rows ``wallet.topups`` inserts, by COPY: one statement per batch)."""

    async def write(self, conn: asyncpg.Connection, rows: list[list[tuple[Any, ...]]]) -> None:
        records = [record for submission in rows for record in submission]
        if records:
            await conn.copy_records_to_table("topups", columns=TOPUP_COLUMNS, records=records)


_TOPUP_WRITER = _TopupCopyWriter()


async def _submit(engine: LedgerEngine, transfers: list[Transfer],
                  effects: list[Effect]) -> list[CreateTransferResult]:
    """Submit, retrying a full queue or a lost database with the same ids (safe: transfer ids
    are idempotency keys; a retried top-up that committed is ``exists`` and writes no row)."""
    for attempt in range(SUBMIT_RETRIES + 1):
        try:
            return await engine.create_transfers(transfers, effects=effects)
        except (LedgerOverloaded, LedgerUnavailable):
            if attempt == SUBMIT_RETRIES:
                raise
            await asyncio.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


async def top_up_all(
    engine: LedgerEngine, secret: str, citizens: int, amount: int, partner: str,
    progress: tqdm,
) -> None:
    clearing = bank_clearing_account(partner).id
    tag = run_tag(secret)
    ranges = iter(_chunks(citizens, TOPUP_SUBMISSION))

    async def worker() -> None:
        for start, stop in ranges:
            transfers: list[Transfer] = []
            records: list[tuple[Any, ...]] = []
            for i in range(start, stop):
                reference = bank_reference(tag, i)
                transfer_id = topup_transfer_id(partner, reference)
                wallet_id = P.wallet_account_id(secret, i)
                transfers.append(Transfer(
                    id=transfer_id, debit_account_id=clearing, credit_account_id=wallet_id,
                    amount=amount, ledger=THB, code=TOP_UP,
                ))
                records.append(
                    (transfer_id, partner, reference, P.citizen_id(secret, i), wallet_id, amount)
                )

            def make_row(results: list[CreateTransferResult],
                         records: list[tuple[Any, ...]] = records) -> list[tuple[Any, ...]] | None:
                new = [r for r, result in zip(records, results, strict=True)
                       if result is CreateTransferResult.OK]
                return new or None

            results = await _submit(engine, transfers, [Effect(_TOPUP_WRITER, make_row)])
            refused = {r.name for r in results if not r.succeeded}
            if refused:
                raise SeedError(f"top-ups {start}..{stop - 1} refused: {sorted(refused)}")
            progress.update(stop - start)

    await asyncio.gather(*(worker() for _ in range(TOPUP_WORKERS)))


# --- the whole seed ---------------------------------------------------------------------------


async def seed(
    database_url: str,
    citizens: int = DEFAULT_CITIZENS,
    merchants: int = DEFAULT_MERCHANTS,
    *,
    secret: str | None = None,
    enrolled: int | None = None,
    top_up: int = DEFAULT_TOP_UP,
    budget: int | None = None,
    quota: int | None = None,
    session_days: int = DEFAULT_SESSION_DAYS,
    first_use_days: int | None = None,
    settings: Settings | None = None,
    manifest_path: Path | None = None,
    progress: bool = True,
) -> SeedReport:
    """Seed a fresh database (migrated here); return the manifest and the measured phases.

    ``settings``: where the keys come from (default ``Settings.from_env()``; its
    ``database_url`` is replaced by ``database_url``). Raises ``SeedRefused`` when the
    database already holds citizens or this seed's program, or another seed runs on it.
    """
    secret = secret or random_secrets.token_urlsafe(24)
    enrolled = citizens if enrolled is None else enrolled
    quota = max(citizens, enrolled) if quota is None else quota
    budget = max(citizens, 1) * CAPS["total"] if budget is None else budget
    if not 1 <= citizens <= MAX_CITIZENS:
        raise ValueError(f"citizens must be within 1..{MAX_CITIZENS}")
    if merchants < 1:
        raise ValueError("merchants must be at least 1")
    if not 0 <= enrolled <= citizens:
        raise ValueError("enrolled must be within 0..citizens")
    if not max(enrolled, 1) <= quota <= 10**9:
        raise ValueError("quota must be at least the enrolled (and 1), at most 10**9")
    if not 0 < budget <= 10**15:
        raise ValueError("budget must be within 1..10**15 satang")
    if not 0 <= top_up <= 10**12:
        raise ValueError("top_up must be within 0..10**12 satang (0: no top-ups)")
    if not 1 <= session_days <= 30:
        raise ValueError("session_days must be within 1..30")
    if first_use_days is not None and not 1 <= first_use_days <= 366:
        raise ValueError("first_use_days must be within 1..366")
    settings = msgspec.structs.replace(
        settings or Settings.from_env(), database_url=database_url
    )
    context = build_context(settings)
    signing_key = load_signing_key(settings)
    partner = context.partners.partner_ids[0]
    check_samples(context, secret, citizens, merchants)

    report = SeedReport(
        manifest=P.Manifest(
            secret=secret, citizens=citizens, merchants=merchants, enrolled=enrolled,
            program_id="", database_url=database_url, top_up=top_up,
        ),
        top_up_partner=partner, budget=budget, quota=quota,
    )
    started = time.perf_counter()
    phase_started = started

    def phase_done(name: str) -> None:
        nonlocal phase_started
        now_ = time.perf_counter()
        report.phases[name] = round(now_ - phase_started, 2)
        phase_started = now_

    def bar(desc: str, total: int, unit: str) -> tqdm:
        return tqdm(total=total, desc=f"{desc:<10}", unit=unit, unit_scale=True,
                    disable=not progress, file=sys.stderr, dynamic_ncols=True)

    await migrate(database_url)
    lock = await asyncpg.connect(database_url)
    try:
        if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", _ADVISORY_LOCK):
            raise SeedRefused("another seed is running on this database")
        if await lock.fetchval("SELECT EXISTS (SELECT 1 FROM citizens)"):
            raise SeedRefused("the database already has citizens: seed a fresh database")
        if await lock.fetchval(programs.Q["program_by_code"], PROGRAM_CODE) is not None:
            raise SeedRefused(
                f"the database already has the program {PROGRAM_CODE} (an earlier seed that "
                "stopped?): seed a fresh database"
            )
        phase_done("migrate")
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=POOL_MAX,
                                         command_timeout=600)
        assert pool is not None
        try:
            engine = LedgerEngine(
                pool,
                replace(ENGINE, checkpoint_every_batches=settings.ledger_checkpoint_every_batches),
                signing_key,
            )
            await engine.start()
            try:
                await _seed_on(pool, engine, context, report, secret=secret,
                               session_days=session_days, first_use_days=first_use_days,
                               phase_done=phase_done, bar=bar)
            finally:
                await engine.stop()
        finally:
            await pool.close()
        await lock.execute(f"VACUUM (ANALYZE) {', '.join(VACUUMED)}")
        phase_done("vacuum")
        report.database_bytes = await lock.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await lock.close()  # ends the session: the advisory lock goes with it
    report.total_seconds = round(time.perf_counter() - started, 2)
    if manifest_path is not None:
        report.manifest.write(manifest_path)
    return report


async def _seed_on(
    pool: asyncpg.Pool,
    engine: LedgerEngine,
    context: WalletContext,
    report: SeedReport,
    *,
    secret: str,
    session_days: int,
    first_use_days: int | None,
    phase_done: Callable[[str], None],
    bar: Callable[[str, int, str], tqdm],
) -> None:
    manifest = report.manifest
    citizens, merchants, enrolled = manifest.citizens, manifest.merchants, manifest.enrolled

    program_id = await create_program(pool, engine, secret, budget=report.budget,
                                      quota=report.quota, first_use_days=first_use_days)
    report.manifest = manifest = replace(manifest, program_id=format_id("prg", program_id))
    phase_done("program")

    now = datetime.now(UTC)
    with bar("merchants", merchants, "merchant") as progress:
        async def copy_merchants(rows: _Rows) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await _copy(conn, rows)
            progress.update(rows.stop - rows.start)

        await _pipelined(
            _chunks(merchants),
            lambda a, b: merchant_rows(context, secret, a, b, now),
            copy_merchants,
            COPIES_IN_FLIGHT,
        )
    phase_done("merchants")

    now = datetime.now(UTC)
    expires_at = now + timedelta(days=session_days)
    with bar("citizens", citizens, "citizen") as progress:
        async def copy_citizens(rows: _Rows) -> None:
            # A citizen's wallet account, row and session commit together.
            async with pool.acquire() as conn, conn.transaction():
                await _copy(conn, rows)
            progress.update(rows.stop - rows.start)

        await _pipelined(
            _chunks(citizens),
            lambda a, b: citizen_rows(context, secret, a, b, now, expires_at),
            copy_citizens,
            COPIES_IN_FLIGHT,
        )
    phase_done("citizens")

    now = datetime.now(UTC)
    version = await programs.version_at(pool, program_id, now)
    if version is None:
        raise SeedError("the program has no version in force")
    deadline = first_use_deadline(now, version)
    with bar("enrolments", enrolled, "enrolment") as progress:
        def enrolment_rows(start: int, stop: int) -> _Rows:
            return _Rows(start, stop, [("enrolments", ENROLMENT_COLUMNS, [
                (new_id(), program_id, P.citizen_id(secret, i), version.version, "active", now,
                 deadline)
                for i in range(start, stop)
            ])])

        async def copy_enrolments(rows: _Rows) -> None:
            # Counted as the enrolment statement counts them (enrolled = the active rows,
            # quota = the version in force's), in the transaction of the rows: the counter
            # is exact after every commit.
            async with pool.acquire() as conn, conn.transaction():
                await _copy(conn, rows)
                await conn.execute(COUNT_ENROLMENTS, program_id, rows.stop - rows.start,
                                   version.spec.quota)
            progress.update(rows.stop - rows.start)

        await _pipelined(_chunks(enrolled, 50_000), enrolment_rows, copy_enrolments,
                         COPIES_IN_FLIGHT)
    if enrolled == 0:
        await pool.execute(COUNT_ENROLMENTS, program_id, 0, version.spec.quota)
    phase_done("enrolments")

    if manifest.top_up > 0:
        await ensure_clearing_accounts(pool, context.partners)
        with bar("top-ups", citizens, "top-up") as progress:
            await top_up_all(engine, secret, citizens, manifest.top_up, report.top_up_partner,
                             progress)
        row = await pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(amount), 0) AS total FROM topups "
            "WHERE partner_id = $1 AND bank_reference LIKE $2",
            report.top_up_partner, f"SEED-{run_tag(secret)}-%",
        )
        if (row["n"], row["total"]) != (citizens, citizens * manifest.top_up):
            raise SeedError(f"top-ups: {row['n']} rows of {row['total']} satang")
    phase_done("top-ups")

    async with pool.acquire() as conn, conn.transaction():
        await audit.append(
            conn, actor_id=None, actor=audit.CLI_ACTOR, action="loadtest.seed",
            target_type="database", target_id=manifest.program_id,
            after={
                "citizens": citizens, "merchants": merchants, "enrolled": enrolled,
                "top_up_satang": manifest.top_up,
                "top_up_partner": report.top_up_partner, "program_id": manifest.program_id,
            },
        )


# --- the command ------------------------------------------------------------------------------


def _count(text: str) -> int:
    value = int(text.replace(",", "").replace("_", ""))
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.seed",
        description="Fill a fresh database for load tests (COPY + the ledger engine); write "
        "the manifest the load generator derives every credential from.",
    )
    p.add_argument("--database-url", required=True, help="postgresql://... (a fresh database)")
    p.add_argument("--citizens", type=_count, default=DEFAULT_CITIZENS,
                   help=f"default {DEFAULT_CITIZENS:,}")
    p.add_argument("--merchants", type=_count, default=DEFAULT_MERCHANTS,
                   help=f"default {DEFAULT_MERCHANTS:,}")
    p.add_argument("--manifest", type=Path, required=True, help="where to write the manifest JSON")
    p.add_argument("--secret", help="derives every credential (default: random)")
    p.add_argument("--enrolled", type=_count, help="citizens 0..K-1 enrolled (default: all)")
    p.add_argument("--top-up", type=_count, default=DEFAULT_TOP_UP,
                   help=f"satang per citizen (default {DEFAULT_TOP_UP:,}; 0: none)")
    p.add_argument("--budget", type=_count,
                   help="program budget in satang "
                   f"(default: citizens x the total cap, {CAPS['total']:,})")
    p.add_argument("--quota", type=_count,
                   help="program quota (default: max(citizens, enrolled))")
    p.add_argument("--session-days", type=_count, default=DEFAULT_SESSION_DAYS,
                   help="seeded sessions stay valid this many days (1..30)")
    p.add_argument("--first-use-days", type=_count,
                   help="the spec's first_use_deadline_days (default: none, rights never lapse)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = asyncio.run(seed(
            args.database_url, args.citizens, args.merchants, secret=args.secret,
            enrolled=args.enrolled, top_up=args.top_up, budget=args.budget, quota=args.quota,
            session_days=args.session_days, first_use_days=args.first_use_days,
            manifest_path=args.manifest, progress=not args.quiet,
        ))
    except SeedRefused as refused:
        print(f"seed refused: {refused}", file=sys.stderr)
        return 2
    except ValueError as invalid:
        print(f"seed: {invalid}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(f"  manifest {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
