"""The program spec: versioned JSON an official writes, validated strictly, hashed for approval.

A spec is decoded in two passes and both name the field at fault as a JSON path:

1. ``msgspec`` checks types and ranges (``forbid_unknown_fields``; an ``int`` field refuses a
   float, a string and a boolean; money is integer satang in 0..10**12, rates are integer
   basis points in 0..10000): "Expected `int` >= 1 - at `$.rule.caps.daily`".
2. ``validate_spec`` checks what types cannot say: windows end after they start, daily hours
   start before they end, caps are ordered, instalments add up to the allowance, ...

Either pass raises ``SpecError`` (``.path``, ``.message``), which the HTTP layer maps to 422.

Conventions:
- An empty list means "no restriction" (``province_codes: []`` is every province).
- Dates are Asia/Bangkok calendar dates, both ends inclusive. Daily hours are "HH:MM" local,
  ``start`` inclusive and ``end`` exclusive, "24:00" allowed as an end: ``06:00``-``23:00``
  admits 22:59:59 and refuses 23:00:00.
- The rule is a tagged union on ``kind``: each kind is one Struct with its own ``check``
  (semantic validation). To add a kind, write its Struct, add it to ``Rule`` and give
  ``decision`` a decider for it; no other kind changes.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
from datetime import date
from typing import Annotated, Literal

import msgspec

SPEC_VERSION = 1
MONEY_MAX_SATANG = 10**12  # 10 bn THB: any amount of one citizen or one purchase
# A whole program's budget is larger than any one amount: Plus 2025 had 44 bn THB
# (4.4 * 10**12 satang). 10**15 satang (10 trillion THB) is well above a national budget.
BUDGET_MAX_SATANG = 10**15
BP_MAX = 10_000  # basis points in 100 %
LIST_MAX = 1_000  # every list in a spec is bounded (Thailand has 928 districts)

Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
ProgramCode = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{1,39}$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Nationality = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]  # ISO 3166-1 alpha-2
ProvinceCode = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{2}$")]  # DOPA: "10" Bangkok
DistrictCode = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}$")]  # DOPA: "1001" Phra Nakhon
HourMinute = Annotated[str, msgspec.Meta(pattern=r"^(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]
Satang = Annotated[int, msgspec.Meta(ge=0, le=MONEY_MAX_SATANG)]
PositiveSatang = Annotated[int, msgspec.Meta(gt=0, le=MONEY_MAX_SATANG)]
BasisPoints = Annotated[int, msgspec.Meta(ge=0, le=BP_MAX)]
Age = Annotated[int, msgspec.Meta(ge=0, le=150)]


def _bounded(item: object, max_length: int = LIST_MAX) -> object:
    return Annotated[tuple[item, ...], msgspec.Meta(max_length=max_length)]  # type: ignore[valid-type]


class SpecError(ValueError):
    """A spec broke a rule; ``path`` is the JSON path of the field at fault ("$.rule.caps")."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{message} - at `{path}`")
        self.path = path
        self.message = message


class _Spec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of every spec struct: strict and immutable."""


class BusinessType(enum.StrEnum):
    INDIVIDUAL = "individual"  # a Thai person trading in their own name
    JURISTIC = "juristic"  # a registered company or partnership
    COOPERATIVE = "cooperative"  # cooperatives and village-fund shops
    FRANCHISE = "franchise"  # a branch of a franchise chain (convenience stores)


class DailyHours(_Spec):
    """Local Asia/Bangkok hours of each day: ``start`` inclusive, ``end`` exclusive."""

    start: HourMinute
    end: HourMinute

    @property
    def start_second(self) -> int:
        return _seconds(self.start)

    @property
    def end_second(self) -> int:
        return _seconds(self.end)

    def admits(self, second_of_day: int) -> bool:
        return self.start_second <= second_of_day < self.end_second


def _seconds(hour_minute: str) -> int:
    hours, minutes = hour_minute.split(":")
    return int(hours) * 3600 + int(minutes) * 60


class RegistrationWindow(_Spec):
    start_date: date
    end_date: date  # inclusive
    hours: DailyHours


class SpendingWindow(_Spec):
    start_date: date
    end_date: date  # inclusive
    hours: DailyHours
    # Delivery orders; None: the same hours as a purchase at the shop.
    delivery_hours: DailyHours | None = None


class CitizenEligibility(_Spec):
    """Who may enrol. Every given restriction must hold; an empty list restricts nothing."""

    min_age: Age | None = None  # completed years on the day, inclusive
    max_age: Age | None = None  # inclusive
    nationalities: _bounded(Nationality, 250) = ()  # type: ignore[valid-type]
    province_codes: _bounded(ProvinceCode) = ()  # type: ignore[valid-type]
    district_codes: _bounded(DistrictCode) = ()  # type: ignore[valid-type]
    taxpayer: bool | None = None  # None: either; True: taxpayers only; False: non-taxpayers only
    excluded_if_holding: _bounded(ProgramCode, 100) = ()  # type: ignore[valid-type]


class MerchantEligibility(_Spec):
    """Where the subsidy may be spent. Every given restriction must hold."""

    business_types: _bounded(BusinessType, 4) = ()  # type: ignore[valid-type]
    categories: _bounded(Slug) = ()  # type: ignore[valid-type]
    province_codes: _bounded(ProvinceCode) = ()  # type: ignore[valid-type]
    district_codes: _bounded(DistrictCode) = ()  # type: ignore[valid-type]
    same_district_as_citizen: bool = False  # Digital Wallet 2024: spend in your home district


# --- the rule of each kind ------------------------------------------------------------------


class _Rule(_Spec, tag_field="kind"):
    """Base of the rule kinds; ``check`` does the semantic validation of one kind."""

    def check(self, spec: ProgramSpec, path: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class ShareOverride(_Spec):
    """A different state share for citizens with one attribute (the first match wins)."""

    attribute: Literal["taxpayer", "nationality", "province_code", "district_code"]
    equals: bool | str  # a bool for "taxpayer", a code string for the others
    share_bp: BasisPoints


class Caps(_Spec):
    """Most subsidy one citizen may receive; each optional, ordered when given."""

    per_transaction: PositiveSatang | None = None
    daily: PositiveSatang | None = None  # resets at midnight Asia/Bangkok
    monthly: PositiveSatang | None = None  # calendar month, Asia/Bangkok, no carry-over
    total: PositiveSatang | None = None  # the whole program


CAP_FIELDS = ("per_transaction", "daily", "monthly", "total")  # narrowest first


class CoPaymentRule(_Rule, tag="co_payment"):
    """The state pays floor(amount x share) of each purchase, within the caps and budget."""

    share_bp: BasisPoints
    overrides: _bounded(ShareOverride, 16) = ()  # type: ignore[valid-type]
    caps: Caps = msgspec.field(default_factory=Caps)

    def check(self, spec: ProgramSpec, path: str) -> None:
        for i, override in enumerate(self.overrides):
            wants_bool = override.attribute == "taxpayer"
            if isinstance(override.equals, bool) != wants_bool:
                raise SpecError(
                    f"{path}.overrides[{i}].equals",
                    f"`{override.attribute}` is compared with a "
                    + ("boolean" if wants_bool else "string"),
                )
        given = [(name, getattr(self.caps, name)) for name in CAP_FIELDS]
        given = [(name, value) for name, value in given if value is not None]
        for (narrow, narrow_value), (wide, wide_value) in itertools.pairwise(given):
            if narrow_value > wide_value:
                raise SpecError(
                    f"{path}.caps.{narrow}",
                    f"the {narrow} cap ({narrow_value}) is above the {wide} cap ({wide_value})",
                )


class Instalment(_Spec):
    """``count`` credits of ``amount_satang``, one every ``every_days`` days (or ``weekly``)."""

    count: Annotated[int, msgspec.Meta(ge=1, le=520)]
    amount_satang: PositiveSatang
    every_days: Annotated[int, msgspec.Meta(ge=1, le=366)] | None = None
    weekly: bool = False

    @property
    def period_days(self) -> int:
        return 7 if self.weekly else self.every_days  # type: ignore[return-value]


class Pocket(_Spec):
    """Welfare-card style: credited on the 1st of each month, no carry-over, spent only at
    merchants of its categories."""

    name: Slug
    amount_satang: PositiveSatang
    merchant_categories: Annotated[tuple[Slug, ...], msgspec.Meta(min_length=1, max_length=100)]


class GrantRule(_Rule, tag="grant"):
    """A fixed allowance spent at eligible merchants, never withdrawable as cash.

    ``allowance_satang`` is credited at enrolment, or by ``instalments`` (run one after
    another, the first at enrolment) which must add up to it. ``pockets`` are monthly
    amounts on top of it, each spendable only at its merchant categories.
    """

    allowance_satang: Satang
    instalments: _bounded(Instalment, 52) = ()  # type: ignore[valid-type]
    pockets: _bounded(Pocket, 16) = ()  # type: ignore[valid-type]

    def check(self, spec: ProgramSpec, path: str) -> None:
        if self.allowance_satang == 0 and not self.pockets:
            raise SpecError(
                f"{path}.allowance_satang", "a grant needs an allowance, monthly pockets or both"
            )
        for i, instalment in enumerate(self.instalments):
            if (instalment.every_days is None) == (not instalment.weekly):
                raise SpecError(
                    f"{path}.instalments[{i}]", "give exactly one of `every_days` and `weekly`"
                )
        if self.instalments:
            scheduled = sum(i.count * i.amount_satang for i in self.instalments)
            if scheduled != self.allowance_satang:
                raise SpecError(
                    f"{path}.instalments",
                    f"instalments add up to {scheduled}, not the allowance {self.allowance_satang}",
                )
        names: set[str] = set()
        owner: dict[str, str] = {}
        allowed = set(spec.merchant_eligibility.categories)
        for i, pocket in enumerate(self.pockets):
            if pocket.name in names:
                raise SpecError(f"{path}.pockets[{i}].name", f"pocket `{pocket.name}` twice")
            names.add(pocket.name)
            for j, category in enumerate(pocket.merchant_categories):
                where = f"{path}.pockets[{i}].merchant_categories[{j}]"
                if category in owner:
                    # One pocket per category, so a purchase draws on one pocket only.
                    raise SpecError(
                        where, f"category `{category}` is already in pocket `{owner[category]}`"
                    )
                owner[category] = pocket.name
                if allowed and category not in allowed:
                    raise SpecError(
                        where, f"category `{category}` is not an eligible merchant category"
                    )

    def pocket_for(self, merchant_category: str) -> Pocket | None:
        for pocket in self.pockets:
            if merchant_category in pocket.merchant_categories:
                return pocket
        return None


# One more kind (the Ying Chai Ying Dai cashback e-voucher) is one more Struct in this union.
Rule = CoPaymentRule | GrantRule
RULE_KINDS: tuple[type[_Rule], ...] = (CoPaymentRule, GrantRule)


class ProgramSpec(_Spec):
    spec_version: Literal[1]
    code: ProgramCode  # short slug, e.g. "khon-la-khrueng-3"
    name_th: Name
    name_en: Name
    kind: str  # the rule's kind, repeated here so a listing need not look into the rule
    budget_satang: Annotated[int, msgspec.Meta(ge=0, le=BUDGET_MAX_SATANG)]
    quota: Annotated[int, msgspec.Meta(ge=1, le=10**9)]  # enrolments
    registration: RegistrationWindow
    spending: SpendingWindow
    rule: Rule
    # Rights not used within this many days are forfeited and go back to the quota.
    first_use_deadline_days: Annotated[int, msgspec.Meta(ge=1, le=366)] | None = None
    citizen_eligibility: CitizenEligibility = msgspec.field(default_factory=CitizenEligibility)
    merchant_eligibility: MerchantEligibility = msgspec.field(default_factory=MerchantEligibility)
    excluded_item_categories: _bounded(Slug, 100) = ()  # type: ignore[valid-type]


# --- decoding, validation, hashing ----------------------------------------------------------


def decode_spec(data: bytes | str) -> ProgramSpec:
    """Decode and validate a JSON spec; raise ``SpecError`` naming the field at fault."""
    try:
        spec = msgspec.json.decode(data, type=ProgramSpec)
    except msgspec.ValidationError as error:
        raise _spec_error(str(error)) from None
    except msgspec.DecodeError as error:
        raise SpecError("$", f"not valid JSON: {error}") from None
    return validate_spec(spec)


def spec_from_builtins(obj: object) -> ProgramSpec:
    """Like ``decode_spec`` for already parsed JSON (dicts and lists), just as strict."""
    return decode_spec(msgspec.json.encode(obj))


def _spec_error(text: str) -> SpecError:
    message, sep, rest = text.rpartition(" - at `")
    if not sep:
        message, path = text, "$"
    else:
        path = rest.rstrip("`")
    # Name the field itself, not only the object holding it.
    for lead in ("Object contains unknown field `", "Object missing required field `"):
        if message.startswith(lead):
            path = f"{path}.{message[len(lead) :].rstrip('`')}"
    return SpecError(path, message)


def validate_spec(spec: ProgramSpec) -> ProgramSpec:
    """The checks types cannot express. Returns the spec; raises ``SpecError``."""
    kind = type(spec.rule).__struct_config__.tag
    if spec.kind != kind:
        raise SpecError("$.kind", f"`kind` is '{spec.kind}' but the rule is '{kind}'")
    _check_dates(spec.registration.start_date, spec.registration.end_date, "$.registration")
    _check_hours(spec.registration.hours, "$.registration.hours")
    _check_dates(spec.spending.start_date, spec.spending.end_date, "$.spending")
    _check_hours(spec.spending.hours, "$.spending.hours")
    if spec.spending.delivery_hours is not None:
        _check_hours(spec.spending.delivery_hours, "$.spending.delivery_hours")
    if spec.registration.end_date > spec.spending.end_date:
        raise SpecError(
            "$.registration.end_date", "registration must close by the last day of spending"
        )
    eligibility = spec.citizen_eligibility
    if (
        eligibility.min_age is not None
        and eligibility.max_age is not None
        and eligibility.min_age > eligibility.max_age
    ):
        raise SpecError("$.citizen_eligibility.max_age", "`max_age` is below `min_age`")
    if spec.code in eligibility.excluded_if_holding:
        raise SpecError(
            "$.citizen_eligibility.excluded_if_holding", "a program cannot exclude itself"
        )
    spec.rule.check(spec, "$.rule")
    return spec


def _check_dates(start: date, end: date, path: str) -> None:
    if end < start:
        raise SpecError(f"{path}.end_date", f"the window ends ({end}) before it starts ({start})")


def _check_hours(hours: DailyHours, path: str) -> None:
    if hours.end_second <= hours.start_second:
        raise SpecError(
            f"{path}.end", f"daily hours end ({hours.end}) at or before they start ({hours.start})"
        )


def rule_kind(rule: object) -> str:
    return type(rule).__struct_config__.tag  # type: ignore[attr-defined]


def canonical_json(spec: ProgramSpec) -> bytes:
    """The spec as canonical JSON: keys sorted, every field present."""
    return msgspec.json.encode(spec, order="sorted")


def content_hash(spec: ProgramSpec) -> str:
    """sha256 hex of the canonical JSON: what a checker approves is exactly this version."""
    return hashlib.sha256(canonical_json(spec)).hexdigest()
