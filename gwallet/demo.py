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
        finally:
            await engine.stop()
    finally:
        await pool.close()
    report.balances = {name: balances[a.id].balance_posted for name, a in ACCOUNTS.items()}
    return report


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
