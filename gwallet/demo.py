"""Demo data: a treasury, a half-half program budget, citizens and merchants, and a few
transfers through the ledger engine; then how to try the service.

Every id is derived from a name, so running the demo again changes nothing (accounts answer
``exists``, transfers ``exists``). The account and transfer codes below are the demo's own;
the feature packages (subsidy_rules, wallet, merchant_api) will own the real ones.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import asyncpg

from gwallet.demo_back_office import BackOfficeReport, print_back_office, seed_back_office
from gwallet.demo_citizens import CitizensReport, print_citizens, seed_citizens
from gwallet.keys import load_signing_key
from gwallet.settings import Settings
from ledger_core import (
    Account,
    CreateTransferResult,
    EngineConfig,
    LedgerEngine,
    Transfer,
    TransferFlags,
    create_accounts,
)

THB = 764  # the baht ledger, by its ISO 4217 number
_NAMESPACE = uuid.UUID("0b7d3a52-3c1e-4f0a-9e57-6a1d2c8e4f31")

# Account codes (why an account exists).
TREASURY, BANK_CLEARING, PROGRAM_BUDGET, CITIZEN_WALLET, MERCHANT = 1001, 1002, 2001, 3001, 4001
# Transfer codes (why money moved).
FUNDING, TOP_UP, CITIZEN_SHARE, SUBSIDY_SHARE = 1, 2, 3, 4

CITIZENS = ("citizen Somchai", "citizen Malee", "citizen Anan")
MERCHANTS = ("merchant Som Tam Pa Noi (Khon Kaen)", "merchant Kafae Boran (Chiang Mai)")
PROGRAM = "program budget: Khon La Khrueng Plus (demo)"


def demo_id(name: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, name)


def _account(name: str, code: int, *, limited: bool) -> Account:
    return Account(id=demo_id(name), ledger=THB, code=code, debits_must_not_exceed_credits=limited)


ACCOUNTS = {
    "treasury": _account("treasury", TREASURY, limited=False),
    "bank clearing": _account("bank clearing", BANK_CLEARING, limited=False),
    PROGRAM: _account(PROGRAM, PROGRAM_BUDGET, limited=True),
    **{name: _account(name, CITIZEN_WALLET, limited=True) for name in CITIZENS},
    **{name: _account(name, MERCHANT, limited=True) for name in MERCHANTS},
}


def _transfer(
    name: str, debit: str, credit: str, amount: int, code: int, *, linked: bool = False
) -> Transfer:
    return Transfer(
        id=demo_id("transfer " + name),
        debit_account_id=ACCOUNTS[debit].id,
        credit_account_id=ACCOUNTS[credit].id,
        amount=amount,
        ledger=THB,
        code=code,
        flags=int(TransferFlags.LINKED) if linked else 0,
    )


def _half_half(name: str, citizen: str, merchant: str, price: int) -> list[Transfer]:
    """A co-payment: the citizen's half and the program's half, linked (both or neither)."""
    half = price // 2
    return [
        _transfer(
            f"{name} citizen share", citizen, merchant, price - half, CITIZEN_SHARE, linked=True
        ),
        _transfer(f"{name} subsidy share", PROGRAM, merchant, half, SUBSIDY_SHARE),
    ]


# Each entry is one submission to the engine: (what it is, its transfers).
SUBMISSIONS: list[tuple[str, list[Transfer]]] = [
    (
        "treasury funds the program with 10,000,000 THB",
        [_transfer("funding", "treasury", PROGRAM, 1_000_000_000, FUNDING)],
    ),
    *[
        (
            f"bank tops up {c} with 500 THB",
            [_transfer(f"top-up {c}", "bank clearing", c, 50_000, TOP_UP)],
        )
        for c in CITIZENS
    ],
    (
        "Somchai pays 120 THB at Som Tam Pa Noi, half-half",
        _half_half("payment 1", CITIZENS[0], MERCHANTS[0], 12_000),
    ),
    (
        "Malee pays 80 THB at Kafae Boran, half-half",
        _half_half("payment 2", CITIZENS[1], MERCHANTS[1], 8_000),
    ),
    (
        "Anan tries to pay 1,200 THB with 500 THB in the wallet (refused)",
        _half_half("payment 3", CITIZENS[2], MERCHANTS[0], 240_000),
    ),
]


@dataclass
class DemoReport:
    results: list[tuple[str, list[str]]] = field(default_factory=list)
    balances: dict[str, int] = field(default_factory=dict)
    back_office: BackOfficeReport | None = None  # issue 3
    citizens: CitizensReport | None = None  # issue 4
    # Merchants (issue 5): (name, merchant id, API key shown for the demo only).
    merchants: list[tuple[str, str, str]] = field(default_factory=list)


async def seed(settings: Settings) -> DemoReport:
    """Create the demo accounts and submit the demo transfers (idempotent)."""
    assert settings.database_url is not None, "start the backing services first"
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    assert pool is not None
    report = DemoReport()
    try:
        await create_accounts(pool, list(ACCOUNTS.values()))
        engine = LedgerEngine(pool, EngineConfig(batch_window_ms=1.0), load_signing_key(settings))
        await engine.start()
        try:
            for what, transfers in SUBMISSIONS:
                results = await engine.create_transfers(transfers)
                report.results.append((what, [_describe(r) for r in results]))
            balances = await engine.lookup_accounts([a.id for a in ACCOUNTS.values()])
            report.back_office = await seed_back_office(pool, engine)  # issue 3
            report.citizens = await seed_citizens(  # issue 4: after the program exists
                settings, pool, engine, report.back_office.program_id or None
            )
        finally:
            await engine.stop()
        report.merchants = await seed_merchants(settings, pool)  # issue 5
    finally:
        await pool.close()
    report.balances = {name: balances[a.id].balance_posted for name, a in ACCOUNTS.items()}
    return report


# --- Merchants (issue 5): applied and approved through merchant_api, as an official would ---

DEMO_MERCHANTS = (
    # name, owner's national ID without its check digit, category, province, district, bank
    ("Som Tam Pa Noi", "110000000001", "street_food", "40", "4001", "004", "4001234567"),
    ("Kafae Boran", "110000000002", "coffee_shop", "50", "5001", "014", "5009876543"),
)


async def seed_merchants(settings: Settings, pool: asyncpg.Pool) -> list[tuple[str, str, str]]:
    """Apply and approve the demo merchants (ids derived from their names); print-ready
    (name, merchant id, API key). A merchant approved by an earlier run gets a fresh key (its
    previous one keeps its grace period): keys are stored hashed and cannot be shown again."""
    from datetime import UTC, datetime

    from stdnum.th import pin as thai_pin

    from gwallet.ids import format_id
    from merchant_api import keys, merchants
    from subsidy_rules.spec import BusinessType
    from wallet.context import build_context

    wallet_keys = build_context(settings).keys  # the service's personal-data keys
    personal = merchants.PersonalDataKeys(pii=wallet_keys.pii, lookup=wallet_keys.lookup)
    out = []
    for name, owner, category, province, district, bank, account in DEMO_MERCHANTS:
        merchant_id = demo_id("merchant_api " + name)
        now = datetime.now(UTC)
        row = await pool.fetchrow(merchants.Q["merchant"], merchant_id)
        if row is None:
            new = merchants.validate_application(
                name=name,
                owner_national_id=owner + thai_pin.calc_check_digit(owner),
                business_type=BusinessType.INDIVIDUAL,
                category=category,
                province_code=province,
                district_code=district,
                bank_code=bank,
                account_number=account,
                account_name=name + " owner",
            )
            async with pool.acquire() as conn, conn.transaction():
                await merchants.apply(conn, personal, new, now, merchant_id=merchant_id)
            status = merchants.MerchantStatus.PENDING
        else:
            status = row["status"]
        if status == merchants.MerchantStatus.PENDING:
            api_key = (await merchants.approve(pool, merchant_id, None, now)).api_key
        else:
            api_key = await keys.reissue(
                pool, merchant_id, settings.merchant_rotation_grace_seconds, now
            )
        out.append((name, format_id("mer", merchant_id), api_key))
    return out


def _describe(result: CreateTransferResult) -> str:
    return result.name.lower()


def print_instructions(settings: Settings, report: DemoReport, *, serving: bool) -> None:
    base = f"http://{settings.host}:{settings.port}"
    print("\nG-Wallet demo data is in the ledger.\n")
    print("Transfers (one line per submission; results per transfer):")
    for what, results in report.results:
        print(f"  {what}: {', '.join(results)}")
    print("\nBalances (credits - debits, posted; THB):")
    for name, satang in report.balances.items():
        print(f"  {name:<45} {satang / 100:>16,.2f}")
    if report.back_office is not None:  # issue 3
        print()
        print_back_office(report.back_office, base)
    if report.citizens is not None:  # issue 4
        print()
        print_citizens(report.citizens, base)
    print(f"""
Try the service{" (starting now)" if serving else " (start it with: gwallet serve)"} at {base}:
  curl -s {base}/healthz
  curl -s {base}/readyz
  curl -s {base}/metrics | grep gwallet_
  curl -s -i {base}/v1/nothing-here          # every error is application/problem+json
  API docs (served locally, no CDN):    {base}/schema
  OpenAPI 3.1:                          {base}/schema/openapi.json
  Check the ledger's invariants and hash chain:  gwallet ledger verify
""")
    if report.merchants:
        print("Demo merchants (approved; API keys shown for the demo only, stored hashed):")
        for name, merchant_id, api_key in report.merchants:
            print(f"  {name:<20} {merchant_id}  {api_key}")
        _, _, api_key = report.merchants[0]
        print(f"""  Create a payment request (a dynamic Thai QR):
    curl -s -X POST {base}/v1/merchant/payment-requests \\
      -H 'Authorization: Bearer {api_key}' -H "Idempotency-Key: $(date +%s%N)" \\
      -H 'content-type: application/json' -d '{{"amount": 12350, "reference": "INV-1"}}'
  Pay it as a demo citizen (the state pays its share; qr_payload from the answer above):
    curl -s -X POST {base}/v1/citizen/payments/quote -H 'Authorization: Bearer <access_token>' \
      -H 'content-type: application/json' -d '{{"qr_payload": "<qr_payload>"}}'
    curl -s -X POST {base}/v1/citizen/payments -H 'Authorization: Bearer <access_token>' \
      -H "Idempotency-Key: $(date +%s%N)" -H 'content-type: application/json' \
      -d '{{"qr_payload": "<qr_payload>", "pin": "<PIN>"}}'
  Refund part of it (as the merchant):
    curl -s -X POST {base}/v1/merchant/payments/<payment_id>/refunds \
      -H 'Authorization: Bearer {api_key}' -H "Idempotency-Key: $(date +%s%N)" \
      -H 'content-type: application/json' -d '{{"amount": 5000}}'
""")
