"""The pure rules of the ledger core, table-driven and with hypothesis (no database).

``decide_batch`` is given a ``BatchState`` built by hand from ``AccountBalance`` structs and
committed ``StoredTransfer`` rows, exactly what the engine reads under lock. Each row of
``ROWS`` is one rule or one refusal, named by a sentence; every member of
``CreateTransferResult`` is produced by at least one row (a test proves it, so a new code
without a row fails). Each row also states every account whose totals change; every other
account must stay as it was.

A hypothesis test then decides random batches (random amounts, flags, linked chains, posts
and voids of earlier pending transfers, expiries, replays) and checks after each one that
money is conserved per ledger, no limit is broken, every account's totals are the sums of
its transfers, the rows to write reproduce the change, and a replay changes nothing.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_core.accounts import account_exists_result, check_account
from ledger_core.checks import BatchDecision, BatchState, decide_batch, exists_result
from ledger_core.model import (
    AMOUNT_MAX,
    Account,
    AccountBalance,
    CreateAccountResult,
    CreateTransferResult,
    PendingStatus,
    StoredTransfer,
    Transfer,
    TransferFlags,
)

R = CreateTransferResult
A_ = CreateAccountResult
THB = 764
USD = 840
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
ZERO = uuid.UUID(int=0)
LINKED = TransferFlags.LINKED
PENDING = TransferFlags.PENDING
POST = TransferFlags.POST_PENDING_TRANSFER
VOID = TransferFlags.VOID_PENDING_TRANSFER
Totals = tuple[int, int, int, int]  # debits pending, debits posted, credits pending, credits posted


def uid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


_next_id = itertools.count(0x9000_0000)


def fresh_id() -> uuid.UUID:
    return uid(next(_next_id))


def balance(account_id: uuid.UUID, *, ledger: int = THB, limited: bool = False,
            credit_limited: bool = False, closed: bool = False, shared: bool = False,
            totals: Totals = (0, 0, 0, 0)) -> AccountBalance:
    debits_pending, debits_posted, credits_pending, credits_posted = totals
    return AccountBalance(
        id=account_id, ledger=ledger, code=1, debits_must_not_exceed_credits=limited,
        credits_must_not_exceed_debits=credit_limited, closed=closed,
        debits_pending=debits_pending, debits_posted=debits_posted,
        credits_pending=credits_pending, credits_posted=credits_posted, shared=shared,
    )


def tx(debit: uuid.UUID | None, credit: uuid.UUID | None, amount: int, **fields) -> Transfer:
    """A transfer request in THB with code 1 and a fresh id, unless told otherwise."""
    fields.setdefault("ledger", THB)
    fields.setdefault("code", 1)
    fields.setdefault("id", fresh_id())
    return Transfer(debit_account_id=debit, credit_account_id=credit, amount=amount, **fields)


def pending(debit: uuid.UUID, credit: uuid.UUID, amount: int, **fields) -> Transfer:
    return tx(debit, credit, amount, flags=fields.pop("flags", 0) | PENDING, **fields)


def post(pending_id: uuid.UUID | None, amount: int, **fields) -> Transfer:
    """A post that leaves accounts, ledger and code to the pending transfer."""
    fields.setdefault("id", fresh_id())
    return Transfer(debit_account_id=fields.pop("debit", None),
                    credit_account_id=fields.pop("credit", None), amount=amount,
                    ledger=fields.pop("ledger", 0), code=fields.pop("code", 0),
                    flags=fields.pop("flags", 0) | POST, pending_id=pending_id, **fields)


def void(pending_id: uuid.UUID | None, amount: int, **fields) -> Transfer:
    t = post(pending_id, amount, **fields)
    return msgspec.structs.replace(t, flags=(t.flags & ~POST) | VOID)


def replay(t: Transfer | StoredTransfer, **changes) -> Transfer:
    """The request that would reproduce ``t``, with ``changes`` applied."""
    fields = {f: getattr(t, f) for f in Transfer.__struct_fields__}
    fields.update(changes)
    return Transfer(**fields)


def committed(t: Transfer, *, created_at: datetime = NOW - timedelta(hours=1),
              batch_index: int = 0) -> StoredTransfer:
    expires_at = created_at + timedelta(seconds=t.timeout_seconds) if t.timeout_seconds else None
    return StoredTransfer(
        id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id,
        amount=t.amount, ledger=t.ledger, code=t.code, flags=int(t.flags),
        pending_id=t.pending_id, timeout_seconds=t.timeout_seconds,
        user_data_128=t.user_data_128, user_data_64=t.user_data_64,
        user_data_32=t.user_data_32, batch_id=1, batch_index=batch_index,
        created_at=created_at, expires_at=expires_at,
    )


# -- the world every row starts from --------------------------------------------------------

A, B = uid(0xA), uid(0xB)  # plain accounts with nothing on them
LIMITED = uid(0x11)  # debits_must_not_exceed_credits, credited 100
CREDIT_LIMITED = uid(0x12)  # credits_must_not_exceed_debits, debited 100
CLOSED = uid(0xC)
DOLLARS = uid(0xD)  # the only account on the USD ledger
PAYER, PAYEE = uid(0x21), uid(0x22)  # the two sides of the committed pending transfers
FULL_DEBITS_PENDING, FULL_CREDITS_PENDING = uid(0x31), uid(0x32)  # 5 short of 2**63 - 1
FULL_DEBITS_POSTED, FULL_CREDITS_POSTED = uid(0x33), uid(0x34)
HALF_DEBITS, HALF_CREDITS = uid(0x35), uid(0x36)  # pending + posted = 2**63 - 2
CHAINED_DEBIT, CHAINED_CREDIT = uid(0x41), uid(0x42)  # the sides of a transfer made in a chain
UNKNOWN, UNKNOWN_TOO = uid(0xDEAD), uid(0xBEEF)
HALF = AMOUNT_MAX // 2

REGULAR = tx(PAYER, PAYEE, 7, id=uid(0x1001), user_data_128=uid(77), user_data_64=64,
             user_data_32=32)
OPEN = pending(PAYER, PAYEE, 30, id=uid(0x2001))  # never expires
DUE = pending(PAYER, PAYEE, 20, id=uid(0x2002), timeout_seconds=60)  # expired at NOW - 60 s
LATER = pending(PAYER, PAYEE, 25, id=uid(0x2003), timeout_seconds=3600)  # expires NOW + 3540 s
POSTED = pending(PAYER, PAYEE, 40, id=uid(0x2004))
VOIDED = pending(PAYER, PAYEE, 50, id=uid(0x2005))
EXPIRED = pending(PAYER, PAYEE, 60, id=uid(0x2006), timeout_seconds=1)
FROM_CLOSED = pending(CLOSED, PAYEE, 15, id=uid(0x2007))
TO_CLOSED = pending(PAYEE, CLOSED, 5, id=uid(0x2008))
POST_OF_POSTED = replay(post(POSTED.id, 40, id=uid(0x3004)), debit_account_id=PAYER,
                        credit_account_id=PAYEE, ledger=THB, code=1)
IN_CHAIN = tx(CHAINED_DEBIT, CHAINED_CREDIT, 9, id=uid(0x1002), flags=LINKED)
FAILED = uid(0x4001)  # an id whose first attempt failed with exceeds_credits

COMMITTED = {
    t.id: t for t in [
        committed(REGULAR),
        committed(OPEN),
        committed(DUE, created_at=NOW - timedelta(seconds=120)),
        committed(LATER, created_at=NOW - timedelta(seconds=60)),
        committed(POSTED),
        committed(VOIDED),
        committed(EXPIRED),
        committed(FROM_CLOSED),
        committed(TO_CLOSED),
        committed(POST_OF_POSTED, created_at=NOW - timedelta(minutes=30)),
        committed(IN_CHAIN),
    ]
}
STATUS = {POSTED.id: PendingStatus.POSTED, VOIDED.id: PendingStatus.VOIDED,
          EXPIRED.id: PendingStatus.EXPIRED}
ACCOUNTS = {
    a.id: a for a in [
        balance(A),
        balance(B),
        balance(LIMITED, limited=True, totals=(0, 0, 0, 100)),
        balance(CREDIT_LIMITED, credit_limited=True, totals=(0, 100, 0, 0)),
        balance(CLOSED, closed=True, totals=(15, 0, 5, 0)),
        balance(DOLLARS, ledger=USD),
        # open reserves 30 + 20 + 25; posted 7 + 40
        balance(PAYER, totals=(75, 47, 0, 0)),
        balance(PAYEE, totals=(5, 0, 90, 47)),
        balance(FULL_DEBITS_PENDING, totals=(AMOUNT_MAX - 5, 0, 0, 0)),
        balance(FULL_CREDITS_PENDING, totals=(0, 0, AMOUNT_MAX - 5, 0)),
        balance(FULL_DEBITS_POSTED, totals=(0, AMOUNT_MAX - 5, 0, 0)),
        balance(FULL_CREDITS_POSTED, totals=(0, 0, 0, AMOUNT_MAX - 5)),
        balance(HALF_DEBITS, totals=(HALF, HALF, 0, 0)),
        balance(HALF_CREDITS, totals=(0, 0, HALF, HALF)),
        balance(CHAINED_DEBIT, totals=(0, 9, 0, 0)),
        balance(CHAINED_CREDIT, totals=(0, 0, 0, 9)),
    ]
}


def world(accounts: Sequence[AccountBalance] = (),
          transfers: Sequence[StoredTransfer] = ()) -> BatchState:
    """A fresh copy of the world, with some accounts replaced and some transfers added."""
    copies = {i: msgspec.structs.replace(a) for i, a in ACCOUNTS.items()}
    copies.update({a.id: msgspec.structs.replace(a) for a in accounts})
    return BatchState(accounts=copies, transfers=COMMITTED | {t.id: t for t in transfers},
                      failed={FAILED: int(R.EXCEEDS_CREDITS)}, pending_status=dict(STATUS))


@dataclass(frozen=True)
class Row:
    rule: str
    submissions: tuple[tuple[Transfer, ...], ...]
    results: tuple[tuple[CreateTransferResult, ...], ...]
    changes: dict[uuid.UUID, Totals] = field(default_factory=dict)  # totals after, if changed
    now: datetime = NOW
    expire: tuple[uuid.UUID, ...] = ()
    accounts: tuple[AccountBalance, ...] = ()  # replace these accounts of the world
    transfers: tuple[StoredTransfer, ...] = ()  # and commit these transfers too


def one(rule: str, t: Transfer, result: CreateTransferResult, **kw) -> Row:
    return Row(rule, ((t,),), ((result,),), **kw)


_P = pending(A, B, 10, id=uid(0x5001))  # a pending transfer posted in the same submission
_T = tx(A, B, 10, id=uid(0x5002))  # a transfer sent twice in one batch
_BAD = tx(LIMITED, A, 101, id=uid(0x5003))  # refused, then replayed in the same batch
_SELF = uid(0x5004)
_P_CHAIN = pending(A, B, 10, id=uid(0x5005), flags=LINKED)  # created and posted in a chain
_HOLD = pending(LIMITED, B, 30, id=uid(0x5006), timeout_seconds=60)  # due at NOW

SUCCESSES = [
    one("a transfer moves its amount from the debit account to the credit account, posted",
        tx(A, B, 10), R.OK, changes={A: (0, 10, 0, 0), B: (0, 0, 0, 10)}),
    one("a limited account may spend exactly what it was credited",
        tx(LIMITED, A, 100), R.OK, changes={LIMITED: (0, 100, 0, 100), A: (0, 0, 0, 100)}),
    one("a credit limited account may receive exactly what it was debited",
        tx(A, CREDIT_LIMITED, 100), R.OK,
        changes={A: (0, 100, 0, 0), CREDIT_LIMITED: (0, 100, 0, 100)}),
    one("a total may reach exactly 2**63 - 1",
        pending(FULL_DEBITS_PENDING, B, 5), R.OK,
        changes={FULL_DEBITS_PENDING: (AMOUNT_MAX, 0, 0, 0), B: (0, 0, 5, 0)}),
    one("a pending transfer reserves its amount as pending debits and credits",
        pending(A, B, 10, timeout_seconds=60), R.OK,
        changes={A: (10, 0, 0, 0), B: (0, 0, 10, 0)}),
    one("posting the full pending amount moves the reserve to posted",
        post(OPEN.id, 30), R.OK, changes={PAYER: (45, 77, 0, 0), PAYEE: (5, 0, 60, 77)}),
    one("posting part of a pending amount posts that part and releases the rest",
        post(OPEN.id, 10), R.OK, changes={PAYER: (45, 57, 0, 0), PAYEE: (5, 0, 60, 57)}),
    one("a post may restate the accounts, ledger and code of its pending transfer",
        post(OPEN.id, 30, debit=PAYER, credit=PAYEE, ledger=THB, code=1), R.OK,
        changes={PAYER: (45, 77, 0, 0), PAYEE: (5, 0, 60, 77)}),
    one("voiding a pending transfer releases its whole reserve",
        void(OPEN.id, 30), R.OK, changes={PAYER: (45, 47, 0, 0), PAYEE: (5, 0, 60, 47)}),
    one("a void may release the reserve of a closed account",
        void(FROM_CLOSED.id, 15), R.OK, changes={CLOSED: (0, 0, 5, 0), PAYEE: (5, 0, 75, 47)}),
    one("a pending transfer may still be posted just before it expires",
        post(LATER.id, 25), R.OK, now=NOW + timedelta(seconds=3540, microseconds=-1),
        changes={PAYER: (50, 72, 0, 0), PAYEE: (5, 0, 65, 72)}),
    Row("a pending transfer and its post may share one submission",
        ((_P, post(_P.id, 10)),), ((R.OK, R.OK),),
        changes={A: (0, 10, 0, 0), B: (0, 0, 0, 10)}),
    Row("a linked chain whose transfers are all valid commits as one",
        ((tx(A, B, 10, flags=LINKED), tx(B, A, 4)),), ((R.OK, R.OK),),
        changes={A: (0, 10, 0, 4), B: (0, 4, 0, 10)}),
    Row("a replay that exists counts as a success inside a linked chain",
        ((replay(REGULAR, flags=LINKED), tx(A, B, 5)),), ((R.EXISTS_WITH_DIFFERENT_FLAGS,
                                                          R.LINKED_EVENT_FAILED),)),
    one("an identical replay of a committed transfer reports exists and changes nothing",
        replay(REGULAR), R.EXISTS),
    one("a replayed post that leaves its fields to the pending transfer reports exists",
        post(POSTED.id, 40, id=POST_OF_POSTED.id), R.EXISTS),
    Row("the same id twice in one batch commits once and the second reports exists",
        ((_T,), (_T,)), ((R.OK,), (R.EXISTS,)), changes={A: (0, 10, 0, 0), B: (0, 0, 0, 10)}),
    Row("the same id twice in one submission commits once and the second reports exists",
        ((_T, _T),), ((R.OK, R.EXISTS),), changes={A: (0, 10, 0, 0), B: (0, 0, 0, 10)}),
    Row("the same id twice in one batch with another amount reports the difference",
        ((_T,), (replay(_T, amount=11),)), ((R.OK,), (R.EXISTS_WITH_DIFFERENT_AMOUNT,)),
        changes={A: (0, 10, 0, 0), B: (0, 0, 0, 10)}),
    Row("a failed id replayed in the same batch gets id already failed",
        ((_BAD,), (_BAD,)), ((R.EXCEEDS_CREDITS,), (R.ID_ALREADY_FAILED,))),
    Row("a second post of one pending transfer in the same batch finds it already posted",
        ((post(OPEN.id, 30),), (post(OPEN.id, 30),)),
        ((R.OK,), (R.PENDING_TRANSFER_ALREADY_POSTED,)),
        changes={PAYER: (45, 77, 0, 0), PAYEE: (5, 0, 60, 77)}),
    Row("an exists in the middle of a linked chain is a success and the chain commits",
        ((tx(A, B, 3, flags=LINKED), IN_CHAIN, tx(B, A, 1)),), ((R.OK, R.EXISTS, R.OK),),
        changes={A: (0, 3, 0, 1), B: (0, 1, 0, 3)}),
    Row("an identical replay may close a linked chain",
        ((tx(A, B, 3, flags=LINKED), replay(REGULAR)),), ((R.OK, R.EXISTS),),
        changes={A: (0, 3, 0, 0), B: (0, 0, 0, 3)}),
]

TWO_PHASE_AND_EXPIRY = [
    one("a post of a pending transfer past its expiry releases the reserve and is refused",
        post(DUE.id, 20), R.PENDING_TRANSFER_EXPIRED,
        changes={PAYER: (55, 47, 0, 0), PAYEE: (5, 0, 70, 47)}),
    one("a void of a pending transfer past its expiry releases the reserve and is refused",
        void(DUE.id, 20), R.PENDING_TRANSFER_EXPIRED,
        changes={PAYER: (55, 47, 0, 0), PAYEE: (5, 0, 70, 47)}),
    one("a pending transfer is due at the very instant it expires",
        post(LATER.id, 25), R.PENDING_TRANSFER_EXPIRED, now=NOW + timedelta(seconds=3540),
        changes={PAYER: (50, 47, 0, 0), PAYEE: (5, 0, 65, 47)}),
    Row("the due list expires a pending transfer that no transfer names",
        (), (), expire=(DUE.id,), changes={PAYER: (55, 47, 0, 0), PAYEE: (5, 0, 70, 47)}),
    Row("the due list leaves a pending transfer that is not due yet",
        (), (), expire=(LATER.id, OPEN.id)),
    Row("the due list leaves a pending transfer that was already resolved",
        (), (), expire=(POSTED.id, VOIDED.id, EXPIRED.id),
        now=NOW + timedelta(days=1)),
    Row("a pending transfer named twice is expired once",
        ((post(DUE.id, 20), void(DUE.id, 20)),), ((R.PENDING_TRANSFER_EXPIRED,) * 2,),
        expire=(DUE.id,), changes={PAYER: (55, 47, 0, 0), PAYEE: (5, 0, 70, 47)}),
    Row("an expiry is not undone when the chain that named the pending transfer fails",
        ((post(DUE.id, 20, flags=LINKED), tx(A, B, 1)),),
        ((R.PENDING_TRANSFER_EXPIRED, R.LINKED_EVENT_FAILED),),
        changes={PAYER: (55, 47, 0, 0), PAYEE: (5, 0, 70, 47)}),
    Row("a reserve released by an expiry can be spent in the batch that expired it",
        ((tx(LIMITED, A, 100),),), ((R.OK,),), expire=(_HOLD.id,),
        accounts=(balance(LIMITED, limited=True, totals=(30, 0, 0, 100)),
                  balance(B, totals=(0, 0, 30, 0))),
        transfers=(committed(_HOLD, created_at=NOW - timedelta(seconds=60)),),
        changes={LIMITED: (0, 100, 0, 100), A: (0, 0, 0, 100), B: (0, 0, 0, 0)}),
    one("without the expiry the same reserve still counts against the limit",
        tx(LIMITED, A, 100), R.EXCEEDS_CREDITS,
        accounts=(balance(LIMITED, limited=True, totals=(30, 0, 0, 100)),
                  balance(B, totals=(0, 0, 30, 0))),
        transfers=(committed(_HOLD, created_at=NOW - timedelta(seconds=60)),)),
]

LINKED_CHAINS = [
    Row("a failure in the middle of a chain fails the others with linked event failed and "
        "restores every balance",
        ((tx(A, B, 10, flags=LINKED), tx(B, A, 0, flags=LINKED), tx(A, B, 5)),),
        ((R.LINKED_EVENT_FAILED, R.AMOUNT_MUST_BE_POSITIVE, R.LINKED_EVENT_FAILED),)),
    Row("a chain that fails on its last transfer undoes the ones before it",
        ((tx(A, LIMITED, 50, flags=LINKED), pending(LIMITED, B, 100, flags=LINKED),
          tx(LIMITED, B, 51)),),
        ((R.LINKED_EVENT_FAILED, R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS),)),
    Row("a failing chain undoes a post inside it, so the pending can be posted later",
        ((post(OPEN.id, 30, flags=LINKED), tx(LIMITED, A, 101)), (post(OPEN.id, 30),)),
        ((R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS), (R.OK,)),
        changes={PAYER: (45, 77, 0, 0), PAYEE: (5, 0, 60, 77)}),
    Row("a failing chain undoes a pending transfer created inside it and its post",
        ((_P_CHAIN, post(_P_CHAIN.id, 10, flags=LINKED), post(_P_CHAIN.id, 1)),),
        ((R.LINKED_EVENT_FAILED, R.LINKED_EVENT_FAILED, R.PENDING_TRANSFER_ALREADY_POSTED),)),
    Row("a submission that ends inside a chain fails with linked event chain open",
        ((tx(A, B, 10, flags=LINKED),),), ((R.LINKED_EVENT_CHAIN_OPEN,),)),
    Row("every transfer of a chain left open fails, the last with linked event chain open",
        ((tx(A, B, 10, flags=LINKED), tx(B, A, 1, flags=LINKED)),),
        ((R.LINKED_EVENT_FAILED, R.LINKED_EVENT_CHAIN_OPEN),)),
    Row("a chain left open does not undo the chains before it in its submission",
        ((tx(A, B, 10), tx(A, B, 5, flags=LINKED)),), ((R.OK, R.LINKED_EVENT_CHAIN_OPEN),),
        changes={A: (0, 10, 0, 0), B: (0, 0, 0, 10)}),
    Row("a chain open at the end of one submission does not link into the next",
        ((tx(A, B, 10, flags=LINKED),), (tx(A, B, 5),)),
        ((R.LINKED_EVENT_CHAIN_OPEN,), (R.OK,)), changes={A: (0, 5, 0, 0), B: (0, 0, 0, 5)}),
    Row("a failing chain does not fail the transfers after it in its submission",
        ((tx(A, B, 0, flags=LINKED), tx(A, B, 1), tx(A, B, 2)),),
        ((R.AMOUNT_MUST_BE_POSITIVE, R.LINKED_EVENT_FAILED, R.OK),),
        changes={A: (0, 2, 0, 0), B: (0, 0, 0, 2)}),
    Row("a failing chain does not fail the other submissions of its batch",
        ((tx(A, B, 10, flags=LINKED), tx(A, B, 0)), (tx(A, B, 5),)),
        ((R.LINKED_EVENT_FAILED, R.AMOUNT_MUST_BE_POSITIVE), (R.OK,)),
        changes={A: (0, 5, 0, 0), B: (0, 0, 0, 5)}),
    Row("a limit is checked against the balance the chain itself has built so far",
        ((tx(A, LIMITED, 50, flags=LINKED), tx(LIMITED, B, 150)),), ((R.OK, R.OK),),
        changes={A: (0, 50, 0, 0), LIMITED: (0, 150, 0, 150), B: (0, 0, 0, 150)}),
    Row("a replay that differs from its committed transfer breaks its chain",
        ((tx(A, B, 3, flags=LINKED), replay(IN_CHAIN, amount=10), tx(B, A, 1)),),
        ((R.LINKED_EVENT_FAILED, R.EXISTS_WITH_DIFFERENT_AMOUNT, R.LINKED_EVENT_FAILED),)),
]

REFUSALS = [
    one("the nil uuid is not an id", tx(A, B, 10, id=ZERO), R.ID_MUST_NOT_BE_ZERO),
    one("a replay with other flags is refused", replay(REGULAR, flags=PENDING),
        R.EXISTS_WITH_DIFFERENT_FLAGS),
    one("a replay with another pending id is refused", replay(REGULAR, pending_id=OPEN.id),
        R.EXISTS_WITH_DIFFERENT_PENDING_ID),
    one("a replay with another timeout is refused", replay(OPEN, timeout_seconds=5),
        R.EXISTS_WITH_DIFFERENT_TIMEOUT),
    one("a replay with another debit account is refused", replay(REGULAR, debit_account_id=A),
        R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
    one("a replay with another credit account is refused", replay(REGULAR, credit_account_id=A),
        R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
    one("a replay with another amount is refused", replay(REGULAR, amount=8),
        R.EXISTS_WITH_DIFFERENT_AMOUNT),
    one("a replay with other user data 128 is refused", replay(REGULAR, user_data_128=uid(78)),
        R.EXISTS_WITH_DIFFERENT_USER_DATA_128),
    one("a replay with other user data 64 is refused", replay(REGULAR, user_data_64=65),
        R.EXISTS_WITH_DIFFERENT_USER_DATA_64),
    one("a replay with other user data 32 is refused", replay(REGULAR, user_data_32=33),
        R.EXISTS_WITH_DIFFERENT_USER_DATA_32),
    one("a replay with another ledger is refused", replay(REGULAR, ledger=USD),
        R.EXISTS_WITH_DIFFERENT_LEDGER),
    one("a replay with another code is refused", replay(REGULAR, code=2),
        R.EXISTS_WITH_DIFFERENT_CODE),
    one("an id whose first attempt failed never succeeds", tx(A, B, 10, id=FAILED),
        R.ID_ALREADY_FAILED),
    one("pending and post are mutually exclusive", tx(A, B, 10, flags=PENDING | POST),
        R.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    one("post and void are mutually exclusive",
        post(OPEN.id, 30, flags=VOID), R.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    one("an unknown flag is refused as mutually exclusive", tx(A, B, 10, flags=16),
        R.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    one("a transfer must name its debit account", tx(None, B, 10),
        R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    one("the nil uuid is not a debit account", tx(ZERO, B, 10),
        R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    one("a transfer must name its credit account", tx(A, None, 10),
        R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    one("the nil uuid is not a credit account", tx(A, ZERO, 10),
        R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    one("a transfer moves money between two different accounts", tx(A, A, 10),
        R.ACCOUNTS_MUST_BE_DIFFERENT),
    one("only a post or void names a pending transfer", tx(A, B, 10, pending_id=OPEN.id),
        R.PENDING_ID_MUST_BE_ZERO),
    one("a post must name its pending transfer", post(None, 10),
        R.PENDING_ID_MUST_NOT_BE_ZERO),
    one("the nil uuid names no pending transfer", void(ZERO, 10),
        R.PENDING_ID_MUST_NOT_BE_ZERO),
    one("a post cannot post itself", post(_SELF, 10, id=_SELF), R.PENDING_ID_MUST_BE_DIFFERENT),
    one("only a pending transfer may have a timeout", tx(A, B, 10, timeout_seconds=60),
        R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
    one("a post may not have a timeout", post(OPEN.id, 30, timeout_seconds=60),
        R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
    one("a negative timeout is out of range", pending(A, B, 10, timeout_seconds=-1),
        R.TIMEOUT_OUT_OF_RANGE),
    one("a timeout past 2**31 - 1 seconds is out of range",
        pending(A, B, 10, timeout_seconds=2**31), R.TIMEOUT_OUT_OF_RANGE),
    one("a zero amount is refused", tx(A, B, 0), R.AMOUNT_MUST_BE_POSITIVE),
    one("a negative amount is refused", tx(A, B, -5), R.AMOUNT_MUST_BE_POSITIVE),
    one("a post of zero is refused", post(OPEN.id, 0), R.AMOUNT_MUST_BE_POSITIVE),
    one("an amount past 2**63 - 1 is refused", tx(A, B, AMOUNT_MAX + 1),
        R.AMOUNT_EXCEEDS_MAXIMUM),
    one("a post past 2**63 - 1 is refused", post(OPEN.id, AMOUNT_MAX + 1),
        R.AMOUNT_EXCEEDS_MAXIMUM),
    one("a transfer must name its ledger", tx(A, B, 10, ledger=0), R.LEDGER_MUST_NOT_BE_ZERO),
    one("a transfer must have a code", tx(A, B, 10, code=0), R.CODE_MUST_NOT_BE_ZERO),
    one("a transfer's user data must fit the database", tx(A, B, 10, user_data_64=2**63),
        R.USER_DATA_OUT_OF_RANGE),
    one("a transfer from an unknown account is refused", tx(UNKNOWN, B, 10),
        R.DEBIT_ACCOUNT_NOT_FOUND),
    one("a transfer to an unknown account is refused", tx(A, UNKNOWN, 10),
        R.CREDIT_ACCOUNT_NOT_FOUND),
    one("money never moves between ledgers", tx(A, DOLLARS, 10),
        R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER),
    one("a transfer is in the ledger of its accounts", tx(A, B, 10, ledger=USD),
        R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS),
    one("a post of an unknown pending transfer is refused", post(UNKNOWN, 10),
        R.PENDING_TRANSFER_NOT_FOUND),
    one("a post of an id that failed finds no pending transfer", post(FAILED, 10),
        R.PENDING_TRANSFER_NOT_FOUND),
    one("a post of a regular transfer is refused", post(REGULAR.id, 7),
        R.PENDING_TRANSFER_NOT_PENDING),
    one("a post must keep the debit account of its pending transfer",
        post(OPEN.id, 30, debit=A), R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID),
    one("a post must keep the credit account of its pending transfer",
        post(OPEN.id, 30, credit=A), R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID),
    one("a post must keep the ledger of its pending transfer",
        post(OPEN.id, 30, ledger=USD), R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER),
    one("a void must keep the code of its pending transfer",
        void(OPEN.id, 30, code=2), R.PENDING_TRANSFER_HAS_DIFFERENT_CODE),
    one("a post cannot post more than was reserved", post(OPEN.id, 31),
        R.EXCEEDS_PENDING_TRANSFER_AMOUNT),
    one("a void releases exactly what was reserved, not less", void(OPEN.id, 29),
        R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT),
    one("a void releases exactly what was reserved, not more", void(OPEN.id, 31),
        R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT),
    one("a pending transfer is posted at most once", post(POSTED.id, 40),
        R.PENDING_TRANSFER_ALREADY_POSTED),
    one("a posted pending transfer cannot be voided", void(POSTED.id, 40),
        R.PENDING_TRANSFER_ALREADY_POSTED),
    one("a voided pending transfer cannot be posted", post(VOIDED.id, 50),
        R.PENDING_TRANSFER_ALREADY_VOIDED),
    one("an expired pending transfer cannot be posted", post(EXPIRED.id, 60),
        R.PENDING_TRANSFER_EXPIRED),
    one("a closed account is not debited", tx(CLOSED, A, 10), R.DEBIT_ACCOUNT_ALREADY_CLOSED),
    one("a pending transfer of a closed debit account cannot be posted",
        post(FROM_CLOSED.id, 15), R.DEBIT_ACCOUNT_ALREADY_CLOSED),
    one("a closed account is not credited", tx(A, CLOSED, 10), R.CREDIT_ACCOUNT_ALREADY_CLOSED),
    one("a pending transfer to a closed account cannot be posted", post(TO_CLOSED.id, 5),
        R.CREDIT_ACCOUNT_ALREADY_CLOSED),
    one("a reserve may not overflow pending debits", pending(FULL_DEBITS_PENDING, B, 6),
        R.OVERFLOWS_DEBITS_PENDING),
    one("a reserve may not overflow pending credits", pending(A, FULL_CREDITS_PENDING, 6),
        R.OVERFLOWS_CREDITS_PENDING),
    one("a transfer may not overflow posted debits", tx(FULL_DEBITS_POSTED, B, 6),
        R.OVERFLOWS_DEBITS_POSTED),
    one("a transfer may not overflow posted credits", tx(A, FULL_CREDITS_POSTED, 6),
        R.OVERFLOWS_CREDITS_POSTED),
    one("a transfer may not overflow pending plus posted debits", tx(HALF_DEBITS, B, 2),
        R.OVERFLOWS_DEBITS),
    one("a reserve may not overflow pending plus posted debits", tx(FULL_DEBITS_PENDING, B, 6),
        R.OVERFLOWS_DEBITS),
    one("a transfer may not overflow pending plus posted credits", pending(A, HALF_CREDITS, 2),
        R.OVERFLOWS_CREDITS),
    one("a transfer that would overdraw a limited account is refused with exceeds credits",
        tx(LIMITED, A, 101), R.EXCEEDS_CREDITS),
    one("a reserve that would overdraw a limited account is refused with exceeds credits",
        pending(LIMITED, A, 101), R.EXCEEDS_CREDITS),
    Row("reserved debits count against a limited account",
        ((pending(LIMITED, A, 60), tx(LIMITED, B, 41)),), ((R.OK, R.EXCEEDS_CREDITS),),
        changes={LIMITED: (60, 0, 0, 100), A: (0, 0, 60, 0)}),
    Row("pending credits do not let a limited account spend them",
        ((pending(A, LIMITED, 50), tx(LIMITED, B, 101)),), ((R.OK, R.EXCEEDS_CREDITS),),
        changes={A: (50, 0, 0, 0), LIMITED: (0, 0, 50, 100)}),
    one("a credit limited account receives no more than its debits",
        tx(A, CREDIT_LIMITED, 101), R.EXCEEDS_DEBITS),
    one("pending credits count against a credit limited account",
        pending(A, CREDIT_LIMITED, 101), R.EXCEEDS_DEBITS),
]

PRECEDENCE = [
    one("a nil id is reported before anything else",
        Transfer(id=ZERO, debit_account_id=None, credit_account_id=None, amount=0,
                 flags=PENDING | POST, timeout_seconds=-1), R.ID_MUST_NOT_BE_ZERO),
    one("a replay of a committed id is compared before it is validated",
        replay(REGULAR, amount=0, debit_account_id=None), R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
    one("a replay differing in flags and amount reports the flags",
        replay(REGULAR, flags=PENDING, amount=8), R.EXISTS_WITH_DIFFERENT_FLAGS),
    one("a replay differing in amount and code reports the amount",
        replay(REGULAR, amount=8, code=2), R.EXISTS_WITH_DIFFERENT_AMOUNT),
    one("a replay differing in user data and ledger reports the user data",
        replay(REGULAR, user_data_32=1, ledger=USD), R.EXISTS_WITH_DIFFERENT_USER_DATA_32),
    one("an id that failed is reported before the transfer is validated again",
        tx(A, A, 0, id=FAILED), R.ID_ALREADY_FAILED),
    one("mutually exclusive flags are reported before missing accounts",
        tx(None, None, 10, flags=PENDING | VOID), R.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    one("a missing debit account is reported before a missing credit account",
        tx(None, None, 0), R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    one("the same account on both sides is reported before a zero amount", tx(A, A, 0),
        R.ACCOUNTS_MUST_BE_DIFFERENT),
    one("a zero amount is reported before an unknown account", tx(UNKNOWN, B, 0),
        R.AMOUNT_MUST_BE_POSITIVE),
    one("an unknown debit account is reported before an unknown credit account",
        tx(UNKNOWN, UNKNOWN_TOO, 1), R.DEBIT_ACCOUNT_NOT_FOUND),
    one("an unknown account is reported before a ledger mismatch",
        tx(A, UNKNOWN, 1, ledger=USD), R.CREDIT_ACCOUNT_NOT_FOUND),
    one("a closed account is reported before a broken limit",
        tx(LIMITED, A, 101), R.DEBIT_ACCOUNT_ALREADY_CLOSED,
        accounts=(balance(LIMITED, limited=True, closed=True, totals=(0, 0, 0, 100)),)),
    one("an overflow is reported before a broken limit",
        tx(LIMITED, A, 6), R.OVERFLOWS_DEBITS_POSTED,
        accounts=(balance(LIMITED, limited=True, totals=(0, AMOUNT_MAX - 5, 0, AMOUNT_MAX)),)),
    one("a post's missing pending transfer is reported before its other fields",
        post(UNKNOWN, 5, debit=A, code=9), R.PENDING_TRANSFER_NOT_FOUND),
    one("a post's wrong account is reported before its amount", post(OPEN.id, 31, debit=A),
        R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID),
    one("a post's excess amount is reported before the pending transfer being posted",
        post(POSTED.id, 41), R.EXCEEDS_PENDING_TRANSFER_AMOUNT),
    one("a post's zero amount is reported before its unknown pending transfer",
        post(UNKNOWN, 0), R.AMOUNT_MUST_BE_POSITIVE),
]

ROWS = SUCCESSES + TWO_PHASE_AND_EXPIRY + LINKED_CHAINS + REFUSALS + PRECEDENCE


def decide(row: Row, state: BatchState) -> BatchDecision:
    return decide_batch(row.submissions, state, batch_id=2, now=row.now, expire=row.expire)


@pytest.mark.parametrize("row", [pytest.param(r, id=r.rule) for r in ROWS])
def test_each_rule_of_a_batch_gives_its_result_and_changes_only_the_totals_it_names(
    row: Row,
) -> None:
    state = world(row.accounts, row.transfers)
    before = {i: a.totals() for i, a in state.accounts.items()}
    decision = decide(row, state)
    assert tuple(tuple(r) for r in decision.results) == row.results
    after = {i: a.totals() for i, a in state.accounts.items()}
    changed = {i: totals for i, totals in after.items() if totals != before[i]}
    assert changed == row.changes
    assert changed.keys() <= decision.touched


def test_the_table_produces_every_transfer_result_code() -> None:
    covered = {result for row in ROWS for results in row.results for result in results}
    assert covered == set(CreateTransferResult), set(CreateTransferResult) - covered


def test_every_rule_of_the_table_has_its_own_sentence() -> None:
    names = Counter(row.rule for row in ROWS)
    assert [name for name, n in names.items() if n > 1] == []


# -- what a decision records ---------------------------------------------------------------


def test_a_failed_id_is_recorded_so_that_a_replay_in_a_later_batch_gets_id_already_failed(
) -> None:
    state = world()
    pay = tx(LIMITED, A, 150)
    first = decide_batch([[pay]], state, batch_id=2, now=NOW)
    assert first.results == [[R.EXCEEDS_CREDITS]]
    assert first.failed == [(pay.id, int(R.EXCEEDS_CREDITS))]
    assert state.failed[pay.id] == R.EXCEEDS_CREDITS
    # The account is funded meanwhile, so the same request would now pass: it still fails.
    funded = decide_batch([[tx(A, LIMITED, 1000)], [pay]], state, batch_id=3, now=NOW)
    assert funded.results == [[R.OK], [R.ID_ALREADY_FAILED]]
    assert funded.failed == []
    assert state.accounts[LIMITED].totals() == (0, 0, 0, 1100)


def test_every_member_of_a_failed_chain_is_recorded_with_its_own_result() -> None:
    state = world()
    first, broken, after = tx(A, B, 1, flags=LINKED), tx(B, A, 0, flags=LINKED), tx(A, B, 2)
    decision = decide_batch([[first, broken, after]], state, batch_id=2, now=NOW)
    assert decision.failed == [
        (first.id, int(R.LINKED_EVENT_FAILED)),
        (broken.id, int(R.AMOUNT_MUST_BE_POSITIVE)),
        (after.id, int(R.LINKED_EVENT_FAILED)),
    ]
    assert decision.transfers == []
    assert decide_batch([[replay(first, flags=0)]], state, batch_id=3, now=NOW).results == [
        [R.ID_ALREADY_FAILED]]


def test_a_chain_left_open_records_every_member_as_failed() -> None:
    state = world()
    first, last = tx(A, B, 1, flags=LINKED), tx(A, B, 2, flags=LINKED)
    decision = decide_batch([[first, last]], state, batch_id=2, now=NOW)
    assert decision.failed == [(first.id, int(R.LINKED_EVENT_FAILED)),
                               (last.id, int(R.LINKED_EVENT_CHAIN_OPEN))]


def test_refusals_of_a_committed_a_nil_or_an_already_failed_id_are_not_recorded_again(
) -> None:
    state = world()
    broken_off = tx(A, B, 1)
    decision = decide_batch(
        [[replay(REGULAR, amount=8)], [tx(A, B, 0, id=ZERO)], [tx(A, B, 0, id=FAILED)],
         [replay(REGULAR, flags=LINKED), broken_off]],
        state, batch_id=2, now=NOW)
    assert decision.results == [
        [R.EXISTS_WITH_DIFFERENT_AMOUNT], [R.ID_MUST_NOT_BE_ZERO], [R.ID_ALREADY_FAILED],
        [R.EXISTS_WITH_DIFFERENT_FLAGS, R.LINKED_EVENT_FAILED]]
    assert decision.failed == [(broken_off.id, int(R.LINKED_EVENT_FAILED))]
    assert state.failed[FAILED] == R.EXCEEDS_CREDITS


def test_a_committed_transfer_is_written_with_its_resolved_fields_in_batch_order() -> None:
    state = world()
    hold = pending(A, B, 10, timeout_seconds=90, user_data_64=5)
    partial = post(OPEN.id, 12, user_data_32=3)
    decision = decide_batch([[tx(A, B, 0)], [hold, partial], [void(hold.id, 10)]], state,
                            batch_id=7, now=NOW)
    assert decision.results == [[R.AMOUNT_MUST_BE_POSITIVE], [R.OK, R.OK], [R.OK]]
    written = decision.transfers
    assert [(t.batch_id, t.batch_index) for t in written] == [(7, 0), (7, 1), (7, 2)]
    assert all(t.created_at == NOW for t in written)
    assert written[0].expires_at == NOW + timedelta(seconds=90)
    assert written[0].user_data_64 == 5
    assert (written[1].debit_account_id, written[1].credit_account_id, written[1].ledger,
            written[1].code, written[1].pending_id, written[1].amount,
            written[1].user_data_32) == (PAYER, PAYEE, THB, 1, OPEN.id, 12, 3)
    assert written[1].expires_at is None
    assert [(r.pending_id, r.status, r.transfer_id) for r in decision.resolutions] == [
        (OPEN.id, PendingStatus.POSTED, partial.id),
        (hold.id, PendingStatus.VOIDED, written[2].id),
    ]
    assert decision.touched == {A, B, PAYER, PAYEE}


def test_an_expiry_is_reported_as_a_resolution_without_a_transfer() -> None:
    state = world()
    decision = decide_batch([], state, batch_id=2, now=NOW, expire=[DUE.id, LATER.id])
    assert [(r.pending_id, r.status, r.transfer_id) for r in decision.resolutions] == [
        (DUE.id, PendingStatus.EXPIRED, None)]
    assert decision.expiries == [COMMITTED[DUE.id]]
    assert state.pending_status[DUE.id] is PendingStatus.EXPIRED
    assert decision.transfers == [] and decision.results == []
    assert decision.touched == {PAYER, PAYEE}


def test_a_failed_chain_leaves_no_resolution_and_no_transfer_behind() -> None:
    state = world()
    decision = decide_batch([[void(OPEN.id, 30, flags=LINKED), pending(A, B, 5, flags=LINKED),
                              tx(A, B, 0)]], state, batch_id=2, now=NOW)
    assert decision.results == [[R.LINKED_EVENT_FAILED, R.LINKED_EVENT_FAILED,
                                 R.AMOUNT_MUST_BE_POSITIVE]]
    assert decision.transfers == [] and decision.resolutions == []
    assert OPEN.id not in state.pending_status
    assert state.transfers == COMMITTED
    assert state.accounts[PAYER].totals() == ACCOUNTS[PAYER].totals()


# -- shared accounts: what the engine needs to re-check a decision made without a lock ------

SHARED_BUDGET, SHARED_POOL = uid(0x51), uid(0x52)
_SHARED = (balance(SHARED_BUDGET, limited=True, shared=True, totals=(0, 0, 0, 100)),
           balance(SHARED_POOL, credit_limited=True, shared=True, totals=(0, 100, 0, 0)),
           balance(B, shared=True))


def test_a_shared_limited_account_reports_the_lowest_headroom_that_any_transfer_left() -> None:
    state = world(_SHARED)
    decision = decide_batch(
        [[tx(SHARED_BUDGET, A, 30)], [tx(SHARED_BUDGET, A, 50)], [tx(A, SHARED_BUDGET, 10)],
         [tx(A, SHARED_POOL, 60)], [tx(A, B, 5)]],
        state, batch_id=2, now=NOW)
    assert decision.results == [[R.OK]] * 5
    # budget: 100 - 30 = 70, - 50 = 20, + 10 = 30; pool: 100 - 60 = 40; B has no limit
    assert decision.shared_min_headroom == {SHARED_BUDGET: 20, SHARED_POOL: 40}
    assert decision.shared_refused == set()
    assert state.accounts[SHARED_BUDGET].headroom == 30


def test_a_shared_account_that_refuses_a_transfer_for_its_limit_is_reported() -> None:
    state = world(_SHARED)
    decision = decide_batch(
        [[tx(SHARED_BUDGET, A, 101)], [tx(A, SHARED_POOL, 101)], [tx(LIMITED, A, 101)],
         [tx(SHARED_BUDGET, A, 0)]],
        state, batch_id=2, now=NOW)
    assert decision.results == [[R.EXCEEDS_CREDITS], [R.EXCEEDS_DEBITS], [R.EXCEEDS_CREDITS],
                                [R.AMOUNT_MUST_BE_POSITIVE]]
    assert decision.shared_refused == {SHARED_BUDGET, SHARED_POOL}  # not LIMITED: unshared
    assert decision.shared_min_headroom == {}


def test_a_shared_account_refusal_inside_a_chain_is_reported_though_the_chain_rolls_back(
) -> None:
    state = world(_SHARED)
    decision = decide_batch([[tx(SHARED_POOL, A, 10, flags=LINKED), tx(SHARED_BUDGET, A, 500)]],
                            state, batch_id=2, now=NOW)
    assert decision.results == [[R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS]]
    assert decision.shared_refused == {SHARED_BUDGET}
    assert decision.touched == set()


# -- exists_result, directly ---------------------------------------------------------------

_STORED_POST = COMMITTED[POST_OF_POSTED.id]
_STORED = COMMITTED[REGULAR.id]

EXISTS_ROWS = [
    ("an identical request", _STORED, replay(REGULAR), R.EXISTS),
    ("a nil pending id means none", _STORED, replay(REGULAR, pending_id=ZERO), R.EXISTS),
    ("a post that leaves accounts, ledger and code empty", _STORED_POST,
     post(POSTED.id, 40, id=POST_OF_POSTED.id), R.EXISTS),
    ("a post that restates them", _STORED_POST, replay(_STORED_POST), R.EXISTS),
    ("a post with nil accounts", _STORED_POST,
     post(POSTED.id, 40, id=POST_OF_POSTED.id, debit=ZERO, credit=ZERO), R.EXISTS),
    ("a regular transfer may not leave its debit account empty", _STORED,
     replay(REGULAR, debit_account_id=None), R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
    ("a regular transfer may not leave its credit account empty", _STORED,
     replay(REGULAR, credit_account_id=ZERO), R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
    ("a regular transfer may not leave its ledger empty", _STORED, replay(REGULAR, ledger=0),
     R.EXISTS_WITH_DIFFERENT_LEDGER),
    ("a regular transfer may not leave its code empty", _STORED, replay(REGULAR, code=0),
     R.EXISTS_WITH_DIFFERENT_CODE),
    ("a post with another debit account", _STORED_POST,
     post(POSTED.id, 40, id=POST_OF_POSTED.id, debit=A), R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
    ("a post with another ledger", _STORED_POST,
     post(POSTED.id, 40, id=POST_OF_POSTED.id, ledger=USD), R.EXISTS_WITH_DIFFERENT_LEDGER),
    ("a post without its pending id", _STORED_POST,
     post(None, 40, id=POST_OF_POSTED.id), R.EXISTS_WITH_DIFFERENT_PENDING_ID),
    ("a void in place of the post", _STORED_POST,
     void(POSTED.id, 40, id=POST_OF_POSTED.id), R.EXISTS_WITH_DIFFERENT_FLAGS),
    ("a linked flag is a different flag", _STORED, replay(REGULAR, flags=LINKED),
     R.EXISTS_WITH_DIFFERENT_FLAGS),
    ("every field differs: the flags are reported", _STORED,
     Transfer(id=REGULAR.id, debit_account_id=A, credit_account_id=B, amount=1, ledger=USD,
              code=9, flags=PENDING, pending_id=OPEN.id, timeout_seconds=3,
              user_data_128=uid(1), user_data_64=1, user_data_32=1),
     R.EXISTS_WITH_DIFFERENT_FLAGS),
    ("pending id before timeout", _STORED,
     replay(REGULAR, pending_id=OPEN.id, timeout_seconds=3), R.EXISTS_WITH_DIFFERENT_PENDING_ID),
    ("timeout before debit account", COMMITTED[LATER.id],
     replay(LATER, timeout_seconds=1, debit_account_id=A), R.EXISTS_WITH_DIFFERENT_TIMEOUT),
    ("debit before credit account", _STORED,
     replay(REGULAR, debit_account_id=A, credit_account_id=B),
     R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
    ("credit account before amount", _STORED, replay(REGULAR, credit_account_id=B, amount=1),
     R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
    ("amount before user data", _STORED, replay(REGULAR, amount=1, user_data_128=ZERO),
     R.EXISTS_WITH_DIFFERENT_AMOUNT),
    ("user data 128 before 64", _STORED, replay(REGULAR, user_data_128=ZERO, user_data_64=0),
     R.EXISTS_WITH_DIFFERENT_USER_DATA_128),
    ("user data 64 before 32", _STORED, replay(REGULAR, user_data_64=0, user_data_32=0),
     R.EXISTS_WITH_DIFFERENT_USER_DATA_64),
    ("user data 32 before ledger", _STORED, replay(REGULAR, user_data_32=0, ledger=USD),
     R.EXISTS_WITH_DIFFERENT_USER_DATA_32),
    ("ledger before code", _STORED, replay(REGULAR, ledger=USD, code=5),
     R.EXISTS_WITH_DIFFERENT_LEDGER),
    ("code last", _STORED, replay(REGULAR, code=5), R.EXISTS_WITH_DIFFERENT_CODE),
]


@pytest.mark.parametrize(("stored", "request_", "expected"),
                         [pytest.param(s, t, e, id=name) for name, s, t, e in EXISTS_ROWS])
def test_a_replay_is_compared_with_the_committed_transfer_field_by_field_in_rank_order(
    stored: StoredTransfer, request_: Transfer, expected: CreateTransferResult,
) -> None:
    assert exists_result(request_, stored) is expected


def test_the_replay_table_produces_every_exists_code() -> None:
    exists_codes = {r for r in CreateTransferResult if r.name.startswith("EXISTS")}
    assert {expected for *_, expected in EXISTS_ROWS} == exists_codes


# -- accounts --------------------------------------------------------------------------------


def new_account(**fields) -> Account:
    fields.setdefault("id", uid(0x7001))
    fields.setdefault("ledger", THB)
    fields.setdefault("code", 1)
    return Account(**fields)


CHECK_ACCOUNT_ROWS = [
    ("a plain account is valid", new_account(), A_.OK),
    ("an account may limit its debits", new_account(debits_must_not_exceed_credits=True), A_.OK),
    ("an account may limit its credits", new_account(credits_must_not_exceed_debits=True),
     A_.OK),
    ("a limited account may be shared",
     new_account(debits_must_not_exceed_credits=True, shared=True), A_.OK),
    ("user data may use the whole signed range",
     new_account(user_data_64=-(2**63), user_data_32=2**31 - 1), A_.OK),
    ("the nil uuid is not an account id", new_account(id=ZERO), A_.ID_MUST_NOT_BE_ZERO),
    ("an account limits its debits or its credits, not both",
     new_account(debits_must_not_exceed_credits=True, credits_must_not_exceed_debits=True),
     A_.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ("an account must name its ledger", new_account(ledger=0), A_.LEDGER_MUST_NOT_BE_ZERO),
    ("a negative ledger is refused", new_account(ledger=-1), A_.LEDGER_MUST_NOT_BE_ZERO),
    ("a ledger past a signed 32 bit integer is refused", new_account(ledger=2**31),
     A_.LEDGER_MUST_NOT_BE_ZERO),
    ("an account must have a code", new_account(code=0), A_.CODE_MUST_NOT_BE_ZERO),
    ("a negative code is refused", new_account(code=-1), A_.CODE_MUST_NOT_BE_ZERO),
    ("a code past a signed 32 bit integer is refused", new_account(code=2**31),
     A_.CODE_MUST_NOT_BE_ZERO),
    ("user data 64 past a signed 64 bit integer is refused", new_account(user_data_64=2**63),
     A_.USER_DATA_OUT_OF_RANGE),
    ("user data 64 below a signed 64 bit integer is refused",
     new_account(user_data_64=-(2**63) - 1), A_.USER_DATA_OUT_OF_RANGE),
    ("user data 32 past a signed 32 bit integer is refused", new_account(user_data_32=2**31),
     A_.USER_DATA_OUT_OF_RANGE),
    ("a nil id is reported before conflicting flags",
     new_account(id=ZERO, debits_must_not_exceed_credits=True,
                 credits_must_not_exceed_debits=True), A_.ID_MUST_NOT_BE_ZERO),
    ("conflicting flags are reported before a missing ledger",
     new_account(ledger=0, debits_must_not_exceed_credits=True,
                 credits_must_not_exceed_debits=True), A_.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ("a missing ledger is reported before a missing code", new_account(ledger=0, code=0),
     A_.LEDGER_MUST_NOT_BE_ZERO),
    ("a missing code is reported before user data", new_account(code=0, user_data_32=2**31),
     A_.CODE_MUST_NOT_BE_ZERO),
]

_ACCOUNT = new_account(user_data_128=uid(5), user_data_64=6, user_data_32=7)
_ROW = msgspec.structs.asdict(_ACCOUNT)

ACCOUNT_EXISTS_ROWS = [
    ("an identical account exists", _ACCOUNT, A_.EXISTS),
    ("a debit limit that differs", msgspec.structs.replace(
        _ACCOUNT, debits_must_not_exceed_credits=True), A_.EXISTS_WITH_DIFFERENT_FLAGS),
    ("a credit limit that differs", msgspec.structs.replace(
        _ACCOUNT, credits_must_not_exceed_debits=True), A_.EXISTS_WITH_DIFFERENT_FLAGS),
    ("a shared flag that differs", msgspec.structs.replace(_ACCOUNT, shared=True),
     A_.EXISTS_WITH_DIFFERENT_FLAGS),
    ("other user data 128", msgspec.structs.replace(_ACCOUNT, user_data_128=ZERO),
     A_.EXISTS_WITH_DIFFERENT_USER_DATA_128),
    ("other user data 64", msgspec.structs.replace(_ACCOUNT, user_data_64=0),
     A_.EXISTS_WITH_DIFFERENT_USER_DATA_64),
    ("other user data 32", msgspec.structs.replace(_ACCOUNT, user_data_32=0),
     A_.EXISTS_WITH_DIFFERENT_USER_DATA_32),
    ("another ledger", msgspec.structs.replace(_ACCOUNT, ledger=USD),
     A_.EXISTS_WITH_DIFFERENT_LEDGER),
    ("another code", msgspec.structs.replace(_ACCOUNT, code=2), A_.EXISTS_WITH_DIFFERENT_CODE),
    ("flags are reported before the code", msgspec.structs.replace(
        _ACCOUNT, code=2, debits_must_not_exceed_credits=True), A_.EXISTS_WITH_DIFFERENT_FLAGS),
    ("user data is reported before the ledger", msgspec.structs.replace(
        _ACCOUNT, ledger=USD, user_data_64=1), A_.EXISTS_WITH_DIFFERENT_USER_DATA_64),
    ("the ledger is reported before the code", msgspec.structs.replace(
        _ACCOUNT, ledger=USD, code=2), A_.EXISTS_WITH_DIFFERENT_LEDGER),
]


@pytest.mark.parametrize(("account", "expected"),
                         [pytest.param(a, e, id=name) for name, a, e in CHECK_ACCOUNT_ROWS])
def test_an_account_is_checked_without_the_database_in_rank_order(
    account: Account, expected: CreateAccountResult,
) -> None:
    assert check_account(account) is expected


@pytest.mark.parametrize(("account", "expected"),
                         [pytest.param(a, e, id=name) for name, a, e in ACCOUNT_EXISTS_ROWS])
def test_an_account_created_twice_is_compared_with_the_stored_one_in_rank_order(
    account: Account, expected: CreateAccountResult,
) -> None:
    assert account_exists_result(account, _ROW) is expected


def test_the_account_tables_produce_every_account_result_code() -> None:
    covered = {e for *_, e in CHECK_ACCOUNT_ROWS} | {e for *_, e in ACCOUNT_EXISTS_ROWS}
    assert covered == set(CreateAccountResult), set(CreateAccountResult) - covered


# -- bugs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [-1, 2**31])
def test_a_transfer_whose_code_the_database_cannot_hold_is_refused_with_code_must_not_be_zero(
    code: int,
) -> None:
    decision = decide_batch([[tx(A, B, 10, code=code)]], world(), batch_id=2, now=NOW)
    assert decision.results == [[R.CODE_MUST_NOT_BE_ZERO]]


@pytest.mark.parametrize("user_data", [{"user_data_64": 2**63}, {"user_data_64": -(2**63) - 1},
                                       {"user_data_32": 2**31}, {"user_data_32": -(2**31) - 1}])
def test_a_transfer_whose_user_data_the_database_cannot_hold_is_refused(
    user_data: dict[str, int],
) -> None:
    decision = decide_batch([[tx(A, B, 10, **user_data)], [post(OPEN.id, 30, **user_data)]],
                            world(), batch_id=2, now=NOW)
    assert not any(result.succeeded for results in decision.results for result in results)


def test_a_nil_id_in_a_failed_or_open_chain_is_never_recorded_as_failed() -> None:
    decision = decide_batch(
        [[tx(A, B, 0, flags=LINKED), tx(A, B, 1, id=ZERO)],
         [tx(A, B, 1, flags=LINKED), tx(A, B, 1, id=ZERO, flags=LINKED)]],
        world(), batch_id=2, now=NOW)
    assert decision.results == [[R.AMOUNT_MUST_BE_POSITIVE, R.LINKED_EVENT_FAILED],
                                [R.LINKED_EVENT_FAILED, R.LINKED_EVENT_CHAIN_OPEN]]
    assert ZERO not in [failed_id for failed_id, _ in decision.failed]


# -- hypothesis: random batches keep every invariant ----------------------------------------

BANK = uid(0x100)  # no limit: the source of the money
THB_ACCOUNTS = [BANK, *(uid(0x101 + n) for n in range(4))]
USD_ACCOUNTS = [uid(0x1F0), uid(0x1F1)]
AMOUNTS = st.one_of(
    st.integers(1, 5_000),
    st.sampled_from([0, -1, -(2**63), 1_000_000, 2**62, AMOUNT_MAX, AMOUNT_MAX + 1]),
)
ACCOUNT_CHOICES = [*THB_ACCOUNTS, *THB_ACCOUNTS, *USD_ACCOUNTS, UNKNOWN, None, ZERO]


def starting_state(limits: Sequence[str], shared: Sequence[bool], closed: int | None,
                   ) -> BatchState:
    accounts = {}
    for n, account_id in enumerate(THB_ACCOUNTS):
        limit = limits[n - 1] if n else "none"
        accounts[account_id] = balance(account_id, limited=limit == "debits",
                                       credit_limited=limit == "credits", closed=n == closed,
                                       shared=n > 0 and shared[n - 1])
    for account_id in USD_ACCOUNTS:
        accounts[account_id] = balance(account_id, ledger=USD)
    return BatchState(accounts=accounts, transfers={}, failed={}, pending_status={})


KINDS = st.sampled_from(["transfer", "transfer", "transfer", "pending", "pending", "post",
                         "void", "replay", "changed", "odd"])
LINKS = st.sampled_from([0, 0, 0, int(LINKED)])
NEW_IDS = st.integers(0, 40)  # 0: the nil id
NEW_TRANSFERS = st.tuples(
    st.sampled_from(ACCOUNT_CHOICES), st.sampled_from(ACCOUNT_CHOICES), AMOUNTS,
    st.sampled_from([THB] * 6 + [USD, USD, 0]), st.sampled_from([1, 1, 1, 1, 2, 0]),
    st.sampled_from([None] * 12 + [UNKNOWN]), st.integers(-2, 2), st.integers(0, 31), LINKS,
    NEW_IDS,
)
PENDING_TIMEOUTS = st.sampled_from([0, 0, 1, 30, 600, -1, 2**31])
OTHER_TIMEOUTS = st.sampled_from([0] * 12 + [5])
CHANGES = st.sampled_from(["amount", "code", "user_data_64", "flags", "debit_account_id",
                           "ledger"])
POSTS = st.tuples(
    st.integers(0, 4), st.integers(0, 4), AMOUNTS, st.integers(0, 5),
    st.sampled_from(ACCOUNT_CHOICES), st.sampled_from([0, 0, 0, THB, USD]),
    st.sampled_from([0, 0, 0, 1, 2]), LINKS, NEW_IDS, st.sampled_from([None, UNKNOWN]),
    st.booleans(),
)
CLEAN = st.tuples(st.integers(0, 9), st.integers(0, len(THB_ACCOUNTS) - 1),
                  st.integers(1, len(THB_ACCOUNTS) - 1),
                  st.one_of(st.integers(1, 3_000), st.sampled_from([2**62, AMOUNT_MAX])))
SIZES = st.tuples(st.integers(1, 4), st.lists(st.integers(1, 6), min_size=4, max_size=4))


class TransferDrawer:
    """Draws transfers that reuse what was sent before: pendings to post, ids to replay."""

    def __init__(self, data: st.DataObject, state: BatchState) -> None:
        self.data = data
        self.state = state  # read only: its committed pending transfers are posted and voided
        self.sent: list[Transfer] = []
        self.ids = itertools.count(0x10_0000)

    def new_id(self, zero: int) -> uuid.UUID:
        return ZERO if zero == 0 else uid(next(self.ids))

    def transfer(self) -> Transfer:
        draw = self.data.draw
        kind = draw(KINDS)
        if kind in ("post", "void"):
            t = self.post_or_void(POST if kind == "post" else VOID)
        elif kind in ("replay", "changed") and self.sent:
            t = self.sent[draw(st.integers(0, len(self.sent) - 1))]
            if kind == "changed":
                name = draw(CHANGES)
                value = {"amount": t.amount + 1, "code": t.code + 1,
                         "user_data_64": t.user_data_64 + 1, "flags": t.flags ^ PENDING,
                         "debit_account_id": BANK, "ledger": USD}[name]
                t = msgspec.structs.replace(t, **{name: value})
        else:
            (debit, credit, amount, ledger, code, pending_id, user_data, odd_flags, linked,
             zero) = draw(NEW_TRANSFERS)
            clean, debit_index, offset, clean_amount = draw(CLEAN)
            if clean < 6:  # most transfers are valid, so that there is something to refuse
                debit = THB_ACCOUNTS[debit_index]
                credit = THB_ACCOUNTS[(debit_index + offset) % len(THB_ACCOUNTS)]
                amount, ledger, code, pending_id = clean_amount, THB, 1, None
                odd_flags &= ~(POST | VOID)
            pending_flag = int(PENDING) if kind == "pending" else 0
            t = Transfer(
                id=self.new_id(zero), debit_account_id=debit, credit_account_id=credit,
                amount=amount, ledger=ledger, code=code,
                flags=(odd_flags if kind == "odd" else pending_flag) | linked,
                pending_id=pending_id,
                timeout_seconds=draw(PENDING_TIMEOUTS if pending_flag else OTHER_TIMEOUTS),
                user_data_64=user_data,
            )
        self.sent.append(t)
        return t

    def post_or_void(self, kind: int) -> Transfer:
        (pick, amount_choice, amount, same, account, ledger, code, linked, zero,
         missing, clean) = self.data.draw(POSTS)
        if clean:  # a valid post or void, if it names a pending transfer still pending
            amount_choice, same, ledger, code = (0 if kind == VOID else amount_choice % 3), 0, 0, 0
        pendings: list[Transfer | StoredTransfer] = [
            t for t in self.state.transfers.values() if t.flags & PENDING]
        pendings += [t for t in self.sent[-6:] if t.flags & PENDING]  # maybe in this batch
        p: Transfer | StoredTransfer | None = None
        if pendings and pick > 0:
            p = pendings[pick * 7919 % len(pendings)]
        elif self.sent:
            p = self.sent[pick * 7919 % len(self.sent)]
        if p is not None:
            reserved = p.amount
            amount = [reserved, reserved - 1, max(1, reserved // 2), reserved + 1,
                      amount][amount_choice]
        return Transfer(
            id=self.new_id(zero),
            debit_account_id=p.debit_account_id if p is not None and same == 1 else (
                account if same == 2 else None),
            credit_account_id=p.credit_account_id if p is not None and same == 1 else None,
            amount=amount, ledger=ledger, code=code, flags=kind | linked,
            pending_id=p.id if p is not None else missing,
        )

    def batch(self) -> list[list[Transfer]]:
        count, sizes = self.data.draw(SIZES)
        return [[self.transfer() for _ in range(size)] for size in sizes[:count]]


def chains(submission: Sequence[Transfer]) -> list[range]:
    """The linked chains of a submission (a chain open at the end included)."""
    found, start = [], 0
    for position, t in enumerate(submission):
        if not t.flags & LINKED or position == len(submission) - 1:
            found.append(range(start, position + 1))
            start = position + 1
    return found


def copy_state(state: BatchState) -> BatchState:
    return BatchState({i: msgspec.structs.replace(a) for i, a in state.accounts.items()},
                      dict(state.transfers), dict(state.failed), dict(state.pending_status))


def assert_ledger_invariants(state: BatchState) -> None:
    """Money is conserved per ledger, no limit is broken, and every account's totals are
    the sums of the committed transfers (what verify_ledger checks in the database)."""
    sums: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for a in state.accounts.values():
        for n, total in enumerate(a.totals()):
            sums[a.ledger][n] += total
            assert 0 <= total <= AMOUNT_MAX
        assert a.debits_pending + a.debits_posted <= AMOUNT_MAX
        assert a.credits_pending + a.credits_posted <= AMOUNT_MAX
        if a.debits_must_not_exceed_credits:
            assert a.debits_pending + a.debits_posted <= a.credits_posted, a
        if a.credits_must_not_exceed_debits:
            assert a.credits_pending + a.credits_posted <= a.debits_posted, a
    for ledger, (debits_pending, debits_posted, credits_pending, credits_posted) in sums.items():
        assert (debits_pending, debits_posted) == (credits_pending, credits_posted), ledger

    expected: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    resolutions: Counter[uuid.UUID] = Counter()
    for t in state.transfers.values():
        debit, credit = expected[t.debit_account_id], expected[t.credit_account_id]
        if t.flags & PENDING:
            status = state.pending_status.get(t.id, PendingStatus.PENDING)
            if status is PendingStatus.PENDING:
                debit[0] += t.amount
                credit[2] += t.amount
        elif t.flags & (POST | VOID):
            resolutions[t.pending_id] += 1
            wanted = PendingStatus.POSTED if t.flags & POST else PendingStatus.VOIDED
            assert state.pending_status[t.pending_id] is wanted
            assert state.transfers[t.pending_id].flags & PENDING
            if t.flags & POST:
                assert t.amount <= state.transfers[t.pending_id].amount
                debit[1] += t.amount
                credit[3] += t.amount
        else:
            debit[1] += t.amount
            credit[3] += t.amount
    assert all(n == 1 for n in resolutions.values())
    for account_id, a in state.accounts.items():
        assert a.totals() == tuple(expected.get(account_id, (0, 0, 0, 0))), account_id
    assert state.transfers.keys().isdisjoint(state.failed.keys())


def replayed_changes(decision: BatchDecision, state: BatchState) -> dict[uuid.UUID, list[int]]:
    """What the decision's rows do to the totals, replayed from zero."""
    delta: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for p in decision.expiries:
        delta[p.debit_account_id][0] -= p.amount
        delta[p.credit_account_id][2] -= p.amount
    for t in decision.transfers:
        debit, credit = delta[t.debit_account_id], delta[t.credit_account_id]
        if t.flags & PENDING:
            debit[0] += t.amount
            credit[2] += t.amount
            continue
        if t.flags & (POST | VOID):
            reserved = state.transfers[t.pending_id].amount
            debit[0] -= reserved
            credit[2] -= reserved
            if t.flags & VOID:
                continue
        debit[1] += t.amount
        credit[3] += t.amount
    return {i: d for i, d in delta.items() if any(d)}


def committed_headrooms(decision: BatchDecision, state: BatchState,
                        before: dict[uuid.UUID, Totals]) -> dict[uuid.UUID, list[int]]:
    """The headroom of each shared limited account after each committed transfer (not a
    post or void: those only ever release), replayed from the totals before the batch."""
    totals = {i: list(t) for i, t in before.items()}
    for p in decision.expiries:
        totals[p.debit_account_id][0] -= p.amount
        totals[p.credit_account_id][2] -= p.amount
    left: dict[uuid.UUID, list[int]] = defaultdict(list)
    for t in decision.transfers:
        debit, credit = totals[t.debit_account_id], totals[t.credit_account_id]
        if t.flags & (POST | VOID):
            reserved = state.transfers[t.pending_id].amount
            debit[0] -= reserved
            credit[2] -= reserved
            if t.flags & POST:
                debit[1] += t.amount
                credit[3] += t.amount
            continue
        side = 0 if t.flags & PENDING else 1
        debit[side] += t.amount
        credit[2 + side] += t.amount
        for account_id in (t.debit_account_id, t.credit_account_id):
            a = state.accounts[account_id]
            dp, dpo, cp, cpo = totals[account_id]
            if a.shared and a.debits_must_not_exceed_credits:
                left[account_id].append(cpo - dp - dpo)
            elif a.shared and a.credits_must_not_exceed_debits:
                left[account_id].append(dpo - cp - cpo)
    return left


def decide_and_check(submissions: list[list[Transfer]], state: BatchState, *, batch_id: int,
                     now: datetime, expire: Sequence[uuid.UUID]) -> BatchDecision:
    before = {i: a.totals() for i, a in state.accounts.items()}
    known_before = state.transfers.keys() | state.failed.keys()
    alone = copy_state(state)
    decision = decide_batch(submissions, state, batch_id=batch_id, now=now, expire=expire)

    assert [len(r) for r in decision.results] == [len(s) for s in submissions]
    pairs = [(t, r) for s, rs in zip(submissions, decision.results, strict=True)
             for t, r in zip(s, rs, strict=True)]
    ok = [t.id for t, r in pairs if r is R.OK]
    assert sorted(ok) == sorted(t.id for t in decision.transfers)
    assert len(set(ok)) == len(ok)
    assert known_before.isdisjoint(ok)
    assert [t.batch_index for t in decision.transfers] == list(range(len(decision.transfers)))
    for t, r in pairs:
        if not r.succeeded and r is not R.ID_MUST_NOT_BE_ZERO:
            assert t.id.int == 0 or t.id in state.failed or t.id in state.transfers, (t, r)
    for s, rs in zip(submissions, decision.results, strict=True):
        for chain in chains(s):
            chain_results = [rs[n] for n in chain]
            if any(r.succeeded for r in chain_results):
                assert all(r.succeeded for r in chain_results), chain_results
            else:
                assert sum(r is not R.LINKED_EVENT_FAILED for r in chain_results) == 1

    after = {i: a.totals() for i, a in state.accounts.items()}
    changed = {i: [x - y for x, y in zip(after[i], before[i], strict=True)]
               for i in after if after[i] != before[i]}
    assert changed == replayed_changes(decision, state)
    assert changed.keys() <= decision.touched
    assert_ledger_invariants(state)
    # What the engine re-checks for shared accounts once it holds their locks: the lowest
    # headroom reported is at most every headroom a committed transfer left behind.
    left = committed_headrooms(decision, state, before)
    assert left.keys() <= decision.shared_min_headroom.keys()
    for account_id, lowest in decision.shared_min_headroom.items():
        assert state.accounts[account_id].shared and lowest >= 0
        assert lowest <= min(left.get(account_id, [lowest])), (lowest, left[account_id])
    for account_id in decision.shared_refused:
        assert state.accounts[account_id].shared
        assert state.accounts[account_id].headroom is not None

    # The same submissions sent one by one (after the same expiries) decide the same way.
    named = [t.pending_id for s in submissions for t in s
             if t.flags & (POST | VOID) and t.pending_id is not None]
    decide_batch([], alone, batch_id=batch_id, now=now, expire=[*expire, *named])
    one_by_one = [decide_batch([s], alone, batch_id=batch_id, now=now).results[0]
                  for s in submissions]
    assert one_by_one == decision.results
    assert {i: a.totals() for i, a in alone.accounts.items()} == after
    return decision


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(),
       limits=st.lists(st.sampled_from(["none", "debits", "credits"]), min_size=4, max_size=4),
       shared=st.lists(st.booleans(), min_size=4, max_size=4),
       closed=st.sampled_from([None, None, None, 4]))
def test_random_batches_conserve_money_keep_every_limit_and_replays_change_nothing(
    data: st.DataObject, limits: list[str], shared: list[bool], closed: int | None,
) -> None:
    state = starting_state(limits, shared, closed)
    drawer = TransferDrawer(data, state)
    funding = [tx(BANK, a, 10_000) for a in THB_ACCOUNTS[1:]]
    funding.append(tx(USD_ACCOUNTS[0], USD_ACCOUNTS[1], 10_000, ledger=USD))
    now = NOW
    decide_and_check([funding, *drawer.batch()], state, batch_id=1, now=now, expire=())
    for batch_id in range(2, 2 + data.draw(st.integers(1, 3))):
        now += timedelta(seconds=data.draw(st.sampled_from([0, 1, 30, 601, 10**6])))
        pendings = [i for i, t in state.transfers.items() if t.flags & PENDING]
        expire = data.draw(st.lists(st.sampled_from(pendings), max_size=3)) if pendings else []
        submissions = drawer.batch()
        last = decide_and_check(submissions, state, batch_id=batch_id, now=now, expire=expire)

    # Replaying the last batch, unchanged, changes nothing: what succeeded now exists.
    before = {i: a.totals() for i, a in state.accounts.items()}
    again = decide_and_check(submissions, state, batch_id=99, now=now, expire=expire)
    assert again.transfers == [] and again.resolutions == []
    assert again.failed == []
    assert {i: a.totals() for i, a in state.accounts.items()} == before
    for first_results, replay_results in zip(last.results, again.results, strict=True):
        for first_result, replay_result in zip(first_results, replay_results, strict=True):
            assert replay_result is R.EXISTS if first_result.succeeded else (
                not replay_result.succeeded)
