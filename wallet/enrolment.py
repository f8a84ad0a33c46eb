"""Enrolment: first come, first served within a program's quota; what is left of each program.

Rules (the pure part is ``subsidy_rules.enrolment.decide_enrolment``): registration hours
and dates, then the citizen's eligibility, then the quota of the version in force.

**The quota is PostgreSQL's to decide, exactly.** One transaction, one statement: insert the
enrolment (``ON CONFLICT (program_id, citizen_id) DO NOTHING``), and only if it was inserted,
count it in ``enrolment_counters`` with ``enrolled = enrolled + 1 WHERE enrolled < quota``.
If the count refused, the transaction rolls back (the enrolment with it) and the answer is
409 ``quota_exhausted``. The counter's row lock serialises the last places; the unique key
makes a repeated or concurrent duplicate enrolment of one citizen return the one enrolment
and never count twice.

**Refusing fast.** Once PostgreSQL has said "full", a flag in Redis (``enrolment_full_flag_
seconds``) answers the following requests without touching the counter; a snapshot read of
the counter does the same without a lock when Redis is down. Before any refusal the
citizen's own enrolment is looked up, so a citizen who is enrolled always gets the
enrolment back, never a refusal (a flag is set only after every counted enrolment has
committed, so that lookup sees them). Once a program is known to be full, 409 comes before
the eligibility check: the fast path asks nothing about the citizen.

**Forfeited rights return to the quota** (DOMAIN: re-opened to new people). A right not
used by its ``first_use_deadline`` (``subsidy_rules.enrolment.first_use_deadline``, stored
at enrolment; ``is_forfeited`` is the same comparison) is marked ``forfeited`` and the
counter is lowered by as many, in one transaction (``release_forfeited``). It runs on demand
(when an enrolment finds the program full, one request at a time per program under an
advisory lock) and every minute from the wallet's housekeeping; it clears the Redis flag.
The citizen whose right lapsed keeps the forfeited row and cannot enrol again. A right
counts as used once ``enrolments.first_used_at`` is set or a payment with the program was
made before the deadline (``payments``, 0003). The payment path should set ``first_used_at``
and check ``status = 'active'`` under the enrolment's row lock, so that a payment racing the
release cannot spend a right that is being forfeited.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis

from gwallet.ids import format_id
from gwallet.problems import DomainError, FieldError
from ledger_core import new_id
from ledger_core.sql import load_queries
from subsidy_rules import service as programs
from subsidy_rules.decision import ProgramVersion
from subsidy_rules.eligibility import CitizenProfile
from subsidy_rules.enrolment import EnrolmentRefusal, EnrolmentRefusalReason, decide_enrolment
from subsidy_rules.periods import usage_periods
from subsidy_rules.spec import CoPaymentRule, GrantRule

_log = logging.getLogger("gwallet.wallet.enrolment")

Q = load_queries(Path(__file__).with_name("queries_enrolment.sql"))

PROGRAM_CACHE_SECONDS = 1.0  # a program's status and version in force, per process
RELEASE_BATCH_ROWS = 10_000
# A right unused by its first-use deadline stops paying at the deadline (the payment path
# ignores it from then on), but its place returns to the quota only this much later. A payment
# decided just before the deadline is still on its way to the ledger for a few seconds at
# most (the request timeout, the batch's retries); releasing only after the grace means such
# a payment, once committed, is always seen by the release's "used before the deadline" test,
# so no right is both paid with and given back. The payment's batch also refuses to mark a
# right that was forfeited (``wallet.paying.UsageStore``), should a payment ever take longer.
FORFEIT_GRACE = timedelta(minutes=5)
_ADVISORY_CLASS = 0x656E726C  # "enrl": the forfeiture release of one program
_HIDDEN_STATUSES = frozenset({"draft", "submitted"})


class QuotaExhausted(DomainError):
    """The program's quota of enrolments is reached (first come, first served)."""

    status = 409
    code = "quota_exhausted"
    title = "Quota exhausted"


class NotEligible(DomainError):
    """The citizen does not meet the program's eligibility rules; the reason is given."""

    status = 403
    code = "not_eligible"
    title = "Not eligible"


class RegistrationClosed(DomainError):
    """The program's registration period is over (or the program is closed)."""

    status = 422
    code = "registration_closed"
    title = "Registration closed"


class RegistrationNotOpen(DomainError):
    """Registration is not open now: not yet, outside today's hours, or the program paused."""

    status = 422
    code = "registration_not_open"
    title = "Registration not open"


class ProgramNotFound(DomainError):
    """No program open to citizens has this id."""

    status = 404
    code = "not_found"
    title = "Not found"


ENROLMENT_ERRORS: tuple[type[DomainError], ...] = (
    ProgramNotFound,
    QuotaExhausted,
    NotEligible,
    RegistrationClosed,
    RegistrationNotOpen,
)


# --- programs as citizens see them ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProgramState:
    program_id: uuid.UUID
    code: str
    status: str  # programs.status (0004)
    version: ProgramVersion | None  # the approved version in force now, if any


_cache: dict[uuid.UUID, tuple[float, ProgramState | None]] = {}
_loading: dict[uuid.UUID, asyncio.Future[ProgramState | None]] = {}
_CACHE_MAX = 1_000


async def program_state(
    db: asyncpg.Pool | asyncpg.Connection, program_id: uuid.UUID, now: datetime
) -> ProgramState | None:
    """The program and its version in force, cached for ``PROGRAM_CACHE_SECONDS``: decoding
    a spec costs more than a storm of enrolments can afford per request. Concurrent misses
    share one load."""
    hit = _cache.get(program_id)
    if hit is not None and time.monotonic() - hit[0] < PROGRAM_CACHE_SECONDS:
        return hit[1]
    loading = _loading.get(program_id)
    if loading is not None:
        try:
            return await asyncio.shield(loading)
        except asyncio.CancelledError:
            if not loading.cancelled():
                raise  # this request was cancelled, not the load
            # The loading request was cancelled (its client left): load here instead.
    future: asyncio.Future[ProgramState | None] = asyncio.get_running_loop().create_future()
    _loading[program_id] = future
    try:
        row = await db.fetchrow(Q["program"], program_id)
        state = None
        if row is not None:
            version = await programs.version_at(db, program_id, now)
            state = ProgramState(program_id, row["code"], row["status"], version)
    except Exception as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
        raise
    except BaseException:
        future.cancel()
        raise
    finally:
        if _loading.get(program_id) is future:
            del _loading[program_id]
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[program_id] = (time.monotonic(), state)
    future.set_result(state)
    return state


# Process-local memory of PostgreSQL's answers, so that a storm's refusals stop costing a
# query: "full" (until a monotonic time), and when forfeited rights were last looked for.
_full_until: dict[uuid.UUID, float] = {}
_release_tried_at: dict[uuid.UUID, float] = {}
RELEASE_RETRY_SECONDS = 1.0


def forget_programs() -> None:
    """Drop what this process remembers of programs (tests that change a program's rows)."""
    global _redis_skip_until
    _redis_skip_until = 0.0
    _cache.clear()
    _full_until.clear()
    _release_tried_at.clear()


# --- enrolling ------------------------------------------------------------------------------


class EnrolmentOut(msgspec.Struct, frozen=True):
    enrolment_id: str
    program_id: str
    citizen_id: str
    status: str  # active, forfeited
    program_version: int
    enrolled_at: datetime
    first_use_deadline: datetime | None
    first_used_at: datetime | None


def _out(row: asyncpg.Record) -> EnrolmentOut:
    return EnrolmentOut(
        enrolment_id=format_id("enr", row["id"]),
        program_id=format_id("prg", row["program_id"]),
        citizen_id=format_id("cit", row["citizen_id"]),
        status=row["status"],
        program_version=row["program_version"],
        enrolled_at=row["enrolled_at"],
        first_use_deadline=row["first_use_deadline"],
        first_used_at=row["first_used_at"],
    )


@dataclass(frozen=True, slots=True)
class Enrolled:
    enrolment: EnrolmentOut
    created: bool  # False: the citizen's existing enrolment, returned again


def _full_flag(program_id: uuid.UUID) -> str:
    return f"gwallet:enrolment:full:{program_id}"


# After a Redis failure, the flag is not asked for a while: a hanging Redis must not hold a
# PostgreSQL connection for its timeout on every enrolment. One warning per interval.
REDIS_BACKOFF_SECONDS = 5.0
_redis_skip_until = 0.0


def _redis_failed(what: str, exc: Exception) -> None:
    global _redis_skip_until
    if time.monotonic() >= _redis_skip_until:
        _log.warning(
            "enrolment full flag %s: redis unavailable (%s); not asked for %.0f s",
            what, type(exc).__name__, REDIS_BACKOFF_SECONDS,
        )
    _redis_skip_until = time.monotonic() + REDIS_BACKOFF_SECONDS


def _redis_usable() -> bool:
    return time.monotonic() >= _redis_skip_until


async def _flag_is_set(redis: Redis | None, program_id: uuid.UUID) -> bool:
    if redis is None or not _redis_usable():
        return False
    try:
        return bool(await redis.exists(_full_flag(program_id)))
    except Exception as exc:  # noqa: BLE001 - Redis only speeds refusals up
        _redis_failed("unread", exc)
        return False


async def _set_flag(redis: Redis | None, program_id: uuid.UUID, seconds: float) -> None:
    if redis is None or seconds <= 0 or not _redis_usable():
        return
    try:
        await redis.set(_full_flag(program_id), b"1", px=max(1, int(seconds * 1000)))
    except Exception as exc:  # noqa: BLE001
        _redis_failed("not set", exc)


async def _clear_flag(redis: Redis | None, program_id: uuid.UUID) -> None:
    if redis is None:
        return
    try:  # tried even while backing off: a stale flag would refuse for its lifetime
        await redis.delete(_full_flag(program_id))
    except Exception as exc:  # noqa: BLE001 - the flag expires by itself
        _redis_failed("not cleared", exc)


def _refusal_error(refusal: EnrolmentRefusal) -> DomainError:
    if refusal.reason is EnrolmentRefusalReason.REGISTRATION_CLOSED:
        return RegistrationClosed(refusal.detail)
    if refusal.reason is EnrolmentRefusalReason.REGISTRATION_NOT_OPEN:
        return RegistrationNotOpen(refusal.detail)
    facts = ", ".join(f"{k} {v}" for k, v in refusal.facts.items())
    reason = str(refusal.ineligibility)
    return NotEligible(
        f"{refusal.detail} ({facts})" if facts else refusal.detail,
        errors=[FieldError(field=f"eligibility.{reason}", message=refusal.detail)],
    )


def _time_refusal(state: ProgramState, now: datetime) -> DomainError | None:
    """The refusals that depend on the program and the clock only (no citizen)."""
    if state.status == "closed":
        return RegistrationClosed("the program is closed")
    if state.status != "active" or state.version is None:
        return RegistrationNotOpen(f"the program is {state.status}, not open for enrolment")
    window = state.version.spec.registration
    # decide_enrolment with any profile gives the time refusals first (its order).
    probe = CitizenProfile(
        birth_date=window.start_date, nationality="TH", province_code="00", district_code="0000"
    )
    decision = decide_enrolment(state.version, probe, now)
    if isinstance(decision, EnrolmentRefusal) and decision.reason in (
        EnrolmentRefusalReason.REGISTRATION_CLOSED,
        EnrolmentRefusalReason.REGISTRATION_NOT_OPEN,
    ):
        return _refusal_error(decision)
    return None


def _known_full(program_id: uuid.UUID) -> bool:
    until = _full_until.get(program_id)
    return until is not None and time.monotonic() < until


async def _found_full(redis: Redis | None, program_id: uuid.UUID, seconds: float) -> None:
    if seconds > 0:
        _full_until[program_id] = time.monotonic() + seconds
    await _set_flag(redis, program_id, seconds)


def _may_make_room(program_id: uuid.UUID) -> bool:
    tried = _release_tried_at.get(program_id)
    return tried is None or time.monotonic() - tried >= RELEASE_RETRY_SECONDS


async def _make_room(pool: asyncpg.Pool, redis: Redis | None, program_id: uuid.UUID, now: datetime) -> bool:
    """Release lapsed rights of a full program; at most once a second per process."""
    if not _may_make_room(program_id):
        return False
    _release_tried_at[program_id] = time.monotonic()
    return await release_forfeited(pool, program_id, now, redis) > 0


async def enrol(
    pool: asyncpg.Pool,
    redis: Redis | None,
    *,
    citizen_id: uuid.UUID,
    program_id: uuid.UUID,
    now: datetime,
    full_flag_seconds: float,
) -> Enrolled:
    """Enrol the citizen, or return their enrolment, or refuse (the error says why).

    ``redis`` None: no shared "full" flag (the demo); PostgreSQL decides all the same.
    """
    state = await program_state(pool, program_id, now)
    if state is None or state.status in _HIDDEN_STATUSES:
        raise ProgramNotFound()

    async def refuse(error: DomainError, conn: asyncpg.Connection | None = None) -> Enrolled:
        existing = await (conn or pool).fetchrow(Q["enrolment_of"], program_id, citizen_id)
        if existing is not None:
            return Enrolled(_out(existing), created=False)
        raise error

    if (refusal := _time_refusal(state, now)) is not None:
        return await refuse(refusal)
    version = state.version
    assert version is not None
    quota = version.spec.quota
    for attempt in range(2):  # a second time only after forfeited rights were released
        said_by_postgres = False
        if not _known_full(program_id):
            async with pool.acquire() as conn:
                # The pool's queue is where a storm waits: the flags are read once through
                # it (this process's first, then Redis for what other processes learnt).
                if not _known_full(program_id) and not await _flag_is_set(redis, program_id):
                    outcome = await _enrol_on(conn, program_id, citizen_id, version, quota, now)
                    if isinstance(outcome, Enrolled):
                        return outcome
                    if isinstance(outcome, DomainError):
                        raise outcome
                    said_by_postgres = True
                elif attempt == 1 or not _may_make_room(program_id):
                    return await refuse(QuotaExhausted(), conn)
        # Full, as PostgreSQL said (here, or earlier to whoever set the flags).
        if attempt == 0 and await _make_room(pool, redis, program_id, now):
            continue
        if said_by_postgres:
            await _found_full(redis, program_id, full_flag_seconds)
        return await refuse(QuotaExhausted())
    raise AssertionError("unreachable")  # pragma: no cover


async def _enrol_on(
    conn: asyncpg.Connection,
    program_id: uuid.UUID,
    citizen_id: uuid.UUID,
    version: ProgramVersion,
    quota: int,
    now: datetime,
) -> Enrolled | DomainError | None:
    """The enrolment on one connection: the existing one, a new one, a refusal, or None
    when the program is full."""
    context = await conn.fetchrow(Q["enrolment_context"], citizen_id, program_id)
    assert context is not None, "a session's citizen exists"
    if context["existing_id"] is not None:
        existing = await conn.fetchrow(Q["enrolment_of"], program_id, citizen_id)
        assert existing is not None
        return Enrolled(_out(existing), created=False)
    profile = CitizenProfile(
        birth_date=context["birth_date"],
        nationality=context["nationality"],
        province_code=context["province_code"],
        district_code=context["district_code"],
        taxpayer=context["taxpayer"],
        held_program_codes=tuple(context["held_codes"]),
    )
    decision = decide_enrolment(version, profile, now)
    if isinstance(decision, EnrolmentRefusal):
        return _refusal_error(decision)
    if context["enrolled"] is not None and context["enrolled"] >= quota:
        return None
    row = await _insert(conn, program_id, citizen_id, version, decision.first_use_deadline, quota, now)
    if row is not None:
        return Enrolled(_out(row), created=True)
    existing = await conn.fetchrow(Q["enrolment_of"], program_id, citizen_id)
    if existing is not None:  # a concurrent duplicate of this citizen won
        return Enrolled(_out(existing), created=False)
    return None


QUOTA_CONSTRAINT = "enrolment_counters_within_quota"


async def _insert(
    conn: asyncpg.Connection,
    program_id: uuid.UUID,
    citizen_id: uuid.UUID,
    version: ProgramVersion,
    deadline: datetime | None,
    quota: int,
    now: datetime,
) -> asyncpg.Record | None:
    """The enrolment, counted; None if it was not inserted (a duplicate, or full)."""
    assert not conn.is_in_transaction(), "the statement is its own transaction"
    try:
        row = await conn.fetchrow(
            Q["enrol"], new_id(), program_id, citizen_id, version.version, now, deadline, quota
        )
    except asyncpg.CheckViolationError as exc:
        if exc.constraint_name != QUOTA_CONSTRAINT:
            raise
        return None  # beyond the quota: the statement, the enrolment with it, rolled back
    assert row is not None
    return row if row["id"] is not None else None


async def release_forfeited(
    pool: asyncpg.Pool, program_id: uuid.UUID, now: datetime, redis: Redis | None = None
) -> int:
    """Forfeit the program's rights unused by their deadline (once past ``FORFEIT_GRACE``)
    and give their places back.

    One releaser per program at a time (a transaction-scoped advisory lock; the others
    return 0 at once). Returns how many rights were released.
    """
    async with pool.acquire() as conn, conn.transaction():
        locked = await conn.fetchval(
            Q["try_release_lock"], _ADVISORY_CLASS, _lock_id(program_id)
        )
        if not locked:
            return 0
        released = await conn.fetchval(
            Q["release_forfeited"], program_id, now, RELEASE_BATCH_ROWS, now - FORFEIT_GRACE
        )
    if released:
        _full_until.pop(program_id, None)
        _log.info("forfeited rights released", extra={"program_id": str(program_id), "released": released})
        await _clear_flag(redis, program_id)
    return int(released)


def _lock_id(program_id: uuid.UUID) -> int:
    return int.from_bytes(program_id.bytes[:4], "big", signed=True)


async def release_all_forfeited(pool: asyncpg.Pool, now: datetime, redis: Redis | None) -> int:
    """The periodic job: every program with counted enrolments."""
    total = 0
    for row in await pool.fetch(Q["programs_with_lapsed_rights"], now - FORFEIT_GRACE):
        total += await release_forfeited(pool, row["program_id"], now, redis)
    return total


# --- listing programs and what is left ------------------------------------------------------


class RegistrationWindowOut(msgspec.Struct, frozen=True):
    start_date: str
    end_date: str
    hours_start: str
    hours_end: str


class CitizenProgram(msgspec.Struct, frozen=True):
    program_id: str
    code: str
    name_th: str | None
    name_en: str | None
    kind: str | None
    program_status: str
    version: int | None
    quota: int | None
    enrolled_count: int
    registration: RegistrationWindowOut | None
    citizen_status: str  # enrolled, forfeited, eligible, not_eligible, quota_exhausted,
    # registration_not_open, registration_closed
    reason: str | None  # why not eligible (the rule), or the detail of another refusal
    enrolment: EnrolmentOut | None


async def list_programs(
    pool: asyncpg.Pool, citizen_id: uuid.UUID, now: datetime, *, after: uuid.UUID | None, limit: int
) -> list[CitizenProgram]:
    """Programs open to citizens (active or paused) and those the citizen is enrolled in."""
    rows = await pool.fetch(Q["citizen_programs"], citizen_id, after, limit)
    profile_row = await pool.fetchrow(Q["citizen_profile"], citizen_id)
    assert profile_row is not None
    profile = CitizenProfile(
        birth_date=profile_row["birth_date"],
        nationality=profile_row["nationality"],
        province_code=profile_row["province_code"],
        district_code=profile_row["district_code"],
        taxpayer=profile_row["taxpayer"],
        held_program_codes=tuple(profile_row["held_codes"]),
    )
    out = []
    for row in rows:
        state = await program_state(pool, row["id"], now)
        version = state.version if state is not None else None
        spec = version.spec if version is not None else None
        enrolment = None
        reason = None
        if row["enrolment_id"] is not None:
            enrolment = _out(await pool.fetchrow(Q["enrolment_of"], row["id"], citizen_id))
            status = enrolment.status if enrolment.status == "forfeited" else "enrolled"
        elif state is None:
            status = "registration_not_open"
        elif (error := _time_refusal(state, now)) is not None:
            status, reason = error.code, error.detail
        else:
            assert version is not None
            decision = decide_enrolment(version, profile, now)
            if isinstance(decision, EnrolmentRefusal):
                status = "not_eligible"
                reason = str(decision.ineligibility)
            elif (row["enrolled"] or 0) >= version.spec.quota:
                status = "quota_exhausted"
            else:
                status = "eligible"
        out.append(
            CitizenProgram(
                program_id=format_id("prg", row["id"]),
                code=row["code"],
                name_th=spec.name_th if spec else None,
                name_en=spec.name_en if spec else None,
                kind=spec.kind if spec else None,
                program_status=row["status"],
                version=version.version if version else None,
                quota=spec.quota if spec else None,
                enrolled_count=row["enrolled"] or 0,
                registration=RegistrationWindowOut(
                    start_date=spec.registration.start_date.isoformat(),
                    end_date=spec.registration.end_date.isoformat(),
                    hours_start=spec.registration.hours.start,
                    hours_end=spec.registration.hours.end,
                )
                if spec
                else None,
                citizen_status=status,
                reason=reason,
                enrolment=enrolment,
            )
        )
    return out


def _caps(version: ProgramVersion | None) -> tuple[int | None, int | None, int | None]:
    if version is None:
        return None, None, None
    rule = version.spec.rule
    if isinstance(rule, CoPaymentRule):
        return rule.caps.daily, rule.caps.monthly, rule.caps.total
    if isinstance(rule, GrantRule):
        return None, None, rule.allowance_satang or None
    return None, None, None


def _left(cap: int | None, used: int) -> int | None:
    return None if cap is None else max(0, cap - used)


async def remaining_by_program(
    pool: asyncpg.Pool, citizen_id: uuid.UUID, now: datetime
) -> list[dict[str, Any]]:
    """Per active enrolment: the caps of the version in force and what is left of them.

    Usage is read from ``subsidy_usage`` (0007), the counters that enforce the caps on the
    payment path, so what the citizen is shown is what the next payment will be held to.
    """
    enrolments = await pool.fetch(Q["active_enrolments"], citizen_id)
    if not enrolments:
        return []
    day, month = usage_periods(now)
    used = {
        row["program_id"]: row
        for row in await pool.fetch(
            Q["subsidy_used"], citizen_id, [e["program_id"] for e in enrolments], day, month
        )
    }
    out = []
    for enrolment in enrolments:
        program_id = enrolment["program_id"]
        state = await program_state(pool, program_id, now)
        version = state.version if state is not None else None
        daily, monthly, total = _caps(version)
        usage = used.get(program_id)
        today = usage["today"] if usage else 0
        this_month = usage["this_month"] if usage else 0
        overall = usage["total"] if usage else 0
        out.append(
            {
                "program_id": format_id("prg", program_id),
                "name_th": version.spec.name_th if version else "",
                "name_en": version.spec.name_en if version else "",
                "enrolment_id": format_id("enr", enrolment["id"]),
                "status": enrolment["status"],
                "currency": "THB",
                "daily_cap": daily,
                "monthly_cap": monthly,
                "total_cap": total,
                "used_today": today,
                "used_this_month": this_month,
                "used_total": overall,
                # The tightest of the caps above bounds each period.
                "remaining_today": _min(_left(daily, today), _left(monthly, this_month), _left(total, overall)),
                "remaining_this_month": _min(_left(monthly, this_month), _left(total, overall)),
                "remaining_total": _left(total, overall),
            }
        )
    return out


def _min(*values: int | None) -> int | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None
