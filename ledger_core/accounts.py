"""Creating and closing accounts.

Accounts are created in one statement per call (``INSERT ... ON CONFLICT DO NOTHING``);
an id that already exists is compared field by field, like a replayed transfer. Creating an
account moves no money, so it does not go through the batching engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from pathlib import Path

import asyncpg
import msgspec

from ledger_core.model import Account, CreateAccountResult
from ledger_core.sql import load_queries

Q = load_queries(Path(__file__).with_name("queries.sql"))
A = CreateAccountResult
_INT64 = range(-(2**63), 2**63)
_INT32 = range(-(2**31), 2**31)


def check_account(account: Account) -> CreateAccountResult:
    """The checks that need no database, in rank order."""
    if account.id.int == 0:
        return A.ID_MUST_NOT_BE_ZERO
    if account.debits_must_not_exceed_credits and account.credits_must_not_exceed_debits:
        return A.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if account.ledger <= 0 or account.ledger >= 2**31:
        return A.LEDGER_MUST_NOT_BE_ZERO
    if account.code <= 0 or account.code >= 2**31:
        return A.CODE_MUST_NOT_BE_ZERO
    if account.user_data_64 not in _INT64 or account.user_data_32 not in _INT32:
        return A.USER_DATA_OUT_OF_RANGE
    return A.OK


def account_exists_result(account: Account, row: Mapping[str, Any]) -> CreateAccountResult:
    if (
        account.debits_must_not_exceed_credits != row["debits_must_not_exceed_credits"]
        or account.credits_must_not_exceed_debits != row["credits_must_not_exceed_debits"]
        or account.shared != row["shared"]
        or account.history != row["history"]
    ):
        return A.EXISTS_WITH_DIFFERENT_FLAGS
    if account.user_data_128 != row["user_data_128"]:
        return A.EXISTS_WITH_DIFFERENT_USER_DATA_128
    if account.user_data_64 != row["user_data_64"]:
        return A.EXISTS_WITH_DIFFERENT_USER_DATA_64
    if account.user_data_32 != row["user_data_32"]:
        return A.EXISTS_WITH_DIFFERENT_USER_DATA_32
    if account.ledger != row["ledger"]:
        return A.EXISTS_WITH_DIFFERENT_LEDGER
    if account.code != row["code"]:
        return A.EXISTS_WITH_DIFFERENT_CODE
    return A.EXISTS


async def create_accounts(
    conn: asyncpg.Connection | asyncpg.Pool, accounts: Sequence[Account]
) -> list[CreateAccountResult]:
    """Create accounts; one result per account, in order. Runs in the caller's transaction
    when given a connection inside one."""
    results = [check_account(a) for a in accounts]
    valid: dict = {}
    for account, result in zip(accounts, results, strict=True):
        if result is A.OK and account.id not in valid:
            valid[account.id] = account
    inserted: set = set()
    if valid:
        rows = await conn.fetch(
            Q["insert_accounts"],
            list(valid),
            [a.ledger for a in valid.values()],
            [a.code for a in valid.values()],
            [a.debits_must_not_exceed_credits for a in valid.values()],
            [a.credits_must_not_exceed_debits for a in valid.values()],
            [a.user_data_128 for a in valid.values()],
            [a.user_data_64 for a in valid.values()],
            [a.user_data_32 for a in valid.values()],
            [a.shared for a in valid.values()],
            [a.history for a in valid.values()],
        )
        inserted = {row["id"] for row in rows}
    existing_ids = [i for i in valid if i not in inserted]
    existing = {}
    if existing_ids:
        existing = {row["id"]: row for row in await conn.fetch(Q["lookup_accounts"], existing_ids)}
    out: list[CreateAccountResult] = []
    first_seen: set = set()
    for account, result in zip(accounts, results, strict=True):
        if result is not A.OK:
            out.append(result)
        elif account.id in inserted and account.id not in first_seen:
            first_seen.add(account.id)
            out.append(A.OK)
        else:
            row = existing.get(account.id)
            # A duplicate inside this call compares with the first occurrence, now stored.
            out.append(account_exists_result(account, row) if row is not None
                       else _compare_in_call(account, valid[account.id]))
    return out


def _compare_in_call(account: Account, first: Account) -> CreateAccountResult:
    return account_exists_result(account, msgspec.structs.asdict(first))


async def close_account(conn: asyncpg.Connection | asyncpg.Pool, account_id) -> bool:
    """Close an account: it takes no new transfers (voids of its pendings still work).
    Returns False when it was already closed or does not exist."""
    return await conn.fetchval(Q["close_account"], account_id) is not None
