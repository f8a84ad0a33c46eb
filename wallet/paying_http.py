"""Citizens paying by QR: quote (moves nothing) and pay (one ledger entry), over HTTP.

The handler is a thin shell: parse, authenticate, check the PIN, read the facts that do not
change within the payment (request, merchant, citizen, programs), then hand one
``PaymentComputation`` to the ledger engine; the split is decided inside the batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody

from gwallet.idempotency import IDEMPOTENCY_ERRORS, IDEMPOTENT, IdempotencyClaim
from gwallet.ids import format_id, parse_id
from gwallet.problems import DomainError, problem_responses
from gwallet.request import RequestBody
from ledger_core import CreateTransferResult, Effect
from ledger_core.sql import load_queries
from merchant_api import webhooks
from merchant_api.payment_requests import InvalidQr, Payable, parse_payment_request_qr
from subsidy_rules.decision import ProgramVersion, Refusal, Split, decide_payment
from subsidy_rules.eligibility import CitizenProfile
from subsidy_rules.periods import usage_periods
from subsidy_rules.spec import decode_spec
from wallet.auth import CITIZEN, AccountLocked, CitizenPrincipal, citizen_guard
from wallet.paying import (
    USAGE,
    AlreadyPaid,
    Parties,
    PaymentComputation,
    RequestNotPayable,
    Usage,
    no_usage,
)

Q = load_queries(Path(__file__).with_name("queries_paying.sql"))
AMOUNT_MAX_SATANG = 10**12
PinText = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]


# -- refusals -------------------------------------------------------------------------------


class PaymentRequestNotFound(DomainError):
    """The QR names no payment request of this service."""

    status = 404
    code = "payment_request_not_found"
    title = "Payment request not found"


class PaymentRequestAlreadyPaid(DomainError):
    """A dynamic QR is single-use: this one has been paid."""

    status = 409
    code = "payment_request_already_paid"
    title = "Payment request already paid"


class PaymentRequestExpired(DomainError):
    """A payment request can be paid only before it expires."""

    status = 409
    code = "payment_request_expired"
    title = "Payment request expired"


class PaymentRequestCancelled(DomainError):
    """The merchant cancelled this payment request."""

    status = 409
    code = "payment_request_cancelled"
    title = "Payment request cancelled"


class AmountMismatch(DomainError):
    """A dynamic QR carries its amount; an amount sent with it must be the same."""

    status = 422
    code = "amount_mismatch"
    title = "Amount does not match the payment request"


class MerchantUnavailable(DomainError):
    """The merchant is suspended or not approved: it cannot be paid."""

    status = 422
    code = "merchant_unavailable"
    title = "Merchant cannot be paid"


class InvalidPin(DomainError):
    """A payment is authorised by the citizen's PIN; this one is wrong (failures count
    towards the lockout)."""

    status = 403
    code = "invalid_pin"
    title = "Wrong PIN"


class ProgramNotApplicable(DomainError):
    """The program named is not one the citizen is enrolled in and that is active now."""

    status = 422
    code = "program_not_applicable"
    title = "Program not applicable"


class ProgramRefused(DomainError):
    """The program's rules refuse this purchase (hours, merchant, goods, eligibility)."""

    status = 422
    code = "program_refused"
    title = "The program does not cover this purchase"


class InsufficientFunds(DomainError):
    """The wallet's balance is smaller than the citizen's share of the payment."""

    status = 422
    code = "insufficient_funds"
    title = "Insufficient funds"


class WalletClosed(DomainError):
    """The citizen's wallet account is closed in the ledger: it pays nothing more."""

    status = 422
    code = "wallet_closed"
    title = "Wallet closed"


PAY_ERRORS = (
    InvalidQr, PaymentRequestNotFound, PaymentRequestAlreadyPaid, PaymentRequestExpired,
    PaymentRequestCancelled, AmountMismatch, MerchantUnavailable, InvalidPin, AccountLocked,
    ProgramNotApplicable, ProgramRefused, InsufficientFunds, WalletClosed, *IDEMPOTENCY_ERRORS,
)


# -- bodies -----------------------------------------------------------------------------------


class QuoteIn(RequestBody):
    qr_payload: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    amount: Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_MAX_SATANG)] | None = None


class PayIn(RequestBody):
    qr_payload: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    pin: PinText
    amount: Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_MAX_SATANG)] | None = None
    program_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class QuoteLine(msgspec.Struct, frozen=True, kw_only=True):
    program_id: str
    subsidy_amount: int
    citizen_amount: int
    explanation: dict[str, Any]


class QuoteOut(msgspec.Struct, frozen=True, kw_only=True):
    payment_request_id: str
    merchant_id: str
    merchant_name: str
    amount: int
    currency: str = "THB"
    programs: list[QuoteLine]


class PaymentOut(msgspec.Struct, frozen=True, kw_only=True):
    payment_id: str
    status: str
    amount: int
    subsidy_amount: int
    citizen_amount: int
    currency: str = "THB"
    program_id: str | None
    merchant_id: str
    payment_request_id: str
    created_at: str


# -- reading the facts ------------------------------------------------------------------------

_SPECS: dict[tuple[uuid.UUID, int], ProgramVersion] = {}  # approved versions never change
_SPECS_MAX = 1_000


class ApplicableProgram(msgspec.Struct, frozen=True):
    program_uuid: uuid.UUID
    version: ProgramVersion
    budget_account_id: uuid.UUID


# The columns of pay_context's citizen rows (wallet/queries_paying.sql), in order.
CITIZEN_COLUMNS = (
    "birth_date", "nationality", "province_code", "district_code", "taxpayer",
    "pin_key_id", "pin_hash", "failed_attempts", "locked_until",
    "program_id", "program_code", "budget_account_id", "version", "content_hash",
)


@dataclass(frozen=True, slots=True)
class Context:
    """What quote and pay read before the batch (one query: pay_context)."""

    payable: Payable
    profile: CitizenProfile
    programs: list[ApplicableProgram]
    pin_row: dict[str, Any]  # the citizen's PIN state, for WalletContext.payment_pin_matches


async def _context(pool: asyncpg.Pool, citizen_id: uuid.UUID, qr_payload: str,
                   amount: int | None, now: datetime) -> Context:
    request_id = parse_payment_request_qr(qr_payload)
    row = await pool.fetchrow(Q["pay_context"], request_id, citizen_id, now)
    assert row is not None
    if row["payable"] is None:
        raise PaymentRequestNotFound("no payment request has this QR code")
    payable = Payable(*row["payable"])
    if amount is not None and amount != payable.amount:
        raise AmountMismatch(f"the QR is for {payable.amount} satang, not {amount}")
    if payable.merchant_status != "approved":
        raise MerchantUnavailable("this merchant cannot be paid now")
    rows = [dict(zip(CITIZEN_COLUMNS, values, strict=True)) for values in row["citizen"]]
    assert rows, "the session's citizen exists"
    first = rows[0]
    profile = CitizenProfile(
        birth_date=first["birth_date"], nationality=first["nationality"],
        province_code=first["province_code"], district_code=first["district_code"],
        taxpayer=first["taxpayer"],
        held_program_codes=tuple(sorted(r["program_code"] for r in rows if r["program_code"])),
    )
    programs = []
    for r in rows:
        if r["program_id"] is None or r["budget_account_id"] is None or r["version"] is None:
            continue
        version = await _program_version(pool, r["program_id"], r["version"], r["content_hash"])
        programs.append(ApplicableProgram(r["program_id"], version, r["budget_account_id"]))
    return Context(payable, profile, programs, first)


async def _program_version(pool: asyncpg.Pool, program_id: uuid.UUID, version: int,
                           content_hash: Any) -> ProgramVersion:
    """A program version's decoded spec, read and decoded once per process (approved
    versions never change: their content hash is what maker-checker approved)."""
    key = (program_id, version)
    found = _SPECS.get(key)
    if found is None:
        spec = await pool.fetchval(Q["program_spec"], program_id, version)
        if len(_SPECS) >= _SPECS_MAX:
            _SPECS.clear()
        found = ProgramVersion(program_id=format_id("prg", program_id), version=version,
                               spec=decode_spec(spec), content_hash=content_hash)
        _SPECS[key] = found
    return found


def _refuse_unpayable(payable: Payable, now: datetime) -> None:
    status = payable.status_at(now)
    if status == "paid":
        raise PaymentRequestAlreadyPaid("this QR code has been paid")
    if status == "expired":
        raise PaymentRequestExpired("this QR code has expired; ask the shop for a new one")
    if status == "cancelled":
        raise PaymentRequestCancelled("the shop cancelled this QR code")


async def _quotes(
    pool: asyncpg.Pool, engine: Any, citizen_id: uuid.UUID, profile: CitizenProfile,
    programs: list[ApplicableProgram], payable: Payable, now: datetime,
) -> list[tuple[ApplicableProgram, Split | Refusal]]:
    """Each program's split with the usage and budget as they are now (no locks: a quote)."""
    if not programs:
        return []
    usage_rows = await USAGE.read(pool, [(citizen_id, p.program_uuid) for p in programs])
    budgets = await engine.lookup_accounts([p.budget_account_id for p in programs])
    out = []
    for program in programs:
        usage: Usage = usage_rows.get((citizen_id, program.program_uuid)) or no_usage(now)
        budget = budgets.get(program.budget_account_id)
        remaining = max(0, budget.headroom or 0) if budget is not None else 0
        out.append((program, decide_payment(
            program.version, usage.at(now), profile, payable.merchant_profile(),
            payable.item_category, payable.amount, now, remaining,
        )))
    return out


def _line(program: ApplicableProgram, decision: Split | Refusal, amount: int) -> QuoteLine:
    if isinstance(decision, Refusal):
        return QuoteLine(program_id=program.version.program_id, subsidy_amount=0,
                         citizen_amount=amount,
                         explanation={"refused": str(decision.reason), "detail": decision.detail})
    return QuoteLine(program_id=program.version.program_id,
                     subsidy_amount=decision.subsidy_satang,
                     citizen_amount=decision.citizen_satang,
                     explanation={"bounded_by": decision.bounded_by, **decision.explanation})


# -- the payment row, written in the batch ----------------------------------------------------

PAYMENT_COLUMNS = [
    "id", "payment_request_id", "citizen_id", "merchant_id", "program_id", "program_version",
    "amount", "subsidy_amount", "citizen_amount", "bounded_by", "item_category", "delivery",
    "merchant_category", "merchant_province_code", "merchant_district_code",
    "citizen_province_code", "citizen_district_code", "business_date", "created_at",
]


class _PaymentWriter:
    async def write(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        await conn.copy_records_to_table("payments", records=rows, columns=PAYMENT_COLUMNS)


PAYMENT_WRITER = _PaymentWriter()


def _payment_row(computation: PaymentComputation, results: list[CreateTransferResult]) -> Any:
    outcome = computation.outcome
    if not results or not all(r is CreateTransferResult.OK for r in results):
        return None  # refused, or a replay of a payment already written
    if isinstance(outcome, (Refusal, AlreadyPaid, RequestNotPayable)):
        return None
    p = computation.parties
    subsidy = outcome.subsidy_satang if isinstance(outcome, Split) else 0
    now = computation.now
    return (
        p.payment_id, p.request_id, p.citizen_id, p.merchant_id,
        p.program_uuid if isinstance(outcome, Split) else None,
        outcome.version if isinstance(outcome, Split) else None,
        p.amount, subsidy, p.amount - subsidy,
        outcome.bounded_by if isinstance(outcome, Split) else None,
        p.item_category, False, p.merchant.category, p.merchant.province_code,
        p.merchant.district_code, p.citizen.province_code, p.citizen.district_code,
        usage_periods(now)[0], now,
    )


def _payment_event(computation: PaymentComputation, results: list[CreateTransferResult]) -> Any:
    """The ``payment.succeeded`` webhook event, written exactly when the payment row is."""
    if _payment_row(computation, results) is None:
        return None
    outcome, p = computation.outcome, computation.parties
    split = isinstance(outcome, Split)
    return webhooks.payment_succeeded(
        payment_id=p.payment_id, payment_request_id=p.request_id, merchant_id=p.merchant_id,
        program_id=p.program.program_id if split and p.program else None, amount=p.amount,
        subsidy_amount=outcome.subsidy_satang if split else 0, created_at=computation.now,
    )


def _respond(computation: PaymentComputation, results: list[CreateTransferResult]) -> Any:
    """The response of a payment, from its computation and the transfers' results."""
    outcome = computation.outcome
    p = computation.parties
    if isinstance(outcome, AlreadyPaid):
        return PaymentRequestAlreadyPaid("this QR code has been paid")
    if isinstance(outcome, RequestNotPayable):
        return (PaymentRequestCancelled("the shop cancelled this QR code")
                if outcome.status == "cancelled"
                else PaymentRequestExpired("this QR code has expired"))
    if isinstance(outcome, Refusal):
        return ProgramRefused(f"{outcome.reason}: {outcome.detail}")
    if CreateTransferResult.EXCEEDS_CREDITS in results:
        return InsufficientFunds("top up the wallet, then pay again with a new Idempotency-Key")
    if CreateTransferResult.DEBIT_ACCOUNT_ALREADY_CLOSED in results:
        return WalletClosed("this wallet is closed and cannot pay")
    if CreateTransferResult.CREDIT_ACCOUNT_ALREADY_CLOSED in results:
        return MerchantUnavailable("the shop's accounts are closed: it cannot be paid")
    if not results or not all(r.succeeded for r in results):
        # Any other refusal means the computation built transfers the ledger cannot take: a
        # defect, not the citizen's doing. It fails the submission (503 ledger_unavailable,
        # nothing moved, the key not stored so a retry may succeed) and is logged.
        raise AssertionError(f"unexpected ledger results for a payment: {results}")
    subsidy = outcome.subsidy_satang if isinstance(outcome, Split) else 0
    return (201, PaymentOut(
        payment_id=format_id("pay", p.payment_id), status="succeeded", amount=p.amount,
        subsidy_amount=subsidy, citizen_amount=p.amount - subsidy,
        program_id=p.program.program_id if isinstance(outcome, Split) and p.program else None,
        merchant_id=format_id("mer", p.merchant_id),
        payment_request_id=format_id("preq", p.request_id),
        created_at=computation.now.isoformat(),
    ))


# -- the controller ---------------------------------------------------------------------------


class PaymentsController(Controller):
    path = "/v1/citizen/payments"
    tags = ["citizens: paying"]
    # The guard authenticates before the idempotency claim is resolved, so that keys are
    # scoped to the citizen (see wallet.auth.citizen_guard).
    guards = [citizen_guard]
    dependencies = {"citizen": CITIZEN}

    @post("/quote", status_code=200, responses=problem_responses(*PAY_ERRORS))
    async def quote(
        self, data: JSONBody[QuoteIn], citizen: NamedDependency[CitizenPrincipal], state: State
    ) -> QuoteOut:
        """What each of the citizen's programs would pay of this QR's amount. Moves nothing."""
        now = state.wallet.clock()
        context = await _context(state.pool, citizen.citizen_id, data.qr_payload, data.amount,
                                 now)
        payable = context.payable
        _refuse_unpayable(payable, now)
        quotes = await _quotes(state.pool, state.engine, citizen.citizen_id, context.profile,
                               context.programs, payable, now)
        return QuoteOut(
            payment_request_id=format_id("preq", payable.payment_request_id),
            merchant_id=format_id("mer", payable.merchant_id),
            merchant_name=payable.merchant_name, amount=payable.amount,
            programs=[_line(program, decision, payable.amount) for program, decision in quotes],
        )

    @post("/", dependencies={"claim": IDEMPOTENT}, status_code=201,
          responses=problem_responses(*PAY_ERRORS))
    async def pay(
        self, data: JSONBody[PayIn], citizen: NamedDependency[CitizenPrincipal],
        claim: NamedDependency[IdempotencyClaim], state: State,
    ) -> Response[Any]:
        """Pay a dynamic QR: the citizen's share from the wallet, the program's share from
        its budget, in one ledger entry. Authorised by the session and the PIN."""
        now = state.wallet.clock()
        context = await _context(state.pool, citizen.citizen_id, data.qr_payload, data.amount,
                                 now)
        payable, profile, programs = context.payable, context.profile, context.programs
        if not state.wallet.payment_pin_matches(citizen.citizen_id, data.pin, context.pin_row,
                                                now):
            async with state.pool.acquire() as conn:  # counts a failure, or raises if locked
                if not await state.wallet.verify_payment_pin(conn, citizen.citizen_id, data.pin):
                    raise InvalidPin("the PIN is wrong")
        _refuse_unpayable(payable, now)
        chosen: ApplicableProgram | None = None
        if data.program_id is not None:
            wanted = parse_id("prg", data.program_id)
            chosen = next((p for p in programs if p.program_uuid == wanted), None)
            if chosen is None:
                raise ProgramNotApplicable(
                    "you are not enrolled in that program, or it is not active now")
        elif len(programs) == 1:
            # The usual case: the one program, picked; the batch decides the split under the
            # locks, and if it pays nothing (refused, caps or budget spent), the citizen pays
            # it all. No quote is read first.
            chosen = programs[0]
        elif programs:
            # The program that pays the most now; the batch decides the exact split.
            best = [(d.subsidy_satang, p) for p, d in await _quotes(
                state.pool, state.engine, citizen.citizen_id, profile, programs, payable, now)
                if isinstance(d, Split) and d.subsidy_satang > 0]
            if best:
                chosen = max(best, key=lambda pair: pair[0])[1]
        payment_id = claim.derive_uuid("payment")
        computation = PaymentComputation(
            Parties(
                payment_id=payment_id, request_id=payable.payment_request_id,
                amount=payable.amount, item_category=payable.item_category,
                citizen_id=citizen.citizen_id, citizen=profile,
                wallet_account_id=citizen.wallet_account_id, merchant_id=payable.merchant_id,
                merchant=payable.merchant_profile(),
                citizen_payable_account_id=payable.citizen_payable_account_id,
                state_payable_account_id=payable.state_payable_account_id,
                program=chosen.version if chosen else None,
                program_uuid=chosen.program_uuid if chosen else None,
                budget_account_id=chosen.budget_account_id if chosen else None,
                program_optional=data.program_id is None,
            ),
            now,
        )
        return await claim.submit_computation(
            state.engine, state.pool, computation,
            lambda results: _respond(computation, results),
            effects=[
                Effect(PAYMENT_WRITER, lambda results: _payment_row(computation, results)),
                Effect(webhooks.EVENT_WRITER,
                       lambda results: _payment_event(computation, results)),
            ],
        )
