"""Demo data of the back office (issue 3): three officials and an active, funded half-half
program, made through the same service functions as the HTTP API (audited, maker-checker).

DEMO ONLY: the officials' passwords are fixed and printed with their TOTP secrets, so that
anyone trying the demo can log in. Running it again changes nothing: the officials and the
program (by its code) are found and reported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from gwallet import officials
from gwallet.idempotency import IdempotencyClaim
from gwallet.ids import format_id, parse_id
from gwallet.officials import (
    OfficialPrincipal,
    Role,
    TotpCodeInvalid,
    UsernameTaken,
    create_official,
)
from gwallet.totp import code_at_step, step_at
from ledger_core import LedgerEngine
from subsidy_rules import service
from subsidy_rules.examples import KHON_LA_KHRUENG_PLUS_2025
from subsidy_rules.periods import bangkok

PROGRAM_CODE = "half-half-demo"
BUDGET_SATANG = 1_000_000_000  # 10,000,000 THB, all of it funded
OFFICIALS = (("demo-admin", Role.ADMIN), ("demo-maker", Role.MAKER), ("demo-checker", Role.CHECKER))


def demo_password(username: str) -> str:
    return f"{username}-password"  # demo only


@dataclass
class DemoOfficial:
    username: str
    role: Role
    password: str
    totp_secret: str
    principal: OfficialPrincipal


@dataclass
class BackOfficeReport:
    officials: list[DemoOfficial] = field(default_factory=list)
    program_id: str = ""
    program_status: str = ""
    funded_satang: int = 0
    created: bool = False


def demo_spec(today: Any) -> dict[str, Any]:
    """Half-half Plus 2025, with its dates moved so that it runs now (registration and
    spending open today, for three months)."""
    spec = msgspec.json.decode(msgspec.json.encode(KHON_LA_KHRUENG_PLUS_2025))
    spec.update(
        code=PROGRAM_CODE,
        name_en="Half-half Plus (demo)",
        budget_satang=BUDGET_SATANG,
        quota=100_000,
    )
    spec["registration"].update(
        start_date=str(today - timedelta(days=1)), end_date=str(today + timedelta(days=60))
    )
    spec["spending"].update(
        start_date=str(today - timedelta(days=1)), end_date=str(today + timedelta(days=90))
    )
    return spec


async def _official(conn: asyncpg.Connection, username: str, role: Role) -> DemoOfficial:
    try:
        async with conn.transaction():
            await create_official(
                conn,
                username=username,
                role=role,
                password=demo_password(username),
                created_by=None,
            )
    except UsernameTaken:
        pass
    row = await conn.fetchrow(officials.Q["official_by_username"], username)
    return DemoOfficial(
        username=username,
        role=Role(row["role"]),
        password=demo_password(username),
        totp_secret=row["totp_secret"],
        principal=OfficialPrincipal(
            official_id=row["id"], username=username, role=Role(row["role"])
        ),
    )


async def _with_fresh_code(action: Any, secret: str) -> Any:
    """Run ``action(code)`` with this step's TOTP code, or the next one if it was used."""
    step = step_at(datetime.now(UTC))
    for candidate in (step, step + 1):
        try:
            return await action(code_at_step(secret, candidate))
        except TotpCodeInvalid:
            continue
    raise TotpCodeInvalid("no fresh TOTP code: run the demo again in 30 seconds")


async def seed_back_office(pool: asyncpg.Pool, engine: LedgerEngine) -> BackOfficeReport:
    report = BackOfficeReport()
    async with pool.acquire() as conn:
        for username, role in OFFICIALS:
            report.officials.append(await _official(conn, username, role))
    admin, maker, checker = (o.principal for o in report.officials)
    checker_secret = report.officials[2].totp_secret
    program_uuid = await pool.fetchval(service.Q["program_by_code"], PROGRAM_CODE)
    if program_uuid is None:
        report.created = True
        async with pool.acquire() as conn, conn.transaction():
            program = await service.create_program(
                conn, maker, demo_spec(bangkok(datetime.now(UTC)).date())
            )
            program_uuid = parse_id("prg", program.program_id)
            assert program_uuid is not None
            await service.submit_version(conn, maker, program_uuid, 1)

        async def approve(code: str) -> Any:
            async with pool.acquire() as conn, conn.transaction():
                return await service.approve_version(
                    conn,
                    checker,
                    program_uuid,
                    version=1,
                    content_hash_hex=program.content_hash,
                    totp_code=code,
                )

        await _with_fresh_code(approve, checker_secret)
        async with pool.acquire() as conn, conn.transaction():
            await service.change_lifecycle(
                conn, admin, program_uuid, service.LifecycleAction.ACTIVATE, "demo"
            )
            funding = await service.request_funding(conn, maker, program_uuid, BUDGET_SATANG)
        funding_uuid = parse_id("fnd", funding.funding_id)
        claim = IdempotencyClaim(
            scope=checker.principal_id,
            key=f"demo-funding-{funding.funding_id}",
            fingerprint=hashlib.sha256(funding.funding_id.encode()).digest(),
        )

        async def approve_funding(code: str) -> Any:
            return await service.approve_funding(
                pool, engine, checker, program_uuid, funding_uuid, totp_code=code, claim=claim
            )

        await _with_fresh_code(approve_funding, checker_secret)
    async with pool.acquire() as conn:
        stats = await service.program_stats(conn, program_uuid)
    report.program_id = format_id("prg", program_uuid)
    report.program_status = str(stats.status)
    report.funded_satang = stats.budget.funded
    return report


def print_back_office(report: BackOfficeReport, base: str) -> None:
    print("Back office (DEMO ONLY: fixed passwords, printed TOTP secrets):")
    for official in report.officials:
        print(
            f"  {official.role:<8} {official.username:<13} password {official.password:<24} "
            f"TOTP secret {official.totp_secret}"
        )
    what = "created" if report.created else "already there"
    print(
        f"  program {report.program_id} ({PROGRAM_CODE}, {report.program_status}, funded "
        f"{report.funded_satang / 100:,.2f} THB; {what})"
    )
    maker = report.officials[1]
    print(f"""  A TOTP code:  python -c "import pyotp; print(pyotp.TOTP('{maker.totp_secret}').now())"
  Log in:       curl -s -X POST {base}/v1/admin/sessions -H 'content-type: application/json' \\
                  -d '{{"username": "{maker.username}", "password": "{maker.password}", "totp_code": "<code>"}}'
  Then:         curl -s {base}/v1/admin/programs/{report.program_id}/stats -H 'authorization: Bearer <access_token>'
""")
