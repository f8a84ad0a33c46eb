"""The officials' program service: each use case is one visible transaction: load, decide, write.

Programs and versions (migration 0004):
- ``create_program``: a draft, version 1, from a spec (validated by ``subsidy_rules.spec``);
- ``edit_program``: a JSON merge patch (RFC 7396) of the latest version's spec makes the next
  version (every edit does; a draft or submitted version it replaces becomes
  ``superseded``); the code of a program never changes;
- ``submit_version``: a maker submits the latest draft;
- ``approve_version``: a checker who did not make the version approves exactly it (its
  number and content hash), with a fresh TOTP code; the first approval creates the budget
  account; a version takes effect at its stated ``effective_at`` (or at approval, whichever
  is later) and ``version_at(t)`` is the newest approved version in effect at t;
- ``change_lifecycle``: approved -> active <-> paused -> closed (and active -> closed).

Money (ledger 764, THB): the treasury (account code 100, one account, ``TREASURY_ACCOUNT_ID``,
created by migration 0004) funds each program's budget account (code 101, shared,
``debits_must_not_exceed_credits``: it can never go below zero). Funding is maker-checker:
``request_funding`` records a request; ``approve_funding`` moves the money through the ledger
engine with a transfer whose id is derived from the request's id, and marks the request
approved plus writes the audit entry in the engine's batch transaction (an ``Effect``), so
the money moves once and the request, the audit entry and the idempotent response commit
with it.

Every action appends its audit entry (``gwallet.audit``) in its own transaction. Row locks:
programs row, then the official's row (a TOTP step), then the ledger account inserts, and
the audit head last.
"""

from __future__ import annotations

import asyncio
import enum
import math
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from gwallet import audit
from gwallet.idempotency import IdempotencyClaim, Outcome
from gwallet.ids import format_id, new_public_id
from gwallet.officials import OfficialPrincipal, accept_totp_code
from gwallet.problems import DomainError, FieldError, InvalidRequest
from ledger_core import (
    Account,
    CreateTransferResult,
    Effect,
    LedgerEngine,
    Transfer,
    create_accounts,
)
from ledger_core.sql import load_queries
from subsidy_rules.decision import ProgramVersion
from subsidy_rules.periods import bangkok
from subsidy_rules.simulation import (
    MAX_DAYS,
    MAX_PAYMENTS,
    RecordedPayment,
    Simulation,
    SimulationReport,
)
from subsidy_rules.spec import (
    BUDGET_MAX_SATANG,
    ProgramSpec,
    SpecError,
    content_hash,
    spec_from_builtins,
)

Q = load_queries(Path(__file__).with_name("queries.sql"))

THB_LEDGER = 764
ACCOUNT_CODE_TREASURY = 100
ACCOUNT_CODE_PROGRAM_BUDGET = 101
TRANSFER_CODE_PROGRAM_FUNDING = 100  # treasury -> program budget
# The treasury: one account, the source of public money (no limit flag). Migration 0004
# creates it; a test checks that the two agree.
TREASURY_ACCOUNT_ID = uuid.UUID("7e3a5d10-0000-4000-8000-000000000764")
TREASURY_ACCOUNT = Account(
    id=TREASURY_ACCOUNT_ID, ledger=THB_LEDGER, code=ACCOUNT_CODE_TREASURY, shared=True
)
# Never change it: budget account ids and funding transfer ids are derived with it.
_NAMESPACE = uuid.UUID("5b0c7e2a-61f4-4d3e-9a8b-0f3c2d1e4a57")

PATCH_MAX_DEPTH = 16  # a spec is 5 levels deep; deeper JSON is refused before any recursion
STATS_DAYS_MAX = 400  # by_day lists at most the last 400 business days with payments
STATS_GROUPS_MAX = 200  # provinces (77) and merchant categories listed at most
FORECAST_WINDOW_DAYS = 7
SIMULATION_FETCH_ROWS = 5_000  # rows per fetch and per decision chunk
SIMULATIONS_AT_ONCE = 1  # per process: a simulation is CPU-bound


def budget_account_id(program_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"program-budget\x1f{program_id}")


def funding_transfer_id(funding_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"program-funding\x1f{funding_id}")


class ProgramStatus(enum.StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    ACTIVE = "active"
    PAUSED = "paused"
    CLOSED = "closed"


class VersionStatus(enum.StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    SUPERSEDED = "superseded"  # replaced by a newer edit before it was approved


class LifecycleAction(enum.StrEnum):
    ACTIVATE = "activate"
    PAUSE = "pause"
    RESUME = "resume"
    CLOSE = "close"


# action -> (the statuses it starts from, the status it leads to)
TRANSITIONS: dict[LifecycleAction, tuple[frozenset[ProgramStatus], ProgramStatus]] = {
    LifecycleAction.ACTIVATE: (frozenset({ProgramStatus.APPROVED}), ProgramStatus.ACTIVE),
    LifecycleAction.PAUSE: (frozenset({ProgramStatus.ACTIVE}), ProgramStatus.PAUSED),
    LifecycleAction.RESUME: (frozenset({ProgramStatus.PAUSED}), ProgramStatus.ACTIVE),
    LifecycleAction.CLOSE: (
        frozenset({ProgramStatus.ACTIVE, ProgramStatus.PAUSED}),
        ProgramStatus.CLOSED,
    ),
}
_FUNDABLE = frozenset({ProgramStatus.APPROVED, ProgramStatus.ACTIVE, ProgramStatus.PAUSED})
_BEFORE_APPROVAL = frozenset({ProgramStatus.DRAFT, ProgramStatus.SUBMITTED})


# --- refusals -------------------------------------------------------------------------------


class ProgramNotFound(DomainError):
    """No program has this id."""

    status = 404
    code = "program_not_found"
    title = "Program not found"


class VersionNotFound(DomainError):
    """The program has no version with this number."""

    status = 404
    code = "version_not_found"
    title = "Version not found"


class FundingRequestNotFound(DomainError):
    """The program has no funding request with this id."""

    status = 404
    code = "funding_request_not_found"
    title = "Funding request not found"


class InvalidSpec(DomainError):
    """The program spec breaks a rule; ``errors`` names the field (``spec.rule.caps.daily``)."""

    status = 422
    code = "invalid_spec"
    title = "Invalid program spec"


class ProgramCodeTaken(DomainError):
    """Program codes are unique (programs exclude each other by code)."""

    status = 409
    code = "program_code_taken"
    title = "Program code taken"


class InvalidTransition(DomainError):
    """The program or version is not in a state this action starts from."""

    status = 409
    code = "invalid_transition"
    title = "Invalid transition"


class VersionConflict(DomainError):
    """The version named is no longer the latest one, or its content hash differs."""

    status = 409
    code = "version_conflict"
    title = "Version conflict"


class SelfApproval(DomainError):
    """Four eyes: nobody approves a version or a funding request they made themselves."""

    status = 403
    code = "self_approval"
    title = "Self-approval forbidden"


class ProgramNotFundable(DomainError):
    """Only an approved, active or paused program (it has a budget account) is funded."""

    status = 409
    code = "program_not_fundable"
    title = "Program not fundable"


class FundingExceedsBudget(DomainError):
    """Funding, approved or requested, may not pass the budget of the approved spec."""

    status = 422
    code = "funding_exceeds_budget"
    title = "Funding exceeds the budget"


class FundingAlreadyApproved(DomainError):
    """A funding request is approved (and its money moved) once."""

    status = 409
    code = "funding_already_approved"
    title = "Funding already approved"


class FundingRefused(DomainError):
    """The ledger refused the funding transfer (its result is in the detail)."""

    status = 409
    code = "funding_refused"
    title = "Funding refused"


class SimulationTooLarge(DomainError):
    """A simulation covers at most 92 days and 1,000,000 payments."""

    status = 422
    code = "simulation_too_large"
    title = "Simulation too large"


class SimulationBusy(DomainError):
    """Another simulation runs in this process; retry in a few seconds."""

    status = 429
    code = "simulation_busy"
    title = "Simulation busy"
    retry_after_seconds = 5


PROGRAM_ERRORS: tuple[type[DomainError], ...] = (ProgramNotFound,)


# --- what the API shows ---------------------------------------------------------------------


class VersionOut(msgspec.Struct, frozen=True, kw_only=True):
    program_id: str
    version: int
    status: VersionStatus
    content_hash: str
    spec: Any
    effective_at: datetime | None
    created_by: str
    created_at: datetime
    submitted_by: str | None
    submitted_at: datetime | None
    approved_by: str | None
    approved_at: datetime | None


class ProgramOut(msgspec.Struct, frozen=True, kw_only=True):
    program_id: str
    code: str
    kind: str
    name_en: str
    name_th: str
    status: ProgramStatus
    # The latest version (the one being edited, submitted or approved).
    version: int
    version_status: VersionStatus
    content_hash: str
    effective_at: datetime | None
    spec: Any
    # The approved version in force now (None before the first approval takes effect), and
    # an approved version waiting for its effective time, if any.
    version_in_effect: int | None
    version_scheduled: int | None
    created_by: str
    created_at: datetime
    updated_at: datetime


class FundingOut(msgspec.Struct, frozen=True, kw_only=True):
    funding_id: str
    program_id: str
    amount: int
    currency: str
    status: str  # requested | approved
    requested_by: str
    requested_at: datetime
    approved_by: str | None
    approved_at: datetime | None


def _off(value: uuid.UUID | None) -> str | None:
    return None if value is None else format_id("off", value)


def _version_out(row: asyncpg.Record) -> VersionOut:
    return VersionOut(
        program_id=format_id("prg", row["program_id"]),
        version=row["version"],
        status=VersionStatus(row["status"]),
        content_hash=row["content_hash"],
        spec=msgspec.json.decode(row["spec"]),
        effective_at=row["effective_at"],
        created_by=format_id("off", row["created_by"]),
        created_at=row["created_at"],
        submitted_by=_off(row["submitted_by"]),
        submitted_at=row["submitted_at"],
        approved_by=_off(row["approved_by"]),
        approved_at=row["approved_at"],
    )


def _funding_out(row: asyncpg.Record) -> FundingOut:
    return FundingOut(
        funding_id=format_id("fnd", row["id"]),
        program_id=format_id("prg", row["program_id"]),
        amount=row["amount"],
        currency="THB",
        status=row["status"],
        requested_by=format_id("off", row["requested_by"]),
        requested_at=row["requested_at"],
        approved_by=_off(row["approved_by"]),
        approved_at=row["approved_at"],
    )


async def _program_out(conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> ProgramOut:
    latest = await conn.fetchrow(Q["version"], row["id"], row["latest_version"])
    assert latest is not None, "a program always has its latest version"
    in_effect = await conn.fetchrow(Q["version_at"], row["id"], now)
    newest_approved = await conn.fetchrow(Q["latest_approved_version"], row["id"])
    scheduled = None
    if newest_approved is not None and newest_approved["effective_at"] > now:
        scheduled = newest_approved["version"]
    spec = msgspec.json.decode(latest["spec"])
    return ProgramOut(
        program_id=format_id("prg", row["id"]),
        code=row["code"],
        kind=row["kind"],
        name_en=spec["name_en"],
        name_th=spec["name_th"],
        status=ProgramStatus(row["status"]),
        version=latest["version"],
        version_status=VersionStatus(latest["status"]),
        content_hash=latest["content_hash"],
        effective_at=latest["effective_at"],
        spec=spec,
        version_in_effect=None if in_effect is None else in_effect["version"],
        version_scheduled=scheduled,
        created_by=format_id("off", row["created_by"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


# --- specs ----------------------------------------------------------------------------------


def _refuse_deep(value: Any, path: str) -> None:
    """JSON nested deeper than any spec is refused before anything recurses into it."""
    level: list[Any] = [value]
    for _ in range(PATCH_MAX_DEPTH + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return
    message = f"nested more than {PATCH_MAX_DEPTH} levels deep"
    raise InvalidSpec(f"{path}: {message}", errors=[FieldError(field=path, message=message)])


def parse_spec(obj: Any) -> ProgramSpec:
    """Decode and validate a spec from parsed JSON; ``InvalidSpec`` names the field."""
    _refuse_deep(obj, "spec")
    try:
        spec = spec_from_builtins(obj)
    except SpecError as error:
        field = "spec" + error.path[1:]  # "$.rule.caps" -> "spec.rule.caps"
        raise InvalidSpec(
            f"{field}: {error.message}", errors=[FieldError(field=field, message=error.message)]
        ) from None
    _refuse_nul(msgspec.to_builtins(spec), "spec")
    return spec


def _path_of_nul(value: Any, path: str) -> str | None:
    """Where a NUL character is (PostgreSQL text and jsonb cannot hold one), keys included."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if "\x00" in key:
                return where
            found = _path_of_nul(item, where)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _path_of_nul(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _refuse_nul(value: Any, path: str) -> None:
    where = _path_of_nul(value, path)
    if where is not None:
        message = "text may not contain the NUL character"
        raise InvalidSpec(f"{where}: {message}", errors=[FieldError(field=where, message=message)])


def merge_patch(target: Any, patch: Any, depth: int = 0) -> Any:
    """RFC 7396 JSON merge patch: objects merge key by key, ``null`` removes a key, anything
    else (lists too) replaces."""
    assert depth <= PATCH_MAX_DEPTH + 1, "the caller refused deeper patches (_refuse_deep)"
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value, depth + 1)
    return result


def _spec_json(spec: ProgramSpec) -> str:
    return msgspec.json.encode(spec, order="sorted").decode()


def program_version(row: asyncpg.Record) -> ProgramVersion:
    """A version row as the pure decision takes it."""
    spec = spec_from_builtins(msgspec.json.decode(row["spec"]))
    version = ProgramVersion(
        program_id=format_id("prg", row["program_id"]),
        version=row["version"],
        spec=spec,
        content_hash=row["content_hash"],
    )
    assert content_hash(spec) == version.content_hash, "a stored version never changes"
    return version


async def version_at(
    db: asyncpg.Pool | asyncpg.Connection, program_id: uuid.UUID, at: datetime
) -> ProgramVersion | None:
    """The approved version in force at ``at`` (for enrolment and the payment path)."""
    row = await db.fetchrow(Q["version_at"], program_id, at)
    return None if row is None else program_version(row)


# --- loading --------------------------------------------------------------------------------


async def _locked_program(conn: asyncpg.Connection, program_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(Q["lock_program"], program_id)
    if row is None:
        raise ProgramNotFound()
    return row


async def get_program(
    conn: asyncpg.Connection, program_id: uuid.UUID, now: datetime | None = None
) -> ProgramOut:
    row = await conn.fetchrow(Q["program"], program_id)
    if row is None:
        raise ProgramNotFound()
    return await _program_out(conn, row, _now(now))


async def list_programs(
    conn: asyncpg.Connection,
    *,
    after: uuid.UUID | None,
    limit: int,
    status: ProgramStatus | None = None,
    now: datetime | None = None,
) -> list[ProgramOut]:
    rows = await conn.fetch(
        Q["list_programs"], after, limit, None if status is None else str(status)
    )
    return [await _program_out(conn, row, _now(now)) for row in rows]


async def get_version(conn: asyncpg.Connection, program_id: uuid.UUID, version: int) -> VersionOut:
    if await conn.fetchval(Q["program"], program_id) is None:
        raise ProgramNotFound()
    row = await conn.fetchrow(Q["version"], program_id, version)
    if row is None:
        raise VersionNotFound()
    return _version_out(row)


async def list_versions(
    conn: asyncpg.Connection, program_id: uuid.UUID, *, after: int, limit: int
) -> list[VersionOut]:
    if await conn.fetchval(Q["program"], program_id) is None:
        raise ProgramNotFound()
    return [
        _version_out(row) for row in await conn.fetch(Q["versions_of"], program_id, after, limit)
    ]


# --- programs -------------------------------------------------------------------------------


def _summary(row: asyncpg.Record | None, *, with_spec: bool = False) -> dict[str, Any] | None:
    if row is None:
        return None
    out: dict[str, Any] = {
        "version": row["version"],
        "status": row["status"],
        "content_hash": row["content_hash"],
        "effective_at": None if row["effective_at"] is None else row["effective_at"].isoformat(),
    }
    if with_spec:
        out["spec"] = msgspec.json.decode(row["spec"])
    return out


async def _audit(
    conn: asyncpg.Connection,
    actor: OfficialPrincipal,
    action: str,
    target_type: str,
    target_id: str,
    before: Any,
    after: Any,
) -> None:
    await audit.append(
        conn,
        actor_id=actor.official_id,
        actor=actor.username,
        action=action,
        target_type=target_type,
        target_id=target_id,
        before=before,
        after=after,
    )


async def create_program(
    conn: asyncpg.Connection,
    actor: OfficialPrincipal,
    spec_json: Any,
    *,
    effective_at: datetime | None = None,
    now: datetime | None = None,
) -> ProgramOut:
    """A new draft program, version 1 (in the caller's transaction)."""
    now = _now(now)
    spec = parse_spec(spec_json)
    public_id, program_id = new_public_id("prg")
    inserted = await conn.fetchval(
        Q["insert_program"], program_id, spec.code, spec.kind, actor.official_id, now
    )
    if inserted is None:
        raise ProgramCodeTaken(f"a program with the code {spec.code!r} exists")
    await conn.execute(
        Q["insert_version"],
        program_id,
        1,
        _spec_json(spec),
        content_hash(spec),
        effective_at,
        actor.official_id,
        now,
    )
    version = await conn.fetchrow(Q["version"], program_id, 1)
    await _audit(
        conn, actor, "program.create", "program", public_id, None, _summary(version, with_spec=True)
    )
    return await get_program(conn, program_id, now)


async def edit_program(
    conn: asyncpg.Connection,
    actor: OfficialPrincipal,
    program_id: uuid.UUID,
    *,
    patch: Any,
    effective_at: datetime | None,
    base_version: int | None,
    now: datetime | None = None,
) -> ProgramOut:
    """A new version: the latest spec with ``patch`` merged in (RFC 7396)."""
    now = _now(now)
    program = await _locked_program(conn, program_id)
    status = ProgramStatus(program["status"])
    if status is ProgramStatus.CLOSED:
        raise InvalidTransition("a closed program is not edited")
    latest_number = program["latest_version"]
    if base_version is not None and base_version != latest_number:
        raise VersionConflict(f"the latest version is {latest_number}, not {base_version}")
    latest = await conn.fetchrow(Q["version"], program_id, latest_number)
    spec_obj = msgspec.json.decode(latest["spec"])
    if patch is not None:
        _refuse_deep(patch, "spec")
        _refuse_nul(patch, "spec")  # the patch itself goes to the audit log
        spec_obj = merge_patch(spec_obj, patch)
    spec = parse_spec(spec_obj)
    if spec.code != program["code"]:
        message = f"a program's code never changes (it is {program['code']!r})"
        raise InvalidSpec(
            f"spec.code: {message}", errors=[FieldError(field="spec.code", message=message)]
        )
    number = latest_number + 1
    if latest["status"] in (VersionStatus.DRAFT, VersionStatus.SUBMITTED):
        await conn.execute(Q["supersede_version"], program_id, latest_number)
    await conn.execute(
        Q["insert_version"],
        program_id,
        number,
        _spec_json(spec),
        content_hash(spec),
        effective_at,
        actor.official_id,
        now,
    )
    new_status = ProgramStatus.DRAFT if status in _BEFORE_APPROVAL else status
    await conn.execute(
        Q["update_program"], program_id, str(new_status), number, program["budget_account_id"], now
    )
    version = await conn.fetchrow(Q["version"], program_id, number)
    await _audit(
        conn,
        actor,
        "program.edit",
        "program",
        format_id("prg", program_id),
        {"program_status": str(status), **(_summary(latest, with_spec=True) or {})},
        {
            "program_status": str(new_status),
            "patch": patch,
            **(_summary(version, with_spec=True) or {}),
        },
    )
    return await get_program(conn, program_id, now)


async def submit_version(
    conn: asyncpg.Connection,
    actor: OfficialPrincipal,
    program_id: uuid.UUID,
    version: int,
    now: datetime | None = None,
) -> ProgramOut:
    now = _now(now)
    program = await _locked_program(conn, program_id)
    status = ProgramStatus(program["status"])
    if status is ProgramStatus.CLOSED:
        raise InvalidTransition("a closed program takes no new version")
    if version != program["latest_version"]:
        raise VersionConflict(
            f"version {version} is not the latest version ({program['latest_version']})"
        )
    row = await conn.fetchrow(Q["version"], program_id, version)
    if row["status"] != VersionStatus.DRAFT:
        raise InvalidTransition(f"version {version} is {row['status']}: only a draft is submitted")
    await conn.execute(Q["submit_version"], program_id, version, actor.official_id, now)
    new_status = ProgramStatus.SUBMITTED if status is ProgramStatus.DRAFT else status
    await conn.execute(
        Q["update_program"], program_id, str(new_status), version, program["budget_account_id"], now
    )
    await _audit(
        conn,
        actor,
        "program.submit",
        "program",
        format_id("prg", program_id),
        {"program_status": str(status), **(_summary(row) or {})},
        {"program_status": str(new_status), "version": version, "status": "submitted"},
    )
    return await get_program(conn, program_id, now)


async def approve_version(
    conn: asyncpg.Connection,
    actor: OfficialPrincipal,
    program_id: uuid.UUID,
    *,
    version: int,
    content_hash_hex: str,
    totp_code: str,
    now: datetime | None = None,
) -> ProgramOut:
    """Approve exactly ``version`` with ``content_hash_hex``, four eyes and a fresh TOTP code.

    Under the program's row lock, so of two concurrent approvals one applies and the other
    finds the version approved (409).
    """
    now = _now(now)
    program = await _locked_program(conn, program_id)
    status = ProgramStatus(program["status"])
    row = await conn.fetchrow(Q["version"], program_id, version)
    if row is None:
        raise VersionConflict(f"the program has no version {version}")
    if row["created_by"] == actor.official_id:
        raise SelfApproval("the maker of a version may not approve it")
    if status is ProgramStatus.CLOSED:
        raise InvalidTransition("a closed program takes no new version")
    if version != program["latest_version"]:
        raise VersionConflict(
            f"version {version} is not the latest version ({program['latest_version']})"
        )
    if row["content_hash"] != content_hash_hex:
        raise VersionConflict(f"version {version} has another content hash")
    if row["status"] != VersionStatus.SUBMITTED:
        raise InvalidTransition(f"version {version} is {row['status']}, not submitted")
    await accept_totp_code(conn, actor.official_id, totp_code, now)
    effective_at = max(row["effective_at"] or now, now)
    await conn.execute(
        Q["approve_version"], program_id, version, actor.official_id, now, effective_at
    )
    account_id = program["budget_account_id"]
    new_status = status
    if status in _BEFORE_APPROVAL:
        new_status = ProgramStatus.APPROVED
        account_id = budget_account_id(program_id)
        (result,) = await create_accounts(
            conn,
            [
                Account(
                    id=account_id,
                    ledger=THB_LEDGER,
                    code=ACCOUNT_CODE_PROGRAM_BUDGET,
                    debits_must_not_exceed_credits=True,
                    shared=True,
                    user_data_128=program_id,
                )
            ],
        )
        assert result.succeeded, f"the budget account could not be created: {result.name}"
    await conn.execute(Q["update_program"], program_id, str(new_status), version, account_id, now)
    await _audit(
        conn,
        actor,
        "program.approve",
        "program",
        format_id("prg", program_id),
        {"program_status": str(status), **(_summary(row) or {})},
        {
            "program_status": str(new_status),
            **(_summary(await conn.fetchrow(Q["version"], program_id, version)) or {}),
        },
    )
    return await get_program(conn, program_id, now)


async def change_lifecycle(
    conn: asyncpg.Connection,
    actor: OfficialPrincipal,
    program_id: uuid.UUID,
    action: LifecycleAction,
    reason: str,
    now: datetime | None = None,
) -> ProgramOut:
    now = _now(now)
    program = await _locked_program(conn, program_id)
    status = ProgramStatus(program["status"])
    sources, target = TRANSITIONS[action]
    if status not in sources:
        allowed = ", ".join(sorted(sources))
        raise InvalidTransition(f"{action} applies to a program that is {allowed}, not {status}")
    await conn.execute(
        Q["update_program"],
        program_id,
        str(target),
        program["latest_version"],
        program["budget_account_id"],
        now,
    )
    await _audit(
        conn,
        actor,
        f"program.{action}",
        "program",
        format_id("prg", program_id),
        {"status": str(status)},
        {"status": str(target), "reason": reason},
    )
    return await get_program(conn, program_id, now)


# --- funding --------------------------------------------------------------------------------


async def request_funding(
    conn: asyncpg.Connection,
    actor: OfficialPrincipal,
    program_id: uuid.UUID,
    amount: int,
    now: datetime | None = None,
) -> FundingOut:
    """A maker asks to move ``amount`` from the treasury into the program's budget."""
    now = _now(now)
    assert 0 < amount <= BUDGET_MAX_SATANG, "validated by the request body"
    program = await _locked_program(conn, program_id)
    status = ProgramStatus(program["status"])
    if status not in _FUNDABLE:
        raise ProgramNotFundable(f"the program is {status}")
    approved = await conn.fetchrow(Q["latest_approved_version"], program_id)
    budget = msgspec.json.decode(approved["spec"])["budget_satang"]
    committed = await conn.fetchrow(Q["funding_committed"], program_id)
    if committed["committed"] + amount > budget:
        raise FundingExceedsBudget(
            f"the budget is {budget} satang and {committed['committed']} are funded or "
            f"requested: at most {max(0, budget - committed['committed'])} more"
        )
    public_id, funding_id = new_public_id("fnd")
    row = await conn.fetchrow(
        Q["insert_funding_request"],
        funding_id,
        program_id,
        amount,
        actor.official_id,
        now,
        funding_transfer_id(funding_id),
    )
    out = _funding_out(row)
    await _audit(
        conn,
        actor,
        "funding.request",
        "funding_request",
        public_id,
        None,
        {"program_id": format_id("prg", program_id), "amount": amount, "status": "requested"},
    )
    return out


async def list_funding(
    conn: asyncpg.Connection, program_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
) -> list[FundingOut]:
    if await conn.fetchval(Q["program"], program_id) is None:
        raise ProgramNotFound()
    rows = await conn.fetch(Q["list_funding_requests"], program_id, after, limit)
    return [_funding_out(row) for row in rows]


@dataclass(frozen=True, slots=True)
class _FundingApproval:
    funding_id: uuid.UUID
    public_id: str
    program_public_id: str
    amount: int
    actor: OfficialPrincipal
    approved_at: datetime
    transfer_id: uuid.UUID


class _FundingApprovalWriter:
    """In the ledger batch that moved the money: the request becomes approved and the
    audit log says so (one transaction with the transfer)."""

    async def write(self, conn: asyncpg.Connection, rows: list[_FundingApproval]) -> None:
        for approval in rows:
            updated = await conn.fetchval(
                Q["mark_funding_approved"],
                approval.funding_id,
                approval.actor.official_id,
                approval.approved_at,
            )
            assert updated is not None, "the transfer moved once, so the request was open"
            await _audit(
                conn,
                approval.actor,
                "funding.approve",
                "funding_request",
                approval.public_id,
                {"status": "requested"},
                {
                    "status": "approved",
                    "program_id": approval.program_public_id,
                    "amount": approval.amount,
                    "transfer_id": str(approval.transfer_id),
                },
            )


_FUNDING_WRITER = _FundingApprovalWriter()


async def approve_funding(
    pool: asyncpg.Pool,
    engine: LedgerEngine,
    actor: OfficialPrincipal,
    program_id: uuid.UUID,
    funding_id: uuid.UUID,
    *,
    totp_code: str,
    claim: IdempotencyClaim,
    now: datetime | None = None,
) -> Any:
    """A checker (not the requester) approves: the treasury pays the budget, once.

    Returns the stored idempotent response (ours, or the one a concurrent duplicate stored).
    """
    now = _now(now)
    async with pool.acquire() as conn, conn.transaction():
        program = await conn.fetchrow(Q["program"], program_id)
        if program is None:
            raise ProgramNotFound()
        request = await conn.fetchrow(Q["funding_request"], funding_id, program_id)
        if request is None:
            raise FundingRequestNotFound()
        if request["requested_by"] == actor.official_id:
            raise SelfApproval("the maker of a funding request may not approve it")
        if request["status"] != "requested":
            raise FundingAlreadyApproved()
        if ProgramStatus(program["status"]) not in _FUNDABLE:
            raise ProgramNotFundable(f"the program is {program['status']}")
        await accept_totp_code(conn, actor.official_id, totp_code, now)
    approval = _FundingApproval(
        funding_id=funding_id,
        public_id=format_id("fnd", funding_id),
        program_public_id=format_id("prg", program_id),
        amount=request["amount"],
        actor=actor,
        approved_at=now,
        transfer_id=request["transfer_id"],
    )
    transfer = Transfer(
        id=request["transfer_id"],
        debit_account_id=TREASURY_ACCOUNT_ID,
        credit_account_id=program["budget_account_id"],
        amount=request["amount"],
        ledger=THB_LEDGER,
        code=TRANSFER_CODE_PROGRAM_FUNDING,
        user_data_128=program_id,
    )
    approved = msgspec.structs.replace(
        _funding_out(request), status="approved", approved_by=actor.principal_id, approved_at=now
    )

    def respond(results: list[CreateTransferResult]) -> Outcome:
        result = results[0]
        if result is CreateTransferResult.OK:
            return 200, approved
        if result is CreateTransferResult.EXISTS:
            return FundingAlreadyApproved()
        return FundingRefused(f"the ledger refused the transfer: {result.name.lower()}")

    def make_row(results: list[CreateTransferResult]) -> _FundingApproval | None:
        return approval if results[0] is CreateTransferResult.OK else None

    await engine.create_transfers(
        [transfer],
        effects=[Effect(writer=_FUNDING_WRITER, make_row=make_row), claim.ledger_effect(respond)],
    )
    return await claim.stored_response(pool)


# --- stats ----------------------------------------------------------------------------------


class BudgetStats(msgspec.Struct, frozen=True, kw_only=True):
    funded: int  # approved funding: what the treasury moved into the budget
    disbursed: int  # funded - remaining: subsidy paid or reserved, net of refunds
    remaining: int  # the budget account's balance less reserved (pending) subsidy
    reserved: int  # subsidy of payments in flight (pending debits)
    requested: int  # funding requested, not yet approved
    budget_exhausted: bool  # nothing left: the program pays no subsidy now


class PaymentTotals(msgspec.Struct, frozen=True, kw_only=True):
    count: int
    amount: int
    subsidy_amount: int  # net of refunded subsidy
    citizen_amount: int
    refunded_amount: int
    citizens: int
    merchants: int


class Breakdown(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    payments: int
    amount: int
    subsidy_amount: int  # net of refunds


class BurnForecast(msgspec.Struct, frozen=True, kw_only=True):
    window_days: int
    average_daily_subsidy: int  # over the last window_days Bangkok days, today included
    days_until_exhausted: int | None  # None: nothing is being spent (or nothing is left)
    exhausted_on: date | None


class ProgramStats(msgspec.Struct, frozen=True, kw_only=True):
    program_id: str
    status: ProgramStatus
    currency: str
    as_of: datetime
    budget: BudgetStats
    enrolled: int  # citizens holding an active right (the wallet's enrolment counter)
    payments: PaymentTotals
    by_day: list[Breakdown]  # newest first, at most STATS_DAYS_MAX days
    by_province: list[Breakdown]  # the merchant's province
    by_merchant_category: list[Breakdown]
    forecast: BurnForecast


def _breakdown(rows: list[asyncpg.Record]) -> list[Breakdown]:
    return [
        Breakdown(
            key=str(row["key"]),
            payments=row["payments"],
            amount=row["amount"],
            subsidy_amount=row["subsidy_amount"],
        )
        for row in rows
    ]


async def count_enrolled(conn: asyncpg.Connection, program_id: uuid.UUID) -> int:
    """Citizens enrolled now (forfeited rights aside): the wallet's counter (migration 0005),
    the very number its quota check uses, read in O(1)."""
    return await conn.fetchval(Q["enrolled"], program_id)


async def program_stats(
    conn: asyncpg.Connection, program_id: uuid.UUID, now: datetime | None = None
) -> ProgramStats:
    now = _now(now)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        program = await conn.fetchrow(Q["program"], program_id)
        if program is None:
            raise ProgramNotFound()
        funding = await conn.fetchrow(Q["funding_committed"], program_id)
        account = None
        if program["budget_account_id"] is not None:
            account = await conn.fetchrow(Q["budget_account"], program["budget_account_id"])
        totals = await conn.fetchrow(Q["payment_totals"], program_id)
        by_day = await conn.fetch(Q["payments_by_day"], program_id, STATS_DAYS_MAX)
        by_province = await conn.fetch(Q["payments_by_province"], program_id, STATS_GROUPS_MAX)
        by_category = await conn.fetch(
            Q["payments_by_merchant_category"], program_id, STATS_GROUPS_MAX
        )
        today = bangkok(now).date()
        window_start = today - timedelta(days=FORECAST_WINDOW_DAYS - 1)
        recent = await conn.fetchval(Q["subsidy_between"], program_id, window_start, today)
        enrolled = await count_enrolled(conn, program_id)
    funded = funding["funded"]
    remaining, reserved = 0, 0
    if account is not None:
        reserved = account["debits_pending"]
        remaining = account["credits_posted"] - account["debits_posted"] - reserved
    average = recent // FORECAST_WINDOW_DAYS
    days_left = math.ceil(remaining / average) if average > 0 and remaining > 0 else None
    return ProgramStats(
        program_id=format_id("prg", program_id),
        status=ProgramStatus(program["status"]),
        currency="THB",
        as_of=now,
        budget=BudgetStats(
            funded=funded,
            disbursed=funded - remaining,
            remaining=remaining,
            reserved=reserved,
            requested=funding["committed"] - funded,
            budget_exhausted=remaining <= 0,
        ),
        enrolled=enrolled,
        payments=PaymentTotals(
            count=totals["payments"],
            amount=totals["amount"],
            subsidy_amount=totals["subsidy_amount"] - totals["refunded_subsidy_amount"],
            citizen_amount=totals["citizen_amount"],
            refunded_amount=totals["refunded_amount"],
            citizens=totals["citizens"],
            merchants=totals["merchants"],
        ),
        by_day=_breakdown(by_day),
        by_province=_breakdown(by_province),
        by_merchant_category=_breakdown(by_category),
        forecast=BurnForecast(
            window_days=FORECAST_WINDOW_DAYS,
            average_daily_subsidy=average,
            days_until_exhausted=0 if remaining <= 0 else days_left,
            exhausted_on=today
            if remaining <= 0
            else (None if days_left is None else today + timedelta(days=days_left)),
        ),
    )


# --- simulation -----------------------------------------------------------------------------

# A thread semaphore, not an asyncio one: it is never waited on (a busy process answers 429
# at once), and it works whichever event loop the service runs on.
_simulations = threading.BoundedSemaphore(SIMULATIONS_AT_ONCE)


class Population(enum.StrEnum):
    PROGRAM = "program"  # the payments made under this program
    ALL = "all"  # every recorded payment (a new program: as if every payer were enrolled)


def _recorded(row: asyncpg.Record) -> RecordedPayment:
    return RecordedPayment(
        citizen_id=str(row["citizen_id"]),
        merchant_id=str(row["merchant_id"]),
        amount=row["amount"],
        actual_subsidy=row["subsidy_amount"] - row["refunded_subsidy_amount"],
        item_category=row["item_category"],
        delivery=row["delivery"],
        merchant_category=row["merchant_category"],
        merchant_province_code=row["merchant_province_code"],
        merchant_district_code=row["merchant_district_code"],
        citizen_province_code=row["citizen_province_code"],
        citizen_district_code=row["citizen_district_code"],
        business_date=row["business_date"],
        created_at=row["created_at"],
    )


def _too_large(field: str, message: str) -> SimulationTooLarge:
    return SimulationTooLarge(
        f"{field}: {message}", errors=[FieldError(field=field, message=message)]
    )


async def simulate(
    pool: asyncpg.Pool,
    program_id: uuid.UUID,
    *,
    version: int,
    start: date,
    end: date,
    population: Population,
) -> SimulationReport:
    """Run ``version``'s spec over the recorded payments of ``start``..``end`` (Bangkok
    business days, both included). Moves nothing; at most 92 days and 1,000,000 payments."""
    if end < start:
        message = "the period ends before it starts"
        raise InvalidRequest(f"to: {message}", errors=[FieldError(field="to", message=message)])
    if (end - start).days + 1 > MAX_DAYS:
        raise _too_large("to", f"a simulation covers at most {MAX_DAYS} days")
    if not _simulations.acquire(blocking=False):
        raise SimulationBusy()
    try:
        return await _simulate(pool, program_id, version, start, end, population)
    finally:
        _simulations.release()


async def _simulate(
    pool: asyncpg.Pool,
    program_id: uuid.UUID,
    version: int,
    start: date,
    end: date,
    population: Population,
) -> SimulationReport:
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        if await conn.fetchval(Q["program"], program_id) is None:
            raise ProgramNotFound()
        row = await conn.fetchrow(Q["version"], program_id, version)
        if row is None:
            raise VersionNotFound()
        scope = program_id if population is Population.PROGRAM else None
        count = await conn.fetchval(Q["count_payments_in_period"], start, end, scope)
        if count > MAX_PAYMENTS:
            raise _too_large(
                "from", f"the period has {count} payments; at most {MAX_PAYMENTS} are simulated"
            )
        simulation = Simulation(program_version(row), start, end, str(population))
        cursor = conn.cursor(
            Q["payments_in_period"], start, end, scope, prefetch=SIMULATION_FETCH_ROWS
        )
        chunk: list[RecordedPayment] = []
        async for payment in cursor:
            chunk.append(_recorded(payment))
            if len(chunk) >= SIMULATION_FETCH_ROWS:
                # CPU-bound: off the event loop, so other requests are still served.
                await asyncio.to_thread(simulation.feed, chunk)
                chunk = []
        if chunk:
            await asyncio.to_thread(simulation.feed, chunk)
    return simulation.report()
