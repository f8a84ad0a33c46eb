"""Paying a dynamic QR: the computation that decides a payment under the ledger's locks.

One payment is one ledger entry, all or nothing, through the batching engine:

- the citizen's share: citizen wallet -> merchant's citizen-share payable;
- the subsidy: program budget -> merchant's state-share payable (linked to the first);
- the citizen's subsidy usage (day, month, total) grows by the subsidy;
- the payment request becomes paid, and the payment row is written;

in one PostgreSQL transaction. The split is decided by ``subsidy_rules.decide_payment``
inside the batch, from the usage row read while the citizen's wallet is locked (so caps are
exact under concurrency) and from the budget's headroom (a shared account: if the subsidy was
cut to what is left of the budget and the budget moved meanwhile, the engine decides again).
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from ledger_core import BatchView, Computed, RowConflict, Transfer, TransferFlags
from ledger_core.sql import load_queries
from subsidy_rules.decision import CitizenUsage, ProgramVersion, Refusal, Split, decide_payment
from subsidy_rules.eligibility import CitizenProfile, MerchantProfile
from subsidy_rules.periods import usage_periods

Q = load_queries(Path(__file__).with_name("queries_paying.sql"))

THB_LEDGER = 764
CODE_CITIZEN_SHARE = 400  # transfer code: a citizen's own share of a payment
CODE_SUBSIDY = 401  # transfer code: the state's share of a payment
_NAMESPACE = uuid.UUID("0b7f5f0e-4a55-4c1b-9d0e-5e1a6c3f7a21")


def transfer_ids(payment_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """The two transfer ids of a payment, derived from its id, which the Idempotency-Key
    derives (``IdempotencyClaim.derive_uuid``). So two requests with one key always carry the
    same transfer ids, and the ledger takes at most one of them, whatever else differs and
    whether or not the Redis in-progress claim was there to refuse the second: a replay is
    ``exists``, another body ``exists_with_different_*``, after a refused first attempt
    ``id_already_failed``. (Not time-ordered, unlike ``ledger_core.new_id``: a time in the id
    would have to be the same on every retry, and only the key is.)"""
    return (uuid.uuid5(_NAMESPACE, f"{payment_id}:citizen_share"),
            uuid.uuid5(_NAMESPACE, f"{payment_id}:subsidy"))


# -- rows outside the ledger ---------------------------------------------------------------


class Usage(msgspec.Struct, frozen=True):
    """A citizen's use of one program, as stored (periods roll over lazily)."""

    day: date
    used_day: int
    month: date
    used_month: int
    used_total: int
    payments: int
    first_used_at: datetime | None

    def at(self, now: datetime) -> CitizenUsage:
        day, month = usage_periods(now)
        return CitizenUsage(
            used_today_satang=self.used_day if self.day == day else 0,
            used_this_month_satang=self.used_month if self.month == month else 0,
            used_total_satang=self.used_total,
        )

    def plus(self, subsidy: int, now: datetime) -> Usage:
        day, month = usage_periods(now)
        used = self.at(now)
        return Usage(
            day=day,
            used_day=used.used_today_satang + subsidy,
            month=month,
            used_month=used.used_this_month_satang + subsidy,
            used_total=self.used_total + subsidy,
            payments=self.payments + 1,
            first_used_at=self.first_used_at or now,
        )


def no_usage(now: datetime) -> Usage:
    day, month = usage_periods(now)
    return Usage(day, 0, month, 0, 0, 0, None)


class RightForfeitedWhilePaying(RuntimeError):
    """See ``UsageStore.write``."""


class UsageStore:
    """``subsidy_usage`` rows keyed by (citizen_id, program_id); guarded by the wallet lock."""

    async def read(self, conn: asyncpg.Connection, keys: list[Hashable]) -> dict[Hashable, Any]:
        rows = await conn.fetch(Q["read_usage"], [k[0] for k in keys], [k[1] for k in keys])
        return {
            (row["citizen_id"], row["program_id"]): Usage(
                row["day"], row["used_day"], row["month"], row["used_month"], row["used_total"],
                row["payments"], row["first_used_at"],
            )
            for row in rows
        }

    async def write(self, conn: asyncpg.Connection, rows: dict[Hashable, Any]) -> None:
        keys = list(rows)
        values: list[Usage] = [rows[k] for k in keys]
        await conn.execute(
            Q["write_usage"],
            [k[0] for k in keys], [k[1] for k in keys],
            [u.day for u in values], [u.used_day for u in values],
            [u.month for u in values], [u.used_month for u in values],
            [u.used_total for u in values], [u.payments for u in values],
            [u.first_used_at for u in values],
        )
        first = [k for k in keys if rows[k].payments == 1]
        if first:  # the enrolment's right is used now: it can no longer be forfeited
            forfeited = await conn.fetchval(
                Q["mark_enrolments_used"], [k[0] for k in first], [k[1] for k in first],
                [rows[k].first_used_at for k in first])
            if forfeited:
                # A payment decided before the deadline reached the ledger after the right was
                # released (beyond wallet.enrolment.FORFEIT_GRACE): paying it would subsidise
                # a place already back in the quota. The batch fails (503, nothing moved); a
                # retry reads the right as forfeited and pays without subsidy.
                raise RightForfeitedWhilePaying(f"{forfeited} enrolment(s) forfeited meanwhile")


class RequestState(msgspec.Struct, frozen=True):
    """A payment request as the payment sees it."""

    status: str  # open | paid | cancelled
    payment_id: uuid.UUID | None
    expires_at: datetime
    paid_at: datetime | None = None


class RequestStore:
    """``payment_requests`` keyed by id. Paying is a conditional update (``status = 'open'``):
    if another process paid the request first, the write says so and the batch runs again."""

    async def read(self, conn: asyncpg.Connection, keys: list[Hashable]) -> dict[Hashable, Any]:
        rows = await conn.fetch(Q["read_requests"], keys)
        return {
            row["id"]: RequestState(row["status"], row["payment_id"], row["expires_at"],
                                    row["paid_at"])
            for row in rows
        }

    async def write(self, conn: asyncpg.Connection, rows: dict[Hashable, Any]) -> None:
        paid = [(key, state) for key, state in rows.items() if state.status == "paid"]
        if not paid:
            return
        updated = await conn.fetchval(
            Q["mark_requests_paid"],
            [key for key, _ in paid], [state.payment_id for _, state in paid],
            [state.paid_at for _, state in paid],
        )
        if updated != len(paid):
            raise RowConflict("a payment request was paid or cancelled meanwhile")


USAGE = UsageStore()
REQUESTS = RequestStore()


# -- the computation ---------------------------------------------------------------------------


class AlreadyPaid(msgspec.Struct, frozen=True):
    payment_id: uuid.UUID | None  # this payment's own id when it is a replay


class RequestNotPayable(msgspec.Struct, frozen=True):
    status: str  # expired | cancelled


Outcome = Split | Refusal | AlreadyPaid | RequestNotPayable | None  # None: no program


@dataclass(frozen=True, slots=True)
class Parties:
    """Everything about a payment that was read before the batch and does not change in it."""

    payment_id: uuid.UUID
    request_id: uuid.UUID
    amount: int
    item_category: str | None
    citizen_id: uuid.UUID
    citizen: CitizenProfile
    wallet_account_id: uuid.UUID
    merchant_id: uuid.UUID
    merchant: MerchantProfile
    citizen_payable_account_id: uuid.UUID
    state_payable_account_id: uuid.UUID
    program: ProgramVersion | None  # the program to apply, if any
    program_uuid: uuid.UUID | None
    budget_account_id: uuid.UUID | None
    # True when the program was picked for the citizen rather than named: if, decided in the
    # batch, it refuses the purchase or pays nothing of it, the citizen pays it all (as with
    # no program) instead of the payment being refused.
    program_optional: bool = False


class PaymentComputation:
    """Decides one payment's transfers inside the batch (``ledger_core.Computation``)."""

    max_transfers = 2

    def __init__(self, parties: Parties, now: datetime) -> None:
        self.parties = parties
        self.now = now
        self.outcome: Outcome = None
        self.ids = transfer_ids(parties.payment_id)

    def accounts(self) -> Iterable[uuid.UUID]:
        p = self.parties
        ids = [p.wallet_account_id, p.citizen_payable_account_id, p.state_payable_account_id]
        if p.budget_account_id is not None:
            ids.append(p.budget_account_id)
        return ids

    def transfer_ids(self) -> Iterable[uuid.UUID]:
        return self.ids

    def row_keys(self) -> Iterable[tuple[Any, Hashable]]:
        p = self.parties
        keys: list[tuple[Any, Hashable]] = [(REQUESTS, p.request_id)]
        if p.program_uuid is not None:
            keys.append((USAGE, (p.citizen_id, p.program_uuid)))
        return keys

    def compute(self, view: BatchView) -> Computed:
        p = self.parties
        request: RequestState | None = view.row(REQUESTS, p.request_id)
        assert request is not None, "the request was read before the batch; rows are never deleted"
        if request.status == "paid":
            self.outcome = AlreadyPaid(request.payment_id)
            return Computed([])
        if request.status != "open" or self.now >= request.expires_at:
            self.outcome = RequestNotPayable("cancelled" if request.status == "cancelled"
                                             else "expired")
            return Computed([])
        subsidy, exact = 0, frozenset()
        rows: dict[tuple[Any, Hashable], Any] = {
            (REQUESTS, p.request_id): RequestState("paid", p.payment_id, request.expires_at,
                                                   self.now)
        }
        if p.program is not None and p.program_uuid is not None and p.budget_account_id:
            key = (p.citizen_id, p.program_uuid)
            usage: Usage = view.row(USAGE, key) or no_usage(self.now)
            budget = view.account(p.budget_account_id)
            remaining = max(0, budget.headroom or 0) if budget is not None else 0
            decision = decide_payment(
                p.program, usage.at(self.now), p.citizen, p.merchant, p.item_category,
                p.amount, self.now, remaining,
            )
            if isinstance(decision, Split) and decision.bounded_by == "budget":
                exact = frozenset({p.budget_account_id})
            pays = isinstance(decision, Split) and decision.subsidy_satang > 0
            if pays or not p.program_optional:
                self.outcome = decision
                if isinstance(decision, Refusal):
                    return Computed([])
                subsidy = decision.subsidy_satang
                rows[(USAGE, key)] = usage.plus(subsidy, self.now)
            else:
                self.outcome = None  # picked, not named, and pays nothing: the citizen pays
        else:
            self.outcome = None  # no program: the citizen pays it all
        own = p.amount - subsidy
        transfers: list[Transfer] = []
        if own:
            transfers.append(Transfer(
                id=self.ids[0], debit_account_id=p.wallet_account_id,
                credit_account_id=p.citizen_payable_account_id, amount=own, ledger=THB_LEDGER,
                code=CODE_CITIZEN_SHARE, user_data_128=p.payment_id,
                flags=int(TransferFlags.LINKED) if subsidy else 0,
            ))
        if subsidy:
            assert p.budget_account_id is not None
            transfers.append(Transfer(
                id=self.ids[1], debit_account_id=p.budget_account_id,
                credit_account_id=p.state_payable_account_id, amount=subsidy,
                ledger=THB_LEDGER, code=CODE_SUBSIDY, user_data_128=p.payment_id,
            ))
        return Computed(transfers, rows, exact)
