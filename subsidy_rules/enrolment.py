"""Enrolment: may this citizen enrol now, when must they first use the right, what is credited.

Pure like ``decision``. The quota (first come, first served) is not decided here: the
database decides it in the enrolment's transaction, after ``decide_enrolment`` said yes.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Any

import msgspec

from subsidy_rules.decision import ProgramVersion
from subsidy_rules.eligibility import CitizenProfile, Ineligibility, citizen_ineligibility
from subsidy_rules.periods import bangkok, second_of_day, start_of_day
from subsidy_rules.spec import GrantRule


class EnrolmentRefusalReason(enum.StrEnum):
    """Why a citizen may not enrol now; checked in this order."""

    REGISTRATION_NOT_OPEN = "registration_not_open"  # not yet, or outside today's hours
    REGISTRATION_CLOSED = "registration_closed"  # the last registration hour has passed
    NOT_ELIGIBLE = "not_eligible"  # a citizen rule fails; ``ineligibility`` says which


class Eligible(msgspec.Struct, frozen=True, kw_only=True):
    program_id: str
    version: int
    first_use_deadline: datetime | None  # if enrolled now; None: the right never lapses


class EnrolmentRefusal(msgspec.Struct, frozen=True, kw_only=True):
    reason: EnrolmentRefusalReason
    detail: str
    ineligibility: Ineligibility | None = None  # set for not_eligible
    facts: dict[str, Any] = msgspec.field(default_factory=dict)


def decide_enrolment(
    version: ProgramVersion, citizen: CitizenProfile, now: datetime
) -> Eligible | EnrolmentRefusal:
    """May the citizen enrol at ``now`` (quota aside)?"""
    spec = version.spec
    window = spec.registration
    local = bangkok(now)
    day, second = local.date(), second_of_day(local)
    hours = window.hours
    last_moment_passed = day > window.end_date or (
        day == window.end_date and second >= hours.end_second
    )
    if last_moment_passed:
        return EnrolmentRefusal(
            reason=EnrolmentRefusalReason.REGISTRATION_CLOSED,
            detail=f"registration closed on {window.end_date} at {hours.end} Bangkok time",
            facts={"closed_at": _at(window.end_date, hours.end_second).isoformat()},
        )
    if day < window.start_date or not hours.admits(second):
        if day < window.start_date:
            opens_on = window.start_date
        elif second < hours.start_second:
            opens_on = day
        else:  # after today's hours, and not the last day (checked above)
            opens_on = day + timedelta(days=1)
        return EnrolmentRefusal(
            reason=EnrolmentRefusalReason.REGISTRATION_NOT_OPEN,
            detail=f"registration is open {hours.start}-{hours.end} Bangkok time "
            f"from {window.start_date} to {window.end_date}",
            facts={"opens_at": _at(opens_on, hours.start_second).isoformat()},
        )
    broken = citizen_ineligibility(spec.citizen_eligibility, citizen, day)
    if broken is not None:
        why, facts = broken
        return EnrolmentRefusal(
            reason=EnrolmentRefusalReason.NOT_ELIGIBLE,
            detail=f"not eligible: {why.replace('_', ' ')}",
            ineligibility=why,
            facts=facts,
        )
    return Eligible(
        program_id=version.program_id,
        version=version.version,
        first_use_deadline=first_use_deadline(now, version),
    )


def _at(day: Any, second: int) -> datetime:
    return start_of_day(day) + timedelta(seconds=second)


def first_use_deadline(enrolled_at: datetime, version: ProgramVersion) -> datetime | None:
    """The moment (exclusive) by which the first payment must be made, or None.

    ``first_use_deadline_days`` whole Bangkok days after the day of enrolment, counted from
    the first spending day if enrolment came before it (a right cannot be used before
    spending opens): enrolled on 1 July with 14 days, the right may be used until the end
    of 15 July, and the deadline is 16 July 00:00 Bangkok time.
    """
    days = version.spec.first_use_deadline_days
    if days is None:
        return None
    counted_from = max(bangkok(enrolled_at).date(), version.spec.spending.start_date)
    return start_of_day(counted_from + timedelta(days=days + 1))


def is_forfeited(
    enrolled_at: datetime,
    first_used_at: datetime | None,
    now: datetime,
    version: ProgramVersion,
) -> bool:
    """True when the right was not used by its deadline (its place goes back to the quota).

    A first use at or after the deadline does not revive the right.
    """
    deadline = first_use_deadline(enrolled_at, version)
    if deadline is None:
        return False
    if first_used_at is not None:
        return first_used_at >= deadline
    return bangkok(now) >= deadline


class GrantCredit(msgspec.Struct, frozen=True, kw_only=True):
    due_at: datetime
    amount_satang: int


def grant_credits(version: ProgramVersion, enrolled_at: datetime) -> tuple[GrantCredit, ...]:
    """When a grant's allowance is credited: all at enrolment, or instalment by instalment.

    Instalments run one after another, the first at enrolment; each next one follows its
    predecessor by the predecessor's period. Monthly pockets are not here: they are
    credited on the 1st of each month (``usage_periods``) whoever is enrolled then.
    """
    rule = version.spec.rule
    assert isinstance(rule, GrantRule), "only a grant has credits"
    enrolled_at = bangkok(enrolled_at)
    if not rule.instalments:
        if rule.allowance_satang == 0:
            return ()
        return (GrantCredit(due_at=enrolled_at, amount_satang=rule.allowance_satang),)
    credits = []
    due_at = enrolled_at
    for instalment in rule.instalments:
        for _ in range(instalment.count):
            credits.append(GrantCredit(due_at=due_at, amount_satang=instalment.amount_satang))
            due_at += timedelta(days=instalment.period_days)
    return tuple(credits)
