"""Payment requests (the merchant's side of a QR payment) and the merchant's payments.

A **payment request** is made by the merchant's point-of-sale system for one sale: an amount,
the merchant's own ``reference`` (its order number) and optionally the item category (for
the subsidy rules' excluded goods). It is shown as a dynamic Thai QR (``merchant_api.qr``):

- point of initiation 12 (dynamic), the amount, currency 764, country TH;
- tag 30 bill payment, AID A000000677010112, biller ID ``BILLER_ID`` (G-Wallet's), and the
  payment request's id in the two references: its 26 Crockford base32 characters, upper
  case, 13 in reference 1 and 13 in reference 2 (each may hold at most 20);
- merchant name (59, at most 25 printable ASCII characters): the merchant's name with
  accents stripped (NFKD) when that leaves printable ASCII, cut to 25 characters; otherwise
  (a Thai name, for instance) the first 25 characters of the merchant's id (``mer_...``),
  which identifies it just as well; the payer's app shows the real name from the quote;
- merchant city (60): ``TH-`` + the province code (ISO 3166-2:TH, e.g. ``TH-10`` Bangkok).

Status: ``open`` until paid (``paid``, with the payment's id), cancelled by the merchant
(``cancelled``) or expired: ``expired`` is never stored, a request is expired when
``now >= expires_at`` and it is not paid (``status_at``). Cancelling is ``open`` ->
``cancelled`` by one conditional UPDATE; the payment path marks a request paid under the same
condition (``status = 'open' AND expires_at > now``), so of a cancel and a payment racing,
exactly one wins.

For the payment path (``wallet``), the narrow interface:
- ``parse_payment_request_qr(payload) -> uuid.UUID`` or ``InvalidQr`` (422 ``invalid_qr``);
- ``Payable``: the request and what the subsidy rules and the ledger need of its merchant
  (``Payable.merchant_profile()``), its fields in the order of the ``payable_payment_request``
  query; ``load_payable(db, payment_request_id) -> Payable | None`` reads one (the payment
  path itself reads the same fields together with the citizen, in one statement:
  wallet/queries_paying.sql ``pay_context``); compare ``Payable.qr_payload`` with the scanned
  payload to refuse a re-encoded (altered) QR.

A merchant reads only its own requests and payments: another merchant's is a 404, exactly
like one that does not exist.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec

from gwallet.idempotency import IdempotencyClaim
from gwallet.ids import format_id, new_public_id, parse_id
from gwallet.pagination import Page, PageParams
from gwallet.problems import DomainError, FieldError, InvalidParameter, InvalidRequest, NotFound
from gwallet.qrsvg import qr_svg as draw_qr_svg
from ledger_core.sql import load_queries
from merchant_api import qr
from merchant_api.keys import MerchantPrincipal
from merchant_api.merchants import CATEGORY_PATTERN, MerchantStatus, MerchantSuspended
from subsidy_rules.eligibility import MerchantProfile
from subsidy_rules.spec import BusinessType

Q = load_queries(Path(__file__).with_name("queries_merchants.sql"))

# G-Wallet's biller ID in the bill-payment template (tax ID of 13 digits + a 2-digit suffix).
# 0994... is the form of a Thai government agency's tax ID. A placeholder until the scheme's
# acquiring bank assigns the real one; a QR with any other biller ID is not ours.
BILLER_ID = "099400000000001"
_ID_LENGTH = 26  # Crockford base32 characters of a public id (gwallet.ids)
_REFERENCE_PART = 13
REFERENCE_MAX_LENGTH = 64
# The API bounds amounts by 10**12 satang; a QR's amount (tag 54) holds at most ten digits
# of baht, so a payment request is at most 9,999,999,999.99 THB: one satang less.
AMOUNT_MAX = qr.MAX_AMOUNT_SATANG
QR_NAME_MAX_LENGTH = 25  # EMVCo tag 59
_MERCHANT_REFERENCE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?")
_CATEGORY = re.compile(CATEGORY_PATTERN[1:-1])


class RequestStatus:
    OPEN = "open"
    PAID = "paid"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


# --- refusals -------------------------------------------------------------------------------


class InvalidQr(DomainError):
    """The payload is not a dynamic G-Wallet payment request QR (or its checksum is wrong)."""

    status = 422
    code = "invalid_qr"
    title = "Invalid QR code"


class PaymentRequestNotOpen(DomainError):
    """Only an open payment request (not paid, cancelled or expired) can be cancelled."""

    status = 409
    code = "payment_request_not_open"
    title = "Payment request not open"


# --- the QR (pure) --------------------------------------------------------------------------


def qr_merchant_name(name: str, merchant_id: uuid.UUID) -> str:
    """The name for tag 59 (see the module's docstring)."""
    stripped = "".join(
        c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)
    )
    ascii_name = " ".join(stripped.split())[:QR_NAME_MAX_LENGTH].rstrip()
    if ascii_name and ascii_name.isascii() and ascii_name.isprintable():
        return ascii_name
    return format_id("mer", merchant_id)[:QR_NAME_MAX_LENGTH]


def qr_city(province_code: str) -> str:
    return "TH-" + province_code


def _references(payment_request_id: uuid.UUID) -> tuple[str, str]:
    body = format_id("preq", payment_request_id)[len("preq_") :].upper()
    assert len(body) == _ID_LENGTH
    return body[:_REFERENCE_PART], body[_REFERENCE_PART:]


def qr_payload(
    *,
    payment_request_id: uuid.UUID,
    amount: int,
    merchant_id: uuid.UUID,
    merchant_name: str,
    province_code: str,
) -> str:
    reference_1, reference_2 = _references(payment_request_id)
    return qr.encode(
        qr.payment_request_qr(
            biller_id=BILLER_ID,
            reference_1=reference_1,
            reference_2=reference_2,
            amount_satang=amount,
            merchant_name=qr_merchant_name(merchant_name, merchant_id),
            merchant_city=qr_city(province_code),
        )
    )


def qr_svg(payload: str) -> str:
    """The payload as an inline SVG QR code, error correction M. A fixed mask pattern and
    a lean SVG writer (``gwallet.qrsvg``): a path taken once per sale."""
    return draw_qr_svg(payload, error="m")


def parse_payment_request_qr(payload: str) -> uuid.UUID:
    """The payment request id of one of our dynamic QRs; ``InvalidQr`` for anything else
    (a bad CRC or form, a static QR, a credit transfer, another biller, no amount, ...)."""
    if not isinstance(payload, str):
        raise InvalidQr("the QR payload is not text")
    try:
        decoded = qr.decode(payload)
    except qr.QRError as exc:
        raise InvalidQr(f"not a Thai QR payment code ({exc.code}: {exc.detail})") from None
    account = decoded.merchant_account
    if (
        decoded.point_of_initiation != qr.PointOfInitiation.DYNAMIC
        or decoded.amount_satang is None
        or not isinstance(account, qr.BillPayment)
        or account.biller_id != BILLER_ID
        or account.reference_2 is None
        or len(account.reference_1) != _REFERENCE_PART
        or len(account.reference_2) != _ID_LENGTH - _REFERENCE_PART
    ):
        raise InvalidQr("not a G-Wallet payment request (dynamic bill-payment QR)")
    body = (account.reference_1 + account.reference_2).lower()
    payment_request_id = parse_id("preq", "preq_" + body)
    if payment_request_id is None:
        raise InvalidQr("the QR's references do not name a payment request")
    return payment_request_id


def status_at(status: str, expires_at: datetime, now: datetime) -> str:
    """The status shown: a stored ``open`` past its expiry is ``expired``."""
    if status == RequestStatus.OPEN and now >= expires_at:
        return RequestStatus.EXPIRED
    return status


# --- validation (pure) ----------------------------------------------------------------------


def _field(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", errors=[FieldError(field=field, message=message)])


def validate_request(reference: str, item_category: str | None) -> None:
    if not _MERCHANT_REFERENCE.fullmatch(reference):
        raise _field(
            "reference",
            f"1-{REFERENCE_MAX_LENGTH} printable ASCII characters, not starting or ending "
            "with a space",
        )
    if item_category is not None and not _CATEGORY.fullmatch(item_category):
        raise _field("item_category", "expected a slug: a-z, 0-9 and _, 2-40 characters")


# --- creating, reading, cancelling --------------------------------------------------------


class PaymentRequestCreated(msgspec.Struct, frozen=True, kw_only=True):
    payment_request_id: str
    status: str
    amount: int
    currency: str
    reference: str
    item_category: str | None
    qr_payload: str
    qr_svg: str
    created_at: datetime
    expires_at: datetime


class PaymentRequestView(msgspec.Struct, frozen=True, kw_only=True):
    payment_request_id: str
    status: str  # open | paid | expired | cancelled
    amount: int
    currency: str
    reference: str
    item_category: str | None
    qr_payload: str
    payment_id: str | None  # when paid
    created_at: datetime
    expires_at: datetime
    paid_at: datetime | None
    cancelled_at: datetime | None


def view(row: asyncpg.Record, now: datetime) -> PaymentRequestView:
    return PaymentRequestView(
        payment_request_id=format_id("preq", row["id"]),
        status=status_at(row["status"], row["expires_at"], now),
        amount=row["amount"],
        currency="THB",
        reference=row["reference"],
        item_category=row["item_category"],
        qr_payload=row["qr_payload"],
        payment_id=None if row["payment_id"] is None else format_id("pay", row["payment_id"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        paid_at=row["paid_at"],
        cancelled_at=row["cancelled_at"],
    )


async def create(
    pool: asyncpg.Pool,
    claim: IdempotencyClaim,
    principal: MerchantPrincipal,
    *,
    amount: int,
    reference: str,
    item_category: str | None,
    now: datetime,
    ttl_seconds: int,
) -> object:
    """Insert an open payment request and record the idempotent response, in one transaction.

    The merchant's status is read under its row lock (shared), so a suspension that commits
    first is seen, and one that comes later waits for this request to be made.
    """
    assert 0 < amount <= AMOUNT_MAX, "the body type bounds the amount"
    validate_request(reference, item_category)
    public_id, request_id = new_public_id("preq")
    expires_at = now + timedelta(seconds=ttl_seconds)

    def render(merchant: asyncpg.Record) -> tuple[str, str]:
        payload = qr_payload(
            payment_request_id=request_id,
            amount=amount,
            merchant_id=principal.merchant_id,
            merchant_name=merchant["name"],
            province_code=merchant["province_code"],
        )
        return payload, qr_svg(payload)

    # The code is drawn before the transaction, so that no row lock or pooled connection is
    # held while it is; the merchant is read again under the lock, and in the rare case its
    # name or province changed meanwhile, drawn again.
    seen = await pool.fetchrow(Q["merchant_for_request"], principal.merchant_id)
    if seen is None or seen["status"] != MerchantStatus.APPROVED:
        raise MerchantSuspended()
    payload, svg = render(seen)
    async with pool.acquire() as conn, conn.transaction():
        merchant = await conn.fetchrow(Q["merchant_for_request"], principal.merchant_id)
        if merchant is None or merchant["status"] != MerchantStatus.APPROVED:
            raise MerchantSuspended()
        if (merchant["name"], merchant["province_code"]) != (seen["name"], seen["province_code"]):
            payload, svg = render(merchant)
        await conn.execute(
            Q["insert_payment_request"],
            request_id,
            principal.merchant_id,
            amount,
            reference,
            item_category,
            payload,
            now,
            expires_at,
        )
        out = PaymentRequestCreated(
            payment_request_id=public_id,
            status=RequestStatus.OPEN,
            amount=amount,
            currency="THB",
            reference=reference,
            item_category=item_category,
            qr_payload=payload,
            qr_svg=svg,
            created_at=now,
            expires_at=expires_at,
        )
        return await claim.respond(conn, 201, out)


def _request_id(text: str) -> uuid.UUID:
    request_id = parse_id("preq", text)
    if request_id is None:
        raise NotFound("no payment request has this id")
    return request_id


async def get(
    db: asyncpg.Pool | asyncpg.Connection,
    principal: MerchantPrincipal,
    payment_request_id: str,
    now: datetime,
) -> PaymentRequestView:
    row = await db.fetchrow(
        Q["payment_request_of_merchant"], _request_id(payment_request_id), principal.merchant_id
    )
    if row is None:
        raise NotFound("no payment request has this id")
    return view(row, now)


async def cancel(
    conn: asyncpg.Connection,
    principal: MerchantPrincipal,
    payment_request_id: str,
    now: datetime,
) -> PaymentRequestView:
    """open -> cancelled, in the caller's transaction (which records the idempotent answer)."""
    request_id = _request_id(payment_request_id)
    row = await conn.fetchrow(Q["cancel_payment_request"], request_id, principal.merchant_id, now)
    if row is not None:
        return view(row, now)
    current = await conn.fetchrow(
        Q["payment_request_of_merchant"], request_id, principal.merchant_id
    )
    if current is None:
        raise NotFound("no payment request has this id")
    status = status_at(current["status"], current["expires_at"], now)
    raise PaymentRequestNotOpen(f"the payment request is {status}")


# --- for the payment path -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payable:
    """A payment request as the payment path needs it (``load_payable``)."""

    payment_request_id: uuid.UUID
    merchant_id: uuid.UUID
    amount: int
    reference: str
    item_category: str | None
    status: str  # as stored: open | paid | cancelled (see ``status_at`` for expired)
    payment_id: uuid.UUID | None
    qr_payload: str
    created_at: datetime
    expires_at: datetime
    merchant_name: str
    merchant_status: str  # approved | suspended
    business_type: str
    category: str
    province_code: str
    district_code: str
    citizen_payable_account_id: uuid.UUID
    state_payable_account_id: uuid.UUID

    def status_at(self, now: datetime) -> str:
        return status_at(self.status, self.expires_at, now)

    def merchant_profile(self) -> MerchantProfile:
        return MerchantProfile(
            merchant_id=format_id("mer", self.merchant_id),
            business_type=BusinessType(self.business_type),
            category=self.category,
            province_code=self.province_code,
            district_code=self.district_code,
            suspended=self.merchant_status == MerchantStatus.SUSPENDED,
        )


async def load_payable(
    db: asyncpg.Pool | asyncpg.Connection, payment_request_id: uuid.UUID
) -> Payable | None:
    row = await db.fetchrow(Q["payable_payment_request"], payment_request_id)
    # The query selects Payable's fields in order, as wallet/queries_paying.sql's pay_context
    # does for the payment path's one round trip.
    return None if row is None else Payable(*row)


# --- the merchant's payments (read side of the ``payments`` table) ------------------------


class MerchantPayment(msgspec.Struct, frozen=True, kw_only=True):
    """One payment to this merchant, with its split. No data of the citizen who paid."""

    payment_id: str
    payment_request_id: str
    status: str  # succeeded | partially_refunded | refunded
    amount: int
    currency: str
    citizen_amount: int  # paid from the citizen's wallet
    subsidy_amount: int  # paid by the program (the state's share)
    refunded_amount: int
    refunded_subsidy_amount: int
    program_id: str | None
    item_category: str | None
    business_date: date  # Asia/Bangkok; settlement is T+1 of it
    created_at: datetime


def payment_view(row: asyncpg.Record) -> MerchantPayment:
    refunded = row["refunded_amount"]
    if refunded == 0:
        status = "succeeded"
    elif refunded < row["amount"]:
        status = "partially_refunded"
    else:
        status = "refunded"
    return MerchantPayment(
        payment_id=format_id("pay", row["id"]),
        payment_request_id=format_id("preq", row["payment_request_id"]),
        status=status,
        amount=row["amount"],
        currency="THB",
        citizen_amount=row["citizen_amount"],
        subsidy_amount=row["subsidy_amount"],
        refunded_amount=refunded,
        refunded_subsidy_amount=row["refunded_subsidy_amount"],
        program_id=None if row["program_id"] is None else format_id("prg", row["program_id"]),
        item_category=row["item_category"],
        business_date=row["business_date"],
        created_at=row["created_at"],
    )


async def get_payment(
    db: asyncpg.Pool | asyncpg.Connection, principal: MerchantPrincipal, payment_id: str
) -> MerchantPayment:
    value = parse_id("pay", payment_id)
    row = None if value is None else await db.fetchrow(
        Q["payment_of_merchant"], value, principal.merchant_id
    )
    if row is None:
        raise NotFound("no payment has this id")
    return payment_view(row)


async def list_payments(
    db: asyncpg.Pool | asyncpg.Connection, principal: MerchantPrincipal, page: PageParams
) -> Page[MerchantPayment]:
    """Newest first; ``starting_after`` is the last payment of the previous page."""
    position: tuple[datetime | None, uuid.UUID | None] = (None, None)
    if page.starting_after is not None:
        value = parse_id("pay", page.starting_after)
        row = None if value is None else await db.fetchrow(
            Q["payment_position"], value, principal.merchant_id
        )
        if row is None:
            message = "not a payment of this merchant"
            raise InvalidParameter(
                f"starting_after: {message}",
                errors=[FieldError(field="starting_after", message=message)],
            )
        position = (row["created_at"], row["id"])
    rows = await db.fetch(
        Q["list_payments_of_merchant"], principal.merchant_id, *position, page.limit + 1
    )
    return Page.of([payment_view(row) for row in rows], page)
