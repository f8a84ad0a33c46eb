"""The batching engine against real PostgreSQL: concurrency, processes, replays, tampering."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest

from gwallet.migrate import migrate
from ledger_core import (
    CreateAccountResult,
    CreateTransferResult,
    Effect,
    EngineConfig,
    LedgerEngine,
    LedgerOverloaded,
    LedgerUnavailable,
    TransferFlags,
    close_account,
    create_accounts,
    new_id,
    verify_ledger,
)
from ledger_core.model import AMOUNT_MAX
from ledger_core.engine import _Submission as engine_submission_class
from ledger_core.sql import load_queries, query_files
from tests.conftest import _with_database
from tests.ledger_helpers import THB, SIGNING_KEY, account, make_accounts, running_engine, transfer

R = CreateTransferResult
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fresh_database(admin_database_url: str) -> AsyncIterator[str]:
    """A database of its own, for tests that break things on purpose."""
    name = f"gwallet_fresh_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(admin_database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(admin_database_url, name)
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def fresh_pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(fresh_database)
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=10)
    yield pool
    await pool.close()


async def balance(pool: asyncpg.Pool, account_id) -> int:
    row = await pool.fetchrow(
        "SELECT credits_posted - debits_posted AS balance FROM ledger_accounts WHERE id = $1",
        account_id,
    )
    return row["balance"]


# -- migrations and SQL -------------------------------------------------------------------


async def test_migrations_apply_to_an_empty_database_and_a_second_run_changes_nothing(
    fresh_database: str,
) -> None:
    first = await migrate(fresh_database)
    assert first and first == sorted(first)
    conn = await asyncpg.connect(fresh_database)
    schema_query = """
        SELECT table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = 'public'
        ORDER BY table_name, column_name
    """
    before = await conn.fetch(schema_query)
    assert await migrate(fresh_database) == []
    assert await conn.fetch(schema_query) == before
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(first)
    await conn.close()


async def test_migrations_run_by_several_processes_at_once_apply_each_file_once(
    fresh_database: str,
) -> None:
    applied = await asyncio.gather(*(migrate(fresh_database) for _ in range(4)))
    versions = sorted(v for run in applied for v in run)
    assert versions == sorted(set(versions)) and versions


async def test_every_named_query_prepares_against_the_migrated_schema(pool: asyncpg.Pool) -> None:
    files = query_files()
    assert any(f.parent.name == "ledger_core" for f in files)
    async with pool.acquire() as conn:
        for path in files:
            for name, sql in load_queries(path).items():
                try:
                    await conn.prepare(sql)
                except asyncpg.PostgresError as exc:  # pragma: no cover - the failure message
                    pytest.fail(f"{path.name}:{name} does not prepare: {exc}")


# -- results and effects --------------------------------------------------------------------


async def test_a_transfer_succeeds_once_and_its_replay_reports_exists(pool: asyncpg.Pool) -> None:
    source, target = account(), account()
    await make_accounts(pool, source, target)
    async with running_engine(pool) as engine:
        t = transfer(source, target, 500)
        assert await engine.create_transfers([t]) == [R.OK]
        assert await engine.create_transfers([t]) == [R.EXISTS]
        changed = transfer(source, target, 501, id=t.id)
        assert await engine.create_transfers([changed]) == [R.EXISTS_WITH_DIFFERENT_AMOUNT]
    assert await balance(pool, target.id) == 500


async def test_an_id_whose_first_attempt_failed_never_succeeds_later(pool: asyncpg.Pool) -> None:
    wallet, shop, bank = account(limited=True), account(), account()
    await make_accounts(pool, wallet, shop, bank)
    async with running_engine(pool) as engine:
        pay = transfer(wallet, shop, 100)
        assert await engine.create_transfers([pay]) == [R.EXCEEDS_CREDITS]
        assert await engine.create_transfers([transfer(bank, wallet, 1_000)]) == [R.OK]
        assert await engine.create_transfers([pay]) == [R.ID_ALREADY_FAILED]
    assert await balance(pool, shop.id) == 0


async def test_one_failing_submission_never_fails_the_others_in_its_batch(
    pool: asyncpg.Pool,
) -> None:
    wallet, shop, bank = account(limited=True), account(), account()
    await make_accounts(pool, wallet, shop, bank)
    async with running_engine(pool, batch_window_ms=20) as engine:
        await engine.create_transfers([transfer(bank, wallet, 100)])
        results = await asyncio.gather(
            engine.create_transfers([transfer(wallet, shop, 60)]),
            engine.create_transfers([transfer(wallet, shop, 60)]),
            engine.create_transfers([transfer(bank, shop, 7)]),
            engine.create_transfers([transfer(wallet, shop, 40)]),
        )
    assert results == [[R.OK], [R.EXCEEDS_CREDITS], [R.OK], [R.OK]]
    assert await balance(pool, shop.id) == 107
    assert await balance(pool, wallet.id) == 0


async def test_a_linked_chain_commits_as_one_and_reports_which_transfer_broke_it(
    pool: asyncpg.Pool,
) -> None:
    wallet, budget, shop, bank = account(limited=True), account(limited=True), account(), account()
    await make_accounts(pool, wallet, budget, shop, bank)
    async with running_engine(pool) as engine:
        await engine.create_transfers([transfer(bank, wallet, 100), transfer(bank, budget, 50)])
        results = await engine.create_transfers([
            transfer(wallet, shop, 80, flags=TransferFlags.LINKED),
            transfer(budget, shop, 80),
        ])
        assert results == [R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS]
        assert await engine.create_transfers([
            transfer(wallet, shop, 80, flags=TransferFlags.LINKED),
            transfer(budget, shop, 50),
        ]) == [R.OK, R.OK]
    assert await balance(pool, shop.id) == 130
    assert await balance(pool, wallet.id) == 20


async def test_effects_are_written_in_the_batch_transaction_from_the_results(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS test_effects (id uuid PRIMARY KEY, ok bool)")

    class Writer:
        async def write(self, conn: asyncpg.Connection, rows: list) -> None:
            await conn.executemany("INSERT INTO test_effects (id, ok) VALUES ($1, $2)", rows)

    writer = Writer()
    wallet, shop, bank = account(limited=True), account(), account()
    await make_accounts(pool, wallet, shop, bank)
    async with running_engine(pool) as engine:
        await engine.create_transfers([transfer(bank, wallet, 10)])
        good, bad = transfer(wallet, shop, 10), transfer(wallet, shop, 10)
        for t in (good, bad):
            await engine.create_transfers(
                [t], effects=[Effect(writer, lambda results, t=t: (t.id, results[0].succeeded))]
            )
    rows = dict(await pool.fetch("SELECT id, ok FROM test_effects WHERE id = ANY($1)",
                                 [good.id, bad.id]))
    assert rows == {good.id: True, bad.id: False}


# -- two-phase --------------------------------------------------------------------------------


async def test_a_pending_transfer_expires_after_its_timeout_and_releases_the_reserve(
    pool: asyncpg.Pool,
) -> None:
    now = [datetime.now(UTC)]
    wallet, shop, bank = account(limited=True), account(), account()
    await make_accounts(pool, wallet, shop, bank)
    async with running_engine(pool, clock=lambda: now[0], expiry_interval_seconds=3600) as engine:
        await engine.create_transfers([transfer(bank, wallet, 100)])
        hold = transfer(wallet, shop, 70, flags=TransferFlags.PENDING, timeout_seconds=30)
        assert await engine.create_transfers([hold]) == [R.OK]
        assert await engine.create_transfers([transfer(wallet, shop, 40)]) == [R.EXCEEDS_CREDITS]
        now[0] += timedelta(seconds=31)
        assert await engine.expire_due() == 1
        post = transfer(None, None, 70, id=None, pending_id=hold.id, ledger=0, code=0,
                        flags=TransferFlags.POST_PENDING_TRANSFER)
        assert await engine.create_transfers([post]) == [R.PENDING_TRANSFER_EXPIRED]
        assert await engine.create_transfers([transfer(wallet, shop, 100)]) == [R.OK]
    accounts = await engine.lookup_accounts([wallet.id])
    assert accounts[wallet.id].debits_pending == 0


# -- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True], ids=["locked_first", "shared_locked_last"])
async def test_ten_thousand_concurrent_transfers_never_overdraw_a_limited_account(
    pool: asyncpg.Pool, shared: bool,
) -> None:
    wallet, shop, bank = account(limited=True, shared=shared), account(), account()
    await make_accounts(pool, wallet, shop, bank)
    async with running_engine(pool, batch_max_transfers=500) as engine:
        await engine.create_transfers([transfer(bank, wallet, 1_000_000)])
        results = await asyncio.gather(
            *(engine.create_transfers([transfer(wallet, shop, 300)]) for _ in range(10_000))
        )
    counts = Counter(r[0] for r in results)
    assert counts == {R.OK: 3_333, R.EXCEEDS_CREDITS: 6_667}
    assert await balance(pool, wallet.id) == 100
    assert await balance(pool, shop.id) == 999_900


def _run_processes(dsn: str, debit, credit, per_process: int, amount: int,
                   processes: int = 2, same_id=None) -> Counter:
    start_at = time.time() + 3.0  # both engines are up before the first transfer
    script = ROOT / "tests" / "ledger_process.py"
    extra = ["--same-id", str(same_id)] if same_id else []
    children = [
        subprocess.Popen(
            [sys.executable, str(script), dsn, str(debit), str(credit), str(per_process),
             str(amount), str(start_at), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(processes)
    ]
    total: Counter = Counter()
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        total.update(json.loads(out))
    return total


@pytest.mark.parametrize("shared", [False, True], ids=["locked_first", "shared_locked_last"])
async def test_two_service_processes_sharing_the_database_never_overdraw_an_account(
    pool: asyncpg.Pool, database_url: str, shared: bool,
) -> None:
    wallet, shop, bank = account(limited=True, shared=shared), account(), account()
    await make_accounts(pool, wallet, shop, bank)
    async with running_engine(pool) as engine:
        await engine.create_transfers([transfer(bank, wallet, 1_000_000)])
    counts = await asyncio.to_thread(
        _run_processes, database_url, wallet.id, shop.id, 5_000, 300
    )
    assert counts == {"OK": 3_333, "EXCEEDS_CREDITS": 6_667}
    assert await balance(pool, wallet.id) == 100
    report = await verify_ledger(pool, SIGNING_KEY.public_key())
    assert report.ok, report.failures


async def test_a_thousand_concurrent_replays_of_one_transfer_id_have_one_effect(
    pool: asyncpg.Pool, database_url: str,
) -> None:
    source, target = account(), account()
    await make_accounts(pool, source, target)
    t = transfer(source, target, 1234)
    async with running_engine(pool) as engine:
        results = await asyncio.gather(*(engine.create_transfers([t]) for _ in range(1_000)))
    assert Counter(r[0] for r in results) == {R.OK: 1, R.EXISTS: 999}
    # and across two processes, replaying the same id once more each
    counts = await asyncio.to_thread(
        _run_processes, database_url, source.id, target.id, 500, 1234, 2, t.id
    )
    assert counts == {"EXISTS": 1_000}
    assert await balance(pool, target.id) == 1234
    assert await pool.fetchval(
        "SELECT count(*) FROM ledger_transfers WHERE id = $1", t.id) == 1


async def test_a_full_queue_is_refused_at_once_with_overloaded(pool: asyncpg.Pool) -> None:
    source, target = account(), account()
    await make_accounts(pool, source, target)
    async with running_engine(pool, batch_max_transfers=10, queue_max_transfers=20,
                              batch_window_ms=50) as engine:
        outcomes = await asyncio.gather(
            *(engine.create_transfers([transfer(source, target, 1)]) for _ in range(100)),
            return_exceptions=True,
        )
    refused = [o for o in outcomes if isinstance(o, LedgerOverloaded)]
    accepted = [o for o in outcomes if o == [R.OK]]
    assert refused and accepted and len(refused) + len(accepted) == 100


async def test_a_lost_database_answers_unavailable_instead_of_hanging(
    fresh_pool: asyncpg.Pool, fresh_database: str, admin_database_url: str,
) -> None:
    source, target = account(), account()
    await make_accounts(fresh_pool, source, target)
    async with running_engine(fresh_pool) as engine:
        assert await engine.create_transfers([transfer(source, target, 1)]) == [R.OK]
        admin = await asyncpg.connect(admin_database_url)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            fresh_database.rsplit("/", 1)[1],
        )
        await admin.execute(
            f'ALTER DATABASE "{fresh_database.rsplit("/", 1)[1]}" ALLOW_CONNECTIONS false')
        with pytest.raises(LedgerUnavailable):
            await asyncio.wait_for(engine.create_transfers([transfer(source, target, 1)]), 10)
        await admin.execute(
            f'ALTER DATABASE "{fresh_database.rsplit("/", 1)[1]}" ALLOW_CONNECTIONS true')
        await admin.close()
        # The engine recovers by itself once the database is back.
        assert await engine.create_transfers([transfer(source, target, 1)]) == [R.OK]


# -- tamper evidence --------------------------------------------------------------------------


async def test_editing_a_transfer_row_directly_is_detected_by_verify_at_its_link(
    fresh_pool: asyncpg.Pool,
) -> None:
    source, target = account(), account()
    await make_accounts(fresh_pool, source, target)
    async with running_engine(fresh_pool, checkpoint_every_batches=3) as engine:
        for amount in range(1, 8):
            assert await engine.create_transfers([transfer(source, target, amount)]) == [R.OK]
    clean = await verify_ledger(fresh_pool, SIGNING_KEY.public_key())
    assert clean.ok and clean.links == 7 and clean.checkpoints == 2
    victim = await fresh_pool.fetchrow(
        "SELECT t.id, c.seq FROM ledger_transfers t JOIN ledger_chain c USING (batch_id) "
        "WHERE t.amount = 5")
    async with fresh_pool.acquire() as conn:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError):
            await conn.execute("UPDATE ledger_transfers SET amount = 500 WHERE id = $1",
                               victim["id"])
        # An attacker with superuser rights switches the immutability trigger off.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE ledger_transfers SET amount = 500 WHERE id = $1", victim["id"])
        await conn.execute("UPDATE ledger_accounts SET credits_posted = credits_posted + 495 "
                           "WHERE id = $1", target.id)
        await conn.execute("UPDATE ledger_accounts SET debits_posted = debits_posted + 495 "
                           "WHERE id = $1", source.id)
        await conn.execute("RESET session_replication_role")
    report = await verify_ledger(fresh_pool, SIGNING_KEY.public_key())
    assert not report.ok
    assert report.first_broken_link == victim["seq"]
    assert [f.check for f in report.failures] == ["chain"]


async def test_rewriting_the_chain_after_an_edit_is_caught_by_the_signed_checkpoints(
    fresh_pool: asyncpg.Pool,
) -> None:
    source, target = account(), account()
    await make_accounts(fresh_pool, source, target)
    async with running_engine(fresh_pool, checkpoint_every_batches=2) as engine:
        for amount in range(1, 5):
            await engine.create_transfers([transfer(source, target, amount)])
    async with fresh_pool.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")
        # Forge link 2 consistently and re-sign nothing: the checkpoint no longer matches.
        await conn.execute("UPDATE ledger_chain SET link = sha256(link) WHERE seq = 2")
        await conn.execute("UPDATE ledger_chain SET prev_link = (SELECT link FROM ledger_chain "
                           "WHERE seq = 2) WHERE seq = 3")
        await conn.execute("RESET session_replication_role")
    report = await verify_ledger(fresh_pool, SIGNING_KEY.public_key())
    assert not report.ok
    assert report.first_broken_link == 2
    assert {f.check for f in report.failures} >= {"chain", "checkpoint"}


async def test_a_shared_budget_spent_from_many_accounts_at_once_stops_at_exactly_zero(
    pool: asyncpg.Pool, database_url: str,
) -> None:
    """Payment-shaped: each submission debits its own wallet and the one shared budget."""
    budget = account(limited=True, shared=True)
    bank, shop = account(shared=True), account()
    wallets = [account(limited=True) for _ in range(2_000)]
    await make_accounts(pool, budget, bank, shop, *wallets)
    async with running_engine(pool, batch_max_transfers=400, batch_concurrency=3) as engine:
        funding = [transfer(bank, w, 1_000) for w in wallets] + [transfer(bank, budget, 150_007)]
        for start in range(0, len(funding), 400):
            assert set(await engine.create_transfers(funding[start:start + 400])) == {R.OK}
        results = await asyncio.gather(*(
            engine.create_transfers([
                transfer(w, shop, 100, flags=TransferFlags.LINKED),
                transfer(budget, shop, 100 + i % 7),
            ])
            for i, w in enumerate(wallets)
        ))
    paid = sum(1 for r in results if r == [R.OK, R.OK])
    refused = sum(1 for r in results if r == [R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS])
    assert paid + refused == len(wallets)
    remaining = await balance(pool, budget.id)
    refused_subsidies = [100 + i % 7 for i, r in enumerate(results) if r != [R.OK, R.OK]]
    assert refused_subsidies  # the budget ran out
    # The budget only shrinks, so every refusal saw more than what is left: none would fit.
    assert 0 <= remaining < min(refused_subsidies)
    spent = 150_007 - remaining
    assert spent == sum(100 + i % 7 for i, r in enumerate(results) if r == [R.OK, R.OK])
    report = await verify_ledger(pool, SIGNING_KEY.public_key())
    assert report.ok, report.failures


async def test_connections_the_server_dropped_are_replaced_without_failing_callers(
    fresh_pool: asyncpg.Pool, fresh_database: str, admin_database_url: str,
) -> None:
    source, target = account(), account()
    await make_accounts(fresh_pool, source, target)
    async with running_engine(fresh_pool) as engine:
        assert await engine.create_transfers([transfer(source, target, 1)]) == [R.OK]
        admin = await asyncpg.connect(admin_database_url)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            fresh_database.rsplit("/", 1)[1],
        )
        await admin.close()
        results = await asyncio.gather(
            *(engine.create_transfers([transfer(source, target, 1)]) for _ in range(50))
        )
    assert results == [[R.OK]] * 50
    assert await balance(fresh_pool, target.id) == 51


async def _hold_row(pool: asyncpg.Pool, account_id) -> tuple[asyncpg.Connection, object]:
    """Another transaction (a batch of another process, in effect) holding an account row."""
    holder = await pool.acquire()
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute("SELECT 1 FROM ledger_accounts WHERE id = $1 FOR UPDATE", account_id)
    return holder, transaction


async def test_a_batch_decided_on_a_shared_balance_that_moved_is_decided_again(
    pool: asyncpg.Pool,
) -> None:
    """Engine B reads the shared budget unlocked, then waits for its lock while engine A
    (another process, in effect) spends it: B's batch is decided again on the locked value,
    after rolling back to its savepoint, and its other transfers are written once, right."""
    budget = account(limited=True, shared=True)
    bank = account(shared=True)
    alice, bob, carol, shop = account(limited=True), account(), account(), account()
    await make_accounts(pool, budget, bank, alice, bob, carol, shop)
    async with running_engine(pool) as setup:
        assert await setup.create_transfers([transfer(bank, budget, 1_000),
                                              transfer(bank, alice, 500)]) == [R.OK, R.OK]
    holder, transaction = await _hold_row(pool, budget.id)
    # Engines that have not read the budget yet (none at start), so they read it unlocked.
    async with running_engine(pool, shared_accounts_primed_max=0) as engine_a, \
            running_engine(pool, batch_window_ms=100.0, shared_accounts_primed_max=0) as engine_b:
        first = asyncio.create_task(engine_a.create_transfers([transfer(budget, shop, 600)]))
        await asyncio.sleep(0.3)  # A has read the budget (1,000 left) and waits for its lock
        second = asyncio.gather(  # one batch of B: an unshared transfer and a spend
            engine_b.create_transfers([transfer(alice, bob, 200)]),
            engine_b.create_transfers([transfer(budget, carol, 600)]),
        )
        await asyncio.sleep(0.5)  # B too has decided on 1,000 left, and waits behind A
        await transaction.rollback()
        await pool.release(holder)
        assert await first == [R.OK]
        assert await second == [[R.OK], [R.EXCEEDS_CREDITS]]
        assert engine_b.stats.redecided == 1
        assert engine_a.stats.redecided == 0
    assert await balance(pool, budget.id) == 400
    assert await balance(pool, alice.id) == 300
    assert await balance(pool, bob.id) == 200
    assert await balance(pool, carol.id) == 0
    report = await verify_ledger(pool, SIGNING_KEY.public_key())
    assert report.ok, report.failures


async def test_a_known_shared_account_is_decided_on_a_placeholder_and_read_once_it_matters(
    pool: asyncpg.Pool,
) -> None:
    """A shared account the engine has seen is not read again: the batch is decided as if
    its totals were zero and checked against them when it is locked. Credits never depend on
    them; the first spend from it is refused on the placeholder, decided again on the locked
    value (one redecision), and from then on its totals are read, so later spends are decided
    right the first time, up to the exact limit."""
    budget = account(limited=True, shared=True)
    bank, shop = account(shared=True), account(shared=True, limited=True)
    await make_accounts(pool, budget, bank, shop)
    async with running_engine(pool) as engine:
        assert await engine.create_transfers([transfer(bank, budget, 1_000)]) == [R.OK]
        for _ in range(3):  # bank and the shop's payable are credited/debited on placeholders
            assert await engine.create_transfers([transfer(bank, shop, 5)]) == [R.OK]
        assert engine.stats.redecided == 0
        assert await engine.create_transfers([transfer(budget, shop, 600)]) == [R.OK]
        assert engine.stats.redecided == 1  # refused on zero, right on the locked 1,000
        assert await engine.create_transfers([transfer(budget, shop, 300)]) == [R.OK]
        assert await engine.create_transfers([transfer(budget, shop, 101)]) == [
            R.EXCEEDS_CREDITS]
        assert await engine.create_transfers([transfer(budget, shop, 100)]) == [R.OK]
        assert engine.stats.redecided == 1  # the budget's totals are read now
        # The shop's payable (limited) was only credited so far: its first debit is decided
        # on a placeholder too, and comes out right.
        assert await engine.create_transfers([transfer(shop, bank, 1_015)]) == [R.OK]
        assert await engine.create_transfers([transfer(shop, bank, 1)]) == [R.EXCEEDS_CREDITS]
    assert await balance(pool, budget.id) == 0
    assert await balance(pool, shop.id) == 0
    report = await verify_ledger(pool, SIGNING_KEY.public_key())
    assert report.ok, report.failures


@pytest.mark.parametrize(("primed_max", "known"), [(1_000_000, 41_003), (30_000, 30_000), (0, 0)])
async def test_an_engine_reads_the_shared_accounts_at_start_in_pages_up_to_its_setting(
    fresh_pool: asyncpg.Pool, primed_max: int, known: int,
) -> None:
    """Read at start (three pages here), a shared account is decided on a placeholder from
    the first batch on: the first spend of a budget is refused on it and decided again on
    the locked value. One not read (primed_max 0) is read by its first batch instead, and
    decided on a placeholder from the second on."""
    budget, bank, wallet = account(limited=True, shared=True), account(shared=True), account()
    await make_accounts(fresh_pool, budget, bank, wallet)
    await fresh_pool.execute(
        "INSERT INTO ledger_accounts (id, ledger, code, shared)"
        " SELECT gen_random_uuid(), $1, 300, true FROM generate_series(1, 41000)", THB)
    async with running_engine(fresh_pool, shared_accounts_primed_max=0) as setup:
        assert await setup.create_transfers([transfer(bank, budget, 100)]) == [R.OK]
    async with running_engine(fresh_pool, shared_accounts_primed_max=primed_max) as engine:
        await engine.wait_primed()
        assert engine.stats.shared_known == known
        # Read in id order: the budget was read if fewer than ``known`` come before it.
        before = await fresh_pool.fetchval(
            "SELECT count(*) FROM ledger_accounts WHERE shared AND id < $1", budget.id)
        assert await engine.create_transfers([transfer(budget, wallet, 60)]) == [R.OK]
        assert engine.stats.redecided == (1 if before < known else 0)
        # Either way it is known now, and once decided again its totals are read.
        assert await engine.create_transfers([transfer(budget, wallet, 60)]) == [
            R.EXCEEDS_CREDITS]
        assert await engine.create_transfers([transfer(budget, wallet, 40)]) == [R.OK]
        assert engine.stats.redecided == 1
    assert await balance(fresh_pool, wallet.id) == 100


async def test_a_shared_account_closed_after_the_engine_knew_it_takes_no_more_transfers(
    pool: asyncpg.Pool,
) -> None:
    bank, shop = account(shared=True), account(shared=True)
    await make_accounts(pool, bank, shop)
    async with running_engine(pool) as engine:
        assert await engine.create_transfers([transfer(bank, shop, 5)]) == [R.OK]
        assert await close_account(pool, shop.id)
        assert await engine.create_transfers([transfer(bank, shop, 5)]) == [
            R.CREDIT_ACCOUNT_ALREADY_CLOSED]
        assert engine.stats.redecided == 1
        assert await engine.create_transfers([transfer(bank, shop, 5)]) == [
            R.CREDIT_ACCOUNT_ALREADY_CLOSED]
        assert engine.stats.redecided == 1  # the placeholder is closed now too
    assert await balance(pool, shop.id) == 5


async def test_a_credit_that_would_overflow_a_known_shared_account_fails_with_its_code(
    pool: asyncpg.Pool,
) -> None:
    """Decided on a placeholder (zero totals) the credit fits; checked against the locked
    totals it would overflow, so it is decided again and fails, nothing written."""
    bank, other_bank, shop = account(), account(), account(shared=True)
    await make_accounts(pool, bank, other_bank, shop)
    async with running_engine(pool) as engine:
        assert await engine.create_transfers([transfer(bank, shop, AMOUNT_MAX - 10)]) == [R.OK]
        assert await engine.create_transfers([transfer(other_bank, shop, 11)]) == [
            R.OVERFLOWS_CREDITS_POSTED]
        assert await engine.create_transfers([transfer(other_bank, shop, 10)]) == [R.OK]
    assert await balance(pool, shop.id) == AMOUNT_MAX
    assert await balance(pool, other_bank.id) == -10
    report = await verify_ledger(pool, SIGNING_KEY.public_key())
    assert report.ok, report.failures


async def test_only_the_sides_whose_account_keeps_history_are_indexed(
    pool: asyncpg.Pool,
) -> None:
    """A transfer records, per side, whether its account keeps history (a wallet); only
    those sides go into the per-account indexes that list an account's transfers."""
    wallet = account(limited=True, history=True)
    bank, shop = account(shared=True), account()
    await make_accounts(pool, wallet, bank, shop)
    async with running_engine(pool) as engine:
        top_up, pay = transfer(bank, wallet, 500), transfer(wallet, shop, 200)
        assert await engine.create_transfers([top_up, pay]) == [R.OK, R.OK]
        # A post inherits the pending transfer's accounts, and so their history.
        reserve = transfer(wallet, shop, 100, flags=TransferFlags.PENDING)
        post = transfer(None, None, 60, ledger=0, code=0, pending_id=reserve.id,
                        flags=TransferFlags.POST_PENDING_TRANSFER)
        assert await engine.create_transfers([reserve]) == [R.OK]
        assert await engine.create_transfers([post]) == [R.OK]
    rows = {r["id"]: (r["debit_history"], r["credit_history"]) for r in await pool.fetch(
        "SELECT id, debit_history, credit_history FROM ledger_transfers WHERE id = ANY($1)",
        [top_up.id, pay.id, reserve.id, post.id])}
    assert rows == {top_up.id: (False, True), pay.id: (True, False),
                    reserve.id: (True, False), post.id: (True, False)}
    indexed = {
        name: {r["id"] for r in await pool.fetch(
            f"SELECT t.id FROM ledger_transfers t WHERE t.{side}_account_id = ANY($1) "
            f"AND t.{side}_history IS NOT FALSE", [wallet.id, bank.id, shop.id])}
        for name, side in (("debit", "debit"), ("credit", "credit"))
    }
    assert indexed == {"debit": {pay.id, reserve.id, post.id}, "credit": {top_up.id}}
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT id FROM ledger_transfers WHERE debit_account_id = $1 "
            "AND debit_history IS NOT FALSE ORDER BY batch_id DESC, batch_index DESC LIMIT 5",
            wallet.id))
    assert "ledger_transfers_debit_history" in plan


async def test_an_account_replayed_with_another_history_flag_exists_with_different_flags(
    pool: asyncpg.Pool,
) -> None:
    first = account(history=True)
    assert await create_accounts(pool, [first]) == [CreateAccountResult.OK]
    again = msgspec.structs.replace(first, history=False)
    assert await create_accounts(pool, [first, again]) == [
        CreateAccountResult.EXISTS, CreateAccountResult.EXISTS_WITH_DIFFERENT_FLAGS]


async def test_a_submission_whose_account_another_batch_holds_waits_for_a_later_batch(
    pool: asyncpg.Pool,
) -> None:
    """Another process's batch holds a wallet: the submission that needs it is passed to a
    later batch (the rest of its batch commits at once); after being passed over three
    times, a batch waits for the lock instead, so it is decided at last, exactly once."""
    held, free, shop = account(), account(), account()
    bank = account(shared=True)
    await make_accounts(pool, held, free, shop, bank)
    async with running_engine(pool) as setup:
        assert await setup.create_transfers([transfer(bank, held, 100),
                                             transfer(bank, free, 100)]) == [R.OK, R.OK]
    holder, transaction = await _hold_row(pool, held.id)
    released = False
    try:
        async with running_engine(pool, batch_window_ms=50.0) as engine:
            try:
                blocked = asyncio.ensure_future(
                    engine.create_transfers([transfer(held, shop, 30)]))
                passing = asyncio.ensure_future(
                    engine.create_transfers([transfer(free, shop, 40)]))
                assert await asyncio.wait_for(passing, 5) == [R.OK]  # not held up
                await asyncio.sleep(0.5)
                assert not blocked.done()  # its batch now waits for the lock
                assert engine.stats.deferred == 3
            finally:
                await transaction.rollback()  # before the engine stops: it would wait
                released = True
            assert await asyncio.wait_for(blocked, 5) == [R.OK]
    finally:
        if not released:
            await transaction.rollback()
        await pool.release(holder)
    assert await balance(pool, held.id) == 70
    assert await balance(pool, free.id) == 60
    assert await balance(pool, shop.id) == 70
    report = await verify_ledger(pool, SIGNING_KEY.public_key())
    assert report.ok, report.failures


async def test_a_deferred_submission_takes_the_later_ones_that_depend_on_it_along(
    pool: asyncpg.Pool,
) -> None:
    """A top-up from a held account is deferred; the payment from the wallet it credits,
    queued after it, must not be decided first (it would find the wallet empty)."""
    held, wallet, shop, bank = account(), account(limited=True), account(), account(shared=True)
    await make_accounts(pool, held, wallet, shop, bank)
    async with running_engine(pool) as setup:
        assert await setup.create_transfers([transfer(bank, held, 100)]) == [R.OK]
    holder, transaction = await _hold_row(pool, held.id)
    try:
        async with running_engine(pool, batch_window_ms=50.0) as engine:
            top_up = asyncio.ensure_future(engine.create_transfers([transfer(held, wallet, 50)]))
            await asyncio.sleep(0)  # queued first
            pay = asyncio.ensure_future(engine.create_transfers([transfer(wallet, shop, 30)]))
            await asyncio.sleep(0.4)
            await transaction.rollback()
            results = await asyncio.wait_for(asyncio.gather(top_up, pay), 5)
    finally:
        await pool.release(holder)
    assert results == [[R.OK], [R.OK]]
    assert await balance(pool, wallet.id) == 20


async def test_a_post_queued_after_its_deferred_pending_transfer_finds_it(
    pool: asyncpg.Pool,
) -> None:
    """Deferred with the reservation it posts, not decided before it (which would fail the
    post's id for good)."""
    held, shop, bank = account(), account(), account(shared=True)
    await make_accounts(pool, held, shop, bank)
    async with running_engine(pool) as setup:
        assert await setup.create_transfers([transfer(bank, held, 100)]) == [R.OK]
    reserve = transfer(held, shop, 40, flags=TransferFlags.PENDING)
    post = transfer(None, None, 40, ledger=0, code=0, pending_id=reserve.id,
                    flags=TransferFlags.POST_PENDING_TRANSFER)
    holder, transaction = await _hold_row(pool, held.id)
    try:
        async with running_engine(pool, batch_window_ms=50.0) as engine:
            first = asyncio.ensure_future(engine.create_transfers([reserve]))
            await asyncio.sleep(0)
            second = asyncio.ensure_future(engine.create_transfers([post]))
            await asyncio.sleep(0.4)
            await transaction.rollback()
            results = await asyncio.wait_for(asyncio.gather(first, second), 5)
    finally:
        await pool.release(holder)
    assert results == [[R.OK], [R.OK]]
    assert await balance(pool, shop.id) == 40


def engine_submission(transfers, future) -> engine_submission_class:
    return engine_submission_class(transfers, None, (), (), future)


def test_a_batch_passes_over_what_depends_on_a_submission_it_passes_over() -> None:
    """Within one process: a submission whose account a batch in flight holds waits for the
    next batch, and so do the later ones that share an account or a transfer id with it;
    the others go now."""
    engine = LedgerEngine(None, EngineConfig(), SIGNING_KEY)  # type: ignore[arg-type]
    busy, wallet, other, shop, till = (account() for _ in range(5))
    reserve = transfer(busy, wallet, 10, flags=TransferFlags.PENDING)
    submissions = {
        "blocked": [transfer(busy, wallet, 5)],
        "same_wallet": [transfer(wallet, shop, 1)],
        "independent": [transfer(other, till, 1)],
        "reserve": [reserve],
        "post_of_reserve": [transfer(None, None, 10, ledger=0, code=0, pending_id=reserve.id,
                                     flags=TransferFlags.POST_PENDING_TRANSFER)],
    }
    loop = asyncio.new_event_loop()
    try:
        for name, transfers in submissions.items():
            engine._queue.append(engine_submission(transfers, loop.create_future()))
        engine._busy_accounts = {busy.id}
        batch, _, _ = engine._take_batch()
    finally:
        loop.close()
    taken = [next(n for n, t in submissions.items() if t is s.transfers) for s in batch]
    assert taken == ["independent"]
    assert [list(s.transfers) for s in engine._queue] == [
        submissions["blocked"], submissions["same_wallet"], submissions["reserve"],
        submissions["post_of_reserve"]]


async def test_a_wallet_created_without_the_history_flag_keeps_history_all_the_same(
    pool: asyncpg.Pool,
) -> None:
    """A process of the release before migration 0012 inserts wallets without the flag
    (its insert has no such column): the wallet keeps its history, and its transfers are
    listed."""
    wallet, other = new_id(), new_id()
    await pool.execute(
        "INSERT INTO ledger_accounts (id, ledger, code, debits_must_not_exceed_credits) "
        "VALUES ($1, 764, 200, true), ($2, 764, 201, false)", wallet, other)
    rows = {r["id"]: r["history"] for r in await pool.fetch(
        "SELECT id, history FROM ledger_accounts WHERE id = ANY($1)", [wallet, other])}
    assert rows == {wallet: True, other: False}
    bank = account(shared=True)
    await make_accounts(pool, bank)
    async with running_engine(pool) as engine:
        top_up = transfer(bank, wallet, 70)
        assert await engine.create_transfers([top_up]) == [R.OK]
    listed = await pool.fetch(
        "SELECT id FROM ledger_transfers WHERE credit_account_id = $1 "
        "AND credit_history IS NOT FALSE", wallet)
    assert [r["id"] for r in listed] == [top_up.id]


async def test_stopping_waits_for_the_batches_in_flight_and_answers_their_callers(
    pool: asyncpg.Pool,
) -> None:
    held, shop, bank = account(), account(), account(shared=True)
    await make_accounts(pool, held, shop, bank)
    async with running_engine(pool) as setup:
        assert await setup.create_transfers([transfer(bank, held, 100)]) == [R.OK]
    holder, transaction = await _hold_row(pool, held.id)
    engine = LedgerEngine(pool, EngineConfig(batch_window_ms=1.0), SIGNING_KEY)
    await engine.start()
    try:
        paying = asyncio.ensure_future(engine.create_transfers([transfer(held, shop, 30)]))
        await asyncio.sleep(0.3)  # deferred three times, then a batch waits for the lock
        stopping = asyncio.ensure_future(engine.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done() and not paying.done()
    finally:
        await transaction.rollback()
        await pool.release(holder)
    await asyncio.wait_for(stopping, 5)
    assert paying.result() == [R.OK]
