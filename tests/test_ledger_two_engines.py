"""Two engines (as two service processes) on overlapping accounts under a random mix of
linked transfers, reservations with timeouts, posts, voids, expiries and payment computations
against one small shared budget: every caller answered, every effect written exactly once and
matching its results, usage rows equal to the committed subsidies, the ledger verified."""
from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import asyncpg
import pytest

from ledger_core import CreateTransferResult, Effect, TransferFlags, verify_ledger, new_id
from tests.ledger_helpers import SIGNING_KEY, account, make_accounts, running_engine, transfer
from tests.test_ledger_computations import Payment, UsageStore

R = CreateTransferResult


class Recorder:
    async def write(self, conn: asyncpg.Connection, rows: list[Any]) -> None:
        await conn.executemany("INSERT INTO two_engine_effects (sub, ok) VALUES ($1, $2)", rows)


@pytest.fixture
async def tables(pool: asyncpg.Pool) -> UsageStore:
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS test_usage (citizen uuid PRIMARY KEY, used bigint NOT NULL "
        "CHECK (used >= 0))")
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS two_engine_effects (sub uuid PRIMARY KEY, ok int)")
    return UsageStore()


@pytest.mark.parametrize("seed", [1, 2])
async def test_two_engines_on_overlapping_accounts_lose_and_duplicate_nothing(
    database_url: str, pool: asyncpg.Pool, tables: UsageStore, seed: int,
) -> None:
    rnd = random.Random(seed)
    wallets = [account(limited=True) for _ in range(12)]
    budget = account(limited=True, shared=True)
    bank = account(shared=True)
    shops = [account(shared=True) for _ in range(3)] + [account() for _ in range(3)]
    await make_accounts(pool, *wallets, budget, bank, *shops)
    async with running_engine(pool) as setup:
        assert await setup.create_transfers(
            [transfer(bank, w, 50_000) for w in wallets] + [transfer(bank, budget, 6_000)]
        ) == [R.OK] * 13
    pool2 = await asyncpg.create_pool(database_url, min_size=2, max_size=10)
    recorder = Recorder()
    subs: list[tuple[uuid.UUID, Any]] = []
    payments: list[Payment] = []
    async with running_engine(pool, batch_window_ms=3.0, batch_concurrency=3,
                              expiry_interval_seconds=0.2) as e1, \
            running_engine(pool2, batch_window_ms=3.0, batch_concurrency=3,
                           expiry_interval_seconds=0.2) as e2:
        engines = [e1, e2]
        pendings: list[Any] = []

        def effect(sub_id):
            return Effect(recorder, lambda results: (sub_id, sum(r.succeeded for r in results)))

        async def one(i: int) -> Any:
            engine = engines[i % 2]
            sub_id = new_id()
            kind = rnd.random()
            a, b = rnd.sample(wallets, 2)
            await asyncio.sleep(rnd.random() * 1.5)
            if kind < 0.3:
                p = Payment(tables, a.id, budget.id, rnd.choice(shops).id, rnd.randint(10, 400),
                            20_000)
                payments.append(p)
                res = await engine.submit(p, effects=[effect(sub_id)])
                subs.append((sub_id, res[1]))
                return res
            if kind < 0.5 and pendings:
                pend = pendings.pop(rnd.randrange(len(pendings)))
                post = rnd.random() < 0.5
                t = transfer(None, None, pend.amount if not post else max(1, pend.amount // 2),
                             ledger=0, code=0, pending_id=pend.id,
                             flags=TransferFlags.POST_PENDING_TRANSFER if post
                             else TransferFlags.VOID_PENDING_TRANSFER)
                res = await engine.create_transfers([t], effects=[effect(sub_id)])
                subs.append((sub_id, res))
                return res
            if kind < 0.7:
                t = transfer(a, rnd.choice([b, *shops]), rnd.randint(1, 300),
                             flags=TransferFlags.PENDING, timeout_seconds=rnd.choice([0, 1]))
                res = await engine.create_transfers([t], effects=[effect(sub_id)])
                if res == [R.OK]:
                    pendings.append(t)
                subs.append((sub_id, res))
                return res
            ts = [transfer(a, b, rnd.randint(1, 500), flags=TransferFlags.LINKED),
                  transfer(b, rnd.choice(shops), rnd.randint(1, 500))]
            res = await engine.create_transfers(ts, effects=[effect(sub_id)])
            subs.append((sub_id, res))
            return res

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(3000))), 120)
        await asyncio.sleep(1.5)  # let expiries run
        deferred = e1.stats.deferred + e2.stats.deferred
    await pool2.close()
    assert len(results) == 3000
    assert deferred > 0  # the engines did contend for accounts
    rows = {r["sub"]: r["ok"] for r in await pool.fetch(
        "SELECT sub, ok FROM two_engine_effects WHERE sub = ANY($1)", [s for s, _ in subs])}
    expected = {sub: sum(r.succeeded for r in res) for sub, res in subs}
    assert rows == expected
    # usage rows equal the committed subsidies
    subsidy = {}
    for row in await pool.fetch(
            "SELECT t.id, t.amount FROM ledger_transfers t "
            "WHERE t.debit_account_id = $1 AND code = 3",
            budget.id):
        subsidy[row["id"]] = row["amount"]
    per_wallet: dict = {}
    for p in payments:
        if p.ids[1] in subsidy:
            per_wallet[p.wallet] = per_wallet.get(p.wallet, 0) + subsidy[p.ids[1]]
    used = {r["citizen"]: r["used"] for r in await pool.fetch(
        "SELECT citizen, used FROM test_usage WHERE citizen = ANY($1)", [w.id for w in wallets])}
    assert {k: v for k, v in used.items() if v} == per_wallet
    report = await verify_ledger(pool, SIGNING_KEY.public_key())
    assert report.ok, report.failures
