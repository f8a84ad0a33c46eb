"""The decision: for one purchase, how much the state pays and how much the citizen pays.

``decide_payment`` is pure: the caller loads the program version, the citizen's usage
counters (for the Bangkok day and month of ``usage_periods(now)``) and the remaining budget,
and writes the result in the same transaction, where constraints enforce the caps again.

First the checks every kind shares, in the order of ``RefusalReason`` (the first that applies
is returned); then the decider registered for the rule's kind computes the ``Split``.

A cap, a balance or the budget at zero is not a refusal: the split has subsidy 0 and
``bounded_by`` names what ran out, and the citizen pays the whole amount.

Adding a kind: write ``@decides(CashbackRule) def _decide_cashback(rule, purchase)``
returning a ``Split`` (or a ``Refusal``); the shared checks and the other kinds stay as they
are.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from subsidy_rules.eligibility import (
    CitizenProfile,
    MerchantProfile,
    citizen_ineligibility,
    merchant_ineligibility,
)
from subsidy_rules.periods import bangkok, second_of_day, usage_periods
from subsidy_rules.spec import (
    BP_MAX,
    CoPaymentRule,
    GrantRule,
    ProgramSpec,
    content_hash,
)

__all__ = [
    "DECIDERS",
    "Bound",
    "CitizenUsage",
    "ProgramVersion",
    "Purchase",
    "Refusal",
    "RefusalReason",
    "Split",
    "co_payment_remaining",
    "co_payment_share",
    "decide_payment",
    "decides",
    "program_version",
    "share_of",
    "usage_periods",
]


class ProgramVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One approved, immutable version of a program's spec."""

    program_id: str
    version: int
    spec: ProgramSpec
    content_hash: str  # content_hash(spec), bound by the checker's approval


def program_version(program_id: str, version: int, spec: ProgramSpec) -> ProgramVersion:
    return ProgramVersion(
        program_id=program_id, version=version, spec=spec, content_hash=content_hash(spec)
    )


class CitizenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """The citizen's counters in one program, read in the payment's transaction.

    ``used_*`` is subsidy received (net of refunds): today and this month are the Bangkok
    day and month of ``usage_periods(now)`` (a counter of an earlier period is 0 here).
    A grant's balances are what is left to spend: the general allowance credited so far,
    and each pocket (by name) for the current month only.
    """

    used_today_satang: int = 0
    used_this_month_satang: int = 0
    used_total_satang: int = 0
    grant_balance_satang: int = 0
    pocket_balances_satang: dict[str, int] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        assert (
            min(
                self.used_today_satang,
                self.used_this_month_satang,
                self.used_total_satang,
                self.grant_balance_satang,
                *self.pocket_balances_satang.values(),
            )
            >= 0
        ), "usage counters are never negative"


class Bound(enum.StrEnum):
    """What limited the subsidy. Ties go to the longest-lived limit (budget first)."""

    SHARE = "share"  # co_payment: the full share; no cap cut it
    PER_TRANSACTION_CAP = "per_transaction_cap"
    DAILY_CAP = "daily_cap"
    MONTHLY_CAP = "monthly_cap"
    TOTAL_CAP = "total_cap"
    BUDGET = "budget"  # the program's remaining budget (0: the state stops subsidising)
    AMOUNT = "amount"  # grant: the balance paid the whole amount
    GRANT_BALANCE = "grant_balance"  # grant: the usable balance (pocket + allowance) ran out


class RefusalReason(enum.StrEnum):
    """Why the program cannot take part in this payment; checked in this order."""

    OUTSIDE_SPENDING_PERIOD = "outside_spending_period"  # Bangkok date outside the dates
    OUTSIDE_SPENDING_HOURS = "outside_spending_hours"  # outside daily (or delivery) hours
    MERCHANT_SUSPENDED = "merchant_suspended"  # an official suspended the merchant (fraud)
    MERCHANT_NOT_ELIGIBLE = "merchant_not_eligible"  # type, category or area not allowed
    MERCHANT_NOT_IN_CITIZEN_DISTRICT = "merchant_not_in_citizen_district"  # home district only
    ITEM_CATEGORY_EXCLUDED = "item_category_excluded"  # alcohol, tobacco, lottery, ...
    CITIZEN_NOT_ELIGIBLE = "citizen_not_eligible"  # fails the citizen rules (age aside)
    AMOUNT_MUST_BE_POSITIVE = "amount_must_be_positive"  # a purchase of 0 or less


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    reason: RefusalReason
    detail: str  # one line for people
    facts: dict[str, Any] = msgspec.field(default_factory=dict)  # for machines


class Split(msgspec.Struct, frozen=True, kw_only=True):
    """The state's and the citizen's parts of one purchase; they add up to the amount."""

    program_id: str
    version: int
    amount_satang: int
    subsidy_satang: int  # paid by the program (co_payment: from the budget; grant: balance)
    citizen_satang: int  # paid from the citizen's own wallet
    bounded_by: Bound
    explanation: dict[str, Any]
    pocket_name: str | None = None  # grant: the pocket drawn on, if any
    pocket_satang: int = 0  # grant: the part of the subsidy from that pocket

    def __post_init__(self) -> None:
        assert 0 <= self.subsidy_satang <= self.amount_satang
        assert self.subsidy_satang + self.citizen_satang == self.amount_satang
        assert 0 <= self.pocket_satang <= self.subsidy_satang


class Purchase(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one decision reads, handed to the decider of the rule's kind."""

    version: ProgramVersion
    usage: CitizenUsage
    citizen: CitizenProfile
    merchant: MerchantProfile
    item_category: str | None  # None: ordinary goods
    amount_satang: int
    now: datetime
    budget_remaining_satang: int
    delivery: bool = False


def share_of(amount_satang: int, share_bp: int) -> int:
    """THE rounding rule: the state's share rounds down to whole satang (never overpays)."""
    assert amount_satang >= 0 and 0 <= share_bp <= BP_MAX
    return amount_satang * share_bp // BP_MAX


Decider = Callable[[Any, Purchase], "Split | Refusal"]
DECIDERS: dict[type, Decider] = {}
_D = TypeVar("_D", bound=Decider)


def decides(rule_type: type) -> Callable[[_D], _D]:
    """Register the decider of one rule kind (one per kind)."""

    def register(decider: _D) -> _D:
        assert rule_type not in DECIDERS, f"{rule_type.__name__} already has a decider"
        DECIDERS[rule_type] = decider
        return decider

    return register


def decide_payment(
    version: ProgramVersion,
    usage: CitizenUsage,
    citizen: CitizenProfile,
    merchant: MerchantProfile,
    item_category: str | None,
    amount_satang: int,
    now: datetime,
    budget_remaining_satang: int,
    delivery: bool = False,
) -> Split | Refusal:
    """Split one purchase between the program and the citizen, or refuse the program."""
    assert budget_remaining_satang >= 0, "a budget never goes below zero"
    purchase = Purchase(
        version=version,
        usage=usage,
        citizen=citizen,
        merchant=merchant,
        item_category=item_category,
        amount_satang=amount_satang,
        now=now,
        budget_remaining_satang=budget_remaining_satang,
        delivery=delivery,
    )
    refusal = _shared_refusal(purchase)
    if refusal is not None:
        return refusal
    return DECIDERS[type(version.spec.rule)](version.spec.rule, purchase)


def _shared_refusal(p: Purchase) -> Refusal | None:
    spec = p.version.spec
    local = bangkok(p.now)
    day = local.date()
    window = spec.spending
    if not window.start_date <= day <= window.end_date:
        return Refusal(
            reason=RefusalReason.OUTSIDE_SPENDING_PERIOD,
            detail=f"the program is spent from {window.start_date} to {window.end_date}",
            facts={
                "date": day.isoformat(),
                "start_date": window.start_date.isoformat(),
                "end_date": window.end_date.isoformat(),
            },
        )
    hours = window.delivery_hours if p.delivery and window.delivery_hours else window.hours
    if not hours.admits(second_of_day(local)):
        what = "delivery hours" if p.delivery else "spending hours"
        return Refusal(
            reason=RefusalReason.OUTSIDE_SPENDING_HOURS,
            detail=f"{what} are {hours.start}-{hours.end} Bangkok time",
            facts={
                "time": local.time().isoformat("seconds"),
                "start": hours.start,
                "end": hours.end,
                "delivery": p.delivery,
            },
        )
    if p.merchant.suspended:
        return Refusal(
            reason=RefusalReason.MERCHANT_SUSPENDED,
            detail="the merchant is suspended",
            facts={"merchant_id": p.merchant.merchant_id},
        )
    broken = merchant_ineligibility(spec.merchant_eligibility, p.merchant)
    if broken is not None:
        which, facts = broken
        return Refusal(
            reason=RefusalReason.MERCHANT_NOT_ELIGIBLE,
            detail=f"the merchant's {which.replace('_', ' ')} is not eligible",
            facts={"failed": str(which), **facts},
        )
    if (
        spec.merchant_eligibility.same_district_as_citizen
        and p.merchant.district_code != p.citizen.district_code
    ):
        return Refusal(
            reason=RefusalReason.MERCHANT_NOT_IN_CITIZEN_DISTRICT,
            detail="the program is spent only in the citizen's home district",
            facts={
                "merchant_district_code": p.merchant.district_code,
                "citizen_district_code": p.citizen.district_code,
            },
        )
    if p.item_category is not None and p.item_category in spec.excluded_item_categories:
        return Refusal(
            reason=RefusalReason.ITEM_CATEGORY_EXCLUDED,
            detail=f"{p.item_category} cannot be bought with this program",
            facts={"item_category": p.item_category},
        )
    # Age was decided at enrolment: a right is not lost by a birthday during the program.
    broken_rule = citizen_ineligibility(spec.citizen_eligibility, p.citizen, day, check_age=False)
    if broken_rule is not None:
        why, facts = broken_rule
        return Refusal(
            reason=RefusalReason.CITIZEN_NOT_ELIGIBLE,
            detail=f"the citizen is not eligible ({why.replace('_', ' ')})",
            facts={"failed": str(why), **facts},
        )
    if p.amount_satang <= 0:
        return Refusal(
            reason=RefusalReason.AMOUNT_MUST_BE_POSITIVE,
            detail="the amount must be more than 0 satang",
            facts={"amount_satang": p.amount_satang},
        )
    return None


# --- co_payment -----------------------------------------------------------------------------

# Precedence among limits equal to the subsidy: the longest-lived first, because it is the
# one that tells the citizen the most (the budget will not come back tomorrow; a day will).
_LIMIT_ORDER = (
    Bound.BUDGET,
    Bound.TOTAL_CAP,
    Bound.MONTHLY_CAP,
    Bound.DAILY_CAP,
    Bound.PER_TRANSACTION_CAP,
)


def co_payment_share(rule: CoPaymentRule, citizen: CitizenProfile) -> tuple[int, Any]:
    """The share in basis points for this citizen, and the override that gave it (or None)."""
    for override in rule.overrides:
        value = getattr(citizen, override.attribute)
        # bool and str never compare equal, so a taxpayer flag never matches a code.
        if type(value) is type(override.equals) and value == override.equals:
            return override.share_bp, override
    return rule.share_bp, None


def co_payment_remaining(
    rule: CoPaymentRule, usage: CitizenUsage, budget_remaining_satang: int
) -> dict[Bound, int | None]:
    """What each cap still allows (None: no such cap), and the budget."""
    caps = rule.caps

    def left(cap: int | None, used: int) -> int | None:
        return None if cap is None else max(0, cap - used)

    return {
        Bound.PER_TRANSACTION_CAP: caps.per_transaction,
        Bound.DAILY_CAP: left(caps.daily, usage.used_today_satang),
        Bound.MONTHLY_CAP: left(caps.monthly, usage.used_this_month_satang),
        Bound.TOTAL_CAP: left(caps.total, usage.used_total_satang),
        Bound.BUDGET: budget_remaining_satang,
    }


@decides(CoPaymentRule)
def _decide_co_payment(rule: CoPaymentRule, p: Purchase) -> Split:
    share_bp, override = co_payment_share(rule, p.citizen)
    raw = share_of(p.amount_satang, share_bp)
    remaining = co_payment_remaining(rule, p.usage, p.budget_remaining_satang)
    limits = [value for value in remaining.values() if value is not None]
    subsidy = min(raw, *limits)
    if subsidy == raw:
        bounded_by = Bound.SHARE
    else:
        bounded_by = next(bound for bound in _LIMIT_ORDER if remaining[bound] == subsidy)
    explanation = {
        "kind": "co_payment",
        "share_bp": share_bp,
        "share_source": "default" if override is None else "override",
        "share_override": None
        if override is None
        else {"attribute": override.attribute, "equals": override.equals},
        "raw_share_satang": raw,
        "rounding": "floor",
        "remaining_satang": {str(bound): value for bound, value in remaining.items()},
        "bounded_by": str(bounded_by),
    }
    return Split(
        program_id=p.version.program_id,
        version=p.version.version,
        amount_satang=p.amount_satang,
        subsidy_satang=subsidy,
        citizen_satang=p.amount_satang - subsidy,
        bounded_by=bounded_by,
        explanation=explanation,
    )


# --- grant ----------------------------------------------------------------------------------


@decides(GrantRule)
def _decide_grant(rule: GrantRule, p: Purchase) -> Split:
    # The budget is not a limit here: grant money left the budget when it was credited.
    pocket = rule.pocket_for(p.merchant.category)
    pocket_balance = 0 if pocket is None else p.usage.pocket_balances_satang.get(pocket.name, 0)
    # The pocket first: what is left of it at month end is lost; the allowance is not.
    from_pocket = min(p.amount_satang, pocket_balance)
    from_grant = min(p.amount_satang - from_pocket, p.usage.grant_balance_satang)
    subsidy = from_pocket + from_grant
    bounded_by = Bound.AMOUNT if subsidy == p.amount_satang else Bound.GRANT_BALANCE
    explanation = {
        "kind": "grant",
        "pocket": None if pocket is None else pocket.name,
        "pocket_balance_satang": pocket_balance,
        "grant_balance_satang": p.usage.grant_balance_satang,
        "from_pocket_satang": from_pocket,
        "from_grant_satang": from_grant,
        "bounded_by": str(bounded_by),
    }
    return Split(
        program_id=p.version.program_id,
        version=p.version.version,
        amount_satang=p.amount_satang,
        subsidy_satang=subsidy,
        citizen_satang=p.amount_satang - subsidy,
        bounded_by=bounded_by,
        explanation=explanation,
        pocket_name=None if pocket is None or from_pocket == 0 else pocket.name,
        pocket_satang=from_pocket,
    )
