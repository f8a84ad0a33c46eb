"""ledger_core: the double-entry ledger through which every satang moves.

Nouns (after TigerBeetle): a **ledger** (one currency), an **account** (four totals:
debits/credits, pending/posted; limit flags; closed), a **transfer** (debits one account and
credits another by an integer amount > 0; immutable; its id, chosen by the client, is the
idempotency key). Two-phase transfers reserve (pending) and then post, void or expire.

Invariants:
- per ledger, sum of debits == sum of credits, posted and pending;
- every account's totals == the sums of its transfers;
- no limit flag is ever violated (checked in Python, then by CHECK constraints);
- transfers are never updated or deleted (a trigger refuses it); every committed batch
  extends a SHA-256 hash chain with Ed25519-signed checkpoints;
- a transfer id succeeds at most once, and an id whose first attempt failed never succeeds.

Layout: ``model`` (structs and ranked result enums), ``checks`` (the pure batch decision),
``engine`` (the batching I/O shell), ``accounts``, ``chain`` (hashing, signing), ``verify``
(invariant checks), ``queries.sql`` (named SQL), ``sql`` (the loader).

Imports nothing of this project: every other package builds on it.
"""

from ledger_core.accounts import close_account, create_accounts
from ledger_core.checks import BatchView, Computation, Computed, RowConflict, RowStore
from ledger_core.engine import (
    Effect,
    EngineConfig,
    LedgerEngine,
    LedgerOverloaded,
    LedgerUnavailable,
)
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
    new_id,
)
from ledger_core.verify import VerifyReport, verify_ledger

__all__ = [
    "AMOUNT_MAX",
    "Account",
    "AccountBalance",
    "BatchView",
    "Computation",
    "Computed",
    "RowConflict",
    "RowStore",
    "CreateAccountResult",
    "CreateTransferResult",
    "Effect",
    "EngineConfig",
    "LedgerEngine",
    "LedgerOverloaded",
    "LedgerUnavailable",
    "PendingStatus",
    "StoredTransfer",
    "Transfer",
    "TransferFlags",
    "VerifyReport",
    "close_account",
    "create_accounts",
    "new_id",
    "verify_ledger",
]
