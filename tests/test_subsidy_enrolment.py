"""Enrolment: registration windows, citizen eligibility, first-use deadlines, grant credits."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest

from subsidy_rules.decision import ProgramVersion, program_version
from subsidy_rules.eligibility import CitizenProfile, Ineligibility, age_on
from subsidy_rules.enrolment import (
    Eligible,
    EnrolmentRefusal,
    EnrolmentRefusalReason,
    decide_enrolment,
    first_use_deadline,
    grant_credits,
    is_forfeited,
)
from subsidy_rules.examples import EXAMPLE_SPECS, THB
from subsidy_rules.periods import BANGKOK
from subsidy_rules.spec import spec_from_builtins


def bkk(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=BANGKOK)


def version_of(code: str, *changes: tuple[str, Any]) -> ProgramVersion:
    doc = copy.deepcopy(EXAMPLE_SPECS[code])
    for path, value in changes:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return program_version(f"prg_{code}", 3, spec_from_builtins(doc))


# Registration 2021-06-23 .. 2021-07-31, 06:00-22:00; spending from 2021-07-01; 14 days to
# first use; Thai adults; not for welfare-card holders.
KLK3 = version_of("khon-la-khrueng-3")
SENIORS_OF_CHIANG_MAI = version_of(
    "khon-la-khrueng-3",
    ("citizen_eligibility.min_age", 60),
    ("citizen_eligibility.max_age", 99),
    ("citizen_eligibility.province_codes", ["50"]),
    ("citizen_eligibility.district_codes", ["5001"]),
)
TAXPAYERS_ONLY = version_of("khon-la-khrueng-3", ("citizen_eligibility.taxpayer", True))
NO_DEADLINE = version_of("khon-la-khrueng-3", ("first_use_deadline_days", None))

CITIZEN = CitizenProfile(
    birth_date=date(1980, 5, 17), nationality="TH", province_code="10", district_code="1001"
)
SENIOR = CitizenProfile(
    birth_date=date(1950, 1, 1), nationality="TH", province_code="50", district_code="5001"
)
OPEN = bkk("2021-06-25 12:00:00")


def with_(citizen: CitizenProfile, **changes: Any) -> CitizenProfile:
    return msgspec.structs.replace(citizen, **changes)


# --- the registration window ----------------------------------------------------------------

# fmt: off
WINDOW = [
    # sentence, now, reason (None: eligible), facts
    ("the first registration minute is open", bkk("2021-06-23 06:00:00"), None, {}),
    ("a second before registration first opens is not open yet",
     bkk("2021-06-23 05:59:59"), EnrolmentRefusalReason.REGISTRATION_NOT_OPEN,
     {"opens_at": "2021-06-23T06:00:00+07:00"}),
    ("the day before registration opens is not open yet",
     bkk("2021-06-22 12:00:00"), EnrolmentRefusalReason.REGISTRATION_NOT_OPEN,
     {"opens_at": "2021-06-23T06:00:00+07:00"}),
    ("21:59:59 on a registration day is open", bkk("2021-06-25 21:59:59"), None, {}),
    ("22:00:00 on a registration day is not open until six the next morning",
     bkk("2021-06-25 22:00:00"), EnrolmentRefusalReason.REGISTRATION_NOT_OPEN,
     {"opens_at": "2021-06-26T06:00:00+07:00"}),
    ("early morning on a registration day is not open until six",
     bkk("2021-06-26 03:00:00"), EnrolmentRefusalReason.REGISTRATION_NOT_OPEN,
     {"opens_at": "2021-06-26T06:00:00+07:00"}),
    ("the small hours of the last day are not open until six",
     bkk("2021-07-31 00:00:00"), EnrolmentRefusalReason.REGISTRATION_NOT_OPEN,
     {"opens_at": "2021-07-31T06:00:00+07:00"}),
    ("the last registration second is open", bkk("2021-07-31 21:59:59"), None, {}),
    ("the last registration hour passed means registration closed",
     bkk("2021-07-31 22:00:00"), EnrolmentRefusalReason.REGISTRATION_CLOSED,
     {"closed_at": "2021-07-31T22:00:00+07:00"}),
    ("any day after the last is closed",
     bkk("2021-08-01 12:00:00"), EnrolmentRefusalReason.REGISTRATION_CLOSED, {}),
    ("a time in UTC is judged by the Bangkok clock",
     datetime(2021, 7, 31, 15, 0, tzinfo=UTC), EnrolmentRefusalReason.REGISTRATION_CLOSED, {}),
]
# fmt: on


@pytest.mark.parametrize(
    "now, reason, facts", [row[1:] for row in WINDOW], ids=[row[0] for row in WINDOW]
)
def test_registration_is_open_only_within_its_dates_and_daily_hours(now, reason, facts) -> None:
    result = decide_enrolment(KLK3, CITIZEN, now)
    if reason is None:
        assert isinstance(result, Eligible), result
    else:
        assert isinstance(result, EnrolmentRefusal)
        assert result.reason == reason
        assert facts.items() <= result.facts.items()


# --- eligibility: one row per rule ----------------------------------------------------------

# fmt: off
ELIGIBILITY = [
    # sentence, version, citizen, ineligibility (None: eligible), facts
    ("a Thai adult is eligible", KLK3, CITIZEN, None, {}),
    ("someone turning eighteen today is eligible",
     KLK3, with_(CITIZEN, birth_date=date(2003, 6, 25)), None, {}),
    ("someone turning eighteen tomorrow is too young",
     KLK3, with_(CITIZEN, birth_date=date(2003, 6, 26)), Ineligibility.AGE,
     {"age": 17, "min_age": 18}),
    ("someone older than the maximum age is refused",
     SENIORS_OF_CHIANG_MAI, with_(SENIOR, birth_date=date(1921, 6, 25)), Ineligibility.AGE,
     {"age": 100, "max_age": 99}),
    ("someone of exactly the maximum age is eligible",
     SENIORS_OF_CHIANG_MAI, with_(SENIOR, birth_date=date(1921, 6, 26)), None, {}),
    ("a citizen of another nationality is refused",
     KLK3, with_(CITIZEN, nationality="MM"), Ineligibility.NATIONALITY,
     {"nationality": "MM", "allowed": ["TH"]}),
    ("a citizen registered in another province is refused",
     SENIORS_OF_CHIANG_MAI, with_(SENIOR, province_code="10"), Ineligibility.PROVINCE,
     {"province_code": "10"}),
    ("a citizen registered in another district is refused",
     SENIORS_OF_CHIANG_MAI, with_(SENIOR, district_code="5002"), Ineligibility.DISTRICT,
     {"district_code": "5002"}),
    ("a program for taxpayers refuses a citizen who pays no tax",
     TAXPAYERS_ONLY, CITIZEN, Ineligibility.TAXPAYER, {"required": True}),
    ("a program for taxpayers takes a taxpayer", TAXPAYERS_ONLY, with_(CITIZEN, taxpayer=True),
     None, {}),
    ("a welfare program refuses a taxpayer",
     version_of("welfare-card"), with_(CITIZEN, taxpayer=True), Ineligibility.TAXPAYER,
     {"taxpayer": True, "required": False}),
    ("a holder of an excluding program is refused and the program is named",
     KLK3, with_(CITIZEN, held_program_codes=("rao-chana", "welfare-card")),
     Ineligibility.EXCLUDED_PROGRAM, {"program_code": "welfare-card"}),
    ("holding a program that is not excluded does not matter",
     KLK3, with_(CITIZEN, held_program_codes=("rao-chana",)), None, {}),
    ("the first broken rule is named when several are",
     KLK3, with_(CITIZEN, birth_date=date(2010, 1, 1), nationality="MM"), Ineligibility.AGE, {}),
]
# fmt: on


@pytest.mark.parametrize(
    "version, citizen, ineligibility, facts",
    [row[1:] for row in ELIGIBILITY],
    ids=[row[0] for row in ELIGIBILITY],
)
def test_a_citizen_breaking_an_eligibility_rule_is_refused_with_a_machine_reason(
    version, citizen, ineligibility, facts
) -> None:
    now = bkk("2021-06-25 12:00:00")
    if version.spec.code == "welfare-card":
        now = bkk("2025-09-15 12:00:00")
    result = decide_enrolment(version, citizen, now)
    if ineligibility is None:
        assert isinstance(result, Eligible), result
        assert (result.program_id, result.version) == (version.program_id, 3)
    else:
        assert isinstance(result, EnrolmentRefusal), result
        assert result.reason == EnrolmentRefusalReason.NOT_ELIGIBLE
        assert result.ineligibility == ineligibility
        assert facts.items() <= result.facts.items()


def test_every_enrolment_refusal_and_every_ineligibility_has_a_row() -> None:
    reasons = {row[2] for row in WINDOW} | {EnrolmentRefusalReason.NOT_ELIGIBLE}
    assert reasons - {None} == set(EnrolmentRefusalReason)
    assert {row[3] for row in ELIGIBILITY} - {None} == set(Ineligibility)


def test_the_registration_window_is_checked_before_eligibility() -> None:
    result = decide_enrolment(KLK3, with_(CITIZEN, nationality="MM"), bkk("2021-08-01 12:00"))
    assert isinstance(result, EnrolmentRefusal)
    assert result.reason == EnrolmentRefusalReason.REGISTRATION_CLOSED


@pytest.mark.parametrize(
    "birth, day, age",
    [
        (date(2000, 2, 29), date(2018, 2, 28), 17),
        (date(2000, 2, 29), date(2018, 3, 1), 18),
        (date(2000, 2, 29), date(2020, 2, 29), 20),
        (date(1980, 12, 31), date(2021, 1, 1), 40),
    ],
    ids=[
        "a leap-day baby is not of age on the 28th",
        "a leap-day baby comes of age on 1 March",
        "a leap-day baby has a birthday in a leap year",
        "a year-end birthday counts whole years",
    ],
)
def test_age_is_counted_in_completed_years(birth, day, age) -> None:
    assert age_on(birth, day) == age


# --- the first-use deadline and forfeiture --------------------------------------------------

# fmt: off
DEADLINES = [
    # sentence, enrolled_at, deadline
    ("enrolling before spending opens starts the clock on the first spending day",
     bkk("2021-06-25 12:00:00"), bkk("2021-07-16 00:00:00")),
    ("enrolling during spending gives the whole of the fourteenth day after",
     bkk("2021-07-10 08:00:00"), bkk("2021-07-25 00:00:00")),
    ("enrolling one second before midnight Bangkok counts that day",
     bkk("2021-07-10 23:59:59"), bkk("2021-07-25 00:00:00")),
    ("enrolling at midnight Bangkok counts the new day",
     datetime(2021, 7, 10, 17, 0, tzinfo=UTC), bkk("2021-07-26 00:00:00")),
]
# fmt: on


@pytest.mark.parametrize(
    "enrolled_at, deadline", [row[1:] for row in DEADLINES], ids=[row[0] for row in DEADLINES]
)
def test_the_first_use_deadline_is_midnight_bangkok_after_the_allowed_days(
    enrolled_at, deadline
) -> None:
    assert first_use_deadline(enrolled_at, KLK3) == deadline


def test_a_program_without_a_first_use_deadline_never_forfeits() -> None:
    assert first_use_deadline(bkk("2021-07-10 08:00:00"), NO_DEADLINE) is None
    assert not is_forfeited(bkk("2021-07-10 08:00:00"), None, bkk("2030-01-01 00:00"), NO_DEADLINE)
    result = decide_enrolment(NO_DEADLINE, CITIZEN, OPEN)
    assert isinstance(result, Eligible) and result.first_use_deadline is None


def test_the_eligible_answer_carries_the_deadline_of_an_enrolment_now() -> None:
    result = decide_enrolment(KLK3, CITIZEN, bkk("2021-07-10 08:00:00"))
    assert isinstance(result, Eligible)
    assert result.first_use_deadline == bkk("2021-07-25 00:00:00")


ENROLLED = bkk("2021-07-10 08:00:00")  # deadline 2021-07-25 00:00 Bangkok
# fmt: off
FORFEITS = [
    # sentence, first_used_at, now, forfeited
    ("an unused right is kept until the last second before the deadline",
     None, bkk("2021-07-24 23:59:59"), False),
    ("an unused right is forfeited at the deadline", None, bkk("2021-07-25 00:00:00"), True),
    ("a right used before the deadline is kept for good",
     bkk("2021-07-24 23:59:59"), bkk("2021-12-31 12:00:00"), False),
    ("a first use at the deadline does not revive the right",
     bkk("2021-07-25 00:00:00"), bkk("2021-07-25 00:00:01"), True),
    ("the deadline is judged on the Bangkok clock", None,
     datetime(2021, 7, 24, 17, 0, tzinfo=UTC), True),
]
# fmt: on


@pytest.mark.parametrize(
    "first_used_at, now, forfeited",
    [row[1:] for row in FORFEITS],
    ids=[row[0] for row in FORFEITS],
)
def test_a_right_not_used_by_its_deadline_is_forfeited(first_used_at, now, forfeited) -> None:
    assert is_forfeited(ENROLLED, first_used_at, now, KLK3) is forfeited


# --- grant credits --------------------------------------------------------------------------


def test_rao_chana_credits_seven_weekly_instalments_adding_up_to_the_allowance() -> None:
    version = version_of("rao-chana")
    enrolled_at = bkk("2021-02-20 09:30:00")
    credits = grant_credits(version, enrolled_at)
    assert [c.amount_satang for c in credits] == [1_000 * THB] * 7
    assert [c.due_at for c in credits] == [enrolled_at + timedelta(days=7 * k) for k in range(7)]
    assert sum(c.amount_satang for c in credits) == 7_000 * THB


def test_instalment_schedules_run_one_after_another() -> None:
    version = version_of(
        "rao-chana",
        (
            "rule.instalments",
            [
                {"every_days": 3, "count": 2, "amount_satang": 200_000},
                {"weekly": True, "count": 3, "amount_satang": 100_000},
            ],
        ),
    )
    enrolled_at = bkk("2021-02-20 09:30:00")
    days = [(c.due_at - enrolled_at).days for c in grant_credits(version, enrolled_at)]
    assert days == [0, 3, 6, 13, 20]


def test_an_allowance_without_instalments_is_credited_at_enrolment() -> None:
    version = version_of("rao-chana", ("rule.instalments", []))
    enrolled_at = bkk("2021-02-20 09:30:00")
    [credit] = grant_credits(version, enrolled_at)
    assert (credit.due_at, credit.amount_satang) == (enrolled_at, 7_000 * THB)


def test_a_grant_of_pockets_only_credits_nothing_at_enrolment() -> None:
    assert grant_credits(version_of("welfare-card"), bkk("2025-10-01 00:00:00")) == ()
