"""Settlement: T+1, in two legs (issue 5).

Nouns: a **run** (``run_...``: one business date, at most once), its **legs** (``stl_...``: per
merchant, the ``citizen_share`` leg and the ``state_share`` leg, each with a status), a **bank
clearing account** (ledger code 302, one per bank code, shared, no limit flag: what the bank
owes merchants of this bank), and a **settlement file** (CSV, one per bank per run).

Calendar (Asia/Bangkok): business days are Monday to Friday minus ``settlement_holidays``. A
run for business date D settles what the merchants' sales dated D *or earlier* still owe: in
the normal course that is D and the non-business days just before it (weekend sales are
carried to Monday's run), and a date that was never run is picked up by the next run. A run
for a non-business date is 422 ``not_a_business_day``; for today or a later date, 422
``business_date_not_over``. The legs are paid on the next business day (the settlement
day): the citizen share from ``settlement_citizen_leg_time`` (02:00), the state share from
``settlement_state_leg_time`` (17:30).

Money (all through the ledger engine):
- a leg's amount is what the merchant is owed for the sales dated up to D, net of every
  refund so far, less what earlier legs took, and never more than the payable account holds
  (decided under the batch's lock, ``ReserveLegs``); so a refund made after a settlement is
  netted in the next one and nothing is ever settled twice;
- the run *reserves* each leg: a pending transfer payable -> bank clearing (code 500 citizen
  share, 501 state share), whose id is derived from (business date, merchant, leg), so a run
  built again finds it (``exists``); the leg row is written in the same batch transaction;
- a leg whose time has come is *paid*: its pending transfer is posted (status ``paid``). The
  run pays what is due as it finishes, so a run made after 17:30 of the settlement day pays
  both legs at once; later, ``POST /v1/admin/settlements/runs/{id}/pay-due`` or running
  ``gwallet settlement run --date D`` again pays what has become due (cron: 02:00 and 17:30);
- a suspended merchant's state share is **held**: recorded with its amount, no money moves
  (at the run), or its reservation is voided (if the suspension came between the run and
  17:30). The next run after reinstatement releases every held leg into a new state leg
  (held legs become ``released``, naming it).

Files: per bank, a CSV (see ``settlement_file``) made when the run is built, with the account
numbers decrypted only to write it; stored AES-GCM encrypted (the personal-data keys) and
served to admins and checkers, each download an audit entry.

Reconciliation (``reconcile``): per merchant and share, every satang paid (payments less
refunds) equals the satang settled + reserved (scheduled) + held + still payable, where the
last comes from the ledger's payable account; and the ledger's totals agree with the
payments, refunds and legs tables, and the clearing accounts with the legs.

Webhooks: ``settlement.paid``, one event per paid leg, written to the outbox
(``merchant_api.webhooks.enqueue_events``) in the batch transaction that posts its money.

One settlement action at a time (build, pay): a PostgreSQL advisory lock; another one is
409 ``settlement_run_in_progress``.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import io
import logging
import re
import uuid
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from gwallet import audit
from gwallet.admission import keeps_session_state
from gwallet.idempotency import IDEMPOTENCY_ERRORS, IdempotencyClaim
from gwallet.ids import format_id, parse_id
from gwallet.officials import ALL_ROLES, AUTH_ERRORS, OfficialPrincipal, Role, official_guard, roles
from gwallet.officials import principal_of as official_of
from gwallet.pagination import PAGINATED, Page, PageParams
from gwallet.pii import PiiCipher
from gwallet.problems import (
    DomainError,
    FieldError,
    InvalidParameter,
    NotFound,
    RateLimited,
    Unauthenticated,
    problem_responses,
)
from gwallet.request import RequestBody
from gwallet.settings import Settings
from ledger_core import (
    Account,
    BatchView,
    Computed,
    CreateAccountResult,
    CreateTransferResult,
    Effect,
    LedgerEngine,
    Transfer,
    TransferFlags,
    create_accounts,
    new_id,
)
from ledger_core.sql import load_queries
from merchant_api import keys, webhooks
from merchant_api.http import OPTIONAL_IDEMPOTENCY
from merchant_api.merchants import MerchantStatus
from subsidy_rules.periods import BANGKOK, bangkok

Q = load_queries(Path(__file__).with_name("queries_settlement.sql"))
_log = logging.getLogger("gwallet.merchant_api.settlement")

THB = 764  # the baht ledger, by its ISO 4217 number
BANK_CLEARING = 302  # account code: a bank's settlement clearing account, one per bank code
CITIZEN_SHARE = "citizen_share"
STATE_SHARE = "state_share"
LEGS = (CITIZEN_SHARE, STATE_SHARE)
# Transfer codes: a leg's money, payable -> bank clearing (pending, then posted or voided).
LEG_TRANSFER_CODES = {CITIZEN_SHARE: 500, STATE_SHARE: 501}

COVERED_DAYS_MAX = 31  # non-business days carried into one run at most (Songkran is ~5)
NEXT_BUSINESS_DAY_SEARCH_DAYS = 366
PAY_PAGES_MAX = 100_000  # pages of due legs paid by one call at most (a guard, never reached)
MISMATCHES_MAX = 100  # mismatches listed by a reconciliation report (all are counted)
HOLIDAYS_MAX = 1_000
# "gsettle" as a number: the advisory lock of settlement actions.
_LOCK_KEY = 0x67736574746C65
# Fixed namespace of the clearing accounts', legs' and transfers' derived ids. Never change it.
_NAMESPACE = uuid.UUID("0d6b8e0c-3c1f-4a57-9f0e-5e2b7a61c9d4")
_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_BANK_CODE = re.compile(r"[0-9]{3}")

FILE_COLUMNS = (
    "record_type", "merchant_id", "bank_code", "account_number", "account_name", "leg",
    "amount_satang", "amount_baht", "payment_count", "settlement_id",
)


# --- refusals -------------------------------------------------------------------------------


class NotABusinessDay(DomainError):
    """Settlement runs are for business days: Monday to Friday, Bangkok, not a public holiday
    (weekend and holiday sales are carried into the next business day's run)."""

    status = 422
    code = "not_a_business_day"
    title = "Not a business day"


class BusinessDateNotOver(DomainError):
    """A business date is settled T+1: once it is over in Bangkok, not on the day or before."""

    status = 422
    code = "business_date_not_over"
    title = "Business date not over"


class SettlementRunInProgress(DomainError):
    """One settlement action (building a run, paying due legs) runs at a time; retry later."""

    status = 409
    code = "settlement_run_in_progress"
    title = "Settlement run in progress"
    retry_after_seconds = 5


class SettlementSettingsError(ValueError):
    """A settlement setting is malformed or out of its range."""


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SettlementConfig:
    holidays: frozenset[date] = frozenset()
    citizen_leg_time: time = time(2, 0)
    state_leg_time: time = time(17, 30)
    submissions_in_flight: int = 100  # merchants' reservations queued at once
    pay_chunk_legs: int = 500  # legs paid per ledger submission (<= the engine's batch)


def parse_config(
    *, holidays: str, citizen_leg_time: str, state_leg_time: str, submissions_in_flight: int,
    batch_max_transfers: int,
) -> SettlementConfig:
    days: set[date] = set()
    for part in (p.strip() for p in holidays.split(",")):
        if not part:
            continue
        try:
            days.add(date.fromisoformat(part))
        except ValueError:
            raise SettlementSettingsError(
                f"GWALLET_SETTLEMENT_HOLIDAYS: {part!r} is not a YYYY-MM-DD date") from None
    if len(days) > HOLIDAYS_MAX:
        raise SettlementSettingsError(f"GWALLET_SETTLEMENT_HOLIDAYS: at most {HOLIDAYS_MAX}")
    times = []
    for name, text in (("citizen", citizen_leg_time), ("state", state_leg_time)):
        match = _TIME.fullmatch(text)
        if match is None:
            raise SettlementSettingsError(
                f"GWALLET_SETTLEMENT_{name.upper()}_LEG_TIME: expected HH:MM, not {text!r}")
        times.append(time(int(match[1]), int(match[2])))
    if not 1 <= submissions_in_flight <= 10_000:
        raise SettlementSettingsError("GWALLET_SETTLEMENT_SUBMISSIONS_IN_FLIGHT: 1..10000")
    return SettlementConfig(
        holidays=frozenset(days), citizen_leg_time=times[0], state_leg_time=times[1],
        submissions_in_flight=submissions_in_flight,
        pay_chunk_legs=max(1, min(500, batch_max_transfers)),
    )


@functools.lru_cache(maxsize=8)
def config_of(settings: Settings) -> SettlementConfig:
    return parse_config(
        holidays=settings.settlement_holidays,
        citizen_leg_time=settings.settlement_citizen_leg_time,
        state_leg_time=settings.settlement_state_leg_time,
        submissions_in_flight=settings.settlement_submissions_in_flight,
        batch_max_transfers=settings.ledger_batch_max_transfers,
    )


# --- the calendar (pure) --------------------------------------------------------------------


def is_business_day(day: date, holidays: frozenset[date]) -> bool:
    return day.weekday() < 5 and day not in holidays


def next_business_day(day: date, holidays: frozenset[date]) -> date:
    for offset in range(1, NEXT_BUSINESS_DAY_SEARCH_DAYS + 1):
        candidate = day + timedelta(days=offset)
        if is_business_day(candidate, holidays):
            return candidate
    raise SettlementSettingsError("no business day within a year: check the holidays")


def carried_dates(day: date, holidays: frozenset[date]) -> list[date]:
    """``day`` and the non-business days just before it, whose sales its run carries."""
    dates = [day]
    while len(dates) < COVERED_DAYS_MAX and not is_business_day(dates[0] - timedelta(days=1),
                                                                  holidays):
        dates.insert(0, dates[0] - timedelta(days=1))
    return dates


@dataclass(frozen=True, slots=True)
class Schedule:
    covered_from: date
    settlement_date: date
    citizen_at: datetime
    state_at: datetime


def schedule(business_date: date, config: SettlementConfig) -> Schedule:
    day = next_business_day(business_date, config.holidays)
    return Schedule(
        covered_from=carried_dates(business_date, config.holidays)[0],
        settlement_date=day,
        citizen_at=datetime.combine(day, config.citizen_leg_time, tzinfo=BANGKOK),
        state_at=datetime.combine(day, config.state_leg_time, tzinfo=BANGKOK),
    )


def check_business_date(business_date: date, now: datetime, config: SettlementConfig) -> None:
    if not is_business_day(business_date, config.holidays):
        kind = "a public holiday" if business_date in config.holidays else "a weekend day"
        raise NotABusinessDay(
            f"{business_date.isoformat()} is {kind}: its sales are carried into the run of "
            f"{next_business_day(business_date, config.holidays).isoformat()}")
    today = bangkok(now).date()
    if business_date >= today:
        raise BusinessDateNotOver(
            f"{business_date.isoformat()} is not over yet in Bangkok (today is "
            f"{today.isoformat()})")


# --- amounts (pure) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MerchantDue:
    """One merchant's row of the ``dues`` query."""

    merchant_id: uuid.UUID
    status: str
    bank_code: str
    citizen_payable_account_id: uuid.UUID
    state_payable_account_id: uuid.UUID
    citizen_due: int  # owed citizen share, net of refunds and of earlier legs
    state_new: int  # owed state share not yet in any leg (held ones aside)
    state_held: int  # held state legs waiting for a reinstatement
    held_ids: tuple[uuid.UUID, ...]
    payment_count: int
    covered_from: date

    @classmethod
    def of(cls, row: asyncpg.Record) -> MerchantDue:
        return cls(
            merchant_id=row["merchant_id"], status=row["status"], bank_code=row["bank_code"],
            citizen_payable_account_id=row["citizen_payable_account_id"],
            state_payable_account_id=row["state_payable_account_id"],
            citizen_due=row["citizen_due"], state_new=row["state_new"],
            state_held=row["state_held"], held_ids=tuple(row["held_ids"]),
            payment_count=row["payment_count"], covered_from=row["covered_from"],
        )

    def payable(self, leg: str) -> uuid.UUID:
        return (self.citizen_payable_account_id if leg == CITIZEN_SHARE
                else self.state_payable_account_id)


@dataclass(frozen=True, slots=True)
class LegPlan:
    leg: str
    due: int  # > 0
    hold: bool  # a suspended merchant's state share: recorded, no money moves
    releases: tuple[uuid.UUID, ...] = ()  # held legs carried into this one
    released: int = 0  # their total


def plan_legs(due: MerchantDue) -> list[LegPlan]:
    """The legs a merchant gets in a run (the rules, one per branch):

    - the citizen share owed is paid whatever the merchant's status;
    - a suspended merchant's new state share is held;
    - an approved merchant's state share is what is owed plus every held leg (released).
    """
    plans: list[LegPlan] = []
    if due.citizen_due > 0:
        plans.append(LegPlan(CITIZEN_SHARE, due.citizen_due, hold=False))
    if due.status == MerchantStatus.SUSPENDED:
        if due.state_new > 0:
            plans.append(LegPlan(STATE_SHARE, due.state_new, hold=True))
    else:
        owed = due.state_new + due.state_held
        if owed > 0:
            releases = due.held_ids if due.state_held else ()
            plans.append(LegPlan(STATE_SHARE, owed, hold=False, releases=releases,
                                 released=due.state_held))
    return plans


def settle_amount(due: int, headroom: int | None) -> int:
    """What a leg moves: what is owed, never more than the payable holds unreserved."""
    assert due > 0
    return max(0, min(due, headroom or 0))


# --- ids ------------------------------------------------------------------------------------


def clearing_account(bank_code: str) -> Account:
    assert _BANK_CODE.fullmatch(bank_code), bank_code
    return Account(
        id=uuid.uuid5(_NAMESPACE, f"bank_clearing/{bank_code}"),
        ledger=THB,
        code=BANK_CLEARING,
        shared=True,  # credited by every leg of the bank's merchants
        user_data_32=int(bank_code),
    )


def leg_transfer_id(business_date: date, merchant_id: uuid.UUID, leg: str, step: str) -> uuid.UUID:
    """``step``: reserve (the pending transfer), post or void. Derived from (business date,
    merchant, leg): a run built again submits the same ids and the ledger answers exists."""
    assert step in ("reserve", "post", "void")
    return uuid.uuid5(_NAMESPACE, f"{business_date.isoformat()}/{merchant_id}/{leg}/{step}")


def leg_id(run_id: uuid.UUID, merchant_id: uuid.UUID, leg: str) -> uuid.UUID:
    # The run id is random, so leg ids cannot be guessed from a merchant's id.
    return uuid.uuid5(_NAMESPACE, f"{run_id}/{merchant_id}/{leg}/leg")


def _yyyymmdd(day: date) -> int:
    return day.year * 10_000 + day.month * 100 + day.day


# --- the settlement file (pure) -------------------------------------------------------------


def baht(satang: int) -> str:
    """Satang as baht with 2 decimals, by integer arithmetic (12350 -> "123.50")."""
    assert satang >= 0
    return f"{satang // 100}.{satang % 100:02d}"


@dataclass(frozen=True, slots=True)
class FileLine:
    merchant_id: str  # mer_...
    bank_code: str
    account_number: str
    account_name: str
    leg: str
    amount: int
    payment_count: int
    settlement_id: str  # stl_...


@dataclass(frozen=True, slots=True)
class SettlementFile:
    content: bytes
    line_count: int
    total_amount: int
    control_sum: str
    sha256: bytes


def settlement_file(lines: Sequence[FileLine]) -> SettlementFile:
    """The CSV a bank receives (UTF-8, CRLF, RFC 4180 quoting):

    - a header row: the column names ``FILE_COLUMNS``;
    - one ``D`` row per leg: merchant id, bank code, account number, account name, leg,
      amount in satang, amount in baht (2 decimals), the leg's payment count, settlement id;
    - a trailer ``T,<rows>,<total satang>,<total baht>,<control sum>``, where the control
      sum is ``sha256:`` + the hex SHA-256 of every byte before the trailer (header and
      ``D`` rows, line endings included).
    """
    body = io.StringIO()
    writer = csv.writer(body, lineterminator="\r\n")
    writer.writerow(FILE_COLUMNS)
    total = 0
    for line in lines:
        assert line.amount > 0
        total += line.amount
        writer.writerow((
            "D", line.merchant_id, line.bank_code, line.account_number, line.account_name,
            line.leg, line.amount, baht(line.amount), line.payment_count, line.settlement_id,
        ))
    head = body.getvalue().encode("utf-8")
    control_sum = "sha256:" + hashlib.sha256(head).hexdigest()
    trailer = io.StringIO()
    csv.writer(trailer, lineterminator="\r\n").writerow(
        ("T", len(lines), total, baht(total), control_sum))
    content = head + trailer.getvalue().encode("utf-8")
    return SettlementFile(content=content, line_count=len(lines), total_amount=total,
                          control_sum=control_sum, sha256=hashlib.sha256(content).digest())


# --- the service ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settler:
    """What settlement needs: the database, the ledger engine, the personal-data cipher (bank
    accounts) and the calendar."""

    pool: asyncpg.Pool
    engine: LedgerEngine
    pii: PiiCipher
    config: SettlementConfig


@asynccontextmanager
async def _exclusive(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """The settlement lock (session-level, on a connection held for the duration)."""
    async with pool.acquire() as conn:
        keeps_session_state(conn)  # reset on release even if the unlock below never runs
        if not await conn.fetchval(Q["try_lock_settlement"], _LOCK_KEY):
            raise SettlementRunInProgress("another settlement action is running; retry shortly")
        try:
            yield
        finally:
            await conn.fetchval(Q["unlock_settlement"], _LOCK_KEY)


def _actor(official: OfficialPrincipal | None) -> tuple[uuid.UUID | None, str]:
    if official is None:
        return None, audit.CLI_ACTOR
    return official.official_id, official.username


@dataclass(frozen=True, slots=True)
class RunOutcome:
    created: bool
    run: RunView


async def run_settlement(
    settler: Settler, business_date: date, now: datetime, official: OfficialPrincipal | None
) -> RunOutcome:
    """Create (or find) the run of ``business_date``, build its legs and files if that is
    not done, and pay the legs that are due at ``now``. Safe to repeat."""
    check_business_date(business_date, now, settler.config)
    async with _exclusive(settler.pool):
        async with settler.pool.acquire() as conn, conn.transaction():
            run = await conn.fetchrow(Q["run_by_date"], business_date)
            created = run is None
            if run is None:
                plan = schedule(business_date, settler.config)
                actor_id, actor = _actor(official)
                run = await conn.fetchrow(
                    Q["insert_run"], new_id(), business_date, plan.covered_from,
                    plan.settlement_date, plan.citizen_at, plan.state_at, actor, now)
                assert run is not None, "runs are created under the settlement lock"
                await audit.append(
                    conn, actor_id=actor_id, actor=actor, action="settlement.run",
                    target_type="settlement_run", target_id=format_id("run", run["id"]),
                    after={"business_date": business_date.isoformat(),
                           "settlement_date": plan.settlement_date.isoformat()})
        if run["status"] == "building":
            await _build(settler, run, now)
        await _pay_due(settler, run["id"], now, official)
    return RunOutcome(created=created, run=await run_view(settler.pool, run["id"]))


async def pay_due(
    settler: Settler, run_id: uuid.UUID, now: datetime, official: OfficialPrincipal | None
) -> RunView:
    """Pay (or hold) the run's legs whose time has come at ``now``."""
    async with _exclusive(settler.pool):
        if await settler.pool.fetchrow(Q["run"], run_id) is None:
            raise NotFound("no settlement run has this id")
        await _pay_due(settler, run_id, now, official)
    return await run_view(settler.pool, run_id)


class SettlementIncomplete(RuntimeError):
    """The ledger refused a leg's transfer: a bug (amounts are capped under the lock)."""


async def _build(settler: Settler, run: asyncpg.Record, now: datetime) -> None:
    rows = await settler.pool.fetch(Q["dues"], run["business_date"], run["id"])
    dues = [MerchantDue.of(row) for row in rows]
    clearing = {code: clearing_account(code) for code in sorted({d.bank_code for d in dues})}
    if clearing:
        results = await create_accounts(settler.pool, list(clearing.values()))
        for account, result in zip(clearing.values(), results, strict=True):
            if result not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
                raise SettlementIncomplete(f"clearing account {account.id}: {result.name}")
    failures: list[str] = []
    step = settler.config.submissions_in_flight
    for start in range(0, len(dues), step):
        outcomes = await asyncio.gather(*(
            _reserve(settler, run, due, clearing[due.bank_code].id, now)
            for due in dues[start:start + step]))
        failures.extend(f for outcome in outcomes for f in outcome)
    if failures:
        _log.error("settlement legs refused by the ledger", extra={"failures": failures[:20]})
        raise SettlementIncomplete(f"{len(failures)} legs were refused: {failures[:5]}")
    await _write_files(settler, run, now)
    async with settler.pool.acquire() as conn, conn.transaction():
        await conn.fetchrow(Q["finish_run"], run["id"], now)


class ReserveLegs:
    """A merchant's legs of one run, decided under the batch's lock: each leg moves what is
    owed, cut to what its payable holds unreserved (a refund may have taken some since the
    dues were read)."""

    max_transfers = 2

    def __init__(self, run: asyncpg.Record, due: MerchantDue, clearing_id: uuid.UUID) -> None:
        self.run = run
        self.due = due
        self.clearing_id = clearing_id
        self.plans = plan_legs(due)
        self.ids = {p.leg: leg_transfer_id(run["business_date"], due.merchant_id, p.leg,
                                           "reserve") for p in self.plans if not p.hold}
        self.amounts: dict[str, int] = {}

    def accounts(self) -> Iterable[uuid.UUID]:
        return [self.due.citizen_payable_account_id, self.due.state_payable_account_id,
                self.clearing_id]

    def transfer_ids(self) -> Iterable[uuid.UUID]:
        return list(self.ids.values())

    def row_keys(self) -> Iterable[tuple[Any, Hashable]]:
        return ()

    def compute(self, view: BatchView) -> Computed:
        transfers: list[Transfer] = []
        exact: set[uuid.UUID] = set()
        amounts: dict[str, int] = {}
        for plan in self.plans:
            if plan.hold:
                amounts[plan.leg] = plan.due
                continue
            payable = self.due.payable(plan.leg)
            account = view.account(payable)
            amount = settle_amount(plan.due, None if account is None else account.headroom)
            amounts[plan.leg] = amount
            if amount < plan.due:
                exact.add(payable)  # cut to the exact total: decided again if it moved
            if amount:
                transfers.append(Transfer(
                    id=self.ids[plan.leg], debit_account_id=payable,
                    credit_account_id=self.clearing_id, amount=amount, ledger=THB,
                    code=LEG_TRANSFER_CODES[plan.leg], flags=int(TransferFlags.PENDING),
                    user_data_128=leg_id(self.run["id"], self.due.merchant_id, plan.leg),
                    user_data_32=_yyyymmdd(self.run["business_date"]),
                ))
        if len(transfers) == 2:  # both legs or neither: a leg row exists iff its transfer does
            transfers[0] = msgspec.structs.replace(
                transfers[0], flags=transfers[0].flags | TransferFlags.LINKED)
        self.amounts = amounts
        return Computed(transfers, {}, frozenset(exact))


@dataclass(slots=True)
class _LegRows:
    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    releases: list[tuple[list[uuid.UUID], uuid.UUID]] = field(default_factory=list)


class _LegWriter:
    """Writes a batch's leg rows (and releases of held legs) in the batch's transaction."""

    async def write(self, conn: asyncpg.Connection, rows: list[_LegRows]) -> None:
        inserts = [row for group in rows for row in group.inserts]
        if inserts:
            await conn.executemany(Q["insert_leg"], inserts)
        for group in rows:
            for held_ids, into in group.releases:
                await conn.execute(Q["release_held_legs"], held_ids, into)


_LEG_WRITER = _LegWriter()


async def _reserve(
    settler: Settler, run: asyncpg.Record, due: MerchantDue, clearing_id: uuid.UUID,
    now: datetime,
) -> list[str]:
    """Reserve one merchant's legs; return what failed (nothing, unless there is a bug)."""
    computation = ReserveLegs(run, due, clearing_id)

    def make_rows(results: list[CreateTransferResult]) -> _LegRows | None:
        if not all(result.succeeded for result in results):
            return None  # reported below; nothing is written for this merchant
        out = _LegRows()
        for plan in computation.plans:
            amount = computation.amounts.get(plan.leg, 0)
            if amount <= 0:
                continue
            the_id = leg_id(run["id"], due.merchant_id, plan.leg)
            scheduled_at = (run["citizen_scheduled_at"] if plan.leg == CITIZEN_SHARE
                            else run["state_scheduled_at"])
            out.inserts.append((
                the_id, run["id"], due.merchant_id, plan.leg,
                "held" if plan.hold else "scheduled", amount,
                min(plan.released, amount), due.payment_count,
                min(due.covered_from, run["business_date"]), run["business_date"],
                due.bank_code, due.payable(plan.leg), clearing_id,
                None if plan.hold else computation.ids[plan.leg], scheduled_at,
                now if plan.hold else None, now,
            ))
            if plan.releases:
                out.releases.append((list(plan.releases), the_id))
        return out if out.inserts else None

    _, results = await settler.engine.submit(
        computation, effects=[Effect(_LEG_WRITER, make_rows)])
    return [f"{format_id('mer', due.merchant_id)}: {result.name.lower()}"
            for result in results if not result.succeeded]


async def _write_files(settler: Settler, run: asyncpg.Record, now: datetime) -> None:
    run_id = run["id"]
    for record in await settler.pool.fetch(Q["run_bank_codes"], run_id):
        bank_code = record["bank_code"]
        lines = []
        for row in await settler.pool.fetch(Q["file_lines"], run_id, bank_code):
            account = msgspec.json.decode(settler.pii.decrypt(
                row["bank_account_enc"], row_id=row["merchant_id"], field="bank_account"))
            lines.append(FileLine(
                merchant_id=format_id("mer", row["merchant_id"]), bank_code=bank_code,
                account_number=account["account_number"], account_name=account["account_name"],
                leg=row["leg"], amount=row["amount"], payment_count=row["payment_count"],
                settlement_id=format_id("stl", row["id"]),
            ))
        made = settlement_file(lines)
        await settler.pool.execute(
            Q["insert_file"], run_id, bank_code,
            settler.pii.encrypt(made.content.decode("utf-8"), row_id=run_id,
                                field=f"settlement_file.{bank_code}"),
            made.sha256, made.control_sum, made.line_count, made.total_amount, now)


@dataclass(slots=True)
class _PayRows:
    paid: list[uuid.UUID] = field(default_factory=list)
    held: list[uuid.UUID] = field(default_factory=list)
    at: datetime | None = None


class _PayWriter:
    """Marks legs paid or held in the batch's transaction that posts or voids them, and emits
    ``settlement.paid`` for the paid ones in that same transaction."""

    async def write(self, conn: asyncpg.Connection, rows: list[_PayRows]) -> None:
        for group in rows:
            if group.paid:
                paid = await conn.fetch(Q["mark_legs_paid"], group.paid, group.at)
                await emit_settlement_paid(conn, paid)
            if group.held:
                await conn.fetch(Q["mark_legs_held"], group.held, group.at)


_PAY_WRITER = _PayWriter()


async def emit_settlement_paid(conn: asyncpg.Connection, paid_legs: list[asyncpg.Record]) -> None:
    """``settlement.paid``, one event per leg just marked paid, written to the webhook outbox
    in this transaction (the batch that posts the legs' money): an event exists exactly when
    its leg is paid, and its id is derived from the leg's, so it is written once."""
    await webhooks.enqueue_events(conn, settlement_paid_events(paid_legs))


def settlement_paid_events(paid_legs: list[asyncpg.Record]) -> list[webhooks.NewEvent]:
    """The ``settlement.paid`` events (one per paid leg), in the merchant's own terms."""
    return [webhooks.new_event(
        "settlement.paid", merchant_id=leg["merchant_id"], subject_id=leg["id"],
        created_at=leg["paid_at"], data={
            "settlement_id": format_id("stl", leg["id"]),
            "merchant_id": format_id("mer", leg["merchant_id"]),
            "leg": leg["leg"],
            "status": "paid",
            "amount": leg["amount"],
            "currency": "THB",
            "business_date": leg["business_date"].isoformat(),
            "paid_at": leg["paid_at"].isoformat(),
        },
    ) for leg in paid_legs]


def _pay_rows(
    rows: list[asyncpg.Record], transfers: list[Transfer], now: datetime, box: list[_PayRows],
    results: list[CreateTransferResult],
) -> _PayRows:
    out = _PayRows(at=now)
    for row, transfer, result in zip(rows, transfers, results, strict=True):
        if result.succeeded:
            voided = transfer.flags & TransferFlags.VOID_PENDING_TRANSFER
            (out.held if voided else out.paid).append(row["id"])
    box[:] = [out]  # the last decision of the batch is the one committed
    return out


async def _pay_due(
    settler: Settler, run_id: uuid.UUID, now: datetime, official: OfficialPrincipal | None
) -> None:
    paid = held = 0
    for _ in range(PAY_PAGES_MAX):
        rows = await settler.pool.fetch(Q["due_legs"], run_id, now, settler.config.pay_chunk_legs)
        if not rows:
            break
        transfers = []
        for row in rows:
            void = row["leg"] == STATE_SHARE and row["merchant_status"] == MerchantStatus.SUSPENDED
            transfers.append(Transfer(
                id=leg_transfer_id(row["business_date"], row["merchant_id"], row["leg"],
                                   "void" if void else "post"),
                debit_account_id=None, credit_account_id=None, amount=row["amount"],
                flags=int(TransferFlags.VOID_PENDING_TRANSFER if void
                          else TransferFlags.POST_PENDING_TRANSFER),
                pending_id=row["reserve_transfer_id"], user_data_128=row["id"],
            ))
        box: list[_PayRows] = []
        make_rows = functools.partial(_pay_rows, rows, transfers, now, box)
        results = await settler.engine.create_transfers(
            transfers, effects=[Effect(_PAY_WRITER, make_rows)])
        refused = [(row["id"], r) for row, r in zip(rows, results, strict=True) if not r.succeeded]
        if refused:
            _log.error("settlement legs could not be paid", extra={
                "legs": [format_id("stl", i) for i, _ in refused[:20]],
                "results": [r.name.lower() for _, r in refused[:20]]})
            raise SettlementIncomplete(f"{len(refused)} legs could not be paid")
        paid += len(box[0].paid) if box else 0
        held += len(box[0].held) if box else 0
    if paid or held:
        actor_id, actor = _actor(official)
        async with settler.pool.acquire() as conn, conn.transaction():
            await audit.append(
                conn, actor_id=actor_id, actor=actor, action="settlement.pay_due",
                target_type="settlement_run", target_id=format_id("run", run_id),
                after={"legs_paid": paid, "legs_held": held, "at": now.isoformat()})


# --- reading runs ---------------------------------------------------------------------------


class LegTotals(msgspec.Struct, frozen=True, kw_only=True):
    """Satang of one leg kind of a run, by status."""

    scheduled: int = 0
    paid: int = 0
    held: int = 0
    released: int = 0


class RunFile(msgspec.Struct, frozen=True, kw_only=True):
    bank_code: str
    line_count: int
    total_amount: int
    currency: str = "THB"
    control_sum: str
    sha256: str
    url: str


class RunView(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    business_date: date
    covered_dates: list[date]  # the business date and the non-business days carried into it
    settlement_date: date
    citizen_share_scheduled_at: datetime  # Asia/Bangkok
    state_share_scheduled_at: datetime
    status: str  # building | built
    merchant_count: int
    currency: str = "THB"
    citizen_share: LegTotals
    state_share: LegTotals
    files: list[RunFile]
    created_by: str
    created_at: datetime
    built_at: datetime | None


async def run_view(db: asyncpg.Pool | asyncpg.Connection, run_id: uuid.UUID) -> RunView:
    run = await db.fetchrow(Q["run"], run_id)
    if run is None:
        raise NotFound("no settlement run has this id")
    return await _run_view(db, run)


async def _run_view(db: asyncpg.Pool | asyncpg.Connection, run: asyncpg.Record) -> RunView:
    totals: dict[str, dict[str, int]] = {CITIZEN_SHARE: {}, STATE_SHARE: {}}
    for row in await db.fetch(Q["run_totals"], run["id"]):
        totals[row["leg"]][row["status"]] = row["amount"]
    public_id = format_id("run", run["id"])
    files = [RunFile(
        bank_code=row["bank_code"], line_count=row["line_count"],
        total_amount=row["total_amount"], control_sum=row["control_sum"],
        sha256=bytes(row["sha256"]).hex(),
        url=f"/v1/admin/settlements/runs/{public_id}/files/{row['bank_code']}",
    ) for row in await db.fetch(Q["run_files"], run["id"])]
    days = (run["business_date"] - run["covered_from"]).days
    return RunView(
        run_id=public_id, business_date=run["business_date"],
        covered_dates=[run["covered_from"] + timedelta(days=n) for n in range(days + 1)],
        settlement_date=run["settlement_date"],
        citizen_share_scheduled_at=bangkok(run["citizen_scheduled_at"]),
        state_share_scheduled_at=bangkok(run["state_scheduled_at"]),
        status=run["status"],
        merchant_count=await db.fetchval(Q["run_merchant_count"], run["id"]),
        citizen_share=LegTotals(**totals[CITIZEN_SHARE]),
        state_share=LegTotals(**totals[STATE_SHARE]),
        files=files, created_by=run["created_by"], created_at=run["created_at"],
        built_at=run["built_at"],
    )


async def list_runs(pool: asyncpg.Pool, page: PageParams) -> Page[RunView]:
    before = None
    if page.starting_after is not None:
        value = parse_id("run", page.starting_after)
        row = None if value is None else await pool.fetchrow(Q["run"], value)
        if row is None:
            raise _bad_cursor("not a settlement run")
        before = row["business_date"]
    rows = await pool.fetch(Q["list_runs"], before, page.limit + 1)
    return Page.of([await _run_view(pool, row) for row in rows], page)


def _bad_cursor(message: str) -> InvalidParameter:
    return InvalidParameter(f"starting_after: {message}",
                            errors=[FieldError(field="starting_after", message=message)])


async def read_file(
    pool: asyncpg.Pool, pii: PiiCipher, run_id: uuid.UUID, bank_code: str,
    official: OfficialPrincipal,
) -> bytes:
    """A run's file for one bank, decrypted; the read is an audit entry (it holds account
    numbers)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q["run_file"], run_id, bank_code)
        if row is None:
            raise NotFound("this run has no file for this bank")
        content = pii.decrypt(row["content_enc"], row_id=run_id,
                              field=f"settlement_file.{bank_code}").encode("utf-8")
        assert hashlib.sha256(content).digest() == bytes(row["sha256"])
        await audit.append(
            conn, actor_id=official.official_id, actor=official.username,
            action="settlement.file_read", target_type="settlement_run",
            target_id=format_id("run", run_id), after={"bank_code": bank_code})
    return content


# --- the merchants' view ----------------------------------------------------------------------


class SettlementView(msgspec.Struct, frozen=True, kw_only=True):
    """One leg of a merchant's T+1 settlement."""

    settlement_id: str  # stl_...
    leg: str  # citizen_share | state_share
    status: str  # scheduled | paid | held | released
    amount: int
    currency: str = "THB"
    business_date: date  # the run's business date
    covered_from: date  # the sales dates covered (Asia/Bangkok)
    covered_to: date
    payment_count: int
    released_amount: int  # the part of amount that is earlier held legs released into it
    released_by: str | None  # a released (held) leg: the leg that paid it out
    bank_code: str
    scheduled_at: datetime  # Asia/Bangkok: 02:00 or 17:30 of the settlement day
    paid_at: datetime | None
    held_at: datetime | None
    created_at: datetime


def settlement_view(row: asyncpg.Record) -> SettlementView:
    return SettlementView(
        settlement_id=format_id("stl", row["id"]), leg=row["leg"], status=row["status"],
        amount=row["amount"], business_date=row["business_date"],
        covered_from=row["covered_from"], covered_to=row["covered_to"],
        payment_count=row["payment_count"], released_amount=row["released_amount"],
        released_by=None if row["released_by"] is None else format_id("stl", row["released_by"]),
        bank_code=row["bank_code"], scheduled_at=bangkok(row["scheduled_at"]),
        paid_at=row["paid_at"], held_at=row["held_at"], created_at=row["created_at"],
    )


async def merchant_settlements(
    pool: asyncpg.Pool, merchant_id: uuid.UUID, page: PageParams
) -> Page[SettlementView]:
    position: tuple[datetime | None, uuid.UUID | None] = (None, None)
    if page.starting_after is not None:
        value = parse_id("stl", page.starting_after)
        row = None if value is None else await pool.fetchrow(
            Q["merchant_leg_position"], value, merchant_id)
        if row is None:
            raise _bad_cursor("not a settlement of this merchant")
        position = (row["created_at"], row["id"])
    rows = await pool.fetch(Q["list_merchant_legs"], merchant_id, *position, page.limit + 1)
    return Page.of([settlement_view(row) for row in rows], page)


async def merchant_settlement(
    pool: asyncpg.Pool, merchant_id: uuid.UUID, settlement_id: str
) -> SettlementView:
    value = parse_id("stl", settlement_id)
    row = None if value is None else await pool.fetchrow(Q["merchant_leg"], value, merchant_id)
    if row is None:  # another merchant's leg too: its existence is not disclosed
        raise NotFound("no settlement of this merchant has this id")
    return settlement_view(row)


# --- reconciliation ---------------------------------------------------------------------------


class ShareBalance(msgspec.Struct, frozen=True, kw_only=True):
    """One share of a merchant (or of all): paid_net = settled + scheduled + held +
    still_payable."""

    paid: int  # payments
    refunded: int  # refunds
    paid_net: int
    settled: int  # legs paid
    scheduled: int  # legs reserved, not yet paid
    held: int  # state legs held
    still_payable: int  # in the payable account, in no leg (from the ledger)


class MerchantReconciliation(msgspec.Struct, frozen=True, kw_only=True):
    merchant_id: str
    ok: bool
    citizen_share: ShareBalance
    state_share: ShareBalance


class Mismatch(msgspec.Struct, frozen=True, kw_only=True):
    merchant_id: str | None  # None: a check over all merchants
    leg: str | None
    check: str
    expected: int
    actual: int


class ClearingCheck(msgspec.Struct, frozen=True, kw_only=True):
    credits_posted: int  # the bank clearing accounts (302), from the ledger
    credits_pending: int
    settled: int  # the legs
    scheduled: int


class ReconciliationReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    checked_at: datetime
    merchant_count: int
    currency: str = "THB"
    citizen_share: ShareBalance
    state_share: ShareBalance
    clearing: ClearingCheck
    mismatch_count: int
    mismatches: list[Mismatch]  # the first MISMATCHES_MAX
    merchants: list[MerchantReconciliation]  # only when one merchant was asked for


def reconcile_share(row: Any, leg: str) -> tuple[ShareBalance, list[tuple[str, int, int]]]:
    """One share of one merchant (pure): the balance, and every broken check as
    ``(check, expected, actual)``:

    - ``paid_equals_settled_held_and_payable``: payments - refunds = settled + scheduled +
      held + still payable (the headline; still payable comes from the ledger);
    - ``ledger_credits``: the payable's posted credits = the payments' shares;
    - ``ledger_debits``: its posted debits = the refunds' shares + the legs paid;
    - ``ledger_reserved``: its pending debits = the legs scheduled;
    - ``held_within_payable``: held and scheduled legs fit in what the payable holds.
    """
    share = "citizen" if leg == CITIZEN_SHARE else "state"
    paid, refunded = row[f"{share}_paid"], row[f"{share}_refunded"]
    settled, scheduled, held = (row[f"{share}_settled"], row[f"{share}_scheduled"],
                                row[f"{share}_held"])
    credits, debits = row[f"{share}_credits_posted"], row[f"{share}_debits_posted"]
    pending = row[f"{share}_debits_pending"]
    still_payable = credits - debits - scheduled - held
    balance = ShareBalance(paid=paid, refunded=refunded, paid_net=paid - refunded,
                           settled=settled, scheduled=scheduled, held=held,
                           still_payable=still_payable)
    broken = []
    for check, expected, actual in (
        ("paid_equals_settled_held_and_payable", paid - refunded,
         settled + scheduled + held + still_payable),
        ("ledger_credits", paid, credits),
        ("ledger_debits", refunded + settled, debits),
        ("ledger_reserved", scheduled, pending),
    ):
        if expected != actual:
            broken.append((check, expected, actual))
    if still_payable < 0:
        broken.append(("held_within_payable", 0, still_payable))
    return balance, broken


def _sum(balances: Iterable[ShareBalance]) -> ShareBalance:
    names = ("paid", "refunded", "paid_net", "settled", "scheduled", "held", "still_payable")
    totals = dict.fromkeys(names, 0)
    for balance in balances:
        for name in names:
            totals[name] += getattr(balance, name)
    return ShareBalance(**totals)


async def reconcile(
    pool: asyncpg.Pool, now: datetime, merchant_id: uuid.UUID | None = None
) -> ReconciliationReport:
    """Prove that every satang paid is settled, held or still payable, per merchant and in
    total, from the payments and refunds tables, the legs and the ledger; list mismatches.
    One REPEATABLE READ snapshot, so money moving meanwhile cannot look like a mismatch."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        rows = await conn.fetch(Q["reconciliation"], merchant_id)
        clearing_row = await conn.fetchrow(Q["clearing_totals"])
    mismatches: list[Mismatch] = []
    count = 0
    per_leg: dict[str, list[ShareBalance]] = {CITIZEN_SHARE: [], STATE_SHARE: []}
    merchants = []
    for row in rows:
        public = format_id("mer", row["merchant_id"])
        balances = {}
        for leg in LEGS:
            balance, broken = reconcile_share(row, leg)
            balances[leg] = balance
            per_leg[leg].append(balance)
            count += len(broken)
            mismatches.extend(Mismatch(merchant_id=public, leg=leg, check=check,
                                       expected=expected, actual=actual)
                              for check, expected, actual in broken)
        if merchant_id is not None:
            merchants.append(MerchantReconciliation(
                merchant_id=public, ok=not any(m.merchant_id == public for m in mismatches),
                citizen_share=balances[CITIZEN_SHARE], state_share=balances[STATE_SHARE]))
    clearing = ClearingCheck(
        credits_posted=clearing_row["credits_posted"],
        credits_pending=clearing_row["credits_pending"],
        settled=clearing_row["settled"], scheduled=clearing_row["scheduled"])
    if merchant_id is None:  # the clearing accounts hold every merchant's legs
        for check, expected, actual in (
            ("clearing_credits", clearing.settled, clearing.credits_posted),
            ("clearing_reserved", clearing.scheduled, clearing.credits_pending),
        ):
            if expected != actual:
                count += 1
                mismatches.append(Mismatch(merchant_id=None, leg=None, check=check,
                                           expected=expected, actual=actual))
    return ReconciliationReport(
        ok=count == 0, checked_at=now, merchant_count=len(rows),
        citizen_share=_sum(per_leg[CITIZEN_SHARE]), state_share=_sum(per_leg[STATE_SHARE]),
        clearing=clearing, mismatch_count=count, mismatches=mismatches[:MISMATCHES_MAX],
        merchants=merchants,
    )


# --- HTTP -------------------------------------------------------------------------------------


class RunIn(RequestBody):
    business_date: date  # YYYY-MM-DD, a business day that is over (Asia/Bangkok)


def _settler(state: State) -> Settler:
    return Settler(pool=state.pool, engine=state.engine, pii=state.merchants.keys.pii,
                   config=config_of(state.settings))


def _run_id(text: str) -> uuid.UUID:
    value = parse_id("run", text)
    if value is None:
        raise NotFound("no settlement run has this id")
    return value


_RUNNERS = (Role.ADMIN, Role.CHECKER)


class AdminSettlementsController(Controller):
    path = "/v1/admin/settlements"
    tags = ["back office: settlement"]
    guards = [official_guard]

    @post(
        "/runs",
        status_code=201,
        opt=roles(*_RUNNERS),
        dependencies={"claim": OPTIONAL_IDEMPOTENCY},
        responses=problem_responses(*AUTH_ERRORS, NotABusinessDay, BusinessDateNotOver,
                                    SettlementRunInProgress, *IDEMPOTENCY_ERRORS),
    )
    async def create_run(
        self, data: JSONBody[RunIn], claim: NamedDependency[IdempotencyClaim | None],
        request: Request[Any, Any, Any], state: State,
    ) -> Response[RunView]:
        """Build the T+1 settlement of a business date: 201 the first time, 200 with the same
        run afterwards (idempotent per date; an Idempotency-Key is optional). Legs whose time
        has come are paid at once; the others by ``pay-due`` (or by running this again)."""
        outcome = await run_settlement(
            _settler(state), data.business_date, state.merchants.clock(), official_of(request))
        status = 201 if outcome.created else 200
        if claim is None:
            return Response(outcome.run, status_code=status)
        async with state.pool.acquire() as conn, conn.transaction():
            return await claim.respond(conn, status, outcome.run)

    @get("/runs", opt=roles(*ALL_ROLES), dependencies={"page": PAGINATED},
         responses=problem_responses(*AUTH_ERRORS))
    async def list_runs(self, page: NamedDependency[PageParams], state: State) -> Page[RunView]:
        """Settlement runs, newest business date first (``starting_after=run_...``)."""
        return await list_runs(state.pool, page)

    @get("/runs/{run_id:str}", opt=roles(*ALL_ROLES),
         responses=problem_responses(*AUTH_ERRORS, NotFound))
    async def get_run(self, run_id: FromPath[str], state: State) -> RunView:
        """One run: its dates, totals per leg and status, and its files."""
        return await run_view(state.pool, _run_id(run_id))

    @post("/runs/{run_id:str}/pay-due", status_code=200, opt=roles(*_RUNNERS),
          responses=problem_responses(*AUTH_ERRORS, NotFound, SettlementRunInProgress))
    async def pay_due(
        self, run_id: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> RunView:
        """Pay the run's legs whose time has come (citizen share from 02:00, state share
        from 17:30 of the settlement day); a suspended merchant's state leg is held instead.
        Safe to repeat."""
        return await pay_due(_settler(state), _run_id(run_id), state.merchants.clock(),
                             official_of(request))

    @get("/runs/{run_id:str}/files/{bank_code:str}", opt=roles(*_RUNNERS),
         media_type="text/csv; charset=utf-8",
         responses=problem_responses(*AUTH_ERRORS, NotFound))
    async def get_file(
        self, run_id: FromPath[str], bank_code: FromPath[str], request: Request[Any, Any, Any],
        state: State,
    ) -> Response[bytes]:
        """The run's settlement file for one bank (CSV: header, one row per leg, trailer
        with totals and the control sum). It holds account numbers: each read is audited."""
        if not _BANK_CODE.fullmatch(bank_code):
            raise NotFound("this run has no file for this bank")
        content = await read_file(state.pool, state.merchants.keys.pii, _run_id(run_id),
                                  bank_code, official_of(request))
        return Response(content, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="settlement-{run_id}-{bank_code}.csv"'})

    @get("/reconciliation", opt=roles(Role.AUDITOR, Role.ADMIN),
         responses=problem_responses(*AUTH_ERRORS, InvalidParameter))
    async def reconciliation(
        self, state: State,
        merchant_id: Annotated[str | None, QueryParameter(
            max_length=64, description="only this merchant (mer_...), with its balances")] = None,
    ) -> ReconciliationReport:
        """Every satang paid (payments less refunds) = settled + scheduled + held + still
        payable, per merchant and share and in total, checked against the ledger; ``ok``
        false lists the mismatches."""
        merchant = None
        if merchant_id is not None:
            merchant = parse_id("mer", merchant_id)
            if merchant is None:
                raise InvalidParameter("merchant_id: not an id of the form mer_...", errors=[
                    FieldError(field="merchant_id", message="not an id of the form mer_...")])
        return await reconcile(state.pool, state.merchants.clock(), merchant)


class MerchantSettlementsController(Controller):
    path = "/v1/merchant/settlements"
    tags = ["merchants: settlement"]
    guards = [keys.merchant_guard]

    @get("/", dependencies={"page": PAGINATED},
         responses=problem_responses(Unauthenticated, RateLimited))
    async def list_settlements(
        self, page: NamedDependency[PageParams], request: Request[Any, Any, Any], state: State
    ) -> Page[SettlementView]:
        """The merchant's settlement legs, newest first (``starting_after=stl_...``)."""
        return await merchant_settlements(state.pool, keys.principal_of(request).merchant_id,
                                          page)

    @get("/{settlement_id:str}", responses=problem_responses(Unauthenticated, RateLimited,
                                                              NotFound))
    async def get_settlement(
        self, settlement_id: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> SettlementView:
        """One of the merchant's settlement legs (another merchant's is a 404)."""
        return await merchant_settlement(state.pool, keys.principal_of(request).merchant_id,
                                         settlement_id)


def settlement_routes(settings: Settings) -> list[type[Controller]]:
    """The controllers, after checking the settlement settings (a bad one fails at start)."""
    config_of(settings)
    return [AdminSettlementsController, MerchantSettlementsController]
