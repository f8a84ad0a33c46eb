"""The batching engine: concurrent callers' transfers committed together, one result each.

Callers ``await engine.create_transfers([...])``. Submissions queue up; a worker waits at
most ``batch_window_ms`` for more, takes whole submissions up to ``batch_max_transfers``,
and commits them in ONE PostgreSQL transaction:

1. read the committed transfers and failed ids among the batch's ids (no locks);
2. lock every account the batch touches, in sorted id order (no deadlock, any process),
   except the *shared* ones (a program budget that every payment debits), which are read
   without a lock;
3. read the status of the pending transfers it names (after the locks, so it is current);
4. decide the whole batch in memory (``checks.decide_batch``, pure);
5. write: each touched account updated once, all transfers inserted by one statement,
   failures, pending resolutions, and any effects callers attached (their rows too);
6. lock the shared accounts (sorted, after all others) and check that the decision still
   holds for their current totals (their headroom moved by one offset over the whole batch;
   see ``_rebased_if_still_valid``): if so, add the batch's change to them; if not, roll
   the transaction back and run the batch again, this time locking its shared accounts
   before deciding (no savepoint: see ``_Redecide``). A shared account's row is therefore
   held only for one update, the chain append and the commit, not for the whole batch:
   that is what lets every payment debit one budget account at thousands per second;
7. append the batch to the hash chain (the head row is locked last), sign a checkpoint
   every ``checkpoint_every_batches`` links; commit (durable: synchronous_commit stays on).

A deadlock, serialization failure or duplicate id from another process rolls the batch back
and runs it again (at most ``retry_max`` times). If PostgreSQL itself fails, the callers get
``LedgerUnavailable``: their outcome is unknown, and retrying the SAME transfer ids is safe.
A batch that the database rejects for another reason is split in halves, so one bad
submission never fails the others. Every queue is bounded: when ``queue_max_transfers`` are
waiting, ``create_transfers`` raises ``LedgerOverloaded`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import random
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger_core.chain import batch_bytes, sign_checkpoint
from ledger_core.checks import (
    BatchDecision,
    BatchState,
    Computation,
    RowConflict,
    RowStore,
    decide_batch,
)
from ledger_core.model import (
    AMOUNT_MAX,
    ZERO_ID,
    AccountBalance,
    CreateTransferResult,
    PendingStatus,
    StoredTransfer,
    Transfer,
    TransferFlags,
)
from ledger_core.sql import load_queries

Q = load_queries(Path(__file__).with_name("queries.sql"))
_log = logging.getLogger("gwallet.ledger")
_POST_OR_VOID = int(TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER)
_RETRYABLE = (
    RowConflict,  # a row store saw another batch change a row first
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.UniqueViolationError,  # same new id committed meanwhile by another process
)
TRANSFER_COLUMNS = [
    "id", "debit_account_id", "credit_account_id", "amount", "ledger", "code", "flags",
    "pending_id", "timeout_seconds", "user_data_128", "user_data_64", "user_data_32",
    "batch_id", "batch_index", "created_at", "expires_at", "debit_history", "credit_history",
]
_SCAN_LIMIT = 20_000  # submissions looked at to form one batch
# A submission passed over this many times (another process's batches held one of its
# accounts each time) is next taken by a batch that waits for the locks instead.
_DEFERRALS_MAX = 3
# At most this many shared accounts are read rather than decided on a placeholder.
_TOTALS_WANTED_MAX = 10_000
_PRIME_PAGE = 20_000  # shared accounts read per query at start
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    # asyncpg's protocol left mid-operation on a connection the server killed (seen once in
    # CI after pg_terminate_backend: "cannot switch to state 15; another operation (2) is in
    # progress"): that connection is unusable, a fresh one is not.
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


class LedgerOverloaded(Exception):
    """The engine's queue is full: the caller should answer 503 with Retry-After."""


class LedgerUnavailable(Exception):
    """PostgreSQL could not be reached; the outcome is unknown and a retry with the same
    transfer ids is safe (ids are idempotency keys)."""


class _CommitOutcomeUnknown(Exception):
    """The connection failed while COMMIT was in flight."""


class _Redecide(Exception):
    """A decision made on shared accounts read without a lock does not hold for their
    current totals: the batch is rolled back and runs again with them locked first.

    A whole rollback, not a savepoint: an unshared row locked by the transaction and then
    updated inside a subtransaction gets a MultiXact (two xids in its xmax), which costs
    every such row an entry in pg_multixact, WAL, and later lookups. A batch is decided
    again rarely (a handful in 300,000 payments: BENCHMARKS.md), so running it again whole
    is cheaper than a savepoint in every batch."""


class BatchWriter(Protocol):
    """Writes the rows that callers attached to a batch, in its transaction, in one go."""

    async def write(self, conn: asyncpg.Connection, rows: list[Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Effect:
    """A row to write in the same transaction as a submission's transfers.

    ``make_row`` receives the submission's results and returns the row, or None to write
    nothing (for example: only when every transfer succeeded).
    """

    writer: BatchWriter
    make_row: Callable[[list[CreateTransferResult]], Any | None]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    batch_window_ms: float = 2.0
    batch_max_transfers: int = 2000
    batch_concurrency: int = 2
    queue_max_transfers: int = 50_000
    retry_max: int = 5
    checkpoint_every_batches: int = 1000
    expiry_interval_seconds: float = 1.0
    # Shared accounts whose placeholders are read at start, in the background (0: none; the
    # others are learnt at their first batch). About 125 bytes each in every process.
    shared_accounts_primed_max: int = 1_000_000

    def __post_init__(self) -> None:
        assert 0 <= self.batch_window_ms <= 1000, "batch window is 0..1000 ms"
        assert 1 <= self.batch_max_transfers <= 10_000, "batch size is 1..10000 transfers"
        assert 1 <= self.batch_concurrency <= 32, "1..32 batches in flight"
        assert self.queue_max_transfers >= self.batch_max_transfers
        assert 0 <= self.retry_max <= 100
        assert self.checkpoint_every_batches >= 1
        assert self.expiry_interval_seconds > 0
        assert self.shared_accounts_primed_max >= 0


class _Submission:
    __slots__ = ("transfers", "computation", "effects", "expire", "future", "computed",
                 "deferrals")

    def __init__(
        self,
        transfers: Sequence[Transfer],
        computation: Computation | None,
        effects: Sequence[Effect],
        expire: Sequence[uuid.UUID],
        future: asyncio.Future[list[CreateTransferResult]],
    ) -> None:
        self.transfers = transfers
        self.computation = computation
        self.effects = effects
        self.expire = expire
        self.future = future
        self.computed: list[Transfer] = []  # what the computation decided, once committed
        self.deferrals = 0  # batches that passed it over: an account was held elsewhere

    @property
    def item(self) -> Sequence[Transfer] | Computation:
        return self.computation if self.computation is not None else self.transfers

    @property
    def size(self) -> int:
        if self.computation is not None:
            return max(1, self.computation.max_transfers)
        return max(1, len(self.transfers) + len(self.expire))

    def accounts(self) -> set[Any]:
        """What a batch in flight holds for this submission: its accounts, and for a
        computation also the rows it reads and writes."""
        if self.computation is not None:
            return set(self.computation.accounts()) | set(self.computation.row_keys())
        ids = set()  # (a plain loop: twice as fast as comprehensions for two transfers)
        for t in self.transfers:
            ids.add(t.debit_account_id)
            ids.add(t.credit_account_id)
        ids.discard(None)
        return ids

    def transfer_keys(self) -> set[Any]:
        """The transfer ids it creates and the pending transfers it names."""
        if self.computation is not None:
            return set(self.computation.transfer_ids())
        keys: set[Any] = {t.id for t in self.transfers}
        keys.update(t.pending_id for t in self.transfers if t.pending_id is not None)
        keys.update(self.expire)
        return keys

    def touches(self, pendings: dict[uuid.UUID, StoredTransfer]) -> set[Any]:
        """Its accounts, with those of the pending transfers it posts, voids or expires."""
        accounts = self.accounts()
        named = [t.pending_id for t in self.transfers if t.pending_id is not None]
        for pending_id in (*named, *self.expire):
            pending = pendings.get(pending_id)
            if pending is not None:
                accounts.add(pending.debit_account_id)
                accounts.add(pending.credit_account_id)
        return accounts


@dataclass(frozen=True, slots=True)
class BatchStats:
    batches: int
    transfers: int
    retries: int  # batches run again after a deadlock, serialization failure or duplicate id
    redecided: int  # batches decided again because a shared account moved meanwhile
    deferred: int  # submissions passed to a later batch: a batch elsewhere held an account
    shared_known: int  # shared accounts the engine decides on placeholders of, unread


class LedgerEngine:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: EngineConfig,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._pool = pool
        self._config = config
        self._signing_key = signing_key
        self._public_key = signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._queue: deque[_Submission] = deque()
        self._queued_transfers = 0
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._expirer: asyncio.Task[None] | None = None
        self._primer: asyncio.Task[None] | None = None
        self._accepting = False
        self._busy_accounts: set[Any] = set()  # unshared accounts and rows of batches in flight
        # Accounts known to be shared (a fact that never changes), each with the rest of the
        # row the engine decides on in place of reading it (see _remember_shared).
        self._shared: dict[uuid.UUID, tuple[Any, ...]] = {}
        self._shapes: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # those rests, interned
        # Shared accounts whose totals bounded a recent decision: read (unlocked) every batch.
        self._totals_wanted: set[uuid.UUID] = set()
        self._batches = 0
        self._transfers = 0
        self._retries = 0
        self._redecided = 0
        self._deferred = 0
        self._running = 0  # batches in flight

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        assert not self._workers, "engine already started"
        self._accepting = True
        self._workers = [
            asyncio.create_task(self._worker(), name=f"ledger-batch-{n}")
            for n in range(self._config.batch_concurrency)
        ]
        self._expirer = asyncio.create_task(self._expire_loop(), name="ledger-expiry")
        self._primer = asyncio.create_task(self._prime_shared(), name="ledger-prime")

    async def stop(self) -> None:
        """Stop accepting, finish every queued submission, then stop the workers."""
        self._accepting = False
        if self._primer is not None:
            self._primer.cancel()
            await asyncio.gather(self._primer, return_exceptions=True)
            self._primer = None
        if self._expirer is not None:
            self._expirer.cancel()
            await asyncio.gather(self._expirer, return_exceptions=True)
            self._expirer = None
        while self._queue or self._running:
            self._wakeup.set()
            await asyncio.sleep(0.001)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    @property
    def queue_depth(self) -> int:
        """Transfers waiting for a batch (for metrics and admission control)."""
        return self._queued_transfers

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._transfers, self._retries, self._redecided,
                          self._deferred, len(self._shared))

    @property
    def public_key(self) -> bytes:
        return self._public_key

    # -- the door --------------------------------------------------------------------

    async def create_transfers(
        self, transfers: Sequence[Transfer], *, effects: Sequence[Effect] = ()
    ) -> list[CreateTransferResult]:
        """Commit ``transfers`` (one submission: its linked chains stay in one batch).

        Returns one result per transfer, in order. Raises ``LedgerOverloaded`` when the
        queue is full and ``LedgerUnavailable`` when PostgreSQL fails.
        """
        if not transfers:
            return []
        if len(transfers) > self._config.batch_max_transfers:
            raise ValueError(
                f"a submission holds at most {self._config.batch_max_transfers} transfers"
            )
        return await self._enqueue(transfers, None, effects, ())

    async def submit(
        self, computation: Computation, *, effects: Sequence[Effect] = ()
    ) -> tuple[list[Transfer], list[CreateTransferResult]]:
        """Commit a computation: its transfers are decided under the batch's locks.

        Returns the transfers it decided (as its last run decided them) and their results.
        """
        if computation.max_transfers > self._config.batch_max_transfers:
            raise ValueError("a computation may not exceed the batch size")
        box: list[list[Transfer]] = []
        results = await self._enqueue((), computation, effects, (), box)
        return (box[0] if box else []), results

    async def expire_due(self, limit: int = 1000) -> int:
        """Expire pending transfers whose timeout has passed; return how many were due."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(Q["due_pending_expiries"], self._clock(), limit)
        due = [row["pending_id"] for row in rows]
        size = self._config.batch_max_transfers
        # In pieces that each fit in a batch (a bigger submission would never be taken).
        await asyncio.gather(*(
            self._enqueue((), None, (), due[start:start + size])
            for start in range(0, len(due), size)
        ))
        return len(due)

    async def _enqueue(
        self,
        transfers: Sequence[Transfer],
        computation: Computation | None,
        effects: Sequence[Effect],
        expire: Sequence[uuid.UUID],
        computed_box: list[list[Transfer]] | None = None,
    ) -> list[CreateTransferResult]:
        if not self._accepting:
            raise LedgerUnavailable("the ledger engine is not running")
        future: asyncio.Future[list[CreateTransferResult]] = (
            asyncio.get_running_loop().create_future()
        )
        submission = _Submission(transfers, computation, effects, expire, future)
        size = submission.size
        if self._queued_transfers + size > self._config.queue_max_transfers:
            raise LedgerOverloaded("the ledger queue is full")
        self._queue.append(submission)
        self._queued_transfers += size
        self._wakeup.set()
        results = await future
        if computed_box is not None:
            computed_box.append(submission.computed)
        return results

    # -- workers ---------------------------------------------------------------------

    async def _worker(self) -> None:
        window = self._config.batch_window_ms / 1000
        limit = self._config.batch_max_transfers
        while True:
            await self._wakeup.wait()
            if window and self._queued_transfers < limit:
                await asyncio.sleep(window)
            batch, taken, locked = self._take_batch()
            if not batch:
                # Everything queued waits for accounts that a batch in flight holds: sleep
                # until a batch finishes (it sets the event again).
                self._wakeup.clear()
                continue
            if not self._queue:
                self._wakeup.clear()
            self._queued_transfers -= taken
            self._busy_accounts |= locked
            self._running += 1
            try:
                await self._run(batch)
            except Exception as exc:  # noqa: BLE001 - a worker must never die
                _log.exception("ledger batch failed")
                _fail(batch, LedgerUnavailable(str(exc)))
            except BaseException:
                # Cancelled mid-batch (stop() waits for batches in flight, so only when the
                # task is cancelled from outside): the outcome is unknown, say so.
                _fail(batch, LedgerUnavailable("the ledger engine was stopped"))
                raise
            finally:
                self._running -= 1
                self._busy_accounts -= locked
                if self._queue:
                    self._wakeup.set()

    def _take_batch(self) -> tuple[list[_Submission], int, set[Any]]:
        """Take whole submissions, in order, up to the batch size, passing over those that
        touch an unshared account a batch of this process already has in flight: they would
        only wait for its row locks, so they go in the next batch instead."""
        limit = self._config.batch_max_transfers
        busy = self._busy_accounts
        shared = self._shared
        batch: list[_Submission] = []
        passed_over: list[_Submission] = []
        locked: set[Any] = set()
        # What passed-over submissions hold back: a later submission that shares one of
        # their unshared accounts, transfer ids or pending ids is passed over too, so that
        # submissions that depend on each other are decided in the order they came.
        held_accounts: set[Any] = set()
        held_keys: set[Any] = set()
        taken = 0
        scanned = 0
        while self._queue and scanned < _SCAN_LIMIT:
            submission = self._queue[0]
            if taken + submission.size > limit:
                break
            self._queue.popleft()
            scanned += 1
            accounts = submission.accounts().difference(shared)  # (a dict: fast path)
            blocked = bool(busy) and not accounts.isdisjoint(busy)
            keys: set[Any] | None = None
            if not blocked and passed_over:
                keys = submission.transfer_keys()
                blocked = not (accounts.isdisjoint(held_accounts) and keys.isdisjoint(held_keys))
            if blocked:
                passed_over.append(submission)
                held_accounts |= accounts
                held_keys |= submission.transfer_keys() if keys is None else keys
                continue
            batch.append(submission)
            taken += submission.size
            locked |= accounts
        self._queue.extendleft(reversed(passed_over))
        return batch, taken, locked

    def _defer(self, deferred: list[_Submission]) -> None:
        """Put submissions back at the front of the queue, in order, for a later batch."""
        for submission in deferred:
            submission.deferrals += 1
        self._deferred += len(deferred)
        self._queue.extendleft(reversed(deferred))
        self._queued_transfers += sum(s.size for s in deferred)
        self._wakeup.set()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.expiry_interval_seconds)
            try:
                await self.expire_due()
            except (LedgerUnavailable, LedgerOverloaded, *_UNAVAILABLE):
                pass  # the next round tries again
            except Exception:  # noqa: BLE001 - keep expiring
                _log.exception("ledger expiry round failed")

    async def _run(self, batch: list[_Submission]) -> None:
        """Commit a batch, retrying what is retryable, splitting what the database rejects."""
        attempt = 0
        lock_shared_first = False
        while True:
            try:
                decision = await self._commit(batch, lock_shared_first)
            except _Redecide:
                # Rolled back: run again, deciding on the shared accounts locked (which
                # cannot raise this again).
                self._redecided += 1
                lock_shared_first = True
                continue
            except _RETRYABLE:
                attempt += 1
                self._retries += 1
                if attempt > self._config.retry_max:
                    _fail(batch, LedgerUnavailable("ledger batch kept conflicting"))
                    return
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
                continue
            except _CommitOutcomeUnknown as exc:
                # The commit may or may not have happened: say so; the callers' retries with
                # the same transfer ids are safe.
                _fail(batch, LedgerUnavailable(f"database lost during commit: {exc}"))
                return
            except _UNAVAILABLE as exc:
                # Nothing was committed. A pooled connection the server dropped (a restart)
                # fails once; a fresh one may work, so try again, bounded.
                attempt += 1
                if attempt > self._config.retry_max:
                    _fail(batch, LedgerUnavailable(f"database unavailable: {type(exc).__name__}"))
                    return
                self._retries += 1
                # The server may have dropped every pooled connection (a restart): have the
                # pool replace them rather than hand out the next dead one.
                await self._pool.expire_connections()
                await asyncio.sleep(min(0.5, 0.01 * 2**attempt))
                continue
            except asyncpg.PostgresError:
                if len(batch) <= 1:
                    _log.exception("ledger submission rejected by the database")
                    _fail(batch, LedgerUnavailable("the database rejected this submission"))
                    return
                middle = len(batch) // 2
                first, second = batch[:middle], batch[middle:]
                try:
                    await self._run(first)
                    await self._run(second)
                finally:
                    # What the halves deferred to later batches is no longer this batch's.
                    batch[:] = [*first, *second]
                return
            break
        self._batches += 1
        self._transfers += len(decision.transfers)
        for submission, results, computed in zip(
            batch, decision.results, decision.computed, strict=True
        ):
            if computed is not None:
                submission.computed = computed
            if not submission.future.done():
                submission.future.set_result(results)

    async def _commit(self, batch: list[_Submission], lock_shared_first: bool) -> BatchDecision:
        """Commit ``batch``; submissions it defers (``_decide_and_write``) leave the list."""
        async with self._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                decision = await self._decide_and_write(conn, batch, lock_shared_first)
            except BaseException:
                if not conn.is_closed():
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except _UNAVAILABLE as exc:
                raise _CommitOutcomeUnknown(type(exc).__name__) from exc
        return decision

    async def _decide_and_write(
        self, conn: asyncpg.Connection, batch: list[_Submission], lock_shared_first: bool
    ) -> BatchDecision:
        submissions, expire, ids, pending_ids, account_ids = _batch_keys(batch)
        pendings: dict[uuid.UUID, StoredTransfer] = {}
        if pending_ids or expire:
            # The accounts of the pending transfers named, so that they are locked too.
            pendings, _ = _read_lookup(await conn.fetch(Q["lookup_transfers"],
                                                        pending_ids + expire))
            _add_pending_accounts(account_ids, pendings)
        # Each account is looked up once: those known to be shared (a fact that never
        # changes) are not asked for under lock; the others are read, unlocked, from what
        # the locking read did not return (shared, missing, or held by another batch).
        # Unshared rows another transaction holds are passed over rather than waited for,
        # unless a submission of this batch has been deferred too often already: then this
        # batch waits (in the global lock order), so every submission is decided at last.
        # (Set operations throughout: a batch names thousands of accounts, and a Python
        # loop over them costs more than the rest of the classification.)
        known_shared = self._shared
        wait = any(s.deferrals >= _DEFERRALS_MAX for s in batch)
        to_lock = account_ids.difference(known_shared)  # (by a dict: C speed)
        unshared = await conn.fetch(
            Q["lock_accounts" if wait else "lock_accounts_skip_locked"],
            sorted(to_lock, key=_uuid_int))
        # A shared account already known is not read: the batch is decided on a placeholder
        # of it (zero totals), and the decision checked against its totals when it is locked
        # at the end (_rebased_if_still_valid), as for one read without a lock. That holds
        # whatever the account's totals, unless the decision depended on them: a transfer
        # refused, or a result cut, by its limit. Then the batch is decided again on locked
        # values, and the account's totals are read for the next batches.
        shared: list[Any] = []
        placeholders: list[uuid.UUID] = []
        if len(unshared) < len(account_ids):
            found = {row[0] for row in unshared}  # (a subset of to_lock)
            known = account_ids - to_lock
            wanted = self._totals_wanted
            if wanted:
                placeholders = list(known - wanted)
                unknown = list((to_lock - found) | (known & wanted))
            else:
                placeholders = list(known)
                unknown = list(to_lock - found)
            others = await conn.fetch(Q["read_unlocked_accounts"], unknown) if unknown else []
            shared = [row for row in others if row[10]]
            for row in shared:
                if row[0] not in known_shared:
                    self._remember_shared(row)
            held = {row[0] for row in others if not row[10]}
            if held:
                # The submissions that need a row another batch holds go to a later batch;
                # the rows this one locked for them stay locked until it commits (harmless).
                # A later submission that shares an unshared account, a transfer id or a
                # pending id with a deferred one is deferred with it: arrival order holds.
                # (Only accounts with a limit flag: a credit to another cannot change a result.)
                limited = {row[0] for row in unshared if row[3] or row[4]}
                poisoned: set[Any] = set(held)
                deferred, kept = [], []
                for s in batch:
                    touched = s.touches(pendings)
                    if not held.isdisjoint(touched):
                        deferred.append(s)
                        poisoned |= (touched & limited) | s.transfer_keys()
                        continue
                    keys = (touched & limited) | s.transfer_keys()
                    if poisoned.isdisjoint(keys):
                        kept.append(s)
                    else:
                        deferred.append(s)
                        poisoned |= keys
                batch[:] = kept
                self._defer(deferred)
                submissions, expire, ids, pending_ids, account_ids = _batch_keys(batch)
                _add_pending_accounts(account_ids, pendings)
                placeholders = [i for i in placeholders if i in account_ids]
        # The placeholders go last: every one is checked when locked (below).
        read_shared = len(shared)
        shared.extend((i, *known_shared[i]) for i in placeholders)
        # Which ids exist or failed is read AFTER the locks and the shared accounts: a batch
        # of another process that committed one of our ids has then either committed before
        # these reads (we see its transfer: exists) or will make our insert conflict (the
        # batch runs again). Read before, a replay could be judged on balances that already
        # include its own first attempt.
        transfers, failed = _read_lookup(await conn.fetch(Q["lookup_transfers"], list(ids)))
        # A pending transfer named here that another process committed after the first
        # lookup above: its accounts are neither locked nor read. Run the batch again (it
        # then finds the pending transfer first and locks its accounts).
        status: dict[uuid.UUID, PendingStatus] = {}
        if pending_ids or expire:
            seen_accounts = {row[0] for row in unshared}
            seen_accounts.update(row[0] for row in shared)
            for pending_id in (*pending_ids, *expire):
                pending = transfers.get(pending_id)
                if pending is not None and (pending.debit_account_id not in seen_accounts
                                            or pending.credit_account_id not in seen_accounts):
                    raise RowConflict(f"pending transfer {pending_id} appeared during the batch")
            for row in await conn.fetch(Q["pending_resolutions"], pending_ids + expire):
                status[row["pending_id"]] = PendingStatus(row["status"])
        rows = await _read_rows(conn, batch)
        batch_id = await conn.fetchval(Q["next_batch_id"])
        now = self._clock()

        def decide(shared_rows: list[asyncpg.Record]) -> tuple[BatchDecision, BatchState]:
            accounts = {row[0]: AccountBalance(*row[:12]) for row in unshared}
            for row in shared_rows:
                accounts[row[0]] = AccountBalance(*row[:12])  # (lock_shared adds the ctid)
            state = BatchState(accounts, dict(transfers), dict(failed), dict(status), dict(rows))
            decision = decide_batch(
                submissions, state, batch_id=batch_id, now=now, expire=expire
            )
            return decision, state

        state_ctids = {row[0]: row[12] for row in unshared}
        if lock_shared_first:
            # Run again after a decision on unlocked shared accounts did not hold: lock
            # every shared account of the batch now (sorted, after all unshared ones, as
            # always) and decide on the locked values.
            locked = await conn.fetch(
                Q["lock_shared_accounts"], sorted((row[0] for row in shared), key=_uuid_int)
            )
            state_ctids.update((row[0], row[12]) for row in locked)
            for row in locked:
                if row[5] and not known_shared[row[0]][4]:
                    self._remember_shared(row)  # closed meanwhile
            decision, state = decide(list(locked))
            await self._write(conn, batch, decision, state, batch_id, now, state_ctids)
            await self._append_chain(conn, decision, batch_id, now)
            return decision
        decision, state = decide(shared)
        if placeholders and decision.shared_refused:
            self._learn(decision, set(placeholders))
        # The shared accounts this decision depends on: those it changed, those whose exact
        # totals bounded a result (a refusal, or a subsidy cut to what is left), and every
        # placeholder: a result may rest on its closed flag, which may be long out of date.
        touched, refused = decision.touched, decision.shared_refused
        relevant = [row for row in shared[:read_shared] if row[0] in touched or row[0] in refused]
        relevant += shared[read_shared:]
        if not relevant:
            await self._write(conn, batch, decision, state, batch_id, now, state_ctids)
        else:
            # Optimistic: write everything but the shared accounts, then lock those (the
            # last rows this batch locks) and apply the batch's change to their current
            # totals. Held only for that update, the chain append and the commit.
            await self._write(conn, batch, decision, state, batch_id, now, state_ctids,
                              skip={row[0] for row in relevant})
            current = await conn.fetch(
                Q["lock_shared_totals"], sorted((row[0] for row in relevant), key=_uuid_int)
            )
            rebased = _rebased_if_still_valid(decision, state, relevant, current)
            if rebased is None:
                # The shared balances moved in a way that could change a result: roll
                # back (the caller does) and run the batch again with them locked first.
                raise _Redecide
            if rebased[0]:
                await _update_located(conn, *rebased)
        await self._append_chain(conn, decision, batch_id, now)
        return decision

    async def wait_primed(self) -> None:
        """Until the shared accounts' placeholders are read (tests and benchmarks)."""
        if self._primer is not None:
            await asyncio.gather(self._primer, return_exceptions=True)

    async def _prime_shared(self) -> None:
        """Read the shared accounts' placeholders, a page at a time, so that even the first
        batches after a start read none of them (a batch of 1,000 payments names ~2,000
        merchants' payables: reading them costs more than the rest of its reads together).
        An optimisation only: a failure is logged, and the accounts are learnt batch by batch."""
        after, left = ZERO_ID, self._config.shared_accounts_primed_max
        try:
            while left > 0:
                async with self._pool.acquire() as conn:
                    rows = await conn.fetch(Q["page_shared_accounts"], after,
                                            min(left, _PRIME_PAGE))
                for row in rows:
                    if row[0] not in self._shared:  # (a batch may have read it since: newer)
                        self._remember_shared(row)
                if len(rows) < _PRIME_PAGE:
                    return
                after, left = rows[-1][0], left - len(rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (the batches learn what is missing)
            _log.warning("reading the shared accounts at start failed: %s", type(exc).__name__)

    def _remember_shared(self, row: Any) -> None:
        """Keep a shared account's placeholder: its row as read, with zero totals.

        Its ledger, code, limit flags and history flag never change; ``closed`` only goes
        from false to true, which the late lock sees (the batch is then decided again, and
        the placeholder follows). Interned: a million merchants' payables share a few."""
        rest = (*row[1:6], 0, 0, 0, 0, True, row[11])
        self._shared[row[0]] = self._shapes.setdefault(rest, rest)

    def _learn(self, decision: BatchDecision, placeholders: set[uuid.UUID]) -> None:
        """Placeholders the decision depended on (a refusal or a result bounded by their
        limit): read those accounts' totals in the next batches, not decide on zeros again."""
        depended = decision.shared_refused & placeholders
        if depended:
            if len(self._totals_wanted) + len(depended) > _TOTALS_WANTED_MAX:
                self._totals_wanted.clear()  # bounded; what is still wanted is learnt again
            self._totals_wanted |= depended

    async def _write(
        self,
        conn: asyncpg.Connection,
        batch: list[_Submission],
        decision: BatchDecision,
        state: BatchState,
        batch_id: int,
        now: datetime,
        ctids: dict[uuid.UUID, Any],
        skip: set[uuid.UUID] | frozenset[uuid.UUID] = frozenset(),
    ) -> None:
        """Write a decided batch (all but the chain link), the accounts in ``skip`` aside.
        ``ctids`` locates the rows this transaction locked."""
        touched = [state.accounts[i] for i in decision.touched if i not in skip]
        if touched:
            # Every account written here was locked by this transaction (unshared ones at
            # the start, shared ones at the end), so each has its ctid.
            await _update_located(
                conn,
                [ctids[a.id] for a in touched],
                [a.id for a in touched],
                [a.debits_pending for a in touched],
                [a.debits_posted for a in touched],
                [a.credits_pending for a in touched],
                [a.credits_posted for a in touched],
            )
        new = decision.transfers
        if new:
            accounts = state.accounts
            # COPY, not INSERT ... unnest: half the time for a batch of 2,000 (BENCHMARKS.md).
            # Each side's history flag puts it in the per-account index, or not.
            await conn.copy_records_to_table(
                "ledger_transfers",
                columns=TRANSFER_COLUMNS,
                records=[
                    (t.id, t.debit_account_id, t.credit_account_id, t.amount, t.ledger, t.code,
                     t.flags, t.pending_id, t.timeout_seconds, t.user_data_128, t.user_data_64,
                     t.user_data_32, batch_id, t.batch_index, now, t.expires_at,
                     accounts[t.debit_account_id].history, accounts[t.credit_account_id].history)
                    for t in new
                ],
            )
            expiring = [t for t in new if t.expires_at is not None]
            if expiring:
                await conn.execute(
                    Q["insert_pending_expiries"],
                    [t.id for t in expiring],
                    [t.expires_at for t in expiring],
                )
        if decision.failed:
            await conn.execute(
                Q["insert_failed_transfers"],
                [transfer_id for transfer_id, _ in decision.failed],
                [result for _, result in decision.failed],
                now,
            )
        if decision.resolutions:
            resolutions = decision.resolutions
            await conn.execute(
                Q["insert_pending_resolutions"],
                [r.pending_id for r in resolutions],
                [int(r.status) for r in resolutions],
                [r.transfer_id for r in resolutions],
                batch_id,
                now,
            )
            await conn.execute(Q["delete_pending_expiries"], [r.pending_id for r in resolutions])
        if decision.changed_rows:
            by_store: dict[int, tuple[RowStore, dict[Any, Any]]] = {}
            for store, key in decision.changed_rows:
                by_store.setdefault(id(store), (store, {}))[1][key] = state.rows[(store, key)]
            for store, changed in by_store.values():
                await store.write(conn, changed)
        await _write_effects(conn, batch, decision)

    async def _append_chain(
        self, conn: asyncpg.Connection, decision: BatchDecision, batch_id: int, now: datetime
    ) -> None:
        new = decision.transfers
        if not new and not decision.expiries:
            return
        content = batch_bytes(batch_id, now, new, [p.id for p in decision.expiries])
        row = await conn.fetchrow(
            Q["chain_append"], batch_id, content, len(new), len(decision.expiries), now
        )
        seq, link = row["seq"], row["link"]
        if seq % self._config.checkpoint_every_batches == 0:
            signature = sign_checkpoint(self._signing_key, seq, link)
            await conn.execute(Q["insert_checkpoint"], seq, link, self._public_key, signature)

    # -- reads -----------------------------------------------------------------------

    async def lookup_accounts(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, AccountBalance]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(Q["lookup_accounts"], list(ids))
        return {
            row["id"]: AccountBalance(
                id=row["id"],
                ledger=row["ledger"],
                code=row["code"],
                debits_must_not_exceed_credits=row["debits_must_not_exceed_credits"],
                credits_must_not_exceed_debits=row["credits_must_not_exceed_debits"],
                closed=row["closed"],
                shared=row["shared"],
                history=row["history"],
                debits_pending=row["debits_pending"],
                debits_posted=row["debits_posted"],
                credits_pending=row["credits_pending"],
                credits_posted=row["credits_posted"],
            )
            for row in rows
        }

    async def lookup_transfer(self, transfer_id: uuid.UUID) -> StoredTransfer | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(Q["lookup_transfer"], transfer_id)
        return StoredTransfer(**row) if row is not None else None


def _batch_keys(
    batch: list[_Submission],
) -> tuple[list[Any], list[uuid.UUID], set[uuid.UUID], list[uuid.UUID], set[uuid.UUID]]:
    """A batch's submissions (as decide_batch takes them), the pending ids it expires, the
    transfer ids to look up, the pending ids it posts or voids, and the accounts it names."""
    submissions = [s.item for s in batch]
    expire = [pending_id for s in batch for pending_id in s.expire]
    ids: set[uuid.UUID] = set(expire)
    pending_ids: list[uuid.UUID] = []
    account_ids: set[uuid.UUID] = set()
    for s in batch:
        if s.computation is not None:
            ids.update(s.computation.transfer_ids())
            account_ids.update(s.computation.accounts())
            continue
        for t in s.transfers:
            ids.add(t.id)
            if t.flags & _POST_OR_VOID and t.pending_id is not None:
                ids.add(t.pending_id)
                pending_ids.append(t.pending_id)
            if t.debit_account_id is not None:
                account_ids.add(t.debit_account_id)
            if t.credit_account_id is not None:
                account_ids.add(t.credit_account_id)
    return submissions, expire, ids, pending_ids, account_ids


def _add_pending_accounts(
    account_ids: set[uuid.UUID], pendings: dict[uuid.UUID, StoredTransfer]
) -> None:
    for pending in pendings.values():
        account_ids.add(pending.debit_account_id)
        account_ids.add(pending.credit_account_id)


def _read_lookup(
    rows: list[asyncpg.Record],
) -> tuple[dict[uuid.UUID, StoredTransfer], dict[uuid.UUID, int]]:
    transfers: dict[uuid.UUID, StoredTransfer] = {}
    failed: dict[uuid.UUID, int] = {}
    for row in rows:
        if row["id"] is not None:
            transfers[row["id"]] = StoredTransfer(
                id=row["id"],
                debit_account_id=row["debit_account_id"],
                credit_account_id=row["credit_account_id"],
                amount=row["amount"],
                ledger=row["ledger"],
                code=row["code"],
                flags=row["flags"],
                pending_id=row["pending_id"],
                timeout_seconds=row["timeout_seconds"],
                user_data_128=row["user_data_128"],
                user_data_64=row["user_data_64"],
                user_data_32=row["user_data_32"],
                batch_id=row["batch_id"],
                batch_index=row["batch_index"],
                created_at=row["created_at"],
                expires_at=row["expires_at"],
            )
        if row["failed_result"] is not None:
            failed[row["requested_id"]] = row["failed_result"]
    return transfers, failed


async def _read_rows(
    conn: asyncpg.Connection, batch: list[_Submission]
) -> dict[tuple[RowStore, Any], Any]:
    """The rows the batch's computations use, one read per store (after the locks)."""
    wanted: dict[int, tuple[RowStore, set[Any]]] = {}
    for submission in batch:
        if submission.computation is None:
            continue
        for store, key in submission.computation.row_keys():
            wanted.setdefault(id(store), (store, set()))[1].add(key)
    rows: dict[tuple[RowStore, Any], Any] = {}
    for store, keys in wanted.values():
        found = await store.read(conn, list(keys))
        for key in keys:
            rows[(store, key)] = found.get(key)
    return rows


async def _update_located(
    conn: asyncpg.Connection, ctids: list[Any], ids: list[uuid.UUID], debits_pending: list[int],
    debits_posted: list[int], credits_pending: list[int], credits_posted: list[int],
) -> None:
    """Write new totals of rows this transaction holds locked, by the ctid of the row."""
    status = await conn.execute(Q["update_locked_account_totals"], ctids, ids, debits_pending,
                                debits_posted, credits_pending, credits_posted)
    if status != f"UPDATE {len(ids)}":
        # Cannot happen while the row locks hold; never write a batch half-applied.
        raise RuntimeError(f"locked accounts moved: {status} of {len(ids)}")


def _rebased_if_still_valid(
    decision: BatchDecision,
    state: BatchState,
    seen: list[asyncpg.Record],
    current: list[asyncpg.Record],
) -> tuple[list[Any], list[uuid.UUID], list[int], list[int], list[int], list[int]] | None:
    """Does the decision made on ``seen`` (read without a lock) hold for ``current`` (the
    same accounts, locked now)? If so, the rows to write: each touched account's current
    totals plus what this batch changed (as ctid, id and the four totals); if not, None.

    A decision made on a placeholder (zero totals: ``_remember_shared``) is checked the same
    way: its "then" is zero.

    Every shared account's totals moved by the same offset at every step of the batch, so
    its headroom did too: the batch stays valid if its lowest headroom plus that offset is
    still >= 0, and no refusal for the account's limit could have gone the other way.

    ``seen`` rows are read_unlocked_accounts rows, ``current`` rows lock_shared_totals rows;
    plain tuples, no structs: a batch has thousands of shared accounts (merchants' payables).
    """
    now_rows = {row[0]: row for row in current}
    refused = decision.shared_refused
    lowest_headroom = decision.shared_min_headroom
    touched = decision.touched
    accounts = state.accounts
    ctids: list[Any] = []
    ids: list[uuid.UUID] = []
    dp: list[int] = []
    dpo: list[int] = []
    cp: list[int] = []
    cpo: list[int] = []
    for row in seen:
        account_id = row[0]
        _, now_closed, now_dp, now_dpo, now_cp, now_cpo, ctid = now_rows[account_id]
        _, _, _, dnec, cnec, closed, then_dp, then_dpo, then_cp, then_cpo = row[:10]
        if now_closed != closed:
            return None
        if dnec or cnec:
            if dnec:
                shift = (now_cpo - now_dp - now_dpo) - (then_cpo - then_dp - then_dpo)
            else:
                shift = (now_dpo - now_cp - now_cpo) - (then_dpo - then_cp - then_cpo)
            if shift > 0 and account_id in refused:
                return None
            lowest = lowest_headroom.get(account_id)
            if lowest is not None and lowest + shift < 0:
                return None
        if account_id in touched:
            after = accounts[account_id]
            new_dp = now_dp + after.debits_pending - then_dp
            new_dpo = now_dpo + after.debits_posted - then_dpo
            new_cp = now_cp + after.credits_pending - then_cp
            new_cpo = now_cpo + after.credits_posted - then_cpo
            if new_dp + new_dpo > AMOUNT_MAX or new_cp + new_cpo > AMOUNT_MAX:
                return None  # a total would overflow: decided on the exact totals, it fails
            ctids.append(ctid)
            ids.append(account_id)
            dp.append(new_dp)
            dpo.append(new_dpo)
            cp.append(new_cp)
            cpo.append(new_cpo)
    return ctids, ids, dp, dpo, cp, cpo


async def _write_effects(
    conn: asyncpg.Connection, batch: list[_Submission], decision: BatchDecision
) -> None:
    grouped: dict[int, tuple[BatchWriter, list[Any]]] = {}
    for submission, results in zip(batch, decision.results, strict=True):
        for effect in submission.effects:
            row = effect.make_row(results)
            if row is None:
                continue
            key = id(effect.writer)
            if key not in grouped:
                grouped[key] = (effect.writer, [])
            grouped[key][1].append(row)
    for writer, rows in grouped.values():
        await writer.write(conn, rows)


# PostgreSQL orders uuids by their bytes, which is the order of their big-endian integer;
# sorting by the int is faster than comparing UUID objects, and a C getter (no Python frame
# per element) faster than a function returning ``value.int``.
_uuid_int: Callable[[uuid.UUID], int] = operator.attrgetter("int")


def _fail(batch: list[_Submission], exc: Exception) -> None:
    for submission in batch:
        if not submission.future.done():
            submission.future.set_exception(exc)

