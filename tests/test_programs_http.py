"""Programs over HTTP: drafts, versions, maker-checker approval, lifecycle, strict input."""

from __future__ import annotations

import asyncio
import copy
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from gwallet.ids import parse_id
from subsidy_rules.service import budget_account_id, version_at
from tests.backoffice import (
    PROGRAMS,
    approve,
    approved_program,
    create_program,
    key,
    lifecycle,
    new_official,
    spec,
    submit,
)
from tests.test_officials import admin_routes, concrete


async def test_a_maker_creates_a_draft_and_every_edit_makes_a_new_version(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    maker = team["maker"]
    body = spec()
    created = await create_program(api, maker, body)
    assert created["program_id"].startswith("prg_") and created["status"] == "draft"
    assert (created["version"], created["version_status"]) == (1, "draft")
    assert len(created["content_hash"]) == 64 and created["spec"]["code"] == body["code"]
    assert created["version_in_effect"] is None

    url = f"{PROGRAMS}/{created['program_id']}"
    edited = await api.patch(
        url, json={"spec": {"rule": {"caps": {"daily": 15_000}}}}, headers=maker.headers
    )
    assert edited.status_code == 200, edited.text
    v2 = edited.json()
    caps = v2["spec"]["rule"]["caps"]
    assert v2["version"] == 2 and (caps["daily"], caps["total"]) == (15_000, 240_000)
    assert v2["content_hash"] != created["content_hash"]
    removed = await api.patch(
        url, json={"spec": {"rule": {"overrides": None}}, "base_version": 2}, headers=maker.headers
    )
    assert removed.json()["spec"]["rule"]["overrides"] == []
    stale = await api.patch(url, json={"spec": {}, "base_version": 2}, headers=maker.headers)
    assert stale.status_code == 409 and stale.json()["code"] == "version_conflict"

    versions = await api.get(f"{url}/versions", headers=team["auditor"].headers)
    listed = versions.json()["data"]
    assert [(v["version"], v["status"]) for v in listed] == [
        (1, "superseded"),
        (2, "superseded"),
        (3, "draft"),
    ]
    one = await api.get(f"{url}/versions/1", headers=team["auditor"].headers)
    assert one.json()["spec"] == created["spec"]
    for missing in ("4", "0", "99999999999", "x", "1.0"):
        response = await api.get(f"{url}/versions/{missing}", headers=maker.headers)
        assert response.status_code == 404, missing


async def test_the_maker_cannot_approve_their_own_version(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    maker = team["maker"]
    program = await submit(api, maker, await create_program(api, maker, spec()))
    response = await api.post(
        f"{PROGRAMS}/{program['program_id']}/approve",
        json={"version": 1, "content_hash": program["content_hash"], "totp_code": maker.peek()},
        headers=maker.headers,
    )
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    admin = await api.post(
        f"{PROGRAMS}/{program['program_id']}/approve",
        json={"version": 1, "content_hash": program["content_hash"], "totp_code": "123456"},
        headers=team["admin"].headers,
    )
    assert admin.status_code == 403


async def test_a_version_made_by_the_approver_is_refused_even_with_the_checker_role(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    """Four eyes by identity, not only by role: an official whose role was changed to checker
    still cannot approve a version they made (403), and the database refuses it too."""
    maker, checker = team["maker"], team["checker"]
    program = await submit(api, maker, await create_program(api, maker, spec()))
    maker_uuid = parse_id("off", maker.official_id)
    await pool.execute("UPDATE officials SET role = 'checker' WHERE id = $1", maker_uuid)
    try:
        response = await approve(api, maker, program, fresh=False)
        assert response.status_code == 403 and response.json()["code"] == "self_approval"
    finally:
        await pool.execute("UPDATE officials SET role = 'maker' WHERE id = $1", maker_uuid)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "UPDATE program_versions SET status = 'approved', approved_by = created_by, "
            "approved_at = now(), effective_at = now() WHERE program_id = $1",
            parse_id("prg", program["program_id"]),
        )
    assert (await approve(api, checker, program)).status_code == 200


async def test_approval_binds_the_exact_version_and_a_stale_hash_is_409(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    maker, checker = team["maker"], team["checker"]
    v1 = await submit(api, maker, await create_program(api, maker, spec()))
    url = f"{PROGRAMS}/{v1['program_id']}"
    # Edited after submission: a new version (a draft), which needs its own submission.
    v2 = (await api.patch(url, json={"spec": {"quota": 5}}, headers=maker.headers)).json()
    assert (v2["version"], v2["status"]) == (2, "draft")
    stale = await approve(api, checker, v1, fresh=False)
    assert stale.status_code == 409 and stale.json()["code"] == "version_conflict"
    wrong_hash = await approve(
        api, checker, {**v2, "content_hash": v1["content_hash"]}, fresh=False
    )
    assert wrong_hash.status_code == 409 and wrong_hash.json()["code"] == "version_conflict"
    not_submitted = await approve(api, checker, v2, fresh=False)
    assert not_submitted.status_code == 409 and not_submitted.json()["code"] == "invalid_transition"

    v2 = await submit(api, maker, v2)
    bad_code = await api.post(
        f"{url}/approve",
        json={"version": 2, "content_hash": v2["content_hash"], "totp_code": "12345x"},
        headers=checker.headers,
    )
    assert bad_code.status_code == 403 and bad_code.json()["code"] == "totp_code_invalid"
    checker2 = await new_official(pool, api, "checker")
    approved = await approve(api, checker2, v2)
    assert approved.status_code == 200, approved.text
    program = approved.json()
    assert program["status"] == "approved" and program["version_in_effect"] == 2
    assert program["spec"]["quota"] == 5
    # The budget account exists now: shared, and never below zero.
    account = await pool.fetchrow(
        "SELECT code, shared, debits_must_not_exceed_credits FROM ledger_accounts WHERE id = $1",
        budget_account_id(parse_id("prg", program["program_id"])),
    )
    assert dict(account) == {"code": 101, "shared": True, "debits_must_not_exceed_credits": True}


async def test_two_concurrent_approvals_apply_once(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    maker = team["maker"]
    program = await submit(api, maker, await create_program(api, maker, spec()))
    checkers = [team["checker"], await new_official(pool, api, "checker")]
    responses = await asyncio.gather(*(approve(api, c, program) for c in checkers))
    assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
    entries = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE target_id = $1 AND action = 'program.approve'",
        program["program_id"],
    )
    assert entries == 1
    approvals = await pool.fetchval(
        "SELECT count(*) FROM program_versions WHERE program_id = $1 AND status = 'approved'",
        parse_id("prg", program["program_id"]),
    )
    assert approvals == 1


async def test_the_lifecycle_is_draft_submitted_approved_active_paused_closed(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    maker, checker, admin = team["maker"], team["checker"], team["admin"]
    draft = await create_program(api, maker, spec())
    refused = await lifecycle(api, admin, draft, "activate")
    assert refused.status_code == 409 and refused.json()["code"] == "invalid_transition"
    program = await approved_program(api, maker, checker)
    steps = [
        ("pause", 409, "approved"),
        ("activate", 200, "active"),
        ("activate", 409, "active"),
        ("resume", 409, "active"),
        ("pause", 200, "paused"),
        ("pause", 409, "paused"),
        ("resume", 200, "active"),
        ("pause", 200, "paused"),
        ("close", 200, "closed"),
        ("resume", 409, "closed"),
        ("activate", 409, "closed"),
    ]
    for action, status, after in steps:
        response = await lifecycle(api, admin, program, action)
        assert response.status_code == status, (action, response.text)
        now = (await api.get(f"{PROGRAMS}/{program['program_id']}", headers=admin.headers)).json()
        assert now["status"] == after, action
    closed_edit = await api.patch(
        f"{PROGRAMS}/{program['program_id']}", json={"spec": {"quota": 9}}, headers=maker.headers
    )
    assert closed_edit.status_code == 409
    maker_tries = await lifecycle(api, maker, program, "close")
    assert maker_tries.status_code == 403


async def test_an_active_program_keeps_its_version_until_the_new_one_is_approved_and_effective(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    maker, admin = team["maker"], team["admin"]
    program = await approved_program(api, maker, team["checker"])
    assert (await lifecycle(api, admin, program, "activate")).status_code == 200
    program_uuid = parse_id("prg", program["program_id"])
    url = f"{PROGRAMS}/{program['program_id']}"
    effective_at = datetime.now(UTC) + timedelta(days=3)
    edited = await api.patch(
        url,
        json={"spec": {"rule": {"share_bp": 6000}}, "effective_at": effective_at.isoformat()},
        headers=maker.headers,
    )
    v2 = edited.json()
    assert (v2["status"], v2["version"], v2["version_in_effect"]) == ("active", 2, 1)
    v2 = await submit(api, maker, v2)
    assert v2["status"] == "active" and v2["version_status"] == "submitted"
    approved = await approve(api, await new_official(pool, api, "checker"), v2)
    assert approved.status_code == 200, approved.text
    after = approved.json()
    assert (after["version_in_effect"], after["version_scheduled"]) == (1, 2)
    now = datetime.now(UTC)
    assert (await version_at(pool, program_uuid, now)).version == 1
    later = await version_at(pool, program_uuid, effective_at + timedelta(seconds=1))
    assert later.version == 2 and later.spec.rule.share_bp == 6000
    assert await version_at(pool, program_uuid, now - timedelta(days=1)) is None
    # A naive time (no offset) is refused.
    naive = await api.patch(
        url, json={"effective_at": "2030-01-01T00:00:00"}, headers=maker.headers
    )
    assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "effective_at"


INVALID_SPECS = [
    (
        "a negative cap",
        {"rule": {"kind": "co_payment", "share_bp": 5000, "caps": {"daily": -1}}},
        "spec.rule.caps.daily",
    ),
    (
        "a share above 10000 bp",
        {"rule": {"kind": "co_payment", "share_bp": 10001}},
        "spec.rule.share_bp",
    ),
    (
        "a window that ends before it starts",
        {
            "spending": {
                "start_date": "2025-12-31",
                "end_date": "2025-10-29",
                "hours": {"start": "06:00", "end": "23:00"},
            }
        },
        "spec.spending.end_date",
    ),
    ("an unknown field", {"colour": "blue"}, "spec.colour"),
    (
        "an unknown nested field",
        {"rule": {"kind": "co_payment", "share_bp": 5000, "tip": 1}},
        "spec.rule.tip",
    ),
    ("a float amount", {"budget_satang": 100.5}, "spec.budget_satang"),
    ("a string amount", {"budget_satang": "100"}, "spec.budget_satang"),
    ("a boolean amount", {"budget_satang": True}, "spec.budget_satang"),
    ("a huge amount", {"budget_satang": 10**30}, "spec.budget_satang"),
    ("a NUL in a name", {"name_en": "half\u0000half"}, "spec.name_en"),
    (
        "hours ending before they start",
        {
            "registration": {
                "start_date": "2025-10-01",
                "end_date": "2025-10-26",
                "hours": {"start": "22:00", "end": "06:00"},
            }
        },
        "spec.registration.hours.end",
    ),
]


@pytest.mark.parametrize(
    ("what", "change", "field"), INVALID_SPECS, ids=[s[0] for s in INVALID_SPECS]
)
async def test_an_invalid_spec_is_a_422_naming_the_field(
    api: httpx.AsyncClient, team: dict[str, Any], what: str, change: dict, field: str
) -> None:
    body = spec()
    body.update(change)
    response = await api.post(
        PROGRAMS, json={"spec": body}, headers={**team["maker"].headers, **key()}
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_spec" and problem["errors"][0]["field"] == field, problem
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_an_invalid_edit_is_a_422_naming_the_field_and_makes_no_version(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    maker = team["maker"]
    program = await create_program(api, maker, spec())
    url = f"{PROGRAMS}/{program['program_id']}"
    for patch, field in [
        ({"rule": {"caps": {"daily": -5}}}, "spec.rule.caps.daily"),
        ({"code": "another-code"}, "spec.code"),
        ({"quota": None}, "spec.quota"),
    ]:
        response = await api.patch(url, json={"spec": patch}, headers=maker.headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field
    nul_key = await api.patch(url, json={"spec": {"a\u0000": None}}, headers=maker.headers)
    assert nul_key.status_code == 422 and nul_key.json()["errors"][0]["field"] == "spec.a\u0000"
    for depth, status in ((40, 422), (900, 422), (5000, 400)):  # 400: too deep to decode
        deep = '{"a":' * depth + "1" + "}" * depth
        for method, path, extra in (("PATCH", url, {}), ("POST", PROGRAMS, key())):
            response = await api.request(
                method,
                path,
                content=f'{{"spec": {deep}}}',
                headers={**maker.headers, **extra, "content-type": "application/json"},
            )
            assert response.status_code == status, (depth, method, response.text)
    same = (await api.get(url, headers=maker.headers)).json()
    assert same["version"] == 1


async def test_a_program_code_is_unique(api: httpx.AsyncClient, team: dict[str, Any]) -> None:
    body = spec()
    await create_program(api, team["maker"], body)
    again = await api.post(
        PROGRAMS, json={"spec": body}, headers={**team["maker"].headers, **key()}
    )
    assert again.status_code == 409 and again.json()["code"] == "program_code_taken"


async def test_creating_a_program_is_idempotent_by_key(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    headers = {**team["maker"].headers, **key()}
    body = {"spec": spec()}
    first = await api.post(PROGRAMS, json=body, headers=headers)
    replay = await api.post(PROGRAMS, json=body, headers=headers)
    assert first.status_code == replay.status_code == 201
    assert first.json() == replay.json() and replay.headers.get("idempotent-replayed") == "true"
    missing = await api.post(PROGRAMS, json={"spec": spec()}, headers=team["maker"].headers)
    assert missing.status_code == 400 and missing.json()["code"] == "idempotency_key_required"


async def test_programs_are_listed_with_cursors(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    for _ in range(3):
        await create_program(api, team["maker"], spec())
    headers = team["auditor"].headers
    seen: list[str] = []
    cursor = None
    for _ in range(3):  # three pages are enough to show the cursor at work
        params = {"limit": 2, **({"starting_after": cursor} if cursor else {})}
        page = (await api.get(PROGRAMS, params=params, headers=headers)).json()
        seen += [p["program_id"] for p in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["data"][-1]["program_id"]
    assert len(seen) == len(set(seen)) >= 3 and seen == sorted(seen)  # id order
    drafts = (
        await api.get(PROGRAMS, params={"status": "draft", "limit": 100}, headers=headers)
    ).json()
    assert all(p["status"] == "draft" for p in drafts["data"])
    for bad in (
        {"status": "sleeping"},
        {"limit": 0},
        {"limit": 101},
        {"starting_after": "x"},
        {"limit": "1.5"},
    ):
        response = await api.get(PROGRAMS, params=bad, headers=headers)
        assert response.status_code == 400, (bad, response.text)


# --- bad input on every endpoint -------------------------------------------------------------

# A valid body for each program endpoint that takes one, so that only the part under test is
# wrong (a malformed id must then be a 404, not a 422 about the body).
VALID_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/admin/sessions"): {"username": "nobody", "password": "x", "totp_code": "000000"},
    ("POST", "/v1/admin/officials"): {"username": "someone-new", "role": "auditor"},
    ("POST", "/v1/admin/programs"): {"spec": spec()},
    ("PATCH", "/v1/admin/programs/{program_id:str}"): {"spec": {"quota": 7}},
    ("POST", "/v1/admin/programs/{program_id:str}/submit"): {"version": 1},
    ("POST", "/v1/admin/programs/{program_id:str}/approve"): {
        "version": 1,
        "content_hash": "0" * 64,
        "totp_code": "000000",
    },
    ("POST", "/v1/admin/programs/{program_id:str}/activate"): {},
    ("POST", "/v1/admin/programs/{program_id:str}/pause"): {"reason": "fraud wave"},
    ("POST", "/v1/admin/programs/{program_id:str}/resume"): {},
    ("POST", "/v1/admin/programs/{program_id:str}/close"): {},
    ("POST", "/v1/admin/programs/{program_id:str}/funding"): {"amount": 100},
    ("POST", "/v1/admin/programs/{program_id:str}/funding/{funding_id:str}/approve"): {
        "totp_code": "000000"
    },
    ("POST", "/v1/admin/programs/{program_id:str}/simulate"): {
        "version": 1,
        "from": "2025-11-01",
        "to": "2025-11-02",
    },
}

BAD_BODIES = [
    b"{not json",
    b"[]",
    b'"a string"',
    b"12.5",
    b"null",
    b'{"unknown_field": 1}',
    b'{"amount": 1e400}',
    b'{"version": 123456789012345678901234567890}',
    b'{"spec": ' + b"[" * 3000 + b"]" * 3000 + b"}",  # nested too deep to decode
    b'{"spec": {"a": "\\u0000"}, "reason": "\\u0000"}',
]

MALFORMED_IDS = [
    "x",
    "prg_",
    "prg_" + "u" * 26,
    "fnd_" + "0" * 26,
    "prg_" + "0" * 25 + "Z",
    "prg_" + "0" * 27,
    "%00",
    "prg_0000000000000000000000000%2F",
]


def _is_problem(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/problem+json")


async def test_bad_input_on_every_admin_endpoint_is_a_4xx_problem_never_a_500(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    by_role = {**team, "anyone": team["auditor"]}
    program = await approved_program(api, team["maker"], team["checker"])
    real_id = program["program_id"]

    async def check(method: str, path: str, handler: Any) -> None:
        role = min(handler.opt.get("roles") or ["anyone"])
        headers = {**by_role[role].headers, **key(), "content-type": "application/json"}
        url = concrete(path, program_id=real_id)
        takes_body = "data" in handler.parsed_fn_signature.parameters
        if takes_body:
            for bad in BAD_BODIES:
                response = await api.request(method, url, content=bad, headers=headers)
                assert 400 <= response.status_code < 500, (method, path, bad, response.text)
                assert _is_problem(response), (method, path, bad)
        # With a valid body (or none), a malformed id in the path is a 404; without a
        # sample body (other features' endpoints) any 4xx problem will do.
        body = VALID_BODIES.get((method, path), {} if takes_body else None)
        strict = not takes_body or (method, path) in VALID_BODIES
        for param in re.findall(r"\{(\w+):\w+\}", path):
            for malformed in MALFORMED_IDS:
                bad_url = concrete(path, **{"program_id": real_id, param: malformed})
                response = await api.request(
                    method, bad_url, json=body, headers={**headers, **key()}
                )
                if strict:
                    assert response.status_code == 404, (method, bad_url, response.text)
                assert 400 <= response.status_code < 500, (method, bad_url, response.text)
                assert _is_problem(response), (method, bad_url)

    await asyncio.gather(*(check(*route) for route in admin_routes()))


AMOUNTS = [0, -1, 1.0, 100.5, "100", True, None, 10**15 + 1, 10**19, 10**40]


async def test_a_funding_amount_that_is_not_a_positive_integer_within_the_budget_limit_is_422(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    program = await approved_program(api, team["maker"], team["checker"])
    url = f"{PROGRAMS}/{program['program_id']}/funding"
    for amount in AMOUNTS:
        response = await api.post(
            url, json={"amount": amount}, headers={**team["maker"].headers, **key()}
        )
        assert response.status_code == 422, (amount, response.text)
        assert response.json()["errors"][0]["field"] == "amount"
    wrong_currency = await api.post(
        url, json={"amount": 100, "currency": "USD"}, headers={**team["maker"].headers, **key()}
    )
    assert wrong_currency.status_code == 422
    unknown = await api.post(
        url, json={"amount": 100, "memo": "x"}, headers={**team["maker"].headers, **key()}
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "memo"


def test_the_example_specs_are_not_changed_by_the_helpers() -> None:
    from subsidy_rules.examples import KHON_LA_KHRUENG_PLUS_2025

    before = copy.deepcopy(KHON_LA_KHRUENG_PLUS_2025)
    spec(code="x-y")
    assert before == KHON_LA_KHRUENG_PLUS_2025
