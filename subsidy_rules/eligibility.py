"""Who may enrol and where a subsidy may be spent: the profiles and their pure checks.

Shared by ``enrolment`` (may this citizen enrol?) and ``decision`` (may this citizen pay
this merchant?). Each check returns ``None`` or the first rule broken, in the order of its
enum, with machine-readable facts.
"""

from __future__ import annotations

import enum
from datetime import date
from typing import Any

import msgspec

from subsidy_rules.spec import BusinessType, CitizenEligibility, MerchantEligibility


class CitizenProfile(msgspec.Struct, frozen=True, kw_only=True):
    """What the rules need to know of a citizen (as registered; codes as in the spec)."""

    birth_date: date
    nationality: str  # ISO 3166-1 alpha-2, "TH"
    province_code: str  # 2 digits, "10" Bangkok
    district_code: str  # 4 digits, "1001"
    taxpayer: bool = False
    held_program_codes: tuple[str, ...] = ()  # codes of the programs the citizen is enrolled in


class MerchantProfile(msgspec.Struct, frozen=True, kw_only=True):
    merchant_id: str
    business_type: BusinessType
    category: str  # a slug: "grocery", "blue_flag_shop", "bus", ...
    province_code: str
    district_code: str
    suspended: bool = False


class Ineligibility(enum.StrEnum):
    """Why a citizen may not enrol; checked in this order, the first that applies is named."""

    AGE = "age"  # younger than min_age or older than max_age (completed years, Bangkok date)
    NATIONALITY = "nationality"  # nationality not in the listed ones
    PROVINCE = "province"  # registered province not in the listed ones
    DISTRICT = "district"  # registered district not in the listed ones
    TAXPAYER = "taxpayer"  # taxpayer status differs from the one required
    EXCLUDED_PROGRAM = "excluded_program"  # holds a program this one excludes


class MerchantIneligibility(enum.StrEnum):
    """Why a merchant cannot take this program's money; checked in this order."""

    BUSINESS_TYPE = "business_type"  # e.g. franchise convenience stores are excluded
    CATEGORY = "category"
    PROVINCE = "province"
    DISTRICT = "district"


def age_on(birth_date: date, day: date) -> int:
    """Completed years on ``day`` (someone born on 29 February comes of age on 1 March)."""
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


def citizen_ineligibility(
    rules: CitizenEligibility, citizen: CitizenProfile, today: date, *, check_age: bool = True
) -> tuple[Ineligibility, dict[str, Any]] | None:
    """The first eligibility rule the citizen breaks on ``today`` (Bangkok), or None."""
    if check_age and (rules.min_age is not None or rules.max_age is not None):
        age = age_on(citizen.birth_date, today)
        if (rules.min_age is not None and age < rules.min_age) or (
            rules.max_age is not None and age > rules.max_age
        ):
            return Ineligibility.AGE, {
                "age": age,
                "min_age": rules.min_age,
                "max_age": rules.max_age,
            }
    if rules.nationalities and citizen.nationality not in rules.nationalities:
        return Ineligibility.NATIONALITY, {
            "nationality": citizen.nationality,
            "allowed": list(rules.nationalities),
        }
    if rules.province_codes and citizen.province_code not in rules.province_codes:
        return Ineligibility.PROVINCE, {
            "province_code": citizen.province_code,
            "allowed": list(rules.province_codes),
        }
    if rules.district_codes and citizen.district_code not in rules.district_codes:
        return Ineligibility.DISTRICT, {
            "district_code": citizen.district_code,
            "allowed": list(rules.district_codes),
        }
    if rules.taxpayer is not None and citizen.taxpayer != rules.taxpayer:
        return Ineligibility.TAXPAYER, {"taxpayer": citizen.taxpayer, "required": rules.taxpayer}
    for code in rules.excluded_if_holding:
        if code in citizen.held_program_codes:
            return Ineligibility.EXCLUDED_PROGRAM, {"program_code": code}
    return None


def merchant_ineligibility(
    rules: MerchantEligibility, merchant: MerchantProfile
) -> tuple[MerchantIneligibility, dict[str, Any]] | None:
    """The first merchant rule the merchant breaks, or None (suspension is checked apart)."""
    if rules.business_types and merchant.business_type not in rules.business_types:
        return MerchantIneligibility.BUSINESS_TYPE, {
            "business_type": str(merchant.business_type),
            "allowed": [str(t) for t in rules.business_types],
        }
    if rules.categories and merchant.category not in rules.categories:
        return MerchantIneligibility.CATEGORY, {
            "category": merchant.category,
            "allowed": list(rules.categories),
        }
    if rules.province_codes and merchant.province_code not in rules.province_codes:
        return MerchantIneligibility.PROVINCE, {
            "province_code": merchant.province_code,
            "allowed": list(rules.province_codes),
        }
    if rules.district_codes and merchant.district_code not in rules.district_codes:
        return MerchantIneligibility.DISTRICT, {
            "district_code": merchant.district_code,
            "allowed": list(rules.district_codes),
        }
    return None
