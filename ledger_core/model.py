"""The ledger's nouns: accounts, transfers, and the ranked results of creating them.

Modelled on TigerBeetle: an account keeps four totals; a transfer debits one account and
credits another, is immutable, and is identified by an id the client chooses (the
idempotency key). Amounts are integer satang; 0 < amount <= AMOUNT_MAX (PostgreSQL bigint).
"""

from __future__ import annotations

import enum
import os
import time
import uuid
from datetime import datetime

import msgspec
from asyncpg.pgproto.pgproto import UUID as _FastUUID

AMOUNT_MAX = 2**63 - 1  # PostgreSQL bigint; every total must stay within it too.
TIMEOUT_MAX_SECONDS = 2**31 - 1
ZERO_ID = uuid.UUID(int=0)


def new_id() -> uuid.UUID:
    """A new time-ordered (version 7, RFC 9562) id for an account or transfer.

    48 bits of Unix milliseconds, then 74 random bits: ids made close in time sort close
    together, so the primary-key B-tree of ``ledger_transfers`` takes new ids on its rightmost
    pages instead of on a random leaf of a table of millions (measured: BENCHMARKS.md). The
    random bits keep ids unguessable and unique across processes.

    It is asyncpg's C-implemented ``uuid.UUID`` subclass: equal and hash-equal to the
    standard one, but hashing it and taking its bytes cost a third as much, which counts when
    a batch hashes and encodes thousands of ids.
    """
    unix_ms = time.time_ns() // 1_000_000
    raw = bytearray(unix_ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return _FastUUID(bytes(raw))


class TransferFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1  # this transfer and the next one succeed or fail together
    PENDING = 2  # reserve the amount (two-phase, phase one)
    POST_PENDING_TRANSFER = 4  # phase two: post all or part of the pending amount
    VOID_PENDING_TRANSFER = 8  # phase two: release the pending amount


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """What a client asks to create. Totals start at zero and change only by transfers."""

    id: uuid.UUID
    ledger: int  # the currency's ledger; transfers only move money within one ledger
    code: int  # why the account exists (citizen wallet, program budget, ...)
    debits_must_not_exceed_credits: bool = False
    credits_must_not_exceed_debits: bool = False
    # Touched by many concurrent transfers (a program budget): locked last and briefly.
    shared: bool = False
    # Keeps a listable history of its transfers (a citizen's wallet): its side of each
    # transfer goes into a per-account index. Like TigerBeetle's `history` flag.
    history: bool = False
    user_data_128: uuid.UUID = ZERO_ID
    user_data_64: int = 0
    user_data_32: int = 0


class AccountBalance(msgspec.Struct, gc=False):
    """An account row as the engine reads it under lock and changes it in memory.

    Positional, in the column order of the engine's queries, so a row becomes a balance
    with ``AccountBalance(*row)`` (the hot path reads thousands per batch).
    """

    id: uuid.UUID
    ledger: int
    code: int
    debits_must_not_exceed_credits: bool
    credits_must_not_exceed_debits: bool
    closed: bool
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    shared: bool = False
    history: bool = False

    @property
    def balance_posted(self) -> int:
        """Credits minus debits, posted: what a credit-normal account (a wallet) holds."""
        return self.credits_posted - self.debits_posted

    def totals(self) -> tuple[int, int, int, int]:
        return (self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted)

    @property
    def headroom(self) -> int | None:
        """How much more the limited side may grow; None for an account without a limit."""
        if self.debits_must_not_exceed_credits:
            return self.credits_posted - self.debits_pending - self.debits_posted
        if self.credits_must_not_exceed_debits:
            return self.debits_posted - self.credits_pending - self.credits_posted
        return None


class Transfer(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A request to move ``amount`` from ``debit_account_id`` to ``credit_account_id``.

    For a post or void of a pending transfer, ``debit_account_id``, ``credit_account_id``,
    ``ledger`` and ``code`` may be left ``None``/0: they are taken from the pending transfer
    (if given they must match it). A void's amount must equal the pending amount; a post's
    amount may be less (the rest is released).
    """

    id: uuid.UUID
    debit_account_id: uuid.UUID | None
    credit_account_id: uuid.UUID | None
    amount: int
    ledger: int = 0
    code: int = 0
    flags: int = 0
    pending_id: uuid.UUID | None = None
    timeout_seconds: int = 0  # pending transfers only; 0 means it never expires
    user_data_128: uuid.UUID = ZERO_ID
    user_data_64: int = 0
    user_data_32: int = 0


class StoredTransfer(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A committed transfer row: the request's fields, resolved, plus where it sits."""

    id: uuid.UUID
    debit_account_id: uuid.UUID
    credit_account_id: uuid.UUID
    amount: int
    ledger: int
    code: int
    flags: int
    pending_id: uuid.UUID | None
    timeout_seconds: int
    user_data_128: uuid.UUID
    user_data_64: int
    user_data_32: int
    batch_id: int
    batch_index: int
    created_at: datetime
    expires_at: datetime | None


class PendingStatus(enum.IntEnum):
    """The state of a pending transfer. Every pending transfer resolves at most once."""

    PENDING = 0
    POSTED = 1
    VOIDED = 2
    EXPIRED = 3


class CreateTransferResult(enum.IntEnum):
    """The outcome of one transfer, ranked: when several rules are broken, the lowest wins.

    Each value's comment states the rule. ``OK`` and ``EXISTS`` are successes (``EXISTS``:
    this very transfer was already committed, so the replay changes nothing).
    """

    OK = 0
    LINKED_EVENT_FAILED = 1  # another transfer of its linked chain failed
    LINKED_EVENT_CHAIN_OPEN = 2  # the last transfer of a submission must not be linked
    ID_MUST_NOT_BE_ZERO = 3  # the nil UUID is not an id
    EXISTS_WITH_DIFFERENT_FLAGS = 10  # the id was used for a transfer with other flags
    EXISTS_WITH_DIFFERENT_PENDING_ID = 11
    EXISTS_WITH_DIFFERENT_TIMEOUT = 12
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 13
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 14
    EXISTS_WITH_DIFFERENT_AMOUNT = 15
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = 16
    EXISTS_WITH_DIFFERENT_USER_DATA_64 = 17
    EXISTS_WITH_DIFFERENT_USER_DATA_32 = 18
    EXISTS_WITH_DIFFERENT_LEDGER = 19
    EXISTS_WITH_DIFFERENT_CODE = 20
    EXISTS = 21  # the same transfer was already committed: nothing more happens
    ID_ALREADY_FAILED = 22  # the id's first attempt failed; an id never succeeds later
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 30  # at most one of pending, post, void
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 31
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 32
    ACCOUNTS_MUST_BE_DIFFERENT = 33  # a transfer moves money between two accounts
    PENDING_ID_MUST_BE_ZERO = 34  # only a post or void names a pending transfer
    PENDING_ID_MUST_NOT_BE_ZERO = 35  # a post or void must name its pending transfer
    PENDING_ID_MUST_BE_DIFFERENT = 36  # a transfer cannot post or void itself
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 37  # only a pending transfer may expire
    TIMEOUT_OUT_OF_RANGE = 38  # 0 <= timeout_seconds <= 2**31 - 1
    AMOUNT_MUST_BE_POSITIVE = 39  # amounts are > 0 satang
    AMOUNT_EXCEEDS_MAXIMUM = 40  # amounts are <= 2**63 - 1 satang
    LEDGER_MUST_NOT_BE_ZERO = 41  # 0 < ledger < 2**31 (also: a ledger the database cannot hold)
    CODE_MUST_NOT_BE_ZERO = 42  # 0 < code < 2**31 (also: a code the database cannot hold)
    DEBIT_ACCOUNT_NOT_FOUND = 43
    CREDIT_ACCOUNT_NOT_FOUND = 44
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 45
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 46
    USER_DATA_OUT_OF_RANGE = 47  # user_data_64 / user_data_32 are signed 64 / 32 bit
    PENDING_TRANSFER_NOT_FOUND = 50
    PENDING_TRANSFER_NOT_PENDING = 51  # the named transfer was not created as pending
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 52
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 53
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 54
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = 55
    EXCEEDS_PENDING_TRANSFER_AMOUNT = 56  # a post cannot post more than was reserved
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 57  # a void releases exactly what was reserved
    PENDING_TRANSFER_ALREADY_POSTED = 58
    PENDING_TRANSFER_ALREADY_VOIDED = 59
    PENDING_TRANSFER_EXPIRED = 60
    DEBIT_ACCOUNT_ALREADY_CLOSED = 70  # a closed account takes no new transfers
    CREDIT_ACCOUNT_ALREADY_CLOSED = 71
    OVERFLOWS_DEBITS_PENDING = 80  # no total may pass 2**63 - 1
    OVERFLOWS_CREDITS_PENDING = 81
    OVERFLOWS_DEBITS_POSTED = 82
    OVERFLOWS_CREDITS_POSTED = 83
    OVERFLOWS_DEBITS = 84
    OVERFLOWS_CREDITS = 85
    EXCEEDS_CREDITS = 90  # debits_must_not_exceed_credits: debits would pass posted credits
    EXCEEDS_DEBITS = 91  # credits_must_not_exceed_debits: credits would pass posted debits

    @property
    def succeeded(self) -> bool:
        return self is CreateTransferResult.OK or self is CreateTransferResult.EXISTS


class CreateAccountResult(enum.IntEnum):
    """The outcome of creating one account, ranked like transfer results."""

    OK = 0
    ID_MUST_NOT_BE_ZERO = 1
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 2  # an account limits its debits or its credits, not both
    LEDGER_MUST_NOT_BE_ZERO = 3
    CODE_MUST_NOT_BE_ZERO = 4
    USER_DATA_OUT_OF_RANGE = 5  # user_data_64 and user_data_32 are signed 64 / 32 bit
    EXISTS_WITH_DIFFERENT_FLAGS = 10
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = 11
    EXISTS_WITH_DIFFERENT_USER_DATA_64 = 12
    EXISTS_WITH_DIFFERENT_USER_DATA_32 = 13
    EXISTS_WITH_DIFFERENT_LEDGER = 14
    EXISTS_WITH_DIFFERENT_CODE = 15
    EXISTS = 16

    @property
    def succeeded(self) -> bool:
        return self is CreateAccountResult.OK or self is CreateAccountResult.EXISTS
