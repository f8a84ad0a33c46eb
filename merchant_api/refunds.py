"""Refunds: a merchant gives all or part of a payment back, in one ledger entry.

- never more than was paid, over all refunds of the payment;
- split in the payment's own proportion, by one rounding rule (``subsidy_part``): the
  subsidy part of everything refunded so far is ``floor(refunded * subsidy / amount)``, so
  partial refunds never drift and a full refund returns exactly the whole subsidy;
- the citizen's part goes from the merchant's citizen-share payable back to the wallet, the
  subsidy part from the state-share payable back to the program's budget, and the citizen's
  usage of the program shrinks by the subsidy part (caps restored).

Decided inside the ledger batch (a ``Computation``): the payment row and the usage row are read
while the citizen's wallet is locked, so two concurrent refunds of one payment cannot both
pass the "never more than paid" rule.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody

from gwallet.idempotency import IDEMPOTENCY_ERRORS, IDEMPOTENT, IdempotencyClaim
from gwallet.ids import format_id, parse_id
from gwallet.problems import DomainError, NotFound, problem_responses
from gwallet.request import RequestBody
from ledger_core import BatchView, Computed, CreateTransferResult, Effect, Transfer, TransferFlags
from ledger_core.sql import load_queries
from merchant_api import keys, webhooks
from subsidy_rules.periods import usage_periods
from wallet.paying import USAGE, Usage

Q = load_queries(Path(__file__).parent.parent / "wallet" / "queries_paying.sql")
THB_LEDGER = 764
CODE_REFUND_CITIZEN_SHARE = 402
CODE_REFUND_SUBSIDY = 403
_NAMESPACE = uuid.UUID("5b0c2a4e-7d1f-4e8a-b6c3-9a2d1e0f4c77")


def subsidy_part(refunded_total: int, amount: int, subsidy: int) -> int:
    """The subsidy part of ``refunded_total`` satang refunded of a payment (the one rule)."""
    assert 0 <= refunded_total <= amount and 0 <= subsidy <= amount and amount > 0
    return refunded_total * subsidy // amount


class RefundExceedsPayment(DomainError):
    """All refunds of a payment together never exceed what was paid."""

    status = 422
    code = "refund_exceeds_payment"
    title = "Refund exceeds what is left of the payment"


class RefundNotCovered(DomainError):
    """The merchant's unsettled balance does not cover the refund (it was settled already)."""

    status = 409
    code = "refund_exceeds_unsettled_balance"
    title = "Refund exceeds the merchant's unsettled balance"


class RefundAccountClosed(DomainError):
    """An account the refund would move money between (the citizen's wallet or the shop's
    payable) is closed in the ledger."""

    status = 409
    code = "refund_account_closed"
    title = "Refund account closed"


class RefundIn(RequestBody):
    amount: Annotated[int, msgspec.Meta(gt=0, le=10**12)]


class RefundOut(msgspec.Struct, frozen=True, kw_only=True):
    refund_id: str
    payment_id: str
    status: str
    amount: int
    subsidy_amount: int
    citizen_amount: int
    currency: str = "THB"
    created_at: str


class PaymentRow(msgspec.Struct, frozen=True):
    amount: int
    subsidy_amount: int
    refunded_amount: int
    refunded_subsidy_amount: int
    business_date: date


class PaymentStore:
    """``payments`` rows' refunded totals, keyed by payment id; guarded by the wallet lock."""

    async def read(self, conn: asyncpg.Connection, keys_: list[Hashable]) -> dict[Hashable, Any]:
        rows = await conn.fetch(Q["read_payments_for_refund"], keys_)
        return {row["id"]: PaymentRow(row["amount"], row["subsidy_amount"],
                                      row["refunded_amount"], row["refunded_subsidy_amount"],
                                      row["business_date"]) for row in rows}

    async def write(self, conn: asyncpg.Connection, rows: dict[Hashable, Any]) -> None:
        ids = list(rows)
        await conn.execute(Q["write_payment_refunds"], ids,
                           [rows[i].refunded_amount for i in ids],
                           [rows[i].refunded_subsidy_amount for i in ids])


PAYMENTS = PaymentStore()


@dataclass(frozen=True, slots=True)
class RefundParties:
    refund_id: uuid.UUID
    payment_id: uuid.UUID
    merchant_id: uuid.UUID
    citizen_id: uuid.UUID
    program_id: uuid.UUID | None
    amount: int
    wallet_account_id: uuid.UUID
    citizen_payable_account_id: uuid.UUID
    state_payable_account_id: uuid.UUID
    budget_account_id: uuid.UUID | None


class RefundComputation:
    max_transfers = 2

    def __init__(self, parties: RefundParties, now: datetime) -> None:
        self.parties = parties
        self.now = now
        self.subsidy = 0
        self.refused: DomainError | None = None
        self.ids = (uuid.uuid5(_NAMESPACE, f"{parties.refund_id}:citizen_share"),
                    uuid.uuid5(_NAMESPACE, f"{parties.refund_id}:subsidy"))

    def accounts(self) -> Iterable[uuid.UUID]:
        p = self.parties
        out = [p.wallet_account_id, p.citizen_payable_account_id, p.state_payable_account_id]
        return out + ([p.budget_account_id] if p.budget_account_id else [])

    def transfer_ids(self) -> Iterable[uuid.UUID]:
        return self.ids

    def row_keys(self) -> Iterable[tuple[Any, Hashable]]:
        p = self.parties
        out: list[tuple[Any, Hashable]] = [(PAYMENTS, p.payment_id)]
        if p.program_id is not None:
            out.append((USAGE, (p.citizen_id, p.program_id)))
        return out

    def compute(self, view: BatchView) -> Computed:
        p = self.parties
        payment: PaymentRow = view.row(PAYMENTS, p.payment_id)
        assert payment is not None, "payments are never deleted"
        if p.amount > payment.amount - payment.refunded_amount:
            self.refused = RefundExceedsPayment(
                f"{payment.amount - payment.refunded_amount} satang of this payment are left "
                "to refund")
            return Computed([])
        refunded = payment.refunded_amount + p.amount
        subsidy_after = subsidy_part(refunded, payment.amount, payment.subsidy_amount)
        self.subsidy = subsidy_after - payment.refunded_subsidy_amount
        own = p.amount - self.subsidy
        rows: dict[tuple[Any, Hashable], Any] = {
            (PAYMENTS, p.payment_id): PaymentRow(payment.amount, payment.subsidy_amount,
                                                 refunded, subsidy_after, payment.business_date)
        }
        if self.subsidy and p.program_id is not None:
            usage: Usage | None = view.row(USAGE, (p.citizen_id, p.program_id))
            if usage is not None:
                rows[(USAGE, (p.citizen_id, p.program_id))] = _restored(
                    usage, self.subsidy, payment.business_date, self.now)
        transfers = []
        if own:
            transfers.append(Transfer(
                id=self.ids[0], debit_account_id=p.citizen_payable_account_id,
                credit_account_id=p.wallet_account_id, amount=own, ledger=THB_LEDGER,
                code=CODE_REFUND_CITIZEN_SHARE, user_data_128=p.refund_id,
                flags=int(TransferFlags.LINKED) if self.subsidy else 0))
        if self.subsidy:
            assert p.budget_account_id is not None
            transfers.append(Transfer(
                id=self.ids[1], debit_account_id=p.state_payable_account_id,
                credit_account_id=p.budget_account_id, amount=self.subsidy, ledger=THB_LEDGER,
                code=CODE_REFUND_SUBSIDY, user_data_128=p.refund_id))
        return Computed(transfers, rows)


def _restored(usage: Usage, subsidy: int, paid_on: date, now: datetime) -> Usage:
    """The usage with a refunded subsidy given back: to the total always, and to today and
    this month when the payment was made today / this month (a past period stays spent)."""
    day, month = usage_periods(now)
    same_day = usage.day == day and paid_on == day
    same_month = usage.month == month and paid_on.replace(day=1) == month
    return Usage(
        day=usage.day,
        used_day=max(0, usage.used_day - subsidy) if same_day else usage.used_day,
        month=usage.month,
        used_month=max(0, usage.used_month - subsidy) if same_month else usage.used_month,
        used_total=max(0, usage.used_total - subsidy),
        payments=usage.payments,
        first_used_at=usage.first_used_at,
    )


REFUND_COLUMNS = ["id", "payment_id", "merchant_id", "amount", "subsidy_amount",
                  "citizen_amount", "created_at"]


class _RefundWriter:
    async def write(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        await conn.copy_records_to_table("refunds", records=rows, columns=REFUND_COLUMNS)


REFUND_WRITER = _RefundWriter()


def _outcome(c: RefundComputation, results: list[CreateTransferResult]) -> Any:
    if c.refused is not None:
        return c.refused
    if CreateTransferResult.EXCEEDS_CREDITS in results:
        return RefundNotCovered("the merchant's unsettled balance does not cover this refund")
    if (CreateTransferResult.DEBIT_ACCOUNT_ALREADY_CLOSED in results
            or CreateTransferResult.CREDIT_ACCOUNT_ALREADY_CLOSED in results):
        return RefundAccountClosed("the citizen's wallet or the shop's account is closed")
    if not results or not all(r.succeeded for r in results):
        raise AssertionError(f"unexpected ledger results for a refund: {results}")
    p = c.parties
    return (201, RefundOut(
        refund_id=format_id("ref", p.refund_id), payment_id=format_id("pay", p.payment_id),
        status="succeeded", amount=p.amount, subsidy_amount=c.subsidy,
        citizen_amount=p.amount - c.subsidy, created_at=c.now.isoformat()))


def _row(c: RefundComputation, results: list[CreateTransferResult]) -> Any:
    if c.refused is not None or not results or not all(
            r is CreateTransferResult.OK for r in results):
        return None
    p = c.parties
    return (p.refund_id, p.payment_id, p.merchant_id, p.amount, c.subsidy,
            p.amount - c.subsidy, c.now)


def _event(c: RefundComputation, results: list[CreateTransferResult]) -> Any:
    """The ``refund.succeeded`` webhook event, written exactly when the refund row is."""
    if _row(c, results) is None:
        return None
    p = c.parties
    return webhooks.refund_succeeded(
        refund_id=p.refund_id, payment_id=p.payment_id, merchant_id=p.merchant_id,
        amount=p.amount, subsidy_amount=c.subsidy, created_at=c.now)


class RefundsController(Controller):
    path = "/v1/merchant/payments/{payment_id:str}/refunds"
    tags = ["merchants: refunds"]
    guards = [keys.merchant_guard]

    @post("/", dependencies={"claim": IDEMPOTENT}, status_code=201,
          responses=problem_responses(NotFound, RefundExceedsPayment, RefundNotCovered,
                                      RefundAccountClosed,
                                      *IDEMPOTENCY_ERRORS))
    async def refund(
        self, payment_id: str, data: JSONBody[RefundIn], request: Request[Any, Any, Any],
        claim: NamedDependency[IdempotencyClaim], state: State,
    ) -> Response[Any]:
        """Refund all or part of one of the merchant's payments (several partial refunds
        may follow one another, never more than was paid in all)."""
        principal = keys.principal_of(request)
        value = parse_id("pay", payment_id)
        row = None if value is None else await state.pool.fetchrow(
            Q["refund_context"], value, principal.merchant_id)
        if row is None:
            raise NotFound("no such payment of this merchant")
        computation = RefundComputation(RefundParties(
            refund_id=claim.derive_uuid("refund"), payment_id=row["id"],
            merchant_id=row["merchant_id"], citizen_id=row["citizen_id"],
            program_id=row["program_id"], amount=data.amount,
            wallet_account_id=row["wallet_account_id"],
            citizen_payable_account_id=row["citizen_payable_account_id"],
            state_payable_account_id=row["state_payable_account_id"],
            budget_account_id=row["budget_account_id"],
        ), state.merchants.clock())
        return await claim.submit_computation(
            state.engine, state.pool, computation,
            lambda results: _outcome(computation, results),
            effects=[
                Effect(REFUND_WRITER, lambda results: _row(computation, results)),
                Effect(webhooks.EVENT_WRITER, lambda results: _event(computation, results)),
            ],
        )
