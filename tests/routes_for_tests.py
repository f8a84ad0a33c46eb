"""Test-only endpoints, added to an app built by ``create_app(settings, route_handlers=...)``.

They exercise the cross-cutting parts the way feature handlers will: an idempotent effect in
a database transaction, a paginated list, a domain refusal, a crash, a slow request.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from gwallet.idempotency import IDEMPOTENCY_ERRORS, IDEMPOTENT, IdempotencyClaim, Outcome
from gwallet.pagination import PAGINATED, Page, PageParams
from gwallet.problems import DomainError, problem_responses
from gwallet.request import RequestBody
from ledger_core import CreateTransferResult, Transfer

AMOUNT_MAX_SATANG = 10**12
THB = 764

CREATE_TEST_TABLES = """
CREATE TABLE IF NOT EXISTS test_http_effects (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind text NOT NULL,
    idempotency_key text NOT NULL,
    amount bigint NOT NULL
)
"""

ITEM_IDS = [f"itm_{n:03d}" for n in range(1, 46)]  # 45 items: pages of 20, 20, 5
BOOM_SECRET = "internal-detail-7f3a: password=hunter2 at /srv/gwallet/secret.py"


class EffectIn(RequestBody):
    amount: Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_MAX_SATANG)]
    currency: Literal["THB"] = "THB"
    note: Annotated[str, msgspec.Meta(max_length=100)] = ""
    # How long the effect's transaction stays open, to make concurrency observable.
    hold_ms: Annotated[int, msgspec.Meta(ge=0, le=2000)] = 0


class EffectOut(msgspec.Struct, frozen=True):
    effect_id: str
    derived_transfer_id: str
    amount: int
    currency: str
    note: str


class TransferIn(RequestBody):
    debit_account_id: uuid.UUID
    credit_account_id: uuid.UUID
    amount: Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_MAX_SATANG)]


class TransferOut(msgspec.Struct, frozen=True):
    transfer_id: str
    amount: int
    result: str


class InsufficientFunds(DomainError):
    """The account to debit holds less than the amount."""

    status = 422
    code = "insufficient_funds"
    title = "Insufficient funds"


class Item(msgspec.Struct, frozen=True):
    id: str


class DailyCapReached(DomainError):
    """A citizen may not receive more subsidy today than the program's daily cap."""

    status = 422
    code = "daily_cap_reached"
    title = "Daily cap reached"


class SlowDown(DomainError):
    """Test refusal with a Retry-After."""

    status = 429
    code = "slow_down"
    title = "Slow down"
    retry_after_seconds = 7


async def _effect(
    kind: str, data: EffectIn, claim: IdempotencyClaim, pool: asyncpg.Pool
) -> Response[Any]:
    async with pool.acquire() as conn, conn.transaction():
        effect_id = await conn.fetchval(
            "INSERT INTO test_http_effects (kind, idempotency_key, amount) VALUES ($1, $2, $3) "
            "RETURNING id",
            kind,
            claim.key,
            data.amount,
        )
        if data.hold_ms:
            await asyncio.sleep(data.hold_ms / 1000)
        out = EffectOut(
            effect_id=str(effect_id),
            derived_transfer_id=str(claim.derive_uuid("test_transfer")),
            amount=data.amount,
            currency=data.currency,
            note=data.note,
        )
        return await claim.respond(conn, 201, out)


_EFFECT_ERRORS = problem_responses(*IDEMPOTENCY_ERRORS)


@post("/test/effects", dependencies={"claim": IDEMPOTENT}, responses=_EFFECT_ERRORS)
async def create_effect(
    data: JSONBody[EffectIn], claim: NamedDependency[IdempotencyClaim], state: State
) -> Response[EffectOut]:
    return await _effect("effect", data, claim, state.pool)


@post("/test/other-effects", dependencies={"claim": IDEMPOTENT}, responses=_EFFECT_ERRORS)
async def create_other_effect(
    data: JSONBody[EffectIn], claim: NamedDependency[IdempotencyClaim], state: State
) -> Response[EffectOut]:
    return await _effect("other", data, claim, state.pool)


@post(
    "/test/transfers",
    dependencies={"claim": IDEMPOTENT},
    responses=problem_responses(*IDEMPOTENCY_ERRORS, InsufficientFunds),
)
async def move_money(
    data: JSONBody[TransferIn], claim: NamedDependency[IdempotencyClaim], state: State
) -> Response[TransferOut]:
    """Money moves through the ledger engine; the response is stored in the same batch."""
    transfer = Transfer(
        id=claim.derive_uuid("transfer"),
        debit_account_id=data.debit_account_id,
        credit_account_id=data.credit_account_id,
        amount=data.amount,
        ledger=THB,
        code=1,
    )

    def respond(results: list[CreateTransferResult]) -> Outcome:
        if not results[0].succeeded:
            return InsufficientFunds(f"the transfer was refused: {results[0].name.lower()}")
        return 201, TransferOut(str(transfer.id), data.amount, results[0].name.lower())

    await state.engine.create_transfers([transfer], effects=[claim.ledger_effect(respond)])
    return await claim.stored_response(state.pool)


@post("/test/loose-body", status_code=200, responses=problem_responses())
async def loose_body(data: JSONBody[dict[str, int]]) -> dict[str, int]:
    """A body that is not a Struct: Litestar decodes it (still strictly, by StrictRequest)."""
    return data


@get("/test/items", dependencies={"page": PAGINATED}, responses=problem_responses())
async def list_items(page: NamedDependency[PageParams]) -> Page[Item]:
    after = [i for i in ITEM_IDS if page.starting_after is None or i > page.starting_after]
    return Page.of([Item(id=i) for i in after[: page.limit + 1]], page)


@get("/test/items/{item_id:str}", responses=problem_responses())
async def get_item(item_id: FromPath[str]) -> Item:
    return Item(id=item_id)


@get("/test/refusals/{kind:str}", responses=problem_responses(DailyCapReached, SlowDown))
async def refuse(kind: FromPath[str]) -> None:
    raise DailyCapReached() if kind == "cap" else SlowDown()


@get("/test/boom", responses=problem_responses())
async def boom() -> None:
    raise RuntimeError(BOOM_SECRET)


@get("/test/slow", responses=problem_responses())
async def slow(seconds: Annotated[float, QueryParameter(ge=0, le=30)]) -> dict[str, str]:
    await asyncio.sleep(seconds)
    return {"status": "done"}


TEST_ROUTES = [
    create_effect,
    create_other_effect,
    move_money,
    loose_body,
    list_items,
    get_item,
    refuse,
    boom,
    slow,
]
