"""HTTP controllers of merchants and of the officials' merchant endpoints: parse, call one
service, map the result.

- Public: ``POST /v1/merchant/applications`` (an Idempotency-Key is optional; if given, it
  is honoured).
- Merchant API key (``merchant_api.keys.merchant_guard``, with the per-key rate limit):
  payment requests, the merchant's payments, key rotation. A merchant only ever reads its own
  data: another merchant's payment request or payment is a 404.
- Officials (``gwallet.officials.official_guard``): list and read merchants (every role;
  personal data only for ``admin`` and ``checker``), approve, suspend, reinstate
  (``admin`` and ``checker``), each an audit entry.

``merchant_lifespan(settings)`` builds the ``MerchantContext`` into ``app.state.merchants``;
the composition root adds it after the wallet's lifespan, whose personal-data keys it reuses.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from gwallet import idempotency
from gwallet.idempotency import IDEMPOTENCY_ERRORS, IDEMPOTENT, IdempotencyClaim
from gwallet.ids import format_id, parse_id
from gwallet.officials import ALL_ROLES, AUTH_ERRORS, Role, official_guard, roles
from gwallet.officials import principal_of as official_of
from gwallet.pagination import PAGINATED, Page, PageParams
from gwallet.problems import (
    InvalidParameter,
    NotFound,
    RateLimited,
    Unauthenticated,
    problem_responses,
)
from gwallet.request import RequestBody
from gwallet.settings import Settings
from merchant_api import keys, merchants, payment_requests
from merchant_api.keys import merchant_guard
from merchant_api.merchants import MerchantView, PersonalDataKeys
from merchant_api.payment_requests import AMOUNT_MAX, MerchantPayment, PaymentRequestView
from merchant_api.ratelimit import RateLimiter
from subsidy_rules.spec import BusinessType


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class MerchantContext:
    keys: PersonalDataKeys
    limiter: RateLimiter
    rotation_grace_seconds: int
    payment_request_ttl_seconds: int
    clock: Callable[[], datetime] = _utc_now


class MerchantSettingsError(ValueError):
    """A merchants' setting is out of its range."""


def check_settings(settings: Settings) -> None:
    for name, value, low, high in (
        ("merchant_rotation_grace_seconds", settings.merchant_rotation_grace_seconds, 0,
         30 * 86400),
        ("merchant_rate_limit_per_second", settings.merchant_rate_limit_per_second, 1e-6, 1e6),
        ("merchant_rate_limit_burst", settings.merchant_rate_limit_burst, 1, 1_000_000),
        ("payment_request_ttl_seconds", settings.payment_request_ttl_seconds, 1, 86400),
    ):
        if not low <= value <= high:
            raise MerchantSettingsError(f"GWALLET_{name.upper()} must be within {low}..{high}")


def merchant_lifespan(settings: Settings) -> Callable[[Litestar], Any]:
    check_settings(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        wallet_keys = app.state.wallet.keys  # the same cipher and index as the citizens'
        app.state.merchants = MerchantContext(
            keys=PersonalDataKeys(pii=wallet_keys.pii, lookup=wallet_keys.lookup),
            limiter=RateLimiter(
                app.state.redis,
                rate_per_second=settings.merchant_rate_limit_per_second,
                burst=settings.merchant_rate_limit_burst,
                prefix="gwallet:ratelimit:merchant-key:",
            ),
            rotation_grace_seconds=settings.merchant_rotation_grace_seconds,
            payment_request_ttl_seconds=settings.payment_request_ttl_seconds,
        )
        yield

    return lifespan


def _context(state: State) -> MerchantContext:
    return state.merchants  # type: ignore[no-any-return]


# --- an optional Idempotency-Key ----------------------------------------------------------


async def _optional_claim(
    request: Request[Any, Any, Any],
    idempotency_key: idempotency._KeyHeader = None,
) -> AsyncIterator[IdempotencyClaim | None]:
    """Like ``IDEMPOTENT``, but a request without the header runs without a claim.

    Built on ``gwallet.idempotency``'s own claim (private names: that module offers no
    optional variant yet; moving this there is a one-line change for its owner)."""
    if idempotency_key is None:
        yield None
        return
    claims = idempotency._claim(request, idempotency_key)
    claim = await anext(claims)
    try:
        yield claim
    finally:
        await claims.aclose()  # releases the in-progress claim


OPTIONAL_IDEMPOTENCY = Provide(_optional_claim)


async def _respond(
    claim: IdempotencyClaim | None, conn: Any, status: int, content: Any
) -> Response[Any]:
    if claim is None:
        return Response(content=content, status_code=status)
    return await claim.respond(conn, status, content)


# --- applications (public) ------------------------------------------------------------------


class BankAccountIn(RequestBody):
    bank_code: Annotated[str, msgspec.Meta(max_length=8)]
    account_number: Annotated[str, msgspec.Meta(max_length=32)]
    account_name: Annotated[str, msgspec.Meta(max_length=400)]


class ApplicationIn(RequestBody):
    name: Annotated[str, msgspec.Meta(max_length=400)]
    owner_national_id: Annotated[str, msgspec.Meta(max_length=32)]
    business_type: BusinessType
    category: Annotated[str, msgspec.Meta(max_length=64)]
    province_code: Annotated[str, msgspec.Meta(max_length=8)]
    district_code: Annotated[str, msgspec.Meta(max_length=8)]
    bank_account: BankAccountIn


class ApplicationOut(msgspec.Struct, frozen=True):
    merchant_id: str
    status: str


@post(
    "/v1/merchant/applications",
    status_code=201,
    tags=["merchants"],
    dependencies={"claim": OPTIONAL_IDEMPOTENCY},
    responses=problem_responses(merchants.InvalidNationalId, *IDEMPOTENCY_ERRORS),
)
async def apply(
    data: JSONBody[ApplicationIn],
    claim: NamedDependency[IdempotencyClaim | None],
    state: State,
) -> Response[ApplicationOut]:
    """Apply to become a G-Wallet merchant; an official approves (and then the API key is
    issued). The owner's national ID and the bank account are stored encrypted."""
    context = _context(state)
    new = merchants.validate_application(
        name=data.name,
        owner_national_id=data.owner_national_id,
        business_type=data.business_type,
        category=data.category,
        province_code=data.province_code,
        district_code=data.district_code,
        bank_code=data.bank_account.bank_code,
        account_number=data.bank_account.account_number,
        account_name=data.bank_account.account_name,
    )
    async with state.pool.acquire() as conn, conn.transaction():
        merchant_id = await merchants.apply(conn, context.keys, new, context.clock())
        out = ApplicationOut(merchant_id=format_id("mer", merchant_id), status="pending")
        return await _respond(claim, conn, 201, out)


# --- the merchant's API (API key) -----------------------------------------------------------

_MERCHANT_ERRORS = (Unauthenticated, RateLimited)


class PaymentRequestIn(RequestBody):
    amount: Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_MAX)]
    reference: Annotated[
        str, msgspec.Meta(min_length=1, max_length=payment_requests.REFERENCE_MAX_LENGTH)
    ]
    item_category: Annotated[str, msgspec.Meta(max_length=40)] | None = None


class MerchantController(Controller):
    path = "/v1/merchant"
    tags = ["merchants"]
    guards = [merchant_guard]

    @post(
        "/payment-requests",
        status_code=201,
        dependencies={"claim": IDEMPOTENT},
        responses=problem_responses(
            *_MERCHANT_ERRORS, merchants.MerchantSuspended, *IDEMPOTENCY_ERRORS
        ),
    )
    async def create_payment_request(
        self,
        data: JSONBody[PaymentRequestIn],
        claim: NamedDependency[IdempotencyClaim],
        request: Request[Any, Any, Any],
        state: State,
    ) -> Response[payment_requests.PaymentRequestCreated]:
        """A payment request for one sale: a dynamic Thai QR (EMVCo, CRC-16) with the amount,
        usable once, expiring after 5 minutes (``payment_request_ttl_seconds``).
        ``qr_svg`` is the code to show. A suspended merchant gets 403 ``merchant_suspended``."""
        context = _context(state)
        return await payment_requests.create(  # type: ignore[return-value]
            state.pool,
            claim,
            keys.principal_of(request),
            amount=data.amount,
            reference=data.reference,
            item_category=data.item_category,
            now=context.clock(),
            ttl_seconds=context.payment_request_ttl_seconds,
        )

    @get(
        "/payment-requests/{payment_request_id:str}",
        responses=problem_responses(*_MERCHANT_ERRORS, NotFound),
    )
    async def get_payment_request(
        self, payment_request_id: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> PaymentRequestView:
        """``open``, ``paid`` (with ``payment_id``), ``expired`` or ``cancelled``."""
        return await payment_requests.get(
            state.pool, keys.principal_of(request), payment_request_id, _context(state).clock()
        )

    @post(
        "/payment-requests/{payment_request_id:str}/cancel",
        status_code=200,
        dependencies={"claim": OPTIONAL_IDEMPOTENCY},
        responses=problem_responses(
            *_MERCHANT_ERRORS, NotFound, payment_requests.PaymentRequestNotOpen,
            *IDEMPOTENCY_ERRORS,
        ),
    )
    async def cancel_payment_request(
        self,
        payment_request_id: FromPath[str],
        claim: NamedDependency[IdempotencyClaim | None],
        request: Request[Any, Any, Any],
        state: State,
    ) -> Response[PaymentRequestView]:
        """Cancel an open payment request (the sale did not happen): its QR can no longer be
        paid. 409 ``payment_request_not_open`` if it is paid, cancelled or expired. An
        Idempotency-Key is optional; with one, a retry gets the first answer."""
        async with state.pool.acquire() as conn, conn.transaction():
            view = await payment_requests.cancel(
                conn, keys.principal_of(request), payment_request_id, _context(state).clock()
            )
            return await _respond(claim, conn, 200, view)

    @get(
        "/payments",
        dependencies={"page": PAGINATED},
        responses=problem_responses(*_MERCHANT_ERRORS),
    )
    async def list_payments(
        self, page: NamedDependency[PageParams], request: Request[Any, Any, Any], state: State
    ) -> Page[MerchantPayment]:
        """The merchant's payments, newest first, with the split (citizen / subsidy) and
        refunds (``starting_after=pay_...``)."""
        return await payment_requests.list_payments(state.pool, keys.principal_of(request), page)

    @get("/payments/{payment_id:str}", responses=problem_responses(*_MERCHANT_ERRORS, NotFound))
    async def get_payment(
        self, payment_id: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> MerchantPayment:
        """One of the merchant's payments."""
        return await payment_requests.get_payment(
            state.pool, keys.principal_of(request), payment_id
        )

    @post(
        "/api-keys/rotate",
        status_code=201,
        responses=problem_responses(*_MERCHANT_ERRORS, keys.ApiKeyRetiring),
    )
    async def rotate_api_key(
        self, request: Request[Any, Any, Any], state: State
    ) -> keys.NewApiKey:
        """A new API key, shown only in this response. The key that called keeps working
        until ``previous_key_expires_at`` (24 h: ``merchant_rotation_grace_seconds``), then
        stops. Only the current key may rotate (403 ``api_key_retiring``).

        No Idempotency-Key: the response holds a secret, which is never stored. A client that
        lost the response still has its previous key for the grace period, but that key can
        no longer rotate: it asks an official (a later issue) or uses the new key once found.
        """
        context = _context(state)
        return await keys.rotate(
            state.pool,
            keys.principal_of(request),
            context.rotation_grace_seconds,
            context.clock(),
        )


# --- officials ------------------------------------------------------------------------------

_DISCLOSING_ROLES = frozenset({Role.ADMIN, Role.CHECKER})
_STATUS_PATTERN = r"^(pending|approved|rejected|suspended)$"


class SuspendIn(RequestBody):
    reason: Annotated[str, msgspec.Meta(max_length=1000)]


class ApprovalOut(msgspec.Struct, frozen=True, kw_only=True):
    merchant: MerchantView
    api_key: str  # shown once: give it to the merchant over a secure channel


def _merchant_id(text: str) -> uuid.UUID:
    value = parse_id("mer", text)
    if value is None:
        raise NotFound("no merchant has this id")
    return value


class AdminMerchantsController(Controller):
    path = "/v1/admin/merchants"
    tags = ["back office: merchants"]
    guards = [official_guard]

    @get(
        "/",
        opt=roles(*ALL_ROLES),
        dependencies={"page": PAGINATED},
        responses=problem_responses(*AUTH_ERRORS),
    )
    async def list(
        self,
        page: NamedDependency[PageParams],
        request: Request[Any, Any, Any],
        state: State,
        status: Annotated[
            str | None,
            QueryParameter(pattern=_STATUS_PATTERN, description="only merchants in this status"),
        ] = None,
    ) -> Page[MerchantView]:
        """Merchants in id order (``starting_after=mer_...``). ``personal_data`` (the owner's
        national ID, the bank account masked but for its last 4 digits) only for the admin and
        checker roles; such a read is an audit entry."""
        official = official_of(request)
        after = None
        if page.starting_after is not None:
            after = parse_id("mer", page.starting_after)
            if after is None:
                raise InvalidParameter("starting_after: not an id of the form mer_...")
        views, has_more = await merchants.read_merchants(
            state.pool,
            _context(state).keys.pii,
            official,
            status=status,
            after=after,
            limit=page.limit,
            disclose=official.role in _DISCLOSING_ROLES,
        )
        return Page(data=views, has_more=has_more)

    @get(
        "/{merchant_id:str}",
        opt=roles(*ALL_ROLES),
        responses=problem_responses(*AUTH_ERRORS, NotFound),
    )
    async def get(
        self, merchant_id: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> MerchantView:
        """One merchant (``personal_data`` as in the list)."""
        official = official_of(request)
        views, _ = await merchants.read_merchants(
            state.pool,
            _context(state).keys.pii,
            official,
            merchant_id=_merchant_id(merchant_id),
            disclose=official.role in _DISCLOSING_ROLES,
        )
        if not views:
            raise NotFound("no merchant has this id")
        return views[0]

    @post(
        "/{merchant_id:str}/approve",
        status_code=200,
        opt=roles(Role.ADMIN, Role.CHECKER),
        responses=problem_responses(*AUTH_ERRORS, NotFound, merchants.InvalidTransition),
    )
    async def approve(
        self, merchant_id: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> ApprovalOut:
        """pending -> approved: creates the merchant's ledger accounts (citizen-share and
        state-share payables) and its first API key, shown in this response only. Approving
        again is 409 ``invalid_transition`` (never a second key)."""
        approval = await merchants.approve(
            state.pool, _merchant_id(merchant_id), official_of(request), _context(state).clock()
        )
        return ApprovalOut(
            merchant=merchants.merchant_view(approval.merchant, None), api_key=approval.api_key
        )

    @post(
        "/{merchant_id:str}/suspend",
        status_code=200,
        opt=roles(Role.ADMIN, Role.CHECKER),
        responses=problem_responses(*AUTH_ERRORS, NotFound, merchants.InvalidTransition),
    )
    async def suspend(
        self,
        merchant_id: FromPath[str],
        data: JSONBody[SuspendIn],
        request: Request[Any, Any, Any],
        state: State,
    ) -> MerchantView:
        """approved -> suspended, with the reason (fraud...): no new payment requests; its
        unpaid state share is held at settlement."""
        reason = merchants.parse_reason(data.reason)
        row = await merchants.suspend(
            state.pool, _merchant_id(merchant_id), reason, official_of(request),
            _context(state).clock(),
        )
        return merchants.merchant_view(row, None)

    @post(
        "/{merchant_id:str}/reinstate",
        status_code=200,
        opt=roles(Role.ADMIN, Role.CHECKER),
        responses=problem_responses(*AUTH_ERRORS, NotFound, merchants.InvalidTransition),
    )
    async def reinstate(
        self, merchant_id: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> MerchantView:
        """suspended -> approved."""
        row = await merchants.reinstate(state.pool, _merchant_id(merchant_id), official_of(request))
        return merchants.merchant_view(row, None)


MERCHANT_ROUTES = [apply, MerchantController, AdminMerchantsController]

