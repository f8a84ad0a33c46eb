"""The wallet's ledger codes and accounts.

Account codes (why an account exists; 1xx belong to the treasury and programs):

| code | account | flags |
|---|---|---|
| 200 | a citizen's own-money wallet, one per citizen | ``debits_must_not_exceed_credits``: never negative; ``history``: its transfers are listed |
| 201 | a bank partner's clearing account, one per partner | ``shared``, no limit: the bank's money entering the system |

Transfer codes (why money moved) of this package:

| code | transfer |
|---|---|
| 200 | top-up: bank clearing -> wallet, id derived from (partner, bank_reference) |
"""

from __future__ import annotations

import uuid

from gwallet.idempotency import derive_uuid
from ledger_core import Account

THB = 764  # the baht ledger, by its ISO 4217 number

CITIZEN_WALLET = 200
BANK_CLEARING = 201

TOP_UP = 200

# Fixed namespace of bank clearing account ids. Never change it.
_BANK_CLEARING_NAMESPACE = uuid.UUID("3f0c9a4e-6f1b-4c52-9a77-2b8d0e61c5a4")


def wallet_account(account_id: uuid.UUID, citizen_id: uuid.UUID) -> Account:
    return Account(
        id=account_id,
        ledger=THB,
        code=CITIZEN_WALLET,
        debits_must_not_exceed_credits=True,
        history=True,  # its movements are listed (GET /v1/citizen/transactions)
        user_data_128=citizen_id,
    )


def bank_clearing_account(partner_id: str) -> Account:
    return Account(
        id=uuid.uuid5(_BANK_CLEARING_NAMESPACE, partner_id),
        ledger=THB,
        code=BANK_CLEARING,
        shared=True,
    )


def topup_transfer_id(partner_id: str, bank_reference: str) -> uuid.UUID:
    """The top-up's transfer id (and top-up id): the same reference is the same transfer."""
    return derive_uuid(f"bank:{partner_id}", bank_reference, "topup")
