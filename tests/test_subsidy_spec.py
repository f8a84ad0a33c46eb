"""The program spec: strict decoding, semantic validation naming the field, content hashes."""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subsidy_rules import spec as spec_module
from subsidy_rules.examples import EXAMPLE_SPECS, THB, example_spec
from subsidy_rules.spec import (
    RULE_KINDS,
    CoPaymentRule,
    GrantRule,
    ProgramSpec,
    Rule,
    SpecError,
    canonical_json,
    content_hash,
    decode_spec,
    spec_from_builtins,
)

DELETE = object()


def mutated(base: dict[str, Any], *changes: tuple[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each dotted path ("rule.caps.daily") set (or deleted)."""
    doc = copy.deepcopy(base)
    for path, value in changes:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        elif value is DELETE:
            del node[last]
        else:
            node[last] = value
    return doc


CO_PAYMENT = EXAMPLE_SPECS["thai-chuay-thai-plus-2026"]
PLUS = EXAMPLE_SPECS["khon-la-khrueng-plus-2025"]
GRANT = EXAMPLE_SPECS["rao-chana"]
POCKETS = EXAMPLE_SPECS["welfare-card"]


# --- the examples ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(EXAMPLE_SPECS))
def test_every_example_spec_validates_and_keeps_its_code(code: str) -> None:
    spec = example_spec(code)
    assert spec.code == code
    assert spec.kind == ("grant" if code in ("rao-chana", "welfare-card") else "co_payment")


# fmt: off
EXAMPLE_FIGURES = [
    # code, share_bp, per_transaction, daily, monthly, total (THB), spending hours
    ("khon-la-khrueng-3", 5000, None, 150, None, 3_000, ("06:00", "23:00")),
    ("khon-la-khrueng-plus-2025", 5000, None, 200, None, 2_400, ("06:00", "23:00")),
    ("thai-chuay-thai-plus-2026", 6000, None, 200, 1_000, 4_000, ("06:00", "23:00")),
]
# fmt: on


@pytest.mark.parametrize(
    "code, share_bp, per_transaction, daily, monthly, total, hours", EXAMPLE_FIGURES
)
def test_the_co_payment_examples_carry_the_published_figures(
    code, share_bp, per_transaction, daily, monthly, total, hours
) -> None:
    spec = example_spec(code)
    rule = spec.rule
    assert isinstance(rule, CoPaymentRule)
    assert rule.share_bp == share_bp
    thb = lambda v: None if v is None else v * THB
    caps = rule.caps
    assert (caps.per_transaction, caps.daily, caps.monthly, caps.total) == (
        thb(per_transaction),
        thb(daily),
        thb(monthly),
        thb(total),
    )
    assert (spec.spending.hours.start, spec.spending.hours.end) == hours
    assert spec.spending.delivery_hours is not None
    assert spec.spending.delivery_hours.end == "21:00"
    assert set(spec.excluded_item_categories) >= {"alcohol", "tobacco", "lottery", "gift_card"}


def test_plus_2025_gives_taxpayers_sixty_percent_and_others_fifty() -> None:
    rule = example_spec("khon-la-khrueng-plus-2025").rule
    assert isinstance(rule, CoPaymentRule)
    assert rule.share_bp == 5000
    [override] = rule.overrides
    assert (override.attribute, override.equals, override.share_bp) == ("taxpayer", True, 6000)


def test_rao_chana_pays_seven_thousand_baht_in_weekly_instalments() -> None:
    rule = example_spec("rao-chana").rule
    assert isinstance(rule, GrantRule)
    assert rule.allowance_satang == 7_000 * THB
    assert sum(i.count * i.amount_satang for i in rule.instalments) == 7_000 * THB
    assert all(i.period_days == 7 for i in rule.instalments)


def test_the_welfare_card_has_monthly_pockets_each_for_its_own_categories() -> None:
    rule = example_spec("welfare-card").rule
    assert isinstance(rule, GrantRule)
    assert rule.allowance_satang == 0
    assert {p.name: p.amount_satang for p in rule.pockets} == {
        "blue_flag": 300 * THB,
        "bus": 500 * THB,
        "rail": 500 * THB,
        "boat": 500 * THB,
    }
    assert rule.pocket_for("bus").name == "bus"  # type: ignore[union-attr]
    assert rule.pocket_for("grocery") is None


# --- invalid specs: one row per rule, each naming the field ---------------------------------

# fmt: off
INVALID = [
    # sentence, base, changes, path named, part of the message
    ("a negative cap is refused", CO_PAYMENT,
     [("rule.caps.daily", -1)], "$.rule.caps.daily", "Expected `int` >= 1"),
    ("a zero cap is refused (leave the cap out instead)", CO_PAYMENT,
     [("rule.caps.total", 0)], "$.rule.caps.total", ">= 1"),
    ("a share above 10000 basis points is refused", CO_PAYMENT,
     [("rule.share_bp", 10001)], "$.rule.share_bp", "<= 10000"),
    ("a negative share is refused", CO_PAYMENT,
     [("rule.share_bp", -1)], "$.rule.share_bp", ">= 0"),
    ("an override's share above 10000 basis points is refused", PLUS,
     [("rule.overrides.0.share_bp", 10001)], "$.rule.overrides[0].share_bp", "<= 10000"),
    ("a spending window that ends before it starts is refused", CO_PAYMENT,
     [("spending.end_date", "2026-05-31")], "$.spending.end_date", "before it starts"),
    ("a registration window that ends before it starts is refused", CO_PAYMENT,
     [("registration.end_date", "2026-05-17")], "$.registration.end_date", "before it starts"),
    ("registration closing after the last spending day is refused", CO_PAYMENT,
     [("registration.end_date", "2026-10-01")], "$.registration.end_date", "last day"),
    ("daily hours that end before they start are refused", CO_PAYMENT,
     [("spending.hours.end", "05:00")], "$.spending.hours.end", "at or before they start"),
    ("daily hours that end when they start are refused", CO_PAYMENT,
     [("spending.hours.end", "06:00")], "$.spending.hours.end", "at or before they start"),
    ("delivery hours are checked like spending hours", CO_PAYMENT,
     [("spending.delivery_hours.start", "21:00")], "$.spending.delivery_hours.end", "before"),
    ("registration hours are checked like spending hours", CO_PAYMENT,
     [("registration.hours.start", "23:00")], "$.registration.hours.end", "before"),
    ("an hour past 24:00 is refused", CO_PAYMENT,
     [("spending.hours.end", "24:01")], "$.spending.hours.end", "Expected `str` matching"),
    ("an hour without two digits is refused", CO_PAYMENT,
     [("spending.hours.start", "6:00")], "$.spending.hours.start", "matching"),
    ("an unknown top-level field is refused", CO_PAYMENT,
     [("colour", "red")], "$.colour", "unknown field `colour`"),
    ("an unknown field in the rule is refused", CO_PAYMENT,
     [("rule.carry_over", True)], "$.rule.carry_over", "unknown field"),
    ("an unknown cap is refused", CO_PAYMENT,
     [("rule.caps.weekly", 100)], "$.rule.caps.weekly", "unknown field"),
    ("a float amount is refused even when whole", CO_PAYMENT,
     [("rule.caps.daily", 20000.0)], "$.rule.caps.daily", "got `float`"),
    ("a float budget is refused", CO_PAYMENT,
     [("budget_satang", 1.5)], "$.budget_satang", "got `float`"),
    ("an amount as a string is refused", CO_PAYMENT,
     [("rule.caps.daily", "20000")], "$.rule.caps.daily", "got `str`"),
    ("an amount as a boolean is refused", CO_PAYMENT,
     [("rule.caps.daily", True)], "$.rule.caps.daily", "got `bool`"),
    ("an amount above 10**12 satang is refused", CO_PAYMENT,
     [("rule.caps.total", 10**12 + 1)], "$.rule.caps.total", "<= 1000000000000"),
    ("a grant allowance above 10**12 satang is refused", GRANT,
     [("rule.allowance_satang", 10**12 + 1)], "$.rule.allowance_satang", "<= 1000000000000"),
    ("a budget above 10**15 satang is refused", CO_PAYMENT,
     [("budget_satang", 10**15 + 1)], "$.budget_satang", "<= 1000000000000000"),
    ("a number too big for any integer is refused", CO_PAYMENT,
     [("rule.caps.daily", 10**30)], "$.rule.caps.daily", "<= 1000000000000"),
    ("a daily cap above the total cap is refused", CO_PAYMENT,
     [("rule.caps.daily", 400_001)], "$.rule.caps.daily", "above the monthly cap"),
    ("a monthly cap above the total cap is refused", CO_PAYMENT,
     [("rule.caps.monthly", 400_001)], "$.rule.caps.monthly", "above the total cap"),
    ("a per-transaction cap above the daily cap is refused", CO_PAYMENT,
     [("rule.caps.per_transaction", 20_001)], "$.rule.caps.per_transaction", "daily cap"),
    ("caps are compared across a missing one", CO_PAYMENT,
     [("rule.caps.monthly", DELETE), ("rule.caps.daily", 400_001)],
     "$.rule.caps.daily", "above the total cap"),
    ("a kind that differs from the rule's kind is refused", CO_PAYMENT,
     [("kind", "grant")], "$.kind", "but the rule is 'co_payment'"),
    ("a rule kind nobody wrote is refused", CO_PAYMENT,
     [("rule.kind", "cashback")], "$.rule.kind", "Invalid value 'cashback'"),
    ("a rule without a kind is refused", CO_PAYMENT,
     [("rule.kind", DELETE)], "$.rule.kind", "missing required field"),
    ("a missing required field is named", CO_PAYMENT,
     [("quota", DELETE)], "$.quota", "missing required field `quota`"),
    ("a spec version other than 1 is refused", CO_PAYMENT,
     [("spec_version", 2)], "$.spec_version", "Invalid enum value 2"),
    ("a code that is not a short slug is refused", CO_PAYMENT,
     [("code", "Thai Chuay Thai")], "$.code", "matching"),
    ("a quota of zero is refused", CO_PAYMENT,
     [("quota", 0)], "$.quota", ">= 1"),
    ("a lower-case nationality is refused", CO_PAYMENT,
     [("citizen_eligibility.nationalities", ["th"])],
     "$.citizen_eligibility.nationalities[0]", "matching"),
    ("a province code that is not two digits is refused", CO_PAYMENT,
     [("citizen_eligibility.province_codes", ["Bangkok"])],
     "$.citizen_eligibility.province_codes[0]", "matching"),
    ("a business type outside the four is refused", CO_PAYMENT,
     [("merchant_eligibility.business_types", ["company"])],
     "$.merchant_eligibility.business_types[0]", "Invalid enum value 'company'"),
    ("a minimum age above the maximum age is refused", CO_PAYMENT,
     [("citizen_eligibility.min_age", 60), ("citizen_eligibility.max_age", 18)],
     "$.citizen_eligibility.max_age", "below `min_age`"),
    ("a program excluding itself is refused", CO_PAYMENT,
     [("citizen_eligibility.excluded_if_holding", ["thai-chuay-thai-plus-2026"])],
     "$.citizen_eligibility.excluded_if_holding", "exclude itself"),
    ("a taxpayer override compared with a string is refused", PLUS,
     [("rule.overrides.0.equals", "yes")], "$.rule.overrides[0].equals", "boolean"),
    ("a province override compared with a boolean is refused", PLUS,
     [("rule.overrides.0.attribute", "province_code")], "$.rule.overrides[0].equals", "string"),
    ("an override on an unknown attribute is refused", PLUS,
     [("rule.overrides.0.attribute", "age")], "$.rule.overrides[0].attribute", "Invalid enum"),
    ("instalments that do not add up to the allowance are refused", GRANT,
     [("rule.allowance_satang", 700_001)], "$.rule.instalments", "not the allowance"),
    ("an instalment both weekly and every n days is refused", GRANT,
     [("rule.instalments.0.every_days", 7)], "$.rule.instalments[0]", "exactly one"),
    ("an instalment with no period is refused", GRANT,
     [("rule.instalments.0.weekly", False)], "$.rule.instalments[0]", "exactly one"),
    ("a grant with neither allowance nor pockets is refused", GRANT,
     [("rule.allowance_satang", 0), ("rule.instalments", [])],
     "$.rule.allowance_satang", "allowance, monthly pockets or both"),
    ("a negative allowance is refused", GRANT,
     [("rule.allowance_satang", -1)], "$.rule.allowance_satang", ">= 0"),
    ("two pockets of one name are refused", POCKETS,
     [("rule.pockets.1.name", "blue_flag")], "$.rule.pockets[1].name", "twice"),
    ("a category in two pockets is refused", POCKETS,
     [("rule.pockets.2.merchant_categories", ["rail", "bus"])],
     "$.rule.pockets[2].merchant_categories[1]", "already in pocket `bus`"),
    ("a pocket for a category no eligible merchant has is refused", POCKETS,
     [("rule.pockets.3.merchant_categories", ["taxi"])],
     "$.rule.pockets[3].merchant_categories[0]", "not an eligible merchant category"),
    ("a pocket without categories is refused", POCKETS,
     [("rule.pockets.0.merchant_categories", [])],
     "$.rule.pockets[0].merchant_categories", "length >= 1"),
]
# fmt: on


@pytest.mark.parametrize(
    "base, changes, path, message",
    [row[1:] for row in INVALID],
    ids=[row[0] for row in INVALID],
)
def test_an_invalid_spec_is_refused_with_an_error_naming_the_field(
    base: dict[str, Any], changes: list[tuple[str, Any]], path: str, message: str
) -> None:
    doc = mutated(base, *changes)
    with pytest.raises(SpecError) as caught:
        decode_spec(json.dumps(doc))
    assert caught.value.path == path, str(caught.value)
    assert message in caught.value.message, str(caught.value)
    assert str(caught.value) == f"{caught.value.message} - at `{path}`"


def test_the_error_reads_as_the_field_path_after_the_rule() -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_builtins(mutated(CO_PAYMENT, ("rule.caps.daily", -5)))
    assert str(caught.value) == "Expected `int` >= 1 - at `$.rule.caps.daily`"


@pytest.mark.parametrize(
    "data, message",
    [(b"{", "not valid JSON"), (b"[]", "Expected `object`, got `array`"), (b"", "not valid")],
    ids=["truncated json", "an array instead of an object", "an empty body"],
)
def test_a_body_that_is_not_a_spec_object_is_refused_at_the_root(data: bytes, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        decode_spec(data)
    assert caught.value.path == "$"
    assert message in caught.value.message


# fmt: off
VALID_VARIANTS = [
    ("hours may end at 24:00", CO_PAYMENT, [("spending.hours.end", "24:00")]),
    ("a one-day window is allowed", CO_PAYMENT,
     [("registration.end_date", "2026-05-18"), ("registration.start_date", "2026-05-18")]),
    ("every cap may be left out", CO_PAYMENT, [("rule.caps", {})]),
    ("equal caps are consistent", CO_PAYMENT,
     [("rule.caps", {"per_transaction": 100, "daily": 100, "monthly": 100, "total": 100})]),
    ("a share of 0 and of 10000 basis points are allowed", PLUS,
     [("rule.share_bp", 0), ("rule.overrides.0.share_bp", 10000)]),
    ("money up to 10**12 satang is allowed", CO_PAYMENT,
     [("rule.caps", {"total": 10**12})]),
    ("delivery hours may be left out", CO_PAYMENT, [("spending.delivery_hours", DELETE)]),
    ("eligibility may be left out entirely", CO_PAYMENT,
     [("citizen_eligibility", DELETE), ("merchant_eligibility", DELETE)]),
    ("a grant may be credited all at enrolment", GRANT, [("rule.instalments", [])]),
    ("instalments may be every n days", GRANT,
     [("rule.instalments", [{"every_days": 14, "count": 2, "amount_satang": 350_000}])]),
    ("a grant may have both an allowance and pockets", POCKETS,
     [("rule.allowance_satang", 100_000)]),
    ("pockets may name any category when merchants are not restricted by category", POCKETS,
     [("merchant_eligibility", {}), ("rule.pockets.3.merchant_categories", ["taxi"])]),
]
# fmt: on


@pytest.mark.parametrize(
    "base, changes", [row[1:] for row in VALID_VARIANTS], ids=[row[0] for row in VALID_VARIANTS]
)
def test_a_valid_variant_of_an_example_is_accepted(base, changes) -> None:
    assert isinstance(spec_from_builtins(mutated(base, *changes)), ProgramSpec)


# --- the content hash -----------------------------------------------------------------------


def test_the_content_hash_is_sha256_of_the_canonical_json_with_sorted_keys() -> None:
    spec = example_spec("khon-la-khrueng-3")
    canonical = canonical_json(spec)
    assert content_hash(spec) == hashlib.sha256(canonical).hexdigest()
    parsed = json.loads(canonical)
    assert list(parsed) == sorted(parsed)
    assert list(parsed["rule"]) == sorted(parsed["rule"])


def test_the_content_hash_does_not_depend_on_key_order_or_spacing() -> None:
    doc = EXAMPLE_SPECS["khon-la-khrueng-plus-2025"]
    shuffled = json.dumps(dict(reversed(list(doc.items()))), indent=4)
    assert content_hash(decode_spec(shuffled)) == content_hash(spec_from_builtins(doc))


def test_the_content_hash_does_not_depend_on_defaults_being_written_out() -> None:
    spec = example_spec("thai-chuay-thai-plus-2026")
    assert content_hash(decode_spec(canonical_json(spec))) == content_hash(spec)


@pytest.mark.parametrize(
    "change",
    [
        ("rule.share_bp", 5999),
        ("rule.caps.daily", 19_999),
        ("name_en", "other"),
        ("spending.hours.end", "22:59"),
    ],
    ids=lambda change: change[0],
)
def test_any_change_to_a_spec_changes_its_content_hash(change) -> None:
    before = content_hash(spec_from_builtins(CO_PAYMENT))
    assert content_hash(spec_from_builtins(mutated(CO_PAYMENT, change))) != before


def test_every_example_has_a_distinct_content_hash() -> None:
    hashes = {content_hash(example_spec(code)) for code in EXAMPLE_SPECS}
    assert len(hashes) == len(EXAMPLE_SPECS)
    assert all(len(h) == 64 for h in hashes)


# --- properties -----------------------------------------------------------------------------

money = st.integers(min_value=1, max_value=10**12)


@st.composite
def co_payment_docs(draw: st.DrawFn) -> dict[str, Any]:
    names = ["per_transaction", "daily", "monthly", "total"]
    present = [name for name in names if draw(st.booleans())]
    values = sorted(draw(st.lists(money, min_size=len(present), max_size=len(present))))
    overrides = draw(
        st.lists(
            st.one_of(
                st.builds(
                    lambda equals, bp: {"attribute": "taxpayer", "equals": equals, "share_bp": bp},
                    st.booleans(),
                    st.integers(0, 10_000),
                ),
                st.builds(
                    lambda code, bp: {"attribute": "province_code", "equals": code, "share_bp": bp},
                    st.sampled_from(["10", "50", "90"]),
                    st.integers(0, 10_000),
                ),
            ),
            max_size=3,
        )
    )
    return mutated(
        CO_PAYMENT,
        ("rule.share_bp", draw(st.integers(0, 10_000))),
        ("rule.overrides", overrides),
        ("rule.caps", dict(zip(present, values))),
        ("budget_satang", draw(st.integers(0, 10**15))),
    )


@settings(max_examples=150, deadline=None)
@given(co_payment_docs())
def test_a_valid_spec_survives_a_round_trip_with_the_same_hash(doc: dict[str, Any]) -> None:
    spec = spec_from_builtins(doc)
    again = decode_spec(canonical_json(spec))
    assert again == spec
    assert content_hash(again) == content_hash(spec)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=10**12 + 1, max_value=10**40) | st.integers(max_value=0))
def test_a_daily_cap_out_of_range_is_always_refused_at_its_path(value: int) -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_builtins(mutated(CO_PAYMENT, ("rule.caps.daily", value)))
    assert caught.value.path == "$.rule.caps.daily"


# --- the package stays pure -----------------------------------------------------------------

PURE_MODULES = ["spec", "periods", "eligibility", "decision", "enrolment", "simulation",
                "examples/__init__"]


@pytest.mark.parametrize("name", PURE_MODULES)
def test_the_pure_subsidy_modules_import_nothing_of_the_project_but_their_own_package(
    name: str,
) -> None:
    path = Path(spec_module.__file__).parent / f"{name}.py"
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"ledger_core", "gwallet", "wallet", "merchant_api", "loadtests"}
    assert not imported & {"asyncpg", "redis", "litestar", "os", "time", "random", "socket"}


def test_the_rule_union_lists_exactly_the_registered_kinds() -> None:
    assert set(typing.get_args(Rule)) == set(RULE_KINDS)
    tags = [kind.__struct_config__.tag for kind in RULE_KINDS]
    assert sorted(tags) == ["co_payment", "grant"]
