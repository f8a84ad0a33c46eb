"""Demo data of the citizens' wallet (issue 4): three registered citizens with confirmed
authenticators, each topped up by the demo bank, and enrolled in the demo program when its
registration is open.

DEMO ONLY: national IDs are derived from names, PINs are fixed, and the TOTP secrets are
printed, so that anyone trying the demo can log in. Everything goes through the same service
functions as the HTTP API (registration, the authenticator's first code, a signed-bank
top-up's service, enrolment). Running it again changes nothing: a registered citizen is found
and their secret shown again; a top-up with the same bank reference is the same top-up.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import asyncpg
from stdnum.th import pin as thai_pin

from gwallet import totp
from gwallet.ids import format_id, parse_id
from gwallet.problems import DomainError
from gwallet.settings import Settings
from ledger_core import LedgerEngine
from wallet import auth, enrolment, identity, topups
from wallet.context import build_context, ensure_clearing_accounts

CITIZENS = (
    # name, PIN, birth date, province, district
    ("สมชาย ใจดี (Somchai)", "482915", date(1979, 3, 14), "40", "4001"),
    ("มาลี ศรีสุข (Malee)", "730164", date(1988, 11, 2), "50", "5001"),
    ("อนันต์ มั่นคง (Anan)", "915372", date(1995, 6, 25), "10", "1001"),
)
TOP_UP_SATANG = 50_000  # 500 THB each


@dataclass
class DemoCitizen:
    name: str
    national_id: str
    pin: str
    totp_secret: str
    citizen_id: str
    wallet_id: str
    topup: str = ""
    enrolment: str = ""


@dataclass
class CitizensReport:
    citizens: list[DemoCitizen] = field(default_factory=list)
    partner: str = ""


def demo_national_id(name: str) -> str:
    """A valid national ID derived from the name (first digit 1: a Thai born after 1984)."""
    digits = str(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))[:11]
    body = "1" + digits.rjust(11, "0")
    return body + thai_pin.calc_check_digit(body)


async def seed_citizens(
    settings: Settings, pool: asyncpg.Pool, engine: LedgerEngine, program_id: str | None
) -> CitizensReport:
    context = build_context(settings)
    keys = context.keys
    await ensure_clearing_accounts(pool, context.partners)
    partner = context.partners.partner_ids[0]
    report = CitizensReport(partner=partner)
    now = datetime.now(UTC)
    for name, pin, birth_date, province, district in CITIZENS:
        national_id = demo_national_id(name)
        try:
            registered = await identity.register(
                pool,
                keys,
                identity.validate_registration(
                    national_id=national_id,
                    phone="08" + national_id[-8:],
                    full_name=name,
                    birth_date=birth_date,
                    province_code=province,
                    district_code=district,
                    pin=pin,
                    now=now,
                ),
            )
            citizen_id, wallet_id = registered.citizen_id, registered.wallet_account_id
        except identity.AlreadyRegistered:
            digests = keys.lookup.digests(national_id, purpose=identity.NATIONAL_ID)
            citizen_id = await pool.fetchval(identity.Q["citizen_by_national_id"], digests)
            wallet_id = await pool.fetchval(
                "SELECT wallet_account_id FROM citizens WHERE id = $1", citizen_id
            )
        secret = keys.pii.decrypt(
            await pool.fetchval(
                "SELECT totp_secret_encrypted FROM citizens WHERE id = $1", citizen_id
            ),
            row_id=citizen_id,
            field="totp_secret",
        )
        await _confirm_authenticator(pool, context, citizen_id, secret, now)
        citizen = DemoCitizen(
            name=name,
            national_id=national_id,
            pin=pin,
            totp_secret=secret,
            citizen_id=format_id("cit", citizen_id),
            wallet_id=format_id("wal", wallet_id),
        )
        done = await topups.top_up(
            pool,
            engine,
            partner_id=partner,
            webhook_id=topups.new_webhook_id(),
            request=topups.TopupIn(
                wallet_id=citizen.wallet_id,
                amount=TOP_UP_SATANG,
                bank_reference=f"DEMO-{national_id}",
            ),
        )
        citizen.topup = f"{done.topup_id} {done.amount / 100:,.2f} THB ({done.bank_reference})"
        citizen.enrolment = await _enrol(pool, citizen_id, program_id, now)
        report.citizens.append(citizen)
    return report


async def _confirm_authenticator(
    pool: asyncpg.Pool, context, citizen_id: uuid.UUID, secret: str, now: datetime  # type: ignore[no-untyped-def]
) -> None:
    """With the previous step's code, so that the code of this step still logs in."""
    if await pool.fetchval("SELECT totp_confirmed_at FROM citizens WHERE id = $1", citizen_id):
        return
    await auth.confirm_totp(
        pool,
        citizen_id=citizen_id,
        code=totp.code_at_step(secret, totp.step_at(now) - 1),
        pins=context.keys.pins,
        pii=context.keys.pii,
        policy=context.config.lockout,
        now=now,
    )


async def _enrol(
    pool: asyncpg.Pool, citizen_id: uuid.UUID, program_id: str | None, now: datetime
) -> str:
    program = parse_id("prg", program_id) if program_id else None
    if program is None:
        return "no demo program"
    try:
        done = await enrolment.enrol(
            pool, None, citizen_id=citizen_id, program_id=program, now=now, full_flag_seconds=0
        )
    except DomainError as refused:
        return f"not enrolled: {refused.code} ({refused.detail})"
    return f"enrolled {done.enrolment.enrolment_id} in {program_id}"


def print_citizens(report: CitizensReport, base: str) -> None:
    print("Demo citizens (DEMO ONLY: national IDs, PINs and TOTP secrets are printed):")
    for c in report.citizens:
        print(f"  {c.name}")
        print(f"    national ID {c.national_id}   PIN {c.pin}   TOTP secret {c.totp_secret}")
        print(f"    {c.citizen_id}  {c.wallet_id}")
        print(f"    top-up by {report.partner}: {c.topup}")
        print(f"    {c.enrolment}")
    if not report.citizens:
        return
    first = report.citizens[0]
    print(f"""  Log in (a code from the secret: python -c "import pyotp; print(pyotp.TOTP('{first.totp_secret}').now())"):
    curl -s -X POST {base}/v1/citizen/sessions -H 'content-type: application/json' \\
      -d '{{"national_id": "{first.national_id}", "pin": "{first.pin}", "totp_code": "<code>"}}'
    curl -s {base}/v1/citizen/wallet -H 'Authorization: Bearer <access_token>'
  Top up as the bank would (signed, Standard Webhooks):
    gwallet bank topup --wallet-id {first.wallet_id} --amount 12350
""")
