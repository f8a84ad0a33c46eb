"""The invariants checked after every load run, by SQL against the database.

    python -m loadtests.invariants --database-url URL [--data-dir DIR] [--expect-full prg_...]

Exit 1 if one fails. ``loadtests.run`` calls ``check_invariants`` after stopping the service.

- ``ledger_verifies``: ``ledger_core.verify_ledger`` (balanced, account totals, limit flags,
  the hash chain and its signed checkpoints when the key is given).
- ``subsidy_caps``: no ``subsidy_usage`` row above the program's daily / monthly / total caps,
  and the same from ``payments`` (net of refunds, per Bangkok day, month and in total; each
  payment within the per-transaction cap and its own amount); the usage row's total equals
  the payments' (the caps are counted from the money actually paid). Caps are the largest
  that any approved version of the program had (a lowered cap does not make old use wrong).
- ``program_budgets``: each program's budget account never below zero, the subsidy the
  payments say was paid equals what the ledger moved out of the budget (codes 401 - 403), and
  it is within what was funded (credits other than refunds) and the spec's ``budget_satang``.
- ``enrolment_quotas``: per program, the counter equals the active enrolments, which are
  within the quota of the version in force; for programs known to have refused someone for a
  full quota (``expect_full``), exactly the quota ("quota exact").
- ``idempotency_effects``: no idempotency key with a duplicated effect and no effect without
  its key: one payment per payment request (and the request says it is paid by exactly that
  payment), each payment's transfers are exactly one citizen-share and one subsidy transfer
  of its split, no payment transfer without a payment, every payment is the stored 201 answer
  of exactly one (principal, key), and every payment request likewise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gwallet.ids import format_id, parse_id
from ledger_core import verify_ledger

SHOWN = 5  # violations quoted per check

# The caps each program ever allowed (largest over its approved versions; NULL: no cap).
CAPS_CTE = """
caps AS (
    SELECT pv.program_id,
           CASE WHEN bool_and(pv.spec->'rule'->'caps' ? 'per_transaction')
                THEN max((pv.spec->'rule'->'caps'->>'per_transaction')::bigint)
           END AS per_transaction,
           CASE WHEN bool_and(pv.spec->'rule'->'caps' ? 'daily')
                THEN max((pv.spec->'rule'->'caps'->>'daily')::bigint) END AS daily,
           CASE WHEN bool_and(pv.spec->'rule'->'caps' ? 'monthly')
                THEN max((pv.spec->'rule'->'caps'->>'monthly')::bigint) END AS monthly,
           CASE WHEN bool_and(pv.spec->'rule'->'caps' ? 'total')
                THEN max((pv.spec->'rule'->'caps'->>'total')::bigint) END AS total,
           max((pv.spec->>'budget_satang')::bigint) AS budget_satang
    FROM program_versions pv
    WHERE pv.approved_at IS NOT NULL AND pv.spec->'rule'->>'kind' = 'co_payment'
    GROUP BY pv.program_id
)
"""

USAGE_OVER_CAPS = "WITH " + CAPS_CTE + """
SELECT u.citizen_id, u.program_id, u.used_day, u.used_month, u.used_total,
       c.daily, c.monthly, c.total
FROM subsidy_usage u JOIN caps c ON c.program_id = u.program_id
WHERE u.used_day > c.daily OR u.used_month > c.monthly OR u.used_total > c.total
LIMIT $1
"""

PAYMENTS_OVER_CAPS = "WITH " + CAPS_CTE + """,
net AS (
    SELECT citizen_id, program_id, business_date,
           sum(subsidy_amount - refunded_subsidy_amount) AS subsidy
    FROM payments WHERE program_id IS NOT NULL
    GROUP BY citizen_id, program_id, business_date
), by_month AS (
    SELECT citizen_id, program_id, date_trunc('month', business_date) AS month,
           sum(subsidy) AS subsidy
    FROM net GROUP BY citizen_id, program_id, date_trunc('month', business_date)
), by_total AS (
    SELECT citizen_id, program_id, sum(subsidy) AS subsidy
    FROM net GROUP BY citizen_id, program_id
)
SELECT 'daily' AS cap, n.citizen_id, n.program_id, n.subsidy, c.daily AS limit_satang
FROM net n JOIN caps c USING (program_id) WHERE n.subsidy > c.daily
UNION ALL
SELECT 'monthly', m.citizen_id, m.program_id, m.subsidy, c.monthly
FROM by_month m JOIN caps c USING (program_id) WHERE m.subsidy > c.monthly
UNION ALL
SELECT 'total', t.citizen_id, t.program_id, t.subsidy, c.total
FROM by_total t JOIN caps c USING (program_id) WHERE t.subsidy > c.total
UNION ALL
SELECT 'per_transaction', p.citizen_id, p.program_id, p.subsidy_amount, c.per_transaction
FROM payments p JOIN caps c USING (program_id) WHERE p.subsidy_amount > c.per_transaction
UNION ALL
SELECT 'amount', p.citizen_id, p.program_id, p.subsidy_amount, p.amount
FROM payments p WHERE p.subsidy_amount > p.amount
LIMIT $1
"""

USAGE_VS_PAYMENTS = """
WITH paid AS (
    SELECT citizen_id, program_id, sum(subsidy_amount - refunded_subsidy_amount) AS subsidy
    FROM payments WHERE program_id IS NOT NULL AND subsidy_amount > 0
    GROUP BY citizen_id, program_id
)
SELECT coalesce(u.citizen_id, p.citizen_id) AS citizen_id,
       coalesce(u.program_id, p.program_id) AS program_id,
       coalesce(u.used_total, 0) AS used_total, coalesce(p.subsidy, 0) AS paid
FROM subsidy_usage u FULL JOIN paid p
     ON p.citizen_id = u.citizen_id AND p.program_id = u.program_id
WHERE coalesce(u.used_total, 0) <> coalesce(p.subsidy, 0)
LIMIT $1
"""

BUDGETS = "WITH " + CAPS_CTE + """
SELECT g.id AS program_id, g.budget_account_id, c.budget_satang,
       a.id IS NOT NULL AS has_account,
       coalesce(a.credits_posted, 0) AS credits_posted,
       coalesce(a.debits_posted, 0) AS debits_posted,
       coalesce(a.debits_pending, 0) AS debits_pending,
       coalesce((SELECT sum(t.amount) FROM ledger_transfers t
                 WHERE t.credit_account_id = g.budget_account_id AND t.code = 403), 0)
           AS refunded_to_budget,
       coalesce((SELECT sum(t.amount) FROM ledger_transfers t
                 WHERE t.debit_account_id = g.budget_account_id AND t.code = 401), 0)
           AS subsidy_out,
       coalesce((SELECT sum(p.subsidy_amount - p.refunded_subsidy_amount) FROM payments p
                 WHERE p.program_id = g.id), 0) AS subsidy_net_payments,
       coalesce((SELECT sum(p.subsidy_amount) FROM payments p WHERE p.program_id = g.id), 0)
           AS subsidy_gross_payments
FROM programs g
LEFT JOIN ledger_accounts a ON a.id = g.budget_account_id
LEFT JOIN caps c ON c.program_id = g.id
WHERE g.budget_account_id IS NOT NULL
"""

QUOTAS = """
WITH in_force AS (
    SELECT DISTINCT ON (pv.program_id) pv.program_id, (pv.spec->>'quota')::bigint AS quota
    FROM program_versions pv
    WHERE pv.approved_at IS NOT NULL AND pv.effective_at <= now()
    ORDER BY pv.program_id, pv.effective_at DESC, pv.version DESC
), active AS (
    SELECT program_id, count(*) AS active FROM enrolments WHERE status = 'active'
    GROUP BY program_id
)
SELECT g.id AS program_id, f.quota, n.enrolled AS counted, n.quota AS counter_quota,
       coalesce(a.active, 0) AS active
FROM programs g
LEFT JOIN in_force f ON f.program_id = g.id
LEFT JOIN enrolment_counters n ON n.program_id = g.id
LEFT JOIN active a ON a.program_id = g.id
"""

REQUESTS_PAID_TWICE = """
SELECT payment_request_id, count(*) AS payments FROM payments
GROUP BY payment_request_id HAVING count(*) > 1 LIMIT $1
"""

REQUEST_PAYMENT_MISMATCH = """
SELECT p.id AS payment_id, p.payment_request_id, r.id AS request_id, r.status,
       r.payment_id AS request_payment_id
FROM payments p FULL JOIN payment_requests r ON r.id = p.payment_request_id
WHERE (p.id IS NOT NULL
       AND (r.id IS NULL OR r.status <> 'paid' OR r.payment_id IS DISTINCT FROM p.id))
   OR (p.id IS NULL AND r.status = 'paid')
LIMIT $1
"""

# Each payment: exactly its split in transfers (code 400 citizen share, 401 subsidy).
PAYMENT_TRANSFERS = """
WITH moved AS (
    SELECT user_data_128 AS payment_id,
           count(*) FILTER (WHERE code = 400) AS citizen_transfers,
           coalesce(sum(amount) FILTER (WHERE code = 400), 0) AS citizen_moved,
           count(*) FILTER (WHERE code = 401) AS subsidy_transfers,
           coalesce(sum(amount) FILTER (WHERE code = 401), 0) AS subsidy_moved
    FROM ledger_transfers WHERE code IN (400, 401)
    GROUP BY user_data_128
)
SELECT coalesce(p.id, m.payment_id) AS payment_id, p.citizen_amount, p.subsidy_amount,
       coalesce(m.citizen_transfers, 0) AS citizen_transfers,
       coalesce(m.citizen_moved, 0) AS citizen_moved,
       coalesce(m.subsidy_transfers, 0) AS subsidy_transfers,
       coalesce(m.subsidy_moved, 0) AS subsidy_moved
FROM payments p FULL JOIN moved m ON m.payment_id = p.id
WHERE p.id IS NULL
   OR coalesce(m.citizen_moved, 0) <> p.citizen_amount
   OR coalesce(m.subsidy_moved, 0) <> p.subsidy_amount
   OR coalesce(m.citizen_transfers, 0) <> (p.citizen_amount > 0)::int
   OR coalesce(m.subsidy_transfers, 0) <> (p.subsidy_amount > 0)::int
LIMIT $1
"""

# The stored successful answers of payments and of payment-request creations: small fields
# only (a payment request's answer holds its QR as SVG).
STORED_PAYMENTS = """
SELECT scope, key, b->>'payment_id' AS payment_id
FROM idempotency_keys, LATERAL (SELECT convert_from(response_body, 'UTF8')::jsonb AS b) j
WHERE response_status = 201 AND b ? 'payment_id' AND b ? 'subsidy_amount'
"""
STORED_REQUESTS = """
SELECT scope, key, b->>'payment_request_id' AS payment_request_id
FROM idempotency_keys, LATERAL (SELECT convert_from(response_body, 'UTF8')::jsonb AS b) j
WHERE response_status = 201 AND b ? 'qr_payload' AND NOT b ? 'payment_id'
"""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class InvariantReport:
    checks: list[Check]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def as_dict(self) -> dict:
        return {"ok": self.ok, "counts": self.counts, "checks": [asdict(c) for c in self.checks]}

    def lines(self) -> list[str]:
        out = []
        for c in self.checks:
            out.append(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail} ({c.seconds:.1f}s)")
            out.extend(f"         {v}" for v in c.violations[:SHOWN])
        return out


async def check_invariants(
    database_url: str,
    public_key: Ed25519PublicKey | None = None,
    *,
    expect_full: Iterable[uuid.UUID | str] = (),
) -> InvariantReport:
    """Run every check on one database; never raises for a violation (it is reported)."""
    full = {parse_id("prg", p) if isinstance(p, str) else p for p in expect_full}
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET statement_timeout = '600s'")
        checks = [
            await _timed(_ledger(conn, public_key)),
            await _timed(_caps(conn)),
            await _timed(_budgets(conn)),
            await _timed(_quotas(conn, full)),
            await _timed(_idempotency(conn)),
        ]
        counts = dict(await conn.fetchrow(
            "SELECT (SELECT count(*) FROM payments) AS payments, "
            "(SELECT count(*) FROM payment_requests) AS payment_requests, "
            "(SELECT count(*) FROM citizens) AS citizens, "
            "(SELECT count(*) FROM enrolments WHERE status = 'active') AS enrolments, "
            "(SELECT count(*) FROM ledger_transfers) AS transfers, "
            "(SELECT count(*) FROM idempotency_keys) AS idempotency_keys"
        ))
    finally:
        await conn.close()
    return InvariantReport(checks, counts)


async def _timed(coroutine) -> Check:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    check = await coroutine
    check.seconds = time.perf_counter() - started
    return check


async def _ledger(conn: asyncpg.Connection, public_key: Ed25519PublicKey | None) -> Check:
    report = await verify_ledger(conn, public_key)
    detail = (f"{report.accounts} accounts, {report.transfers} transfers, {report.links} "
              f"chain links, {report.checkpoints} checkpoints"
              + ("" if public_key else " (checkpoint signatures not checked: no key)"))
    return Check("ledger_verifies", report.ok, detail,
                 [f"{f.check}: {f.detail}" for f in report.failures])


async def _caps(conn: asyncpg.Connection) -> Check:
    violations = [
        f"usage row {r['citizen_id']}/{r['program_id']}: day {r['used_day']} month "
        f"{r['used_month']} total {r['used_total']} > caps {r['daily']}/{r['monthly']}/{r['total']}"
        for r in await conn.fetch(USAGE_OVER_CAPS, 100)
    ]
    violations += [
        f"payments of {r['citizen_id']} in {r['program_id']}: {r['cap']} subsidy "
        f"{r['subsidy']} > {r['limit_satang']}"
        for r in await conn.fetch(PAYMENTS_OVER_CAPS, 100)
    ]
    violations += [
        f"usage row {r['citizen_id']}/{r['program_id']}: used_total {r['used_total']} but "
        f"payments' net subsidy {r['paid']}"
        for r in await conn.fetch(USAGE_VS_PAYMENTS, 100)
    ]
    rows = await conn.fetchval("SELECT count(*) FROM subsidy_usage")
    return Check("subsidy_caps", not violations,
                 f"{rows} usage rows and the payments within daily/monthly/total caps",
                 violations)


async def _budgets(conn: asyncpg.Connection) -> Check:
    violations, programs = [], 0
    for r in await conn.fetch(BUDGETS):
        programs += 1
        name = format_id("prg", r["program_id"])
        if not r["has_account"]:
            if r["subsidy_gross_payments"]:
                violations.append(f"{name}: subsidy paid but no budget account")
            continue
        headroom = r["credits_posted"] - r["debits_posted"] - r["debits_pending"]
        funded = r["credits_posted"] - r["refunded_to_budget"]
        net_ledger = r["subsidy_out"] - r["refunded_to_budget"]
        if headroom < 0:
            violations.append(f"{name}: budget below zero ({headroom})")
        if r["subsidy_gross_payments"] != r["subsidy_out"]:
            violations.append(f"{name}: payments say {r['subsidy_gross_payments']} subsidy, the "
                              f"ledger moved {r['subsidy_out']} out of the budget")
        if r["subsidy_net_payments"] != net_ledger:
            violations.append(f"{name}: net subsidy {r['subsidy_net_payments']} in payments, "
                              f"{net_ledger} in the ledger")
        if r["subsidy_net_payments"] > funded:
            violations.append(f"{name}: subsidy {r['subsidy_net_payments']} > funded {funded}")
        if r["budget_satang"] is not None and funded > r["budget_satang"]:
            violations.append(f"{name}: funded {funded} > spec budget {r['budget_satang']}")
    return Check("program_budgets", not violations,
                 f"{programs} programs: budget >= 0, subsidy <= funded, payments == ledger",
                 violations)


async def _quotas(conn: asyncpg.Connection, full: set[uuid.UUID | None]) -> Check:
    violations, seen = [], []
    for r in await conn.fetch(QUOTAS):
        name = format_id("prg", r["program_id"])
        counted = r["counted"] or 0
        seen.append(f"{name} {r['active']}/{r['quota']}")
        if counted != r["active"]:
            violations.append(f"{name}: counter says {counted}, active enrolments {r['active']}")
        if r["quota"] is not None and r["active"] > r["quota"]:
            violations.append(f"{name}: {r['active']} enrolled > quota {r['quota']}")
        if r["program_id"] in full and r["active"] != r["quota"]:
            violations.append(f"{name}: refused as full but {r['active']} enrolled of quota "
                              f"{r['quota']} (not exact)")
    return Check("enrolment_quotas", not violations,
                 "enrolled == active <= quota: " + (", ".join(seen) or "no programs"), violations)


async def _idempotency(conn: asyncpg.Connection) -> Check:
    violations = [f"payment request {r['payment_request_id']} paid {r['payments']} times"
                  for r in await conn.fetch(REQUESTS_PAID_TWICE, 100)]
    violations += [
        f"payment {r['payment_id']} / request {r['payment_request_id'] or r['request_id']}: "
        f"request status {r['status']}, its payment_id {r['request_payment_id']}"
        for r in await conn.fetch(REQUEST_PAYMENT_MISMATCH, 100)
    ]
    violations += [
        f"payment {r['payment_id']}: split {r['citizen_amount']}+{r['subsidy_amount']} but "
        f"transfers {r['citizen_transfers']}x{r['citizen_moved']} + "
        f"{r['subsidy_transfers']}x{r['subsidy_moved']}"
        for r in await conn.fetch(PAYMENT_TRANSFERS, 100)
    ]
    payments = {format_id("pay", r["id"]) for r in await conn.fetch("SELECT id FROM payments")}
    stored = Counter(r["payment_id"] for r in await conn.fetch(STORED_PAYMENTS))
    violations += [f"payment {p} is the answer of {n} idempotency keys"
                   for p, n in stored.items() if n > 1]
    violations += [f"stored answer names payment {p}, which does not exist"
                   for p in stored.keys() - payments]
    violations += [f"payment {p} has no idempotency key" for p in payments - stored.keys()]
    requests = {format_id("preq", r["id"])
                for r in await conn.fetch("SELECT id FROM payment_requests")}
    stored_requests = Counter(r["payment_request_id"] for r in await conn.fetch(STORED_REQUESTS))
    violations += [f"payment request {p} is the answer of {n} idempotency keys"
                   for p, n in stored_requests.items() if n > 1]
    violations += [f"stored answer names payment request {p}, which does not exist"
                   for p in stored_requests.keys() - requests]
    violations += [f"payment request {p} has no idempotency key"
                   for p in requests - stored_requests.keys()]
    return Check(
        "idempotency_effects", not violations,
        f"{len(payments)} payments and {len(requests)} payment requests, each the effect of "
        "exactly one key, one payment per request, transfers == split",
        violations,
    )


def public_key_of(data_dir: str | None, signing_key_hex: str | None) -> Ed25519PublicKey | None:
    """The ledger's checkpoint key as the service loads it (None if neither is given)."""
    if signing_key_hex is None and data_dir is None:
        return None
    from gwallet.keys import KEY_FILE_NAME

    if signing_key_hex is None:
        path = Path(data_dir or ".") / KEY_FILE_NAME
        if not path.exists():
            return None
        signing_key_hex = path.read_text(encoding="ascii").strip()
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(signing_key_hex)).public_key()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.invariants",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--data-dir", help="the service's GWALLET_DATA_DIR (its signing key)")
    parser.add_argument("--signing-key-hex", help="GWALLET_LEDGER_SIGNING_KEY_HEX, if set")
    parser.add_argument("--expect-full", action="append", default=[], metavar="PRG_ID",
                        help="a program that refused someone as full: enrolled must == quota")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    key = public_key_of(args.data_dir, args.signing_key_hex)
    report = asyncio.run(check_invariants(args.database_url, key, expect_full=args.expect_full))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(f"invariants: {'ok' if report.ok else 'FAILED: ' + ', '.join(report.failed())}")
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
