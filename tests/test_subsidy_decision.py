"""The subsidy decision: one row per rule and per refusal, boundaries, and properties."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subsidy_rules.decision import (
    DECIDERS,
    Bound,
    CitizenUsage,
    ProgramVersion,
    Refusal,
    RefusalReason,
    Split,
    decide_payment,
    program_version,
    share_of,
)
from subsidy_rules.eligibility import BusinessType, CitizenProfile, MerchantProfile
from subsidy_rules.examples import EXAMPLE_SPECS, THB
from subsidy_rules.periods import BANGKOK, usage_periods
from subsidy_rules.spec import RULE_KINDS, Caps, CoPaymentRule, spec_from_builtins


def bkk(text: str) -> datetime:
    """A Bangkok wall-clock time, "2021-07-01 12:00:00"."""
    return datetime.fromisoformat(text).replace(tzinfo=BANGKOK)


def version_of(code: str, *changes: tuple[str, Any]) -> ProgramVersion:
    doc = copy.deepcopy(EXAMPLE_SPECS[code])
    for path, value in changes:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return program_version(f"prg_{code}", 1, spec_from_builtins(doc))


KLK3 = version_of("khon-la-khrueng-3")  # 50 %, 150 THB a day, 3,000 THB in all
PLUS = version_of("khon-la-khrueng-plus-2025")  # 60 % taxpayers / 50 %, 200 a day, 2,400
TCT = version_of("thai-chuay-thai-plus-2026")  # 60 %, 200 a day, 1,000 a month, 4,000
TCT_PER_TX = version_of("thai-chuay-thai-plus-2026", ("rule.caps.per_transaction", 50 * THB))
BY_PROVINCE = version_of(
    "thai-chuay-thai-plus-2026",
    (
        "rule.overrides",
        [
            {"attribute": "province_code", "equals": "50", "share_bp": 7000},
            {"attribute": "taxpayer", "equals": False, "share_bp": 0},
        ],
    ),
)
RAO_CHANA = version_of("rao-chana")
WELFARE = version_of("welfare-card")
WELFARE_PLUS = version_of("welfare-card", ("rule.allowance_satang", 1_000 * THB))
HOME_DISTRICT = version_of(
    "khon-la-khrueng-3", ("merchant_eligibility.same_district_as_citizen", True)
)
IN_CHIANG_MAI = version_of(
    "khon-la-khrueng-3",
    ("merchant_eligibility.province_codes", ["50"]),
    ("citizen_eligibility.province_codes", ["50"]),
)
IN_MUEANG_CHIANG_MAI = version_of(
    "khon-la-khrueng-3", ("merchant_eligibility.district_codes", ["5001"])
)
ALL_DAY = version_of(
    "thai-chuay-thai-plus-2026",
    ("spending.hours", {"start": "00:00", "end": "24:00"}),
)

CITIZEN = CitizenProfile(
    birth_date=date(1980, 5, 17), nationality="TH", province_code="10", district_code="1001"
)
TAXPAYER = msgspec.structs.replace(CITIZEN, taxpayer=True)
CHIANG_MAI_CITIZEN = msgspec.structs.replace(CITIZEN, province_code="50", district_code="5001")
SHOP = MerchantProfile(
    merchant_id="mer_shop",
    business_type=BusinessType.INDIVIDUAL,
    category="grocery",
    province_code="10",
    district_code="1001",
)
BLUE_FLAG_SHOP = msgspec.structs.replace(SHOP, category="blue_flag_shop")
BUS = msgspec.structs.replace(SHOP, category="bus")

NOON_KLK3 = bkk("2021-07-15 12:00:00")
NOON_PLUS = bkk("2025-11-10 12:00:00")
NOON_TCT = bkk("2026-07-15 12:00:00")
NOON_RAO = bkk("2021-03-01 12:00:00")
NOON_WELFARE = bkk("2026-01-10 12:00:00")
PLENTY = 10**13  # budget


def usage(**fields: Any) -> CitizenUsage:
    return CitizenUsage(**fields)


# --- splits: one row per rule ---------------------------------------------------------------

# fmt: off
SPLITS = [
    # sentence, version, usage, citizen, merchant, amount, now, budget, subsidy, bounded_by
    ("the state pays half of a small purchase",
     KLK3, usage(), CITIZEN, SHOP, 100 * THB, NOON_KLK3, PLENTY, 50 * THB, Bound.SHARE),
    ("an odd satang of the state's share rounds down and the citizen pays it",
     KLK3, usage(), CITIZEN, SHOP, 10_001, NOON_KLK3, PLENTY, 5_000, Bound.SHARE),
    ("a purchase of exactly twice the daily cap gets exactly the daily cap from the share",
     KLK3, usage(), CITIZEN, SHOP, 300 * THB, NOON_KLK3, PLENTY, 150 * THB, Bound.SHARE),
    ("one satang over twice the daily cap still gets the share because it rounds down",
     KLK3, usage(), CITIZEN, SHOP, 30_001, NOON_KLK3, PLENTY, 15_000, Bound.SHARE),
    ("two satang over twice the daily cap is cut to the daily cap",
     KLK3, usage(), CITIZEN, SHOP, 30_002, NOON_KLK3, PLENTY, 15_000, Bound.DAILY_CAP),
    ("a purchase above twice the daily cap pays at most the daily cap",
     KLK3, usage(), CITIZEN, SHOP, 1_000 * THB, NOON_KLK3, PLENTY, 150 * THB, Bound.DAILY_CAP),
    ("what is left of the daily cap bounds the subsidy",
     KLK3, usage(used_today_satang=100 * THB), CITIZEN, SHOP, 200 * THB, NOON_KLK3, PLENTY,
     50 * THB, Bound.DAILY_CAP),
    ("a purchase exactly using up the daily cap is bounded by its share",
     KLK3, usage(used_today_satang=100 * THB), CITIZEN, SHOP, 100 * THB, NOON_KLK3, PLENTY,
     50 * THB, Bound.SHARE),
    ("a daily cap already reached gives no subsidy but is not a refusal",
     KLK3, usage(used_today_satang=150 * THB), CITIZEN, SHOP, 100 * THB, NOON_KLK3, PLENTY,
     0, Bound.DAILY_CAP),
    ("usage above a cap counts as nothing left, never as a negative subsidy",
     KLK3, usage(used_today_satang=500 * THB), CITIZEN, SHOP, 100 * THB, NOON_KLK3, PLENTY,
     0, Bound.DAILY_CAP),
    ("what is left of the program cap bounds the subsidy",
     KLK3, usage(used_today_satang=0, used_total_satang=2_950 * THB), CITIZEN, SHOP,
     200 * THB, NOON_KLK3, PLENTY, 50 * THB, Bound.TOTAL_CAP),
    ("a program cap already reached gives no subsidy",
     KLK3, usage(used_total_satang=3_000 * THB), CITIZEN, SHOP, 200 * THB, NOON_KLK3, PLENTY,
     0, Bound.TOTAL_CAP),
    ("what is left of the monthly cap bounds the subsidy",
     TCT, usage(used_this_month_satang=950 * THB, used_total_satang=950 * THB), CITIZEN, SHOP,
     200 * THB, NOON_TCT, PLENTY, 50 * THB, Bound.MONTHLY_CAP),
    ("a monthly cap already reached gives no subsidy",
     TCT, usage(used_this_month_satang=1_000 * THB), CITIZEN, SHOP, 200 * THB, NOON_TCT,
     PLENTY, 0, Bound.MONTHLY_CAP),
    ("the per-transaction cap bounds one purchase",
     TCT_PER_TX, usage(), CITIZEN, SHOP, 200 * THB, NOON_TCT, PLENTY, 50 * THB,
     Bound.PER_TRANSACTION_CAP),
    ("a share of exactly the per-transaction cap is bounded by the share",
     TCT_PER_TX, usage(), CITIZEN, SHOP, 8_334, NOON_TCT, PLENTY, 5_000, Bound.SHARE),
    ("the remaining budget bounds the subsidy",
     KLK3, usage(), CITIZEN, SHOP, 100 * THB, NOON_KLK3, 123, 123, Bound.BUDGET),
    ("an exhausted budget gives no subsidy and the payment goes ahead",
     KLK3, usage(), CITIZEN, SHOP, 100 * THB, NOON_KLK3, 0, 0, Bound.BUDGET),
    ("when the budget and a cap are both out the budget is named",
     KLK3, usage(used_today_satang=150 * THB), CITIZEN, SHOP, 100 * THB, NOON_KLK3, 0,
     0, Bound.BUDGET),
    ("when the program cap and the daily cap are both out the program cap is named",
     KLK3, usage(used_today_satang=150 * THB, used_total_satang=3_000 * THB), CITIZEN, SHOP,
     100 * THB, NOON_KLK3, PLENTY, 0, Bound.TOTAL_CAP),
    ("a purchase of one satang gets nothing because half a satang rounds down",
     KLK3, usage(), CITIZEN, SHOP, 1, NOON_KLK3, PLENTY, 0, Bound.SHARE),
    ("a taxpayer gets the taxpayer override's sixty percent",
     PLUS, usage(), TAXPAYER, SHOP, 100 * THB, NOON_PLUS, PLENTY, 60 * THB, Bound.SHARE),
    ("a citizen who is not a taxpayer gets the default fifty percent",
     PLUS, usage(), CITIZEN, SHOP, 100 * THB, NOON_PLUS, PLENTY, 50 * THB, Bound.SHARE),
    ("the first matching override wins",
     BY_PROVINCE, usage(), CHIANG_MAI_CITIZEN, SHOP, 100 * THB, NOON_TCT, PLENTY, 70 * THB,
     Bound.SHARE),
    ("an override may set the share to zero",
     BY_PROVINCE, usage(), CITIZEN, SHOP, 100 * THB, NOON_TCT, PLENTY, 0, Bound.SHARE),
    ("a grant pays the whole purchase when its balance allows",
     RAO_CHANA, usage(grant_balance_satang=1_000 * THB), CITIZEN, SHOP, 300 * THB, NOON_RAO,
     PLENTY, 300 * THB, Bound.AMOUNT),
    ("a grant pays what is left of its balance and the citizen pays the rest",
     RAO_CHANA, usage(grant_balance_satang=100 * THB), CITIZEN, SHOP, 300 * THB, NOON_RAO,
     PLENTY, 100 * THB, Bound.GRANT_BALANCE),
    ("a grant with no balance left pays nothing but is not a refusal",
     RAO_CHANA, usage(), CITIZEN, SHOP, 300 * THB, NOON_RAO, PLENTY, 0, Bound.GRANT_BALANCE),
    ("a grant is not bounded by the budget because its money was credited already",
     RAO_CHANA, usage(grant_balance_satang=1_000 * THB), CITIZEN, SHOP, 300 * THB, NOON_RAO,
     0, 300 * THB, Bound.AMOUNT),
    ("a pocket pays at a merchant of its category",
     WELFARE, usage(pocket_balances_satang={"blue_flag": 300 * THB}), CITIZEN, BLUE_FLAG_SHOP,
     120 * THB, NOON_WELFARE, PLENTY, 120 * THB, Bound.AMOUNT),
    ("a pocket pays no more than its balance",
     WELFARE, usage(pocket_balances_satang={"blue_flag": 50 * THB}), CITIZEN, BLUE_FLAG_SHOP,
     120 * THB, NOON_WELFARE, PLENTY, 50 * THB, Bound.GRANT_BALANCE),
    ("a pocket's money cannot be spent at another pocket's category",
     WELFARE, usage(pocket_balances_satang={"blue_flag": 300 * THB}), CITIZEN, BUS,
     30 * THB, NOON_WELFARE, PLENTY, 0, Bound.GRANT_BALANCE),
    ("a pocket is spent first and the allowance pays the rest",
     WELFARE_PLUS, usage(grant_balance_satang=1_000 * THB, pocket_balances_satang={"bus": 20 * THB}),
     CITIZEN, BUS, 50 * THB, NOON_WELFARE, PLENTY, 50 * THB, Bound.AMOUNT),
]
# fmt: on


@pytest.mark.parametrize(
    "version, usage_, citizen, merchant, amount, now, budget, subsidy, bounded_by",
    [row[1:] for row in SPLITS],
    ids=[row[0] for row in SPLITS],
)
def test_a_purchase_is_split_by_the_rule_that_bounds_it(
    version, usage_, citizen, merchant, amount, now, budget, subsidy, bounded_by
) -> None:
    result = decide_payment(version, usage_, citizen, merchant, None, amount, now, budget)
    assert isinstance(result, Split), result
    assert (result.subsidy_satang, result.bounded_by) == (subsidy, bounded_by)
    assert result.citizen_satang == amount - subsidy
    assert result.explanation["bounded_by"] == str(bounded_by)
    assert (result.program_id, result.version) == (version.program_id, version.version)


def test_the_explanation_says_which_share_was_used_and_why_and_what_each_cap_has_left() -> None:
    result = decide_payment(
        PLUS,
        usage(used_today_satang=50 * THB, used_total_satang=400 * THB),
        TAXPAYER,
        SHOP,
        None,
        1_000 * THB,
        NOON_PLUS,
        9_999_999,
    )
    assert isinstance(result, Split)
    assert result.explanation == {
        "kind": "co_payment",
        "share_bp": 6000,
        "share_source": "override",
        "share_override": {"attribute": "taxpayer", "equals": True},
        "raw_share_satang": 600 * THB,
        "rounding": "floor",
        "remaining_satang": {
            "per_transaction_cap": None,
            "daily_cap": 150 * THB,
            "monthly_cap": None,
            "total_cap": 2_000 * THB,
            "budget": 9_999_999,
        },
        "bounded_by": "daily_cap",
    }
    assert msgspec.json.decode(msgspec.json.encode(result))["bounded_by"] == "daily_cap"


def test_a_split_drawing_on_a_pocket_names_the_pocket_and_its_part() -> None:
    result = decide_payment(
        WELFARE_PLUS,
        usage(grant_balance_satang=1_000 * THB, pocket_balances_satang={"bus": 20 * THB}),
        CITIZEN,
        BUS,
        None,
        50 * THB,
        NOON_WELFARE,
        PLENTY,
    )
    assert isinstance(result, Split)
    assert (result.pocket_name, result.pocket_satang) == ("bus", 20 * THB)
    assert result.explanation["from_grant_satang"] == 30 * THB


# --- refusals: one row per reason (at least), in the order they are checked -----------------

# fmt: off
REFUSALS = [
    # sentence, version, citizen, merchant, item, amount, now, delivery, reason, facts
    ("a purchase the day before spending opens is refused",
     KLK3, CITIZEN, SHOP, None, 100, bkk("2021-06-30 22:59:59"), False,
     RefusalReason.OUTSIDE_SPENDING_PERIOD, {"date": "2021-06-30"}),
    ("a purchase the day after spending closes is refused",
     KLK3, CITIZEN, SHOP, None, 100, bkk("2022-01-01 12:00:00"), False,
     RefusalReason.OUTSIDE_SPENDING_PERIOD, {"end_date": "2021-12-31"}),
    ("a purchase at 23:00:00 Bangkok time is refused",
     KLK3, CITIZEN, SHOP, None, 100, bkk("2021-07-15 23:00:00"), False,
     RefusalReason.OUTSIDE_SPENDING_HOURS, {"time": "23:00:00", "end": "23:00"}),
    ("a purchase at 05:59:59 Bangkok time is refused",
     KLK3, CITIZEN, SHOP, None, 100, bkk("2021-07-15 05:59:59"), False,
     RefusalReason.OUTSIDE_SPENDING_HOURS, {"start": "06:00"}),
    ("a purchase at 16:00 UTC is 23:00 in Bangkok and is refused",
     KLK3, CITIZEN, SHOP, None, 100, datetime(2021, 7, 15, 16, 0, tzinfo=UTC), False,
     RefusalReason.OUTSIDE_SPENDING_HOURS, {"time": "23:00:00"}),
    ("a delivery order at 21:00 is refused by the delivery hours",
     KLK3, CITIZEN, SHOP, None, 100, bkk("2021-07-15 21:00:00"), True,
     RefusalReason.OUTSIDE_SPENDING_HOURS, {"end": "21:00", "delivery": True}),
    ("a payment to a suspended merchant is refused",
     KLK3, CITIZEN, msgspec.structs.replace(SHOP, suspended=True), None, 100, NOON_KLK3, False,
     RefusalReason.MERCHANT_SUSPENDED, {"merchant_id": "mer_shop"}),
    ("a franchise convenience store is not an eligible merchant type",
     KLK3, CITIZEN, msgspec.structs.replace(SHOP, business_type=BusinessType.FRANCHISE),
     None, 100, NOON_KLK3, False,
     RefusalReason.MERCHANT_NOT_ELIGIBLE, {"failed": "business_type"}),
    ("a merchant of a category the program does not cover is refused",
     WELFARE, CITIZEN, SHOP, None, 100, NOON_WELFARE, False,
     RefusalReason.MERCHANT_NOT_ELIGIBLE, {"failed": "category", "category": "grocery"}),
    ("a merchant outside the program's provinces is refused",
     IN_CHIANG_MAI, CHIANG_MAI_CITIZEN, SHOP, None, 100, NOON_KLK3, False,
     RefusalReason.MERCHANT_NOT_ELIGIBLE, {"failed": "province", "province_code": "10"}),
    ("a merchant outside the program's districts is refused",
     IN_MUEANG_CHIANG_MAI, CITIZEN, SHOP, None, 100, NOON_KLK3, False,
     RefusalReason.MERCHANT_NOT_ELIGIBLE, {"failed": "district"}),
    ("a merchant outside the citizen's home district is refused when the program says so",
     HOME_DISTRICT, CITIZEN, msgspec.structs.replace(SHOP, district_code="1002"), None, 100,
     NOON_KLK3, False, RefusalReason.MERCHANT_NOT_IN_CITIZEN_DISTRICT,
     {"merchant_district_code": "1002", "citizen_district_code": "1001"}),
    ("alcohol cannot be bought with a subsidy",
     KLK3, CITIZEN, SHOP, "alcohol", 100, NOON_KLK3, False,
     RefusalReason.ITEM_CATEGORY_EXCLUDED, {"item_category": "alcohol"}),
    ("a lottery ticket cannot be bought with a grant",
     RAO_CHANA, CITIZEN, SHOP, "lottery", 100, NOON_RAO, False,
     RefusalReason.ITEM_CATEGORY_EXCLUDED, {"item_category": "lottery"}),
    ("a citizen who also holds an excluding program is refused",
     KLK3, msgspec.structs.replace(CITIZEN, held_program_codes=("welfare-card",)), SHOP, None,
     100, NOON_KLK3, False, RefusalReason.CITIZEN_NOT_ELIGIBLE,
     {"failed": "excluded_program", "program_code": "welfare-card"}),
    ("a citizen of a nationality the program does not cover is refused",
     KLK3, msgspec.structs.replace(CITIZEN, nationality="LA"), SHOP, None, 100, NOON_KLK3,
     False, RefusalReason.CITIZEN_NOT_ELIGIBLE, {"failed": "nationality"}),
    ("an amount of zero is refused",
     KLK3, CITIZEN, SHOP, None, 0, NOON_KLK3, False,
     RefusalReason.AMOUNT_MUST_BE_POSITIVE, {"amount_satang": 0}),
    ("a negative amount is refused",
     KLK3, CITIZEN, SHOP, None, -100, NOON_KLK3, False,
     RefusalReason.AMOUNT_MUST_BE_POSITIVE, {"amount_satang": -100}),
]
# fmt: on


@pytest.mark.parametrize(
    "version, citizen, merchant, item, amount, now, delivery, reason, facts",
    [row[1:] for row in REFUSALS],
    ids=[row[0] for row in REFUSALS],
)
def test_a_purchase_breaking_a_rule_is_refused_with_its_reason(
    version, citizen, merchant, item, amount, now, delivery, reason, facts
) -> None:
    result = decide_payment(
        version, usage(), citizen, merchant, item, amount, now, PLENTY, delivery=delivery
    )
    assert isinstance(result, Refusal), result
    assert result.reason == reason
    assert facts.items() <= result.facts.items()
    assert result.detail and "\n" not in result.detail


def test_every_refusal_reason_has_a_row() -> None:
    assert {row[8] for row in REFUSALS} == set(RefusalReason)


# fmt: off
ALLOWED = [
    # sentence, version, now, delivery
    ("a purchase at 22:59:59 Bangkok time is allowed", KLK3, bkk("2021-07-15 22:59:59"), False),
    ("a purchase at 06:00:00 Bangkok time is allowed", KLK3, bkk("2021-07-15 06:00:00"), False),
    ("a purchase at 15:59:59 UTC is 22:59:59 in Bangkok and is allowed",
     KLK3, datetime(2021, 7, 15, 15, 59, 59, tzinfo=UTC), False),
    ("a purchase on the first spending day is allowed", KLK3, bkk("2021-07-01 06:00:00"), False),
    ("a purchase on the last spending day is allowed", KLK3, bkk("2021-12-31 22:59:59"), False),
    ("a delivery order at 20:59:59 is allowed", KLK3, bkk("2021-07-15 20:59:59"), True),
    ("a purchase at the shop at 22:00 is allowed though delivery has closed",
     KLK3, bkk("2021-07-15 22:00:00"), False),
    ("delivery follows the spending hours when the program sets no delivery hours",
     RAO_CHANA, bkk("2021-03-01 22:30:00"), True),
    ("a program open all day takes a purchase at 23:59:59", ALL_DAY, bkk("2026-07-15 23:59:59"),
     False),
    ("a program open all day takes a purchase at midnight", ALL_DAY, bkk("2026-07-16 00:00:00"),
     False),
]
# fmt: on


@pytest.mark.parametrize(
    "version, now, delivery", [row[1:] for row in ALLOWED], ids=[row[0] for row in ALLOWED]
)
def test_a_purchase_within_the_windows_is_split(version, now, delivery) -> None:
    result = decide_payment(
        version,
        usage(grant_balance_satang=1),
        CITIZEN,
        SHOP,
        None,
        100,
        now,
        PLENTY,
        delivery=delivery,
    )
    assert isinstance(result, Split), result


def test_a_citizen_who_turned_older_than_the_maximum_age_keeps_spending_a_right_they_hold() -> None:
    version = version_of("khon-la-khrueng-3", ("citizen_eligibility.max_age", 40))
    old = msgspec.structs.replace(CITIZEN, birth_date=date(1960, 1, 1))
    result = decide_payment(version, usage(), old, SHOP, None, 100, NOON_KLK3, PLENTY)
    assert isinstance(result, Split)


def test_refusals_are_ranked_in_the_order_of_the_enum() -> None:
    """A purchase breaking every rule is refused for the first; mend it, the next shows."""
    version = HOME_DISTRICT
    bad_merchant = MerchantProfile(
        merchant_id="mer_bad",
        business_type=BusinessType.FRANCHISE,
        category="grocery",
        province_code="10",
        district_code="1002",
        suspended=True,
    )
    bad_citizen = msgspec.structs.replace(CITIZEN, held_program_codes=("welfare-card",))
    args: dict[str, Any] = {
        "now": bkk("2022-01-01 23:30:00"),
        "merchant": bad_merchant,
        "citizen": bad_citizen,
        "item_category": "tobacco",
        "amount_satang": 0,
    }
    mends = [
        ("now", bkk("2021-12-31 23:30:00")),
        ("now", bkk("2021-12-31 12:00:00")),
        ("merchant", msgspec.structs.replace(bad_merchant, suspended=False)),
        ("merchant", msgspec.structs.replace(SHOP, district_code="1002")),
        ("merchant", SHOP),
        ("item_category", None),
        ("citizen", CITIZEN),
        ("amount_satang", 100),
    ]
    seen = []
    for key, mended in mends:
        result = decide_payment(
            version,
            usage(),
            args["citizen"],
            args["merchant"],
            args["item_category"],
            args["amount_satang"],
            args["now"],
            PLENTY,
        )
        assert isinstance(result, Refusal)
        seen.append(result.reason)
        args[key] = mended
    assert seen == list(RefusalReason)
    final = decide_payment(
        version,
        usage(),
        args["citizen"],
        args["merchant"],
        args["item_category"],
        args["amount_satang"],
        args["now"],
        PLENTY,
    )
    assert isinstance(final, Split)


# --- the periods: midnight Bangkok ----------------------------------------------------------

# fmt: off
PERIODS = [
    # sentence, now, day_key, month_key
    ("23:59:59 Bangkok is still the same day",
     datetime(2021, 7, 1, 16, 59, 59, tzinfo=UTC), date(2021, 7, 1), date(2021, 7, 1)),
    ("midnight Bangkok is 17:00 UTC and starts the next day",
     datetime(2021, 7, 1, 17, 0, 0, tzinfo=UTC), date(2021, 7, 2), date(2021, 7, 1)),
    ("the last second of a month in Bangkok is still that month",
     datetime(2021, 7, 31, 16, 59, 59, tzinfo=UTC), date(2021, 7, 31), date(2021, 7, 1)),
    ("midnight Bangkok at the month end starts the next month",
     datetime(2021, 7, 31, 17, 0, 0, tzinfo=UTC), date(2021, 8, 1), date(2021, 8, 1)),
    ("midnight Bangkok on New Year's Eve starts the next year",
     datetime(2021, 12, 31, 17, 0, 0, tzinfo=UTC), date(2022, 1, 1), date(2022, 1, 1)),
    ("the 29th of February of a leap year is its own day",
     datetime(2024, 2, 28, 17, 0, 0, tzinfo=UTC), date(2024, 2, 29), date(2024, 2, 1)),
    ("the day after the 29th of February is in March",
     datetime(2024, 2, 29, 17, 0, 0, tzinfo=UTC), date(2024, 3, 1), date(2024, 3, 1)),
    ("a UTC date already in the next day is the same Bangkok day",
     datetime(2021, 7, 2, 1, 0, 0, tzinfo=UTC), date(2021, 7, 2), date(2021, 7, 1)),
    ("a time given with another offset is converted",
     datetime(2021, 7, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=-5))),
     date(2021, 7, 2), date(2021, 7, 1)),
]
# fmt: on


@pytest.mark.parametrize(
    "now, day_key, month_key", [row[1:] for row in PERIODS], ids=[row[0] for row in PERIODS]
)
def test_usage_periods_roll_over_at_midnight_bangkok(now, day_key, month_key) -> None:
    assert usage_periods(now) == (day_key, month_key)


def test_a_naive_time_is_a_programming_error() -> None:
    with pytest.raises(AssertionError):
        usage_periods(datetime(2021, 7, 1, 12, 0))


def test_the_fixed_bangkok_offset_matches_the_tz_database() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        zone = zoneinfo.ZoneInfo("Asia/Bangkok")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no tz database on this machine")
    instant = datetime(1980, 1, 1, tzinfo=UTC)
    while instant.year < 2040:
        assert instant.astimezone(zone).utcoffset() == instant.astimezone(BANGKOK).utcoffset()
        instant += timedelta(days=97, hours=5)


class CounterStore:
    """A model of the caller: subsidy counters per Bangkok day and month, read at each payment."""

    def __init__(self) -> None:
        self.by_day: dict[date, int] = {}
        self.by_month: dict[date, int] = {}
        self.total = 0

    def usage(self, now: datetime) -> CitizenUsage:
        day, month = usage_periods(now)
        return CitizenUsage(
            used_today_satang=self.by_day.get(day, 0),
            used_this_month_satang=self.by_month.get(month, 0),
            used_total_satang=self.total,
        )

    def pay(self, version: ProgramVersion, amount: int, now: datetime, budget: int) -> Split:
        result = decide_payment(version, self.usage(now), CITIZEN, SHOP, None, amount, now, budget)
        assert isinstance(result, Split), result
        day, month = usage_periods(now)
        self.by_day[day] = self.by_day.get(day, 0) + result.subsidy_satang
        self.by_month[month] = self.by_month.get(month, 0) + result.subsidy_satang
        self.total += result.subsidy_satang
        return result


def test_the_daily_cap_is_full_again_one_second_after_midnight_bangkok() -> None:
    store = CounterStore()
    assert (
        store.pay(ALL_DAY, 1_000 * THB, bkk("2026-07-15 23:59:59"), PLENTY).subsidy_satang
        == 200 * THB
    )
    assert store.pay(ALL_DAY, 1_000 * THB, bkk("2026-07-15 23:59:59"), PLENTY).subsidy_satang == 0
    after = store.pay(ALL_DAY, 1_000 * THB, bkk("2026-07-16 00:00:00"), PLENTY)
    assert (after.subsidy_satang, after.bounded_by) == (200 * THB, Bound.DAILY_CAP)


def test_the_monthly_cap_is_full_again_at_midnight_bangkok_on_the_first_without_carry_over() -> (
    None
):
    store = CounterStore()
    for day in range(26, 31):  # five days of 200 THB: the June cap of 1,000 THB is used up
        store.pay(ALL_DAY, 1_000 * THB, bkk(f"2026-06-{day} 12:00:00"), PLENTY)
    last = store.pay(ALL_DAY, 1_000 * THB, bkk("2026-06-30 23:59:59"), PLENTY)
    assert (last.subsidy_satang, last.bounded_by) == (0, Bound.MONTHLY_CAP)
    first = store.pay(ALL_DAY, 1_000 * THB, bkk("2026-07-01 00:00:00"), PLENTY)
    assert (first.subsidy_satang, first.bounded_by) == (200 * THB, Bound.DAILY_CAP)
    assert store.usage(bkk("2026-07-01 00:00:00")).used_this_month_satang == 200 * THB


def test_every_rule_kind_has_a_decider() -> None:
    assert set(DECIDERS) == set(RULE_KINDS)


def test_the_rounding_rule_rounds_the_states_share_down() -> None:
    assert [share_of(a, 5000) for a in (0, 1, 2, 3, 10_001)] == [0, 0, 1, 1, 5_000]
    assert share_of(10**12, 10_000) == 10**12
    assert share_of(10**12 - 1, 3333) == (10**12 - 1) * 3333 // 10_000


# --- properties -----------------------------------------------------------------------------

amounts = st.integers(min_value=1, max_value=10**12)
counters = st.integers(min_value=0, max_value=2 * 10**12)


@st.composite
def co_payment_versions(draw: st.DrawFn) -> ProgramVersion:
    names = ["per_transaction", "daily", "monthly", "total"]
    present = [name for name in names if draw(st.booleans())]
    values = sorted(draw(st.lists(amounts, min_size=len(present), max_size=len(present))))
    overrides = draw(
        st.lists(
            st.builds(
                lambda equals, bp: {"attribute": "taxpayer", "equals": equals, "share_bp": bp},
                st.booleans(),
                st.integers(0, 10_000),
            ),
            max_size=2,
        )
    )
    return version_of(
        "thai-chuay-thai-plus-2026",
        ("rule.share_bp", draw(st.integers(0, 10_000))),
        ("rule.overrides", overrides),
        ("rule.caps", dict(zip(present, values))),
    )


def expected_share_bp(rule: CoPaymentRule, citizen: CitizenProfile) -> int:
    for override in rule.overrides:
        if override.attribute == "taxpayer" and override.equals == citizen.taxpayer:
            return override.share_bp
    return rule.share_bp


def remaining_caps(caps: Caps, u: CitizenUsage) -> list[int]:
    pairs = [
        (caps.per_transaction, 0),
        (caps.daily, u.used_today_satang),
        (caps.monthly, u.used_this_month_satang),
        (caps.total, u.used_total_satang),
    ]
    return [max(0, cap - used) for cap, used in pairs if cap is not None]


@settings(max_examples=300, deadline=None)
@given(
    version=co_payment_versions(),
    used=st.tuples(counters, counters, counters),
    taxpayer=st.booleans(),
    amount=amounts,
    budget=st.integers(min_value=0, max_value=10**15),
)
def test_a_co_payment_split_conserves_money_and_respects_every_cap_and_the_budget(
    version, used, taxpayer, amount, budget
) -> None:
    u = CitizenUsage(
        used_today_satang=used[0], used_this_month_satang=used[1], used_total_satang=used[2]
    )
    citizen = msgspec.structs.replace(CITIZEN, taxpayer=taxpayer)
    result = decide_payment(version, u, citizen, SHOP, None, amount, NOON_TCT, budget)
    assert isinstance(result, Split)
    rule = version.spec.rule
    assert isinstance(rule, CoPaymentRule)
    assert result.subsidy_satang + result.citizen_satang == amount
    assert 0 <= result.subsidy_satang <= amount
    assert all(result.subsidy_satang <= left for left in remaining_caps(rule.caps, u))
    assert result.subsidy_satang <= budget
    raw = amount * expected_share_bp(rule, citizen) // 10_000
    assert result.subsidy_satang <= raw
    # Not only within the limits: exactly the smallest of them.
    assert result.subsidy_satang == min([raw, budget, *remaining_caps(rule.caps, u)])
    if result.bounded_by != Bound.SHARE:
        assert result.explanation["remaining_satang"][result.bounded_by] == result.subsidy_satang
    again = decide_payment(version, u, citizen, SHOP, None, amount, NOON_TCT, budget)
    assert again == result
    assert msgspec.json.encode(again) == msgspec.json.encode(result)


@settings(max_examples=200, deadline=None)
@given(
    grant=counters,
    pockets=st.dictionaries(
        st.sampled_from(["blue_flag", "bus", "rail", "boat", "ghost"]), counters, max_size=5
    ),
    category=st.sampled_from(["blue_flag_shop", "bus", "rail", "boat"]),
    amount=amounts,
)
def test_a_grant_split_conserves_money_and_spends_only_usable_balances(
    grant, pockets, category, amount
) -> None:
    u = CitizenUsage(grant_balance_satang=grant, pocket_balances_satang=pockets)
    merchant = msgspec.structs.replace(SHOP, category=category)
    result = decide_payment(WELFARE_PLUS, u, CITIZEN, merchant, None, amount, NOON_WELFARE, 0)
    assert isinstance(result, Split)
    pocket = {"blue_flag_shop": "blue_flag"}.get(category, category)
    usable = grant + pockets.get(pocket, 0)
    assert result.subsidy_satang + result.citizen_satang == amount
    assert 0 <= result.subsidy_satang == min(amount, usable)
    assert result.pocket_satang <= pockets.get(pocket, 0)
    assert result.subsidy_satang - result.pocket_satang <= grant
    assert (
        decide_payment(WELFARE_PLUS, u, CITIZEN, merchant, None, amount, NOON_WELFARE, 0) == result
    )


@settings(max_examples=60, deadline=None)
@given(
    payments=st.lists(
        st.tuples(st.integers(0, 24 * 3600 * 62 - 1), st.integers(1, 2_000 * THB)),
        min_size=1,
        max_size=40,
    ),
    budget=st.integers(0, 6_000 * THB),
)
def test_a_run_of_payments_never_passes_a_daily_monthly_or_total_cap_or_the_budget(
    payments, budget
) -> None:
    """Two months of random payments through a model of the caller's counters."""
    store = CounterStore()
    start = bkk("2026-06-01 00:00:00")
    left = budget
    for offset, amount in sorted(payments):
        result = store.pay(ALL_DAY, amount, start + timedelta(seconds=offset), left)
        left -= result.subsidy_satang
        assert left >= 0
    assert all(v <= 200 * THB for v in store.by_day.values())
    assert all(v <= 1_000 * THB for v in store.by_month.values())
    assert store.total <= 4_000 * THB
