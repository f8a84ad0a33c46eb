"""The audit log: every official action with before/after, hash-chained, tamper-evident."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from gwallet import audit
from tests.backoffice import (
    PROGRAMS,
    approved_program,
    fund,
    lifecycle,
    new_official,
)


async def entries_about(api: httpx.AsyncClient, auditor: Any, target_id: str) -> list[dict]:
    response = await api.get(
        "/v1/admin/audit-log",
        params={"target_id": target_id, "limit": 100},
        headers=auditor.headers,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_every_official_action_on_a_program_is_in_the_audit_log_with_before_and_after(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    maker, admin, auditor = team["maker"], team["admin"], team["auditor"]
    program = await approved_program(api, maker, team["checker"])
    await lifecycle(api, admin, program, "activate")
    await lifecycle(api, admin, program, "pause")
    await lifecycle(api, admin, program, "resume")
    await api.patch(
        f"{PROGRAMS}/{program['program_id']}", json={"spec": {"quota": 3}}, headers=maker.headers
    )
    funding = await fund(api, maker, await new_official(pool, api, "checker"), program, 500)
    entries = await entries_about(api, auditor, program["program_id"])
    assert [e["action"] for e in entries] == [
        "program.create",
        "program.submit",
        "program.approve",
        "program.activate",
        "program.pause",
        "program.resume",
        "program.edit",
    ]
    create, submit, approve, activate, pause, _, edit = entries
    assert create["actor"] == maker.username and create["actor_id"] == maker.official_id
    assert create["before"] is None and create["after"]["version"] == 1
    assert create["after"]["spec"]["code"] == program["code"]
    assert submit["before"]["status"] == "draft" and submit["after"]["status"] == "submitted"
    assert approve["actor"] == team["checker"].username
    assert approve["after"]["content_hash"] == program["content_hash"]
    assert (activate["before"], activate["after"]) == (
        {"status": "approved"},
        {"status": "active", "reason": "test"},
    )
    assert pause["after"]["status"] == "paused"
    assert edit["before"]["spec"]["quota"] != 3 and edit["after"]["spec"]["quota"] == 3
    assert edit["after"]["patch"] == {"quota": 3}
    funding_entries = await entries_about(api, auditor, funding["funding_id"])
    assert [e["action"] for e in funding_entries] == ["funding.request", "funding.approve"]
    assert funding_entries[1]["after"]["amount"] == 500
    # The entries chain: each links to the hash of the one before it.
    page = (
        await api.get("/v1/admin/audit-log", params={"limit": 3}, headers=auditor.headers)
    ).json()
    first, second, third = page["data"]
    assert first["seq"] == 1 and first["prev_hash"] == "00" * 32
    assert second["prev_hash"] == first["hash"] and third["prev_hash"] == second["hash"]
    after = (
        await api.get(
            "/v1/admin/audit-log",
            params={"limit": 1, "starting_after": second["id"]},
            headers=auditor.headers,
        )
    ).json()
    assert after["data"][0]["id"] == third["id"] and after["has_more"] is True


async def test_concurrent_actions_append_a_dense_chain(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    auditor = team["auditor"]
    await asyncio.gather(*(new_official(pool, api, "auditor", login=True) for _ in range(6)))
    report = (await api.get("/v1/admin/audit-log/verify", headers=auditor.headers)).json()
    assert report["ok"] is True and report["first_broken_seq"] is None, report
    assert report["entries"] == await pool.fetchval("SELECT max(seq) FROM audit_log")


async def test_the_audit_log_refuses_changes_and_tampering_is_detected(
    api: httpx.AsyncClient, pool: asyncpg.Pool, team: dict[str, Any]
) -> None:
    auditor = team["auditor"]
    await approved_program(api, team["maker"], team["checker"])
    seq = await pool.fetchval("SELECT max(seq) FROM audit_log") - 1
    async with pool.acquire() as conn:
        try:
            await conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = $1", seq)
        except asyncpg.IntegrityConstraintViolationError as exc:
            assert "immutable" in str(exc)
        else:  # pragma: no cover
            raise AssertionError("the trigger let an audit entry change")
        original = await conn.fetchrow(
            "SELECT after::text AS after FROM audit_log WHERE seq = $1", seq
        )
        # A superuser bypasses the trigger, as an attacker with the database would.
        await conn.execute("SET session_replication_role = replica")
        try:
            await conn.execute(
                "UPDATE audit_log SET after = '{\"status\": \"approved\", \"forged\": true}' "
                "WHERE seq = $1",
                seq,
            )
            report = await audit.verify_audit_log(conn)
            assert report.ok is False and report.first_broken_seq == seq, report
            over_http = (
                await api.get("/v1/admin/audit-log/verify", headers=auditor.headers)
            ).json()
            assert over_http["first_broken_seq"] == seq and "changed" in over_http["detail"]
            # Rewriting the entry's hash too breaks the link of the next entry.
            await conn.execute("UPDATE audit_log SET hash = sha256(hash) WHERE seq = $1", seq)
            assert (await audit.verify_audit_log(conn)).first_broken_seq == seq
        finally:
            await conn.execute(
                "UPDATE audit_log SET after = $2::jsonb, hash = (SELECT prev_hash FROM audit_log "
                "WHERE seq = $1 + 1) WHERE seq = $1",
                seq,
                original["after"],
            )
            await conn.execute("SET session_replication_role = DEFAULT")
    assert (await audit.verify_audit_log(pool)).ok


async def test_a_removed_last_entry_is_detected_by_the_chain_head(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await audit.append(
            conn,
            actor_id=None,
            actor="test",
            action="test.entry",
            target_type="test",
            after={"n": 1},
        )
    last = await pool.fetchrow("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1")
    async with pool.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")
        try:
            await conn.execute("DELETE FROM audit_log WHERE seq = $1", last["seq"])
            report = await audit.verify_audit_log(conn)
            assert report.ok is False and report.first_broken_seq == last["seq"], report
        finally:
            await conn.execute(  # put it back, as it was
                "INSERT INTO audit_log (seq, id, occurred_at, actor_id, actor, action, target_type, "
                "target_id, before, after, prev_hash, hash) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                *last.values(),
            )
            await conn.execute("SET session_replication_role = DEFAULT")
    assert (await audit.verify_audit_log(pool)).ok
