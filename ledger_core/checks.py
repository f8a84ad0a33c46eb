"""The pure decision of a batch: which transfers succeed, and what they do to the accounts.

``decide_batch`` takes what the engine read under lock (accounts, transfers already
committed, ids that already failed, the status of named pending transfers) and the
submissions in arrival order, and returns every transfer's result plus the rows to write.
It does no I/O, so the whole rule set is tested table-driven and with hypothesis, and the
engine is a thin shell around it.

Order matters and is deterministic: submissions are decided one after the other, transfers
within a submission in order, exactly as if each had been sent alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from ledger_core.model import (
    AMOUNT_MAX,
    TIMEOUT_MAX_SECONDS,
    AccountBalance,
    CreateTransferResult,
    PendingStatus,
    StoredTransfer,
    Transfer,
    TransferFlags,
)

R = CreateTransferResult
_LINKED = int(TransferFlags.LINKED)
_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING_TRANSFER)
_VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
_KNOWN_FLAGS = _LINKED | _PENDING | _POST | _VOID
_INT32_END = 2**31  # PostgreSQL integer: -2**31 .. 2**31 - 1
_INT64_END = 2**63  # PostgreSQL bigint


class RowConflict(Exception):
    """A row store found, while writing, that another batch changed a row first (e.g. a
    payment request paid meanwhile by another process). The engine runs the batch again,
    which then reads the row as it now is."""


class RowStore(Protocol):
    """Rows outside the ledger that computations read and change (e.g. subsidy usage).

    The engine reads the rows a batch needs after it has locked the batch's accounts, and
    writes the changed ones in the batch's transaction. The rows a computation uses must be
    guarded by an account it locks (e.g. a citizen's usage by the citizen's wallet), so that
    no other batch changes them meanwhile. A missing row is ``None``.
    """

    async def read(self, conn: Any, keys: list[Hashable]) -> dict[Hashable, Any]: ...

    async def write(self, conn: Any, rows: dict[Hashable, Any]) -> None: ...


@dataclass(slots=True)
class Computed:
    """What a computation decided: its transfers, and new values of the rows it uses (kept
    only if every transfer succeeds)."""

    transfers: list[Transfer]
    rows: dict[tuple[RowStore, Hashable], Any] = field(default_factory=dict)
    # Shared accounts whose exact totals bounded the result (e.g. a subsidy cut to what is
    # left of a budget): if such an account moved meanwhile, the batch is decided again.
    exact_shared: frozenset[uuid.UUID] = frozenset()


class Computation(Protocol):
    """A submission whose transfers are decided from the batch's state, under its locks.

    ``compute`` must be a pure function of the view (it may be called more than once, the
    last call being the one that counts) and must not change what the view returns.
    """

    max_transfers: int

    def accounts(self) -> Iterable[uuid.UUID]: ...  # every account it may read or move

    def transfer_ids(self) -> Iterable[uuid.UUID]: ...  # every transfer id it may use

    def row_keys(self) -> Iterable[tuple[RowStore, Hashable]]: ...  # the rows it reads

    def compute(self, view: BatchView) -> Computed: ...


@dataclass(slots=True)
class BatchState:
    """What the engine read for this batch. ``decide_batch`` updates it in place."""

    accounts: dict[uuid.UUID, AccountBalance]
    transfers: dict[uuid.UUID, StoredTransfer]  # committed transfers among the ids of interest
    failed: dict[uuid.UUID, int]  # ids whose first attempt failed, with that result
    pending_status: dict[uuid.UUID, PendingStatus]  # resolved pending transfers among those named
    rows: dict[tuple[RowStore, Hashable], Any] = field(default_factory=dict)


class BatchView:
    """What a computation sees: accounts and rows as the batch has them so far (read only)."""

    __slots__ = ("_state",)

    def __init__(self, state: BatchState) -> None:
        self._state = state

    def account(self, account_id: uuid.UUID) -> AccountBalance | None:
        return self._state.accounts.get(account_id)

    def row(self, store: RowStore, key: Hashable) -> Any:
        return self._state.rows.get((store, key))


@dataclass(slots=True)
class Resolution:
    pending_id: uuid.UUID
    status: PendingStatus
    transfer_id: uuid.UUID | None  # None for an expiry


@dataclass(slots=True)
class BatchDecision:
    results: list[list[CreateTransferResult]] = field(default_factory=list)
    transfers: list[StoredTransfer] = field(default_factory=list)  # to insert, in batch order
    failed: list[tuple[uuid.UUID, int]] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)  # posts, voids, expiries
    expiries: list[StoredTransfer] = field(default_factory=list)  # pendings expired here
    touched: set[uuid.UUID] = field(default_factory=set)  # accounts whose totals changed
    # For shared accounts (read without a lock; see engine.py): the lowest headroom any
    # accepted transfer left, and which ones refused a transfer for their limit.
    shared_min_headroom: dict[uuid.UUID, int] = field(default_factory=dict)
    shared_refused: set[uuid.UUID] = field(default_factory=set)
    changed_rows: set[tuple[RowStore, Hashable]] = field(default_factory=set)
    computed: list[list[Transfer] | None] = field(default_factory=list)  # per submission


def is_due(pending: StoredTransfer, now: datetime) -> bool:
    return pending.expires_at is not None and pending.expires_at <= now


Submission = Sequence[Transfer] | Computation


def decide_batch(
    submissions: Sequence[Submission],
    state: BatchState,
    *,
    batch_id: int,
    now: datetime,
    expire: Sequence[uuid.UUID] = (),
) -> BatchDecision:
    """Decide a batch. ``expire`` names pending transfers the caller found due.

    A submission is a list of transfers, or a ``Computation`` that decides its transfers
    from the state at its turn (after every earlier submission of the batch).
    """
    decision = BatchDecision()
    _expire_due(state, decision, now, expire, submissions)
    index = 0
    for item in submissions:
        computed: Computed | None = None
        if _is_transfers(item):
            submission: Sequence[Transfer] = item
            decision.computed.append(None)
        else:
            computed = item.compute(BatchView(state))
            submission = computed.transfers
            assert not any(t.flags & (_POST | _VOID) for t in submission), (
                "a computation cannot post or void a pending transfer"
            )
            decision.computed.append(list(submission))
            decision.shared_refused.update(computed.exact_shared)
        results: list[CreateTransferResult] = []
        start = 0
        count = len(submission)
        while start < count:
            end = start
            while end < count - 1 and submission[end].flags & _LINKED:
                end += 1
            chain = submission[start : end + 1]
            chain_results, index = _decide_chain(chain, state, decision, batch_id, now, index)
            results.extend(chain_results)
            start = end + 1
        # A computation's rows change with its transfers: when they all succeed, and not when
        # they all already existed (a replay of a committed computation, e.g. a retry whose
        # first attempt committed: its rows changed then, once).
        replay = bool(results) and all(r is R.EXISTS for r in results)
        if (computed is not None and computed.rows and not replay
                and all(r.succeeded for r in results)):
            state.rows.update(computed.rows)
            decision.changed_rows.update(computed.rows)
        decision.results.append(results)
    return decision


def _expire_due(
    state: BatchState,
    decision: BatchDecision,
    now: datetime,
    expire: Sequence[uuid.UUID],
    submissions: Sequence[Submission],
) -> None:
    """Release every due pending transfer this batch touches, before any transfer is decided.

    Done first, outside any linked chain, so a chain that rolls back never undoes an expiry.
    """
    candidates: list[uuid.UUID] = list(expire)
    for submission in submissions:
        if not _is_transfers(submission):
            continue  # computations do not post or void pending transfers
        for t in submission:
            if t.flags & (_POST | _VOID) and t.pending_id is not None:
                candidates.append(t.pending_id)
    for pending_id in candidates:
        pending = state.transfers.get(pending_id)
        if pending is None or not pending.flags & _PENDING or not is_due(pending, now):
            continue
        if state.pending_status.get(pending_id, PendingStatus.PENDING) is not PendingStatus.PENDING:
            continue
        debit = state.accounts[pending.debit_account_id]
        credit = state.accounts[pending.credit_account_id]
        debit.debits_pending -= pending.amount
        credit.credits_pending -= pending.amount
        state.pending_status[pending_id] = PendingStatus.EXPIRED
        decision.resolutions.append(Resolution(pending_id, PendingStatus.EXPIRED, None))
        decision.expiries.append(pending)
        decision.touched.add(debit.id)
        decision.touched.add(credit.id)


def _decide_chain(
    chain: Sequence[Transfer],
    state: BatchState,
    decision: BatchDecision,
    batch_id: int,
    now: datetime,
    index: int,
) -> tuple[list[CreateTransferResult], int]:
    """Decide one linked chain (or a single transfer): all of it takes effect, or none."""
    last = chain[-1]
    if last.flags & _LINKED:
        # The submission ended inside a chain: nothing of it is applied.
        results = [R.LINKED_EVENT_FAILED] * (len(chain) - 1) + [R.LINKED_EVENT_CHAIN_OPEN]
        _record_failures(chain, results, state, decision)
        return results, index

    undo: list[tuple[AccountBalance, tuple[int, int, int, int]]] | None = (
        [] if len(chain) > 1 else None
    )
    mark_transfers = len(decision.transfers)
    mark_resolutions = len(decision.resolutions)
    added_ids: list[uuid.UUID] = []
    added_status: list[uuid.UUID] = []
    touched: list[uuid.UUID] = []
    results: list[CreateTransferResult] = []
    start_index = index
    for position, t in enumerate(chain):
        result = _decide_one(t, state, decision, batch_id, now, index, undo, added_ids,
                             added_status, touched)
        if result is R.OK:
            index += 1
            results.append(result)
            continue
        if result is R.EXISTS:
            results.append(result)
            continue
        # Failure: undo what the chain did so far and fail every other member.
        if undo is not None:
            for account, totals in reversed(undo):
                (account.debits_pending, account.debits_posted,
                 account.credits_pending, account.credits_posted) = totals
        for transfer_id in added_ids:
            del state.transfers[transfer_id]
        for pending_id in added_status:
            del state.pending_status[pending_id]
        del decision.transfers[mark_transfers:]
        del decision.resolutions[mark_resolutions:]
        results = [R.LINKED_EVENT_FAILED] * len(chain)
        results[position] = result
        _record_failures(chain, results, state, decision)
        return results, start_index
    decision.touched.update(touched)
    return results, index


def _record_failures(
    chain: Sequence[Transfer],
    results: list[CreateTransferResult],
    state: BatchState,
    decision: BatchDecision,
) -> None:
    """Remember failed ids so that they can never succeed later (TigerBeetle's rule)."""
    for t, result in zip(chain, results, strict=True):
        if result.succeeded or result is R.ID_MUST_NOT_BE_ZERO or result is R.ID_ALREADY_FAILED:
            continue
        if t.id.int == 0 or t.id in state.transfers or t.id in state.failed:
            continue  # no id, committed (exists_with_different_*) or failed before
        state.failed[t.id] = int(result)
        decision.failed.append((t.id, int(result)))


def _decide_one(
    t: Transfer,
    state: BatchState,
    decision: BatchDecision,
    batch_id: int,
    now: datetime,
    index: int,
    undo: list[tuple[AccountBalance, tuple[int, int, int, int]]] | None,
    added_ids: list[uuid.UUID],
    added_status: list[uuid.UUID],
    touched: list[uuid.UUID],
) -> CreateTransferResult:
    if t.id.int == 0:
        return R.ID_MUST_NOT_BE_ZERO
    existing = state.transfers.get(t.id)
    if existing is not None:
        return exists_result(t, existing)
    if t.id in state.failed:
        return R.ID_ALREADY_FAILED
    flags = int(t.flags)
    if flags & ~_KNOWN_FLAGS or _popcount(flags & (_PENDING | _POST | _VOID)) > 1:
        return R.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if flags & (_POST | _VOID):
        return _decide_post_or_void(t, state, decision, batch_id, now, index, undo, added_ids,
                                    added_status, touched)

    debit_id = t.debit_account_id
    credit_id = t.credit_account_id
    if debit_id is None or debit_id.int == 0:
        return R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if credit_id is None or credit_id.int == 0:
        return R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if debit_id == credit_id:
        return R.ACCOUNTS_MUST_BE_DIFFERENT
    if t.pending_id is not None and t.pending_id.int != 0:
        return R.PENDING_ID_MUST_BE_ZERO
    pending = bool(flags & _PENDING)
    if t.timeout_seconds != 0 and not pending:
        return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    if not 0 <= t.timeout_seconds <= TIMEOUT_MAX_SECONDS:
        return R.TIMEOUT_OUT_OF_RANGE
    amount = t.amount
    if amount <= 0:
        return R.AMOUNT_MUST_BE_POSITIVE
    if amount > AMOUNT_MAX:
        return R.AMOUNT_EXCEEDS_MAXIMUM
    if not 0 < t.ledger < _INT32_END:
        return R.LEDGER_MUST_NOT_BE_ZERO
    if not 0 < t.code < _INT32_END:
        return R.CODE_MUST_NOT_BE_ZERO
    debit = state.accounts.get(debit_id)
    if debit is None:
        return R.DEBIT_ACCOUNT_NOT_FOUND
    credit = state.accounts.get(credit_id)
    if credit is None:
        return R.CREDIT_ACCOUNT_NOT_FOUND
    if debit.ledger != credit.ledger:
        return R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
    if t.ledger != debit.ledger:
        return R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
    if not _user_data_fits(t):
        return R.USER_DATA_OUT_OF_RANGE
    if debit.closed:
        return R.DEBIT_ACCOUNT_ALREADY_CLOSED
    if credit.closed:
        return R.CREDIT_ACCOUNT_ALREADY_CLOSED
    if pending:
        if debit.debits_pending + amount > AMOUNT_MAX:
            return R.OVERFLOWS_DEBITS_PENDING
        if credit.credits_pending + amount > AMOUNT_MAX:
            return R.OVERFLOWS_CREDITS_PENDING
    else:
        if debit.debits_posted + amount > AMOUNT_MAX:
            return R.OVERFLOWS_DEBITS_POSTED
        if credit.credits_posted + amount > AMOUNT_MAX:
            return R.OVERFLOWS_CREDITS_POSTED
    debits_after = debit.debits_pending + debit.debits_posted + amount
    credits_after = credit.credits_pending + credit.credits_posted + amount
    if debits_after > AMOUNT_MAX:
        return R.OVERFLOWS_DEBITS
    if credits_after > AMOUNT_MAX:
        return R.OVERFLOWS_CREDITS
    if debit.debits_must_not_exceed_credits and debits_after > debit.credits_posted:
        if debit.shared:
            decision.shared_refused.add(debit_id)
        return R.EXCEEDS_CREDITS
    if credit.credits_must_not_exceed_debits and credits_after > credit.debits_posted:
        if credit.shared:
            decision.shared_refused.add(credit_id)
        return R.EXCEEDS_DEBITS

    if undo is not None:
        undo.append((debit, debit.totals()))
        undo.append((credit, credit.totals()))
    if pending:
        debit.debits_pending += amount
        credit.credits_pending += amount
    else:
        debit.debits_posted += amount
        credit.credits_posted += amount
    touched.append(debit_id)
    touched.append(credit_id)
    if debit.shared:
        _note_headroom(decision, debit)
    if credit.shared:
        _note_headroom(decision, credit)
    expires_at = now + timedelta(seconds=t.timeout_seconds) if t.timeout_seconds else None
    stored = StoredTransfer(
        id=t.id,
        debit_account_id=debit_id,
        credit_account_id=credit_id,
        amount=amount,
        ledger=t.ledger,
        code=t.code,
        flags=flags,
        pending_id=None,
        timeout_seconds=t.timeout_seconds,
        user_data_128=t.user_data_128,
        user_data_64=t.user_data_64,
        user_data_32=t.user_data_32,
        batch_id=batch_id,
        batch_index=index,
        created_at=now,
        expires_at=expires_at,
    )
    state.transfers[t.id] = stored
    added_ids.append(t.id)
    decision.transfers.append(stored)
    return R.OK


def _decide_post_or_void(
    t: Transfer,
    state: BatchState,
    decision: BatchDecision,
    batch_id: int,
    now: datetime,
    index: int,
    undo: list[tuple[AccountBalance, tuple[int, int, int, int]]] | None,
    added_ids: list[uuid.UUID],
    added_status: list[uuid.UUID],
    touched: list[uuid.UUID],
) -> CreateTransferResult:
    post = bool(t.flags & _POST)
    pending_id = t.pending_id
    if pending_id is None or pending_id.int == 0:
        return R.PENDING_ID_MUST_NOT_BE_ZERO
    if pending_id == t.id:
        return R.PENDING_ID_MUST_BE_DIFFERENT
    if t.timeout_seconds != 0:
        return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    amount = t.amount
    if amount <= 0:
        return R.AMOUNT_MUST_BE_POSITIVE
    if amount > AMOUNT_MAX:
        return R.AMOUNT_EXCEEDS_MAXIMUM
    if not _user_data_fits(t):
        return R.USER_DATA_OUT_OF_RANGE
    p = state.transfers.get(pending_id)
    if p is None:
        return R.PENDING_TRANSFER_NOT_FOUND
    if not p.flags & _PENDING:
        return R.PENDING_TRANSFER_NOT_PENDING
    if t.debit_account_id is not None and t.debit_account_id.int != 0 \
            and t.debit_account_id != p.debit_account_id:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
    if t.credit_account_id is not None and t.credit_account_id.int != 0 \
            and t.credit_account_id != p.credit_account_id:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
    if t.ledger != 0 and t.ledger != p.ledger:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
    if t.code != 0 and t.code != p.code:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_CODE
    if post and amount > p.amount:
        return R.EXCEEDS_PENDING_TRANSFER_AMOUNT
    if not post and amount != p.amount:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
    status = state.pending_status.get(pending_id, PendingStatus.PENDING)
    if status is PendingStatus.POSTED:
        return R.PENDING_TRANSFER_ALREADY_POSTED
    if status is PendingStatus.VOIDED:
        return R.PENDING_TRANSFER_ALREADY_VOIDED
    if status is PendingStatus.EXPIRED:
        return R.PENDING_TRANSFER_EXPIRED
    debit = state.accounts[p.debit_account_id]
    credit = state.accounts[p.credit_account_id]
    if post:
        # A void may release funds of a closed account; a post may not move them.
        if debit.closed:
            return R.DEBIT_ACCOUNT_ALREADY_CLOSED
        if credit.closed:
            return R.CREDIT_ACCOUNT_ALREADY_CLOSED
        if debit.debits_posted + amount > AMOUNT_MAX:
            return R.OVERFLOWS_DEBITS_POSTED
        if credit.credits_posted + amount > AMOUNT_MAX:
            return R.OVERFLOWS_CREDITS_POSTED
    # Posting never raises debits+credits above what the pending reserved, so the limit
    # flags cannot be broken here.
    if undo is not None:
        undo.append((debit, debit.totals()))
        undo.append((credit, credit.totals()))
    debit.debits_pending -= p.amount
    credit.credits_pending -= p.amount
    if post:
        debit.debits_posted += amount
        credit.credits_posted += amount
    touched.append(debit.id)
    touched.append(credit.id)
    new_status = PendingStatus.POSTED if post else PendingStatus.VOIDED
    state.pending_status[pending_id] = new_status
    added_status.append(pending_id)
    decision.resolutions.append(Resolution(pending_id, new_status, t.id))
    stored = StoredTransfer(
        id=t.id,
        debit_account_id=p.debit_account_id,
        credit_account_id=p.credit_account_id,
        amount=amount,
        ledger=p.ledger,
        code=p.code,
        flags=int(t.flags),
        pending_id=pending_id,
        timeout_seconds=0,
        user_data_128=t.user_data_128,
        user_data_64=t.user_data_64,
        user_data_32=t.user_data_32,
        batch_id=batch_id,
        batch_index=index,
        created_at=now,
        expires_at=None,
    )
    state.transfers[t.id] = stored
    added_ids.append(t.id)
    decision.transfers.append(stored)
    return R.OK


def _note_headroom(decision: BatchDecision, account: AccountBalance) -> None:
    headroom = account.headroom
    if headroom is None:
        return
    lowest = decision.shared_min_headroom.get(account.id)
    if lowest is None or headroom < lowest:
        decision.shared_min_headroom[account.id] = headroom


def exists_result(t: Transfer, e: StoredTransfer) -> CreateTransferResult:
    """Compare a replayed transfer with the committed one, field by field, in rank order.

    For a post or void, fields left empty (taken from the pending transfer) match.
    """
    if t.flags != e.flags:
        return R.EXISTS_WITH_DIFFERENT_FLAGS
    requested_pending_id = t.pending_id if t.pending_id is not None and t.pending_id.int else None
    if requested_pending_id != e.pending_id:
        return R.EXISTS_WITH_DIFFERENT_PENDING_ID
    if t.timeout_seconds != e.timeout_seconds:
        return R.EXISTS_WITH_DIFFERENT_TIMEOUT
    inherits = bool(t.flags & (_POST | _VOID))
    if not _same_id(t.debit_account_id, e.debit_account_id, inherits):
        return R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if not _same_id(t.credit_account_id, e.credit_account_id, inherits):
        return R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if t.amount != e.amount:
        return R.EXISTS_WITH_DIFFERENT_AMOUNT
    if t.user_data_128 != e.user_data_128:
        return R.EXISTS_WITH_DIFFERENT_USER_DATA_128
    if t.user_data_64 != e.user_data_64:
        return R.EXISTS_WITH_DIFFERENT_USER_DATA_64
    if t.user_data_32 != e.user_data_32:
        return R.EXISTS_WITH_DIFFERENT_USER_DATA_32
    if t.ledger != e.ledger and not (inherits and t.ledger == 0):
        return R.EXISTS_WITH_DIFFERENT_LEDGER
    if t.code != e.code and not (inherits and t.code == 0):
        return R.EXISTS_WITH_DIFFERENT_CODE
    return R.EXISTS


def _same_id(requested: uuid.UUID | None, stored: uuid.UUID, inherits: bool) -> bool:
    if requested is None or requested.int == 0:
        return inherits
    return requested == stored


def _user_data_fits(t: Transfer) -> bool:
    return -_INT64_END <= t.user_data_64 < _INT64_END and -_INT32_END <= t.user_data_32 < _INT32_END


def _is_transfers(item: Submission) -> bool:
    """A list of transfers rather than a computation. The exact-type test first: the ABC's
    ``isinstance`` was ~3 % of a batch's decision time."""
    kind = type(item)
    return kind is list or kind is tuple or isinstance(item, Sequence)


def _popcount(value: int) -> int:
    return bin(value).count("1")
