"""HTTP controllers of citizens and bank partners: parse, call one service, map the result.

Public: registration, confirming the authenticator, opening a session, bank top-ups (signed).
Everything else under ``/v1/citizen`` needs a citizen's session (``wallet.auth.CITIZEN``) and
only ever reads that citizen's own data: another citizen's wallet, transaction or payment
is a 404, exactly like one that does not exist.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Schema
from litestar.openapi.spec import RequestBody as OpenAPIRequestBody
from litestar.params import FromPath, JSONBody

from gwallet.ids import format_id, parse_id
from gwallet.pagination import PAGINATED, Page, PageParams
from gwallet.problems import (
    FieldError,
    InvalidParameter,
    NotFound,
    Unauthenticated,
    problem_responses,
)
from gwallet.request import RequestBody
from wallet import auth, enrolment, identity, movements, topups
from wallet.auth import CITIZEN, CitizenPrincipal, citizen_guard
from wallet.context import WalletContext

_AUTH_ERRORS = (Unauthenticated,)


def _context(state: State) -> WalletContext:
    return state.wallet  # type: ignore[no-any-return]


# --- registration and authentication ----------------------------------------------------------


class RegistrationIn(RequestBody):
    national_id: Annotated[str, msgspec.Meta(max_length=32)]
    phone: Annotated[str, msgspec.Meta(max_length=32)]
    full_name: Annotated[str, msgspec.Meta(max_length=400)]
    birth_date: date
    province_code: Annotated[str, msgspec.Meta(max_length=8)]
    district_code: Annotated[str, msgspec.Meta(max_length=8)]
    pin: Annotated[str, msgspec.Meta(max_length=16)]


class RegistrationOut(msgspec.Struct, frozen=True):
    citizen_id: str
    wallet_id: str
    totp_provisioning_uri: str
    totp_qr_svg: str


@post(
    "/v1/citizen/registrations",
    status_code=201,
    tags=["citizens"],
    responses=problem_responses(
        identity.InvalidNationalId,
        identity.InvalidPhone,
        auth.InvalidPin,
        auth.WeakPin,
        identity.AlreadyRegistered,
    ),
)
async def register(data: JSONBody[RegistrationIn], state: State) -> RegistrationOut:
    """Register a citizen: one account per national ID. Returns the authenticator to enrol
    (provisioning URI and QR code), to be confirmed with a first code."""
    context = _context(state)
    citizen = identity.validate_registration(
        national_id=data.national_id,
        phone=data.phone,
        full_name=data.full_name,
        birth_date=data.birth_date,
        province_code=data.province_code,
        district_code=data.district_code,
        pin=data.pin,
        now=context.clock(),
    )
    registration = await identity.register(state.pool, context.keys, citizen)
    return RegistrationOut(
        citizen_id=format_id("cit", registration.citizen_id),
        wallet_id=format_id("wal", registration.wallet_account_id),
        totp_provisioning_uri=registration.totp_provisioning_uri,
        totp_qr_svg=registration.totp_qr_svg,
    )


class TotpConfirmIn(RequestBody):
    citizen_id: Annotated[str, msgspec.Meta(max_length=64)]
    code: Annotated[str, msgspec.Meta(max_length=16)]


class TotpConfirmOut(msgspec.Struct, frozen=True):
    citizen_id: str
    totp_confirmed: bool


@post(
    "/v1/citizen/totp/confirm",
    status_code=200,
    tags=["citizens"],
    responses=problem_responses(
        NotFound, auth.InvalidCredentials, auth.TotpAlreadyConfirmed, auth.AccountLocked
    ),
)
async def confirm_totp(data: JSONBody[TotpConfirmIn], state: State) -> TotpConfirmOut:
    """Activate the authenticator with its first code; required before the first session.
    Wrong codes count towards the lockout."""
    context = _context(state)
    citizen_id = parse_id("cit", data.citizen_id)
    if citizen_id is None:
        raise NotFound("no citizen has this id")
    await auth.confirm_totp(
        state.pool,
        citizen_id=citizen_id,
        code=data.code,
        pins=context.keys.pins,
        pii=context.keys.pii,
        policy=context.config.lockout,
        now=context.clock(),
    )
    return TotpConfirmOut(citizen_id=data.citizen_id, totp_confirmed=True)


class SessionIn(RequestBody):
    national_id: Annotated[str, msgspec.Meta(max_length=32)]
    pin: Annotated[str, msgspec.Meta(max_length=16)]
    totp_code: Annotated[str, msgspec.Meta(max_length=16)]


class SessionOut(msgspec.Struct, frozen=True):
    access_token: str
    token_type: str
    expires_at: datetime
    session_id: str


@post(
    "/v1/citizen/sessions",
    status_code=201,
    tags=["citizens"],
    responses=problem_responses(
        identity.InvalidNationalId,
        auth.InvalidPin,
        auth.InvalidCredentials,
        auth.TotpNotConfirmed,
        auth.AccountLocked,
    ),
)
async def open_session(data: JSONBody[SessionIn], state: State) -> SessionOut:
    """National ID, PIN and a fresh authenticator code -> a bearer token (`cst_...`).
    A code is accepted once; 10 consecutive failures lock the account for 30 minutes."""
    context = _context(state)
    national_id = identity.parse_national_id(data.national_id)
    session = await auth.login(
        state.pool,
        national_id_digests=context.keys.lookup.digests(national_id, purpose=identity.NATIONAL_ID),
        pin=data.pin,
        totp_code=data.totp_code,
        pins=context.keys.pins,
        pii=context.keys.pii,
        policy=context.config.lockout,
        now=context.clock(),
        ttl_seconds=context.config.session_ttl_seconds,
        sessions_max=context.config.sessions_max,
    )
    return SessionOut(
        access_token=session.access_token,
        token_type="Bearer",
        expires_at=session.expires_at,
        session_id=format_id("ses", session.session_id),
    )


class SessionItem(msgspec.Struct, frozen=True):
    session_id: str
    created_at: datetime
    expires_at: datetime
    current: bool


_CITIZEN = {"citizen": CITIZEN}
_GUARDS = [citizen_guard]  # authenticates before the dependencies (wallet.auth.citizen_guard)


@get(
    "/v1/citizen/sessions",
    dependencies={**_CITIZEN, "page": PAGINATED},
    guards=_GUARDS,
    tags=["citizens"],
    responses=problem_responses(*_AUTH_ERRORS),
)
async def list_sessions(
    citizen: NamedDependency[CitizenPrincipal], page: NamedDependency[PageParams], state: State
) -> Page[SessionItem]:
    """The citizen's active sessions, newest first."""
    now = _context(state).clock()
    position: tuple[datetime, uuid.UUID] = (datetime.max.replace(tzinfo=now.tzinfo), uuid.UUID(int=2**128 - 1))
    if page.starting_after is not None:
        cursor = parse_id("ses", page.starting_after)
        row = None
        if cursor is not None:
            row = await state.pool.fetchrow(auth.Q["session_position"], cursor, citizen.citizen_id)
        if row is None:
            raise InvalidParameter(
                "starting_after: is not one of your sessions",
                errors=[FieldError(field="starting_after", message="not one of your sessions")],
            )
        position = (row["created_at"], row["id"])
    rows = await state.pool.fetch(
        auth.Q["list_sessions"], citizen.citizen_id, now, *position, page.limit + 1
    )
    items = [
        SessionItem(
            session_id=format_id("ses", r["id"]),
            created_at=r["created_at"],
            expires_at=r["expires_at"],
            current=r["id"] == citizen.session_id,
        )
        for r in rows
    ]
    return Page.of(items, page)


async def _end_session(state: State, citizen: CitizenPrincipal, session_id: uuid.UUID) -> None:
    ended = await state.pool.fetchval(
        auth.Q["end_session"], session_id, citizen.citizen_id, _context(state).clock()
    )
    if ended is None:
        raise NotFound("no active session of yours has this id")


@delete(
    "/v1/citizen/sessions/current",
    dependencies=_CITIZEN,
    guards=_GUARDS,
    status_code=204,
    tags=["citizens"],
    responses=problem_responses(*_AUTH_ERRORS),
)
async def logout(citizen: NamedDependency[CitizenPrincipal], state: State) -> None:
    """Log out: end the session whose token made this request."""
    await _end_session(state, citizen, citizen.session_id)


@delete(
    "/v1/citizen/sessions/{session_id:str}",
    dependencies=_CITIZEN,
    guards=_GUARDS,
    status_code=204,
    tags=["citizens"],
    responses=problem_responses(NotFound, *_AUTH_ERRORS),
)
async def end_session(
    session_id: FromPath[str], citizen: NamedDependency[CitizenPrincipal], state: State
) -> None:
    """End another of the citizen's sessions (a lost phone)."""
    value = parse_id("ses", session_id)
    if value is None:
        raise NotFound("no active session of yours has this id")
    await _end_session(state, citizen, value)


class ProfileOut(msgspec.Struct, frozen=True):
    citizen_id: str
    wallet_id: str
    national_id_masked: str
    phone_masked: str
    full_name: str
    birth_date: date
    province_code: str
    district_code: str


@get(
    "/v1/citizen/me",
    dependencies=_CITIZEN,
    guards=_GUARDS,
    tags=["citizens"],
    responses=problem_responses(*_AUTH_ERRORS),
)
async def profile(citizen: NamedDependency[CitizenPrincipal], state: State) -> ProfileOut:
    """The citizen's own registration (national ID and phone masked)."""
    found = await identity.load_identity(state.pool, _context(state).keys.pii, citizen.citizen_id)
    assert found is not None, "a session's citizen exists"
    return ProfileOut(
        citizen_id=format_id("cit", citizen.citizen_id),
        wallet_id=format_id("wal", citizen.wallet_account_id),
        national_id_masked=identity.mask_national_id(found.national_id),
        phone_masked=identity.mask_phone(found.phone),
        full_name=found.full_name,
        birth_date=found.birth_date,
        province_code=found.province_code,
        district_code=found.district_code,
    )


# --- wallet and movements -------------------------------------------------------------------


class ProgramRemaining(msgspec.Struct, frozen=True):
    program_id: str
    name_th: str
    name_en: str
    enrolment_id: str
    status: str
    currency: str
    daily_cap: int | None
    monthly_cap: int | None
    total_cap: int | None
    used_today: int
    used_this_month: int
    used_total: int
    remaining_today: int | None  # None: no such cap
    remaining_this_month: int | None
    remaining_total: int | None


class WalletOut(msgspec.Struct, frozen=True):
    wallet_id: str
    citizen_id: str
    currency: str
    balance: int
    available: int
    pending_debits: int
    programs: list[ProgramRemaining]


async def _wallet(state: State, citizen: CitizenPrincipal) -> WalletOut:
    balance = await movements.wallet_balance(state.pool, citizen.wallet_account_id)
    programs = await enrolment.remaining_by_program(
        state.pool, citizen.citizen_id, _context(state).clock()
    )
    return WalletOut(
        wallet_id=format_id("wal", citizen.wallet_account_id),
        citizen_id=format_id("cit", citizen.citizen_id),
        currency="THB",
        balance=balance.balance,
        available=balance.available,
        pending_debits=balance.pending_debits,
        programs=[ProgramRemaining(**p) for p in programs],
    )


@get(
    "/v1/citizen/wallet",
    dependencies=_CITIZEN,
    guards=_GUARDS,
    tags=["citizens"],
    responses=problem_responses(*_AUTH_ERRORS),
)
async def own_wallet(citizen: NamedDependency[CitizenPrincipal], state: State) -> WalletOut:
    """The balance (posted, and available = posted less payments in flight) and, per enrolled
    program, what is left today, this month and in total."""
    return await _wallet(state, citizen)


@get(
    "/v1/citizen/wallets/{wallet_id:str}",
    dependencies=_CITIZEN,
    guards=_GUARDS,
    tags=["citizens"],
    responses=problem_responses(NotFound, *_AUTH_ERRORS),
)
async def wallet_by_id(
    wallet_id: FromPath[str], citizen: NamedDependency[CitizenPrincipal], state: State
) -> WalletOut:
    """The same as /v1/citizen/wallet, by id: only the citizen's own wallet exists here."""
    if parse_id("wal", wallet_id) != citizen.wallet_account_id:
        raise NotFound("no wallet of yours has this id")
    return await _wallet(state, citizen)


@get(
    "/v1/citizen/transactions",
    dependencies={**_CITIZEN, "page": PAGINATED},
    guards=_GUARDS,
    tags=["citizens"],
    responses=problem_responses(*_AUTH_ERRORS),
)
async def list_transactions(
    citizen: NamedDependency[CitizenPrincipal], page: NamedDependency[PageParams], state: State
) -> Page[movements.Movement]:
    """The wallet's movements, newest first: top-ups, payments, refunds."""
    return await movements.list_movements(
        state.pool, citizen.citizen_id, citizen.wallet_account_id, page
    )


@get(
    "/v1/citizen/transactions/{transaction_id:str}",
    dependencies=_CITIZEN,
    guards=_GUARDS,
    tags=["citizens"],
    responses=problem_responses(NotFound, *_AUTH_ERRORS),
)
async def get_transaction(
    transaction_id: FromPath[str], citizen: NamedDependency[CitizenPrincipal], state: State
) -> movements.Movement:
    """One movement of the citizen's wallet."""
    transfer_id = parse_id("txn", transaction_id)
    found = None
    if transfer_id is not None:
        found = await movements.get_movement(
            state.pool, citizen.citizen_id, citizen.wallet_account_id, transfer_id
        )
    if found is None:
        raise NotFound("no transaction of yours has this id")
    return found


class PaymentOut(msgspec.Struct, frozen=True):
    payment_id: str
    status: str
    amount: int
    subsidy_amount: int
    citizen_amount: int
    refunded_amount: int
    currency: str
    program_id: str | None
    merchant_id: str
    created_at: datetime


@get(
    "/v1/citizen/payments/{payment_id:str}",
    dependencies=_CITIZEN,
    guards=_GUARDS,
    tags=["citizens"],
    responses=problem_responses(NotFound, *_AUTH_ERRORS),
)
async def get_payment(
    payment_id: FromPath[str], citizen: NamedDependency[CitizenPrincipal], state: State
) -> PaymentOut:
    """One of the citizen's own payments (read from the payments table)."""
    value = parse_id("pay", payment_id)
    row = None
    if value is not None:
        row = await state.pool.fetchrow(
            movements.Q["citizen_payment"], value, citizen.citizen_id
        )
    if row is None:
        raise NotFound("no payment of yours has this id")
    refunded = row["refunded_amount"]
    status = "succeeded" if refunded == 0 else (
        "refunded" if refunded == row["amount"] else "partially_refunded"
    )
    return PaymentOut(
        payment_id=payment_id,
        status=status,
        amount=row["amount"],
        subsidy_amount=row["subsidy_amount"],
        citizen_amount=row["citizen_amount"],
        refunded_amount=refunded,
        currency="THB",
        program_id=format_id("prg", row["program_id"]) if row["program_id"] else None,
        merchant_id=format_id("mer", row["merchant_id"]),
        created_at=row["created_at"],
    )


# --- programs and enrolment -------------------------------------------------------------------


@get(
    "/v1/citizen/programs",
    dependencies={**_CITIZEN, "page": PAGINATED},
    guards=_GUARDS,
    tags=["citizens"],
    responses=problem_responses(*_AUTH_ERRORS),
)
async def list_programs(
    citizen: NamedDependency[CitizenPrincipal], page: NamedDependency[PageParams], state: State
) -> Page[enrolment.CitizenProgram]:
    """Programs open for enrolment (or paused) and those the citizen is enrolled in, with
    the citizen's status in each: enrolled, forfeited, eligible, not_eligible (and why),
    quota_exhausted, registration_not_open, registration_closed."""
    after = None
    if page.starting_after is not None:
        after = parse_id("prg", page.starting_after)
        if after is None:
            raise InvalidParameter(
                "starting_after: not a program id",
                errors=[FieldError(field="starting_after", message="not a program id")],
            )
    items = await enrolment.list_programs(
        state.pool, citizen.citizen_id, _context(state).clock(), after=after, limit=page.limit + 1
    )
    return Page.of(items, page)


@post(
    "/v1/citizen/programs/{program_id:str}/enrolment",
    dependencies=_CITIZEN,
    guards=_GUARDS,
    tags=["citizens"],
    responses={
        200: ResponseSpec(
            data_container=enrolment.EnrolmentOut,
            description="The citizen's existing enrolment: the request was repeated.",
        ),
        **problem_responses(*enrolment.ENROLMENT_ERRORS, *_AUTH_ERRORS),
    },
)
async def enrol(
    program_id: FromPath[str], citizen: NamedDependency[CitizenPrincipal], state: State
) -> Response[enrolment.EnrolmentOut]:
    """Enrol, first come, first served within the quota: 201 with the new enrolment; 200 with
    the same enrolment when repeated; 409 `quota_exhausted`; 403 `not_eligible` (the reason
    is named); 422 `registration_closed` / `registration_not_open`."""
    value = parse_id("prg", program_id)
    if value is None:
        raise enrolment.ProgramNotFound()
    context = _context(state)
    result = await enrolment.enrol(
        state.pool,
        state.redis,
        citizen_id=citizen.citizen_id,
        program_id=value,
        now=context.clock(),
        full_flag_seconds=context.config.full_flag_seconds,
    )
    return Response(result.enrolment, status_code=201 if result.created else 200)


# --- bank top-ups ----------------------------------------------------------------------------


@dataclass
class _TopupOperation(Operation):
    """The top-up's body is read raw (the signature covers its bytes, and is checked before
    the body is decoded), so its schema is documented here by hand."""

    def __post_init__(self) -> None:
        self.request_body = OpenAPIRequestBody(
            required=True,
            description="Signed by the bank (Standard Webhooks headers over these exact bytes).",
            content={
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["wallet_id", "amount", "bank_reference"],
                        properties={
                            "wallet_id": Schema(type=OpenAPIType.STRING, max_length=64),
                            "amount": Schema(
                                type=OpenAPIType.INTEGER,
                                exclusive_minimum=0,
                                maximum=topups.AMOUNT_MAX_SATANG,
                                description="satang",
                            ),
                            "bank_reference": Schema(
                                type=OpenAPIType.STRING,
                                pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$",
                            ),
                        },
                        additional_properties=False,
                    )
                )
            },
        )


@post(
    "/v1/bank/topups",
    status_code=201,
    tags=["bank partners"],
    operation_class=_TopupOperation,
    responses=problem_responses(*topups.TOPUP_ERRORS),
)
async def bank_topup(request: Request[Any, Any, Any], state: State) -> Response[topups.TopupOut]:
    """Credit a citizen's wallet. Signed per Standard Webhooks with the partner's secret;
    idempotent on `bank_reference`; a replayed `webhook-id` is refused."""
    context = _context(state)
    body = await request.body()
    partner_id, webhook_id = topups.verify_signature(
        context.partners, body, request.headers, context.clock()
    )
    data = topups.decode_topup(body)
    out = await topups.top_up(
        state.pool, state.engine, partner_id=partner_id, webhook_id=webhook_id, request=data
    )
    return Response(out, status_code=201)


WALLET_ROUTES = [
    register,
    confirm_totp,
    open_session,
    list_sessions,
    logout,
    end_session,
    profile,
    own_wallet,
    wallet_by_id,
    list_transactions,
    get_transaction,
    get_payment,
    list_programs,
    enrol,
    bank_topup,
]
