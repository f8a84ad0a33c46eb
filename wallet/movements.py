"""What a citizen sees of their money: the wallet's balance and its movements.

The ledger is the only truth: the balance is the wallet account's totals and the movements
are the ledger transfers that debit or credit it (indexed per account by migration 0005),
newest first. A movement's kind comes from the transfer: the top-up code, or a payment of
this citizen named by ``user_data_128`` (payments: debit = payment, credit = refund);
anything else is ``other`` until its feature names it.

Shown: posted transfers (plain, and the posting of a two-phase transfer) and pending
transfers not yet resolved (a payment in flight). Voids and resolved pending transfers are
not shown (the posting stands for them, or nothing happened).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import asyncpg
import msgspec

from gwallet.ids import format_id, parse_id
from gwallet.pagination import Page, PageParams
from gwallet.problems import FieldError, InvalidParameter
from ledger_core import TransferFlags
from ledger_core.sql import load_queries
from wallet.accounts import TOP_UP

Q = load_queries(Path(__file__).with_name("queries_movements.sql"))

_BIGINT_MAX = 2**63 - 1
_INT_MAX = 2**31 - 1


class Balance(msgspec.Struct, frozen=True):
    balance: int  # posted: credits - debits
    available: int  # what can be spent now: the balance less pending debits
    pending_debits: int
    pending_credits: int


async def wallet_balance(db: asyncpg.Pool | asyncpg.Connection, account_id: uuid.UUID) -> Balance:
    row = await db.fetchrow(Q["wallet_balance"], account_id)
    assert row is not None, "every citizen's wallet account exists"
    balance = row["credits_posted"] - row["debits_posted"]
    return Balance(
        balance=balance,
        available=balance - row["debits_pending"],
        pending_debits=row["debits_pending"],
        pending_credits=row["credits_pending"],
    )


class Movement(msgspec.Struct, frozen=True):
    id: str  # txn_...: the ledger transfer
    kind: str  # top_up, payment, refund, other
    direction: str  # credit (money in) or debit (money out)
    amount: int
    currency: str
    status: str  # posted or pending
    created_at: datetime
    topup_id: str | None = None
    bank_reference: str | None = None
    payment_id: str | None = None


def _movement(row: asyncpg.Record, wallet_account_id: uuid.UUID) -> Movement:
    credit = row["credit_account_id"] == wallet_account_id
    kind = "other"
    if row["code"] == TOP_UP and row["bank_reference"] is not None:
        kind = "top_up"
    elif row["payment_id"] is not None:
        kind = "refund" if credit else "payment"
    pending = bool(row["flags"] & TransferFlags.PENDING)
    return Movement(
        id=format_id("txn", row["id"]),
        kind=kind,
        direction="credit" if credit else "debit",
        amount=row["amount"],
        currency="THB",
        status="pending" if pending else "posted",
        created_at=row["created_at"],
        topup_id=format_id("top", row["id"]) if kind == "top_up" else None,
        bank_reference=row["bank_reference"],
        payment_id=format_id("pay", row["payment_id"]) if row["payment_id"] else None,
    )


async def list_movements(
    pool: asyncpg.Pool, citizen_id: uuid.UUID, wallet_account_id: uuid.UUID, page: PageParams
) -> Page[Movement]:
    position = (_BIGINT_MAX, _INT_MAX)
    if page.starting_after is not None:
        cursor = parse_id("txn", page.starting_after)
        row = None
        if cursor is not None:
            row = await pool.fetchrow(Q["movement_position"], cursor, wallet_account_id)
        if row is None:
            message = "is not one of this wallet's transactions"
            raise InvalidParameter(
                f"starting_after: {message}",
                errors=[FieldError(field="starting_after", message=message)],
            )
        position = (row["batch_id"], row["batch_index"])
    rows = await pool.fetch(
        Q["list_movements"], wallet_account_id, citizen_id, *position, page.limit + 1
    )
    return Page.of([_movement(r, wallet_account_id) for r in rows], page)


async def get_movement(
    pool: asyncpg.Pool, citizen_id: uuid.UUID, wallet_account_id: uuid.UUID, transfer_id: uuid.UUID
) -> Movement | None:
    row = await pool.fetchrow(Q["get_movement"], transfer_id, wallet_account_id, citizen_id)
    return _movement(row, wallet_account_id) if row is not None else None
