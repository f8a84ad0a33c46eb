"""Computations: submissions whose transfers are decided under the batch's locks.

The payment path uses them to cap a subsidy exactly: the citizen's usage is read after the
citizen's wallet is locked, and a subsidy cut to what is left of a shared budget is decided
again if the budget moved meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from ledger_core import (
    CreateTransferResult,
    RowConflict,
    Transfer,
    TransferFlags,
    new_id,
    verify_ledger,
)
from ledger_core.checks import BatchView, Computed, RowStore
from tests.ledger_helpers import SIGNING_KEY, THB, account, make_accounts, running_engine, transfer

R = CreateTransferResult


class UsageStore:
    """Test rows: how much subsidy each citizen has used (guarded by the citizen's wallet)."""

    async def read(self, conn: Any, keys: list[Hashable]) -> dict[Hashable, Any]:
        rows = await conn.fetch("SELECT citizen, used FROM test_usage WHERE citizen = ANY($1)",
                                keys)
        return {row["citizen"]: row["used"] for row in rows}

    async def write(self, conn: Any, rows: dict[Hashable, Any]) -> None:
        await conn.executemany(
            "INSERT INTO test_usage (citizen, used) VALUES ($1, $2) "
            "ON CONFLICT (citizen) DO UPDATE SET used = EXCLUDED.used",
            list(rows.items()),
        )


@dataclass
class Payment:
    """Pay ``amount``; the state pays half, up to what is left of the cap and the budget."""

    store: RowStore
    wallet: uuid.UUID
    budget: uuid.UUID
    shop: uuid.UUID
    amount: int
    cap: int
    max_transfers: int = 2
    subsidy: int | None = None

    def __post_init__(self) -> None:
        self.ids = (new_id(), new_id())

    def accounts(self) -> Iterable[uuid.UUID]:
        return (self.wallet, self.budget, self.shop)

    def transfer_ids(self) -> Iterable[uuid.UUID]:
        return self.ids

    def row_keys(self) -> Iterable[tuple[RowStore, Hashable]]:
        return ((self.store, self.wallet),)

    def compute(self, view: BatchView) -> Computed:
        used = view.row(self.store, self.wallet) or 0
        budget = view.account(self.budget)
        assert budget is not None and budget.headroom is not None
        share = self.amount // 2
        subsidy = min(share, self.cap - used)
        exact = frozenset()
        if budget.headroom < subsidy:
            subsidy, exact = budget.headroom, frozenset({self.budget})
        self.subsidy = subsidy
        own = self.amount - subsidy
        transfers = [Transfer(id=self.ids[0], debit_account_id=self.wallet,
                              credit_account_id=self.shop, amount=own, ledger=THB, code=2,
                              flags=TransferFlags.LINKED if subsidy else 0)]
        if subsidy:
            transfers.append(Transfer(id=self.ids[1], debit_account_id=self.budget,
                                      credit_account_id=self.shop, amount=subsidy, ledger=THB,
                                      code=3))
        return Computed(transfers, {(self.store, self.wallet): used + subsidy}, exact)


@pytest.fixture
async def usage_store(pool: asyncpg.Pool) -> UsageStore:
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS test_usage (citizen uuid PRIMARY KEY, used bigint NOT NULL "
        "CHECK (used >= 0))")
    return UsageStore()


async def test_two_hundred_concurrent_payments_by_one_citizen_get_exactly_the_cap(
    pool: asyncpg.Pool, usage_store: UsageStore,
) -> None:
    wallet, budget, bank = account(limited=True), account(limited=True, shared=True), account()
    shops = [account(shared=True) for _ in range(20)]
    await make_accounts(pool, wallet, budget, bank, *shops)
    async with running_engine(pool, batch_concurrency=3) as engine:
        await engine.create_transfers([transfer(bank, wallet, 10_000_000),
                                       transfer(bank, budget, 10_000_000)])
        payments = [Payment(usage_store, wallet.id, budget.id, shops[i % 20].id, 1_000 + i, 15_000)
                    for i in range(200)]
        outcomes = await asyncio.gather(*(engine.submit(p) for p in payments))
    assert all(set(results) == {R.OK} for _, results in outcomes)
    assert sum(p.subsidy for p in payments) == 15_000
    used = await pool.fetchval("SELECT used FROM test_usage WHERE citizen = $1", wallet.id)
    assert used == 15_000
    budget_row = await pool.fetchrow("SELECT debits_posted FROM ledger_accounts WHERE id = $1",
                                     budget.id)
    assert budget_row["debits_posted"] == 15_000


@pytest.mark.parametrize("round_", [1, 2])  # twice: the re-decision path is timing-dependent
async def test_ten_thousand_payers_spend_exactly_a_budget_that_covers_two_thousand_five_hundred(
    pool: asyncpg.Pool, usage_store: UsageStore, round_: int,
) -> None:
    budget, bank, shop = account(limited=True, shared=True), account(shared=True), \
        account(shared=True)
    wallets = [account(limited=True) for _ in range(10_000)]
    await make_accounts(pool, budget, bank, shop, *wallets)
    async with running_engine(pool, batch_concurrency=3, batch_max_transfers=1000) as engine:
        funding = [transfer(bank, w, 1_000) for w in wallets] + [transfer(bank, budget, 250_000)]
        for start in range(0, len(funding), 1000):
            assert set(await engine.create_transfers(funding[start:start + 1000])) == {R.OK}
        payments = [Payment(usage_store, w.id, budget.id, shop.id, 200, 1_000) for w in wallets]
        outcomes = await asyncio.gather(*(engine.submit(p) for p in payments))
    assert all(set(results) == {R.OK} for _, results in outcomes)  # payments go on, unsubsidised
    assert sum(p.subsidy for p in payments) == 250_000
    assert sum(1 for p in payments if p.subsidy == 100) == 2_500
    remaining = await pool.fetchval(
        "SELECT credits_posted - debits_posted FROM ledger_accounts WHERE id = $1", budget.id)
    assert remaining == 0
    report = await verify_ledger(pool, SIGNING_KEY.public_key())
    assert report.ok, report.failures


async def test_a_computation_whose_transfers_fail_leaves_its_rows_unchanged(
    pool: asyncpg.Pool, usage_store: UsageStore,
) -> None:
    wallet, budget, bank, shop = account(limited=True), account(limited=True, shared=True), \
        account(), account()
    await make_accounts(pool, wallet, budget, bank, shop)
    async with running_engine(pool) as engine:
        await engine.create_transfers([transfer(bank, budget, 10_000)])
        payment = Payment(usage_store, wallet.id, budget.id, shop.id, 1_000, 15_000)
        transfers, results = await engine.submit(payment)  # the wallet is empty
    assert results == [R.EXCEEDS_CREDITS, R.LINKED_EVENT_FAILED]
    assert [t.amount for t in transfers] == [500, 500]
    assert await pool.fetchval("SELECT used FROM test_usage WHERE citizen = $1",
                               wallet.id) is None


class FlakyStore(UsageStore):
    """Says, on its first write only, that another batch changed a row first."""

    def __init__(self) -> None:
        self.writes = 0

    async def write(self, conn: Any, rows: dict[Hashable, Any]) -> None:
        self.writes += 1
        if self.writes == 1:
            raise RowConflict("changed meanwhile")
        await super().write(conn, rows)


async def test_a_row_conflict_runs_the_batch_again_and_commits_it_once(
    pool: asyncpg.Pool, usage_store: UsageStore,
) -> None:
    store = FlakyStore()
    wallet, budget, bank, shop = account(limited=True), account(limited=True, shared=True), \
        account(), account()
    await make_accounts(pool, wallet, budget, bank, shop)
    async with running_engine(pool) as engine:
        await engine.create_transfers([transfer(bank, wallet, 10_000),
                                       transfer(bank, budget, 10_000)])
        payment = Payment(store, wallet.id, budget.id, shop.id, 1_000, 15_000)
        _, results = await engine.submit(payment)
        assert engine.stats.retries >= 1
    assert results == [R.OK, R.OK]
    assert store.writes == 2
    assert await pool.fetchval("SELECT used FROM test_usage WHERE citizen = $1", wallet.id) == 500
    assert await pool.fetchval(
        "SELECT debits_posted FROM ledger_accounts WHERE id = $1", wallet.id) == 500


async def test_a_computation_replayed_after_it_committed_changes_its_rows_once(
    pool: asyncpg.Pool, usage_store: UsageStore,
) -> None:
    """A retry of a committed computation (same transfer ids) finds its transfers existing:
    the ledger moves nothing more, and its rows must not change a second time either (a
    refund retried after its first attempt committed would otherwise count twice)."""
    wallet, budget, bank, shop = (account(limited=True), account(limited=True, shared=True),
                                  account(), account(shared=True))
    await make_accounts(pool, wallet, budget, bank, shop)
    async with running_engine(pool) as engine:
        await engine.create_transfers([transfer(bank, wallet, 100_000),
                                       transfer(bank, budget, 100_000)])
        first = Payment(usage_store, wallet.id, budget.id, shop.id, 10_000, 1_000_000)
        _, results = await engine.submit(first)
        assert set(results) == {R.OK}
        # The same payment again, as a retry computes it: used is now 5,000, and a cap of
        # 10,000 still leaves the same subsidy, so the same transfers: they exist.
        again = Payment(usage_store, wallet.id, budget.id, shop.id, 10_000, 1_000_000)
        again.ids = first.ids
        _, results = await engine.submit(again)
        assert set(results) == {R.EXISTS}
    assert await pool.fetchval("SELECT used FROM test_usage WHERE citizen = $1",
                               wallet.id) == 5_000
    report = await verify_ledger(pool, SIGNING_KEY.public_key())
    assert report.ok, report.failures[:3]
