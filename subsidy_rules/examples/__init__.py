"""Example program specs from the real schemes (shared/DOMAIN.md), as JSON-shaped dicts.

They seed the demo and document the spec by example; each is validated by a test. Dates
follow the published schedules where known and are plausible otherwise; money is satang.
"""

from __future__ import annotations

from typing import Any

from subsidy_rules.spec import ProgramSpec, spec_from_builtins

THB = 100  # satang per baht

_EXCLUDED_GOODS = ["alcohol", "tobacco", "lottery", "gift_card", "prepaid"]
_SMALL_SHOPS = {"business_types": ["individual", "cooperative"]}
_THAI_ADULTS = {"min_age": 18, "nationalities": ["TH"]}

KHON_LA_KHRUENG_3: dict[str, Any] = {
    "spec_version": 1,
    "code": "khon-la-khrueng-3",
    "name_th": "คนละครึ่ง เฟส 3",
    "name_en": "Half-half co-payment, phase 3",
    "kind": "co_payment",
    "budget_satang": 31_000_000 * 3_000 * THB,
    "quota": 31_000_000,
    "registration": {
        "start_date": "2021-06-23",
        "end_date": "2021-07-31",
        "hours": {"start": "06:00", "end": "22:00"},
    },
    "spending": {
        "start_date": "2021-07-01",
        "end_date": "2021-12-31",
        "hours": {"start": "06:00", "end": "23:00"},
        "delivery_hours": {"start": "06:00", "end": "21:00"},
    },
    "first_use_deadline_days": 14,
    "citizen_eligibility": {**_THAI_ADULTS, "excluded_if_holding": ["welfare-card"]},
    "merchant_eligibility": _SMALL_SHOPS,
    "excluded_item_categories": _EXCLUDED_GOODS,
    "rule": {
        "kind": "co_payment",
        "share_bp": 5000,
        "caps": {"daily": 150 * THB, "total": 3_000 * THB},
    },
}

KHON_LA_KHRUENG_PLUS_2025: dict[str, Any] = {
    "spec_version": 1,
    "code": "khon-la-khrueng-plus-2025",
    "name_th": "คนละครึ่งพลัส",
    "name_en": "Half-half Plus 2025",
    "kind": "co_payment",
    "budget_satang": 44_000_000_000 * THB,
    "quota": 20_000_000,
    "registration": {
        "start_date": "2025-10-01",
        "end_date": "2025-10-26",
        "hours": {"start": "06:00", "end": "22:00"},
    },
    "spending": {
        "start_date": "2025-10-29",
        "end_date": "2025-12-31",
        "hours": {"start": "06:00", "end": "23:00"},
        "delivery_hours": {"start": "06:00", "end": "21:00"},
    },
    "first_use_deadline_days": 14,
    "citizen_eligibility": _THAI_ADULTS,
    "merchant_eligibility": _SMALL_SHOPS,
    "excluded_item_categories": _EXCLUDED_GOODS,
    "rule": {
        "kind": "co_payment",
        "share_bp": 5000,
        "overrides": [{"attribute": "taxpayer", "equals": True, "share_bp": 6000}],
        "caps": {"daily": 200 * THB, "total": 2_400 * THB},
    },
}

THAI_CHUAY_THAI_PLUS_2026: dict[str, Any] = {
    "spec_version": 1,
    "code": "thai-chuay-thai-plus-2026",
    "name_th": "ไทยช่วยไทยพลัส",
    "name_en": "Thai Chuay Thai Plus 2026",
    "kind": "co_payment",
    "budget_satang": 30_000_000 * 4_000 * THB,
    "quota": 30_000_000,
    "registration": {
        "start_date": "2026-05-18",
        "end_date": "2026-06-30",
        "hours": {"start": "06:00", "end": "22:00"},
    },
    "spending": {
        "start_date": "2026-06-01",
        "end_date": "2026-09-30",
        "hours": {"start": "06:00", "end": "23:00"},
        "delivery_hours": {"start": "06:00", "end": "21:00"},
    },
    "first_use_deadline_days": 14,
    "citizen_eligibility": _THAI_ADULTS,
    "merchant_eligibility": _SMALL_SHOPS,
    "excluded_item_categories": _EXCLUDED_GOODS,
    "rule": {
        "kind": "co_payment",
        "share_bp": 6000,
        "caps": {"daily": 200 * THB, "monthly": 1_000 * THB, "total": 4_000 * THB},
    },
}

RAO_CHANA: dict[str, Any] = {
    "spec_version": 1,
    "code": "rao-chana",
    "name_th": "เราชนะ",
    "name_en": "Rao Chana (We Win) grant",
    "kind": "grant",
    "budget_satang": 33_000_000 * 7_000 * THB,
    "quota": 33_000_000,
    "registration": {
        "start_date": "2021-02-15",
        "end_date": "2021-03-14",
        "hours": {"start": "06:00", "end": "23:00"},
    },
    "spending": {
        "start_date": "2021-02-18",
        "end_date": "2021-05-31",
        "hours": {"start": "06:00", "end": "23:00"},
    },
    "citizen_eligibility": {**_THAI_ADULTS, "excluded_if_holding": ["welfare-card"]},
    "merchant_eligibility": _SMALL_SHOPS,
    "excluded_item_categories": _EXCLUDED_GOODS,
    "rule": {
        "kind": "grant",
        "allowance_satang": 7_000 * THB,
        "instalments": [{"weekly": True, "count": 7, "amount_satang": 1_000 * THB}],
    },
}

WELFARE_CARD: dict[str, Any] = {
    "spec_version": 1,
    "code": "welfare-card",
    "name_th": "บัตรสวัสดิการแห่งรัฐ",
    "name_en": "State welfare card (monthly pockets)",
    "kind": "grant",
    "budget_satang": 14_600_000 * 12 * 1_800 * THB,
    "quota": 14_600_000,
    "registration": {
        "start_date": "2025-09-01",
        "end_date": "2026-08-31",
        "hours": {"start": "00:00", "end": "24:00"},
    },
    "spending": {
        "start_date": "2025-10-01",
        "end_date": "2026-09-30",
        "hours": {"start": "00:00", "end": "24:00"},
    },
    "citizen_eligibility": {**_THAI_ADULTS, "taxpayer": False},
    "merchant_eligibility": {"categories": ["blue_flag_shop", "bus", "rail", "boat"]},
    "excluded_item_categories": _EXCLUDED_GOODS,
    "rule": {
        "kind": "grant",
        "allowance_satang": 0,
        "pockets": [
            {
                "name": "blue_flag",
                "amount_satang": 300 * THB,
                "merchant_categories": ["blue_flag_shop"],
            },
            {"name": "bus", "amount_satang": 500 * THB, "merchant_categories": ["bus"]},
            {"name": "rail", "amount_satang": 500 * THB, "merchant_categories": ["rail"]},
            {"name": "boat", "amount_satang": 500 * THB, "merchant_categories": ["boat"]},
        ],
    },
}

EXAMPLE_SPECS: dict[str, dict[str, Any]] = {
    example["code"]: example
    for example in (
        KHON_LA_KHRUENG_3,
        KHON_LA_KHRUENG_PLUS_2025,
        THAI_CHUAY_THAI_PLUS_2026,
        RAO_CHANA,
        WELFARE_CARD,
    )
}


def example_spec(code: str) -> ProgramSpec:
    """The example with this code, decoded and validated as an official's JSON would be."""
    return spec_from_builtins(EXAMPLE_SPECS[code])
