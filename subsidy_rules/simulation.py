"""Simulation: what a program version would have paid on recorded payments. Pure.

The caller streams the recorded payments of a period in time order (``created_at``, id) into
``Simulation.feed``; each is decided again with ``decide_payment`` against the version, with
every citizen's usage (today, this month, in total; a grant's allowance and pockets) rebuilt
in memory from the simulated subsidies that came before it, and the budget left by them.

What a payment row does not record is assumed (``ASSUMPTIONS``): the citizen is Thai, not a
taxpayer and holds no other program; the merchant is an individual trader that is not
suspended; every citizen is enrolled (and a grant's whole allowance is credited) from the
start of the period; usage before the period is not counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import msgspec

from subsidy_rules.decision import (
    CitizenUsage,
    ProgramVersion,
    Refusal,
    decide_payment,
)
from subsidy_rules.eligibility import CitizenProfile, MerchantProfile
from subsidy_rules.periods import usage_periods
from subsidy_rules.spec import BusinessType, GrantRule

MAX_DAYS = 92  # a quarter: the longest period one request may simulate
MAX_PAYMENTS = 1_000_000  # the most payments one request may simulate

ASSUMPTIONS = (
    "citizens are Thai nationals, not taxpayers, and hold no other program",
    "merchants are individual traders and none is suspended",
    "every payer is enrolled (a grant's whole allowance credited) from the start of the period",
    "usage before the period is not counted; refunds are ignored",
)

_ASSUMED_BIRTH_DATE = date(1970, 1, 1)  # age is decided at enrolment, never when paying


class RecordedPayment(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One row of ``payments``, as much of it as a decision reads."""

    citizen_id: str
    merchant_id: str
    amount: int
    actual_subsidy: int  # what the program in force paid (net of refunds)
    item_category: str | None
    delivery: bool
    merchant_category: str
    merchant_province_code: str
    merchant_district_code: str
    citizen_province_code: str
    citizen_district_code: str
    business_date: date
    created_at: datetime


class SimulatedDay(msgspec.Struct, frozen=True, kw_only=True):
    date: date
    payments: int
    amount: int
    subsidy_amount: int  # what the version would have paid that day
    cumulative_subsidy_amount: int
    budget_remaining: int  # the version's budget minus the cumulative subsidy
    refused: int  # payments the version would not have subsidised at all
    actual_subsidy_amount: int  # what was really paid that day, for comparison


class SimulationReport(msgspec.Struct, frozen=True, kw_only=True):
    program_id: str
    version: int
    content_hash: str
    start: date = msgspec.field(name="from")
    end: date = msgspec.field(name="to")
    population: str
    currency: str
    budget: int
    payments: int
    amount: int
    subsidy_amount: int
    actual_subsidy_amount: int
    budget_remaining: int
    budget_exhausted_on: date | None  # the first day the cumulative subsidy used it all up
    refused: dict[str, int]  # refusal reason -> payments
    bounded_by: dict[str, int]  # what bounded each subsidy -> payments
    days: list[SimulatedDay]
    assumptions: tuple[str, ...]


@dataclass(slots=True)
class _Usage:
    day: date | None = None
    used_day: int = 0
    month: date | None = None
    used_month: int = 0
    used_total: int = 0
    grant_used: int = 0  # the general allowance spent (pockets aside)
    pocket_month: date | None = None
    pocket_used: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Day:
    payments: int = 0
    amount: int = 0
    subsidy: int = 0
    refused: int = 0
    actual: int = 0


class Simulation:
    """Feed payments in time order, then ``report``."""

    def __init__(self, version: ProgramVersion, start: date, end: date, population: str) -> None:
        assert start <= end and (end - start).days < MAX_DAYS
        self.version = version
        self.start, self.end = start, end
        self.population = population
        self.budget = version.spec.budget_satang
        self.cumulative = 0
        self._usage: dict[str, _Usage] = {}
        self._citizens: dict[tuple[str, str, str], CitizenProfile] = {}
        self._merchants: dict[tuple[str, str, str, str], MerchantProfile] = {}
        self._days = {start + timedelta(days=n): _Day() for n in range((end - start).days + 1)}
        self._refused: Counter[str] = Counter()
        self._bounded: Counter[str] = Counter()
        self._exhausted_on: date | None = None
        rule = version.spec.rule
        self._grant = rule if isinstance(rule, GrantRule) else None

    def feed(self, payments: list[RecordedPayment]) -> None:
        for payment in payments:
            self._decide(payment)

    def _decide(self, p: RecordedPayment) -> None:
        assert self.start <= p.business_date <= self.end, "payments of the period only"
        day = self._days[p.business_date]
        day.payments += 1
        day.amount += p.amount
        day.actual += p.actual_subsidy
        day_key, month_key = usage_periods(p.created_at)
        usage = self._usage.get(p.citizen_id)
        if usage is None:
            usage = self._usage[p.citizen_id] = _Usage()
        if usage.day != day_key:
            usage.day, usage.used_day = day_key, 0
        if usage.month != month_key:
            usage.month, usage.used_month = month_key, 0
        if usage.pocket_month != month_key:
            usage.pocket_month, usage.pocket_used = month_key, {}
        grant_balance, pockets = 0, {}
        if self._grant is not None:
            grant_balance = max(0, self._grant.allowance_satang - usage.grant_used)
            pockets = {
                pocket.name: max(0, pocket.amount_satang - usage.pocket_used.get(pocket.name, 0))
                for pocket in self._grant.pockets
            }
        result = decide_payment(
            self.version,
            CitizenUsage(
                used_today_satang=usage.used_day,
                used_this_month_satang=usage.used_month,
                used_total_satang=usage.used_total,
                grant_balance_satang=grant_balance,
                pocket_balances_satang=pockets,
            ),
            self._citizen(p),
            self._merchant(p),
            p.item_category,
            p.amount,
            p.created_at,
            max(0, self.budget - self.cumulative),
            delivery=p.delivery,
        )
        if isinstance(result, Refusal):
            day.refused += 1
            self._refused[str(result.reason)] += 1
            return
        subsidy = result.subsidy_satang
        self._bounded[str(result.bounded_by)] += 1
        usage.used_day += subsidy
        usage.used_month += subsidy
        usage.used_total += subsidy
        if result.pocket_name is not None:
            usage.pocket_used[result.pocket_name] = (
                usage.pocket_used.get(result.pocket_name, 0) + result.pocket_satang
            )
        usage.grant_used += subsidy - result.pocket_satang
        day.subsidy += subsidy
        self.cumulative += subsidy
        if self._exhausted_on is None and self.budget > 0 and self.cumulative >= self.budget:
            self._exhausted_on = p.business_date

    def _citizen(self, p: RecordedPayment) -> CitizenProfile:
        key = (p.citizen_id, p.citizen_province_code, p.citizen_district_code)
        profile = self._citizens.get(key)
        if profile is None:
            profile = self._citizens[key] = CitizenProfile(
                birth_date=_ASSUMED_BIRTH_DATE,
                nationality="TH",
                province_code=p.citizen_province_code,
                district_code=p.citizen_district_code,
            )
        return profile

    def _merchant(self, p: RecordedPayment) -> MerchantProfile:
        key = (
            p.merchant_id,
            p.merchant_category,
            p.merchant_province_code,
            p.merchant_district_code,
        )
        profile = self._merchants.get(key)
        if profile is None:
            profile = self._merchants[key] = MerchantProfile(
                merchant_id=p.merchant_id,
                business_type=BusinessType.INDIVIDUAL,
                category=p.merchant_category,
                province_code=p.merchant_province_code,
                district_code=p.merchant_district_code,
            )
        return profile

    def report(self) -> SimulationReport:
        days: list[SimulatedDay] = []
        cumulative = 0
        for when, day in self._days.items():
            cumulative += day.subsidy
            days.append(
                SimulatedDay(
                    date=when,
                    payments=day.payments,
                    amount=day.amount,
                    subsidy_amount=day.subsidy,
                    cumulative_subsidy_amount=cumulative,
                    budget_remaining=max(0, self.budget - cumulative),
                    refused=day.refused,
                    actual_subsidy_amount=day.actual,
                )
            )
        assert cumulative == self.cumulative
        return SimulationReport(
            program_id=self.version.program_id,
            version=self.version.version,
            content_hash=self.version.content_hash,
            start=self.start,
            end=self.end,
            population=self.population,
            currency="THB",
            budget=self.budget,
            payments=sum(d.payments for d in days),
            amount=sum(d.amount for d in days),
            subsidy_amount=self.cumulative,
            actual_subsidy_amount=sum(d.actual_subsidy_amount for d in days),
            budget_remaining=max(0, self.budget - self.cumulative),
            budget_exhausted_on=self._exhausted_on,
            refused=dict(sorted(self._refused.items())),
            bounded_by=dict(sorted(self._bounded.items())),
            days=days,
            assumptions=ASSUMPTIONS,
        )
