"""Helpers shared by the ledger tests: account factories and an engine fixture body."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger_core import Account, CreateAccountResult, EngineConfig, LedgerEngine, Transfer
from ledger_core import create_accounts, new_id

THB = 764  # the ledger of Thai baht, by its ISO 4217 number
CODE_WALLET = 1
CODE_OPERATOR = 2
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))




async def make_accounts(pool: asyncpg.Pool, *accounts: Account) -> None:
    results = await create_accounts(pool, accounts)
    assert results == [CreateAccountResult.OK] * len(accounts), results


def account(*, limited: bool = False, credit_limited: bool = False, ledger: int = THB,
            code: int = CODE_WALLET, shared: bool = False, history: bool = False) -> Account:
    return Account(id=new_id(), ledger=ledger, code=code,
                   debits_must_not_exceed_credits=limited,
                   credits_must_not_exceed_debits=credit_limited, shared=shared,
                   history=history)


def transfer(debit: Account | uuid.UUID, credit: Account | uuid.UUID, amount: int,
             **fields) -> Transfer:
    fields.setdefault("ledger", THB)
    fields.setdefault("code", 1)
    return Transfer(
        id=fields.pop("id", None) or new_id(),
        debit_account_id=debit.id if isinstance(debit, Account) else debit,
        credit_account_id=credit.id if isinstance(credit, Account) else credit,
        amount=amount,
        **fields,
    )


@asynccontextmanager
async def running_engine(
    pool: asyncpg.Pool, *, clock: Callable[[], datetime] | None = None, **config
) -> AsyncIterator[LedgerEngine]:
    settings = {"batch_window_ms": 1.0, "checkpoint_every_batches": 10, **config}
    engine = LedgerEngine(pool, EngineConfig(**settings), SIGNING_KEY, clock=clock)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()
