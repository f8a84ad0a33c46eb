"""The officials' program endpoints (shared/API.md, "Finance officials"): parse, call one
service function, map the result. Every handler is behind ``official_guard`` and names the
roles it admits.

| method path | roles |
|---|---|
| `POST /v1/admin/programs` (Idempotency-Key) | maker |
| `GET /v1/admin/programs`, `GET .../{program_id}` | every role |
| `PATCH .../{program_id}` | maker |
| `GET .../{program_id}/versions`, `GET .../{program_id}/versions/{version}` | every role |
| `POST .../{program_id}/submit` `{version}` | maker |
| `POST .../{program_id}/approve` `{version, content_hash, totp_code}` | checker |
| `POST .../{program_id}/{activate,pause,resume,close}` `{reason?}` | admin |
| `POST .../{program_id}/funding` `{amount}` (Idempotency-Key) | maker |
| `GET .../{program_id}/funding` | every role |
| `POST .../{program_id}/funding/{funding_id}/approve` `{totp_code}` (Idempotency-Key) | checker |
| `GET .../{program_id}/stats` | every role |
| `POST .../{program_id}/simulate` `{version, from, to, population?}` | every role |

Ids in paths that do not parse (``prg_...``, ``fnd_...``, a version number) are a 404.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from gwallet.idempotency import IDEMPOTENCY_ERRORS, IDEMPOTENT, IdempotencyClaim
from gwallet.ids import parse_id
from gwallet.officials import (
    AUTH_ERRORS,
    READERS,
    Role,
    TotpCodeInvalid,
    official_guard,
    principal_of,
    roles,
)
from gwallet.pagination import PAGINATED, Page, PageParams
from gwallet.problems import InvalidParameter, problem_responses
from gwallet.request import RequestBody
from subsidy_rules import service
from subsidy_rules.service import (
    FundingOut,
    LifecycleAction,
    Population,
    ProgramOut,
    ProgramStats,
    ProgramStatus,
    VersionOut,
)
from subsidy_rules.simulation import SimulationReport
from subsidy_rules.spec import BUDGET_MAX_SATANG

VersionNumber = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
ContentHash = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
TotpCode = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
Reason = Annotated[str, msgspec.Meta(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]
AwareDateTime = Annotated[datetime, msgspec.Meta(tz=True)]
BudgetAmount = Annotated[int, msgspec.Meta(gt=0, le=BUDGET_MAX_SATANG)]


class ProgramIn(RequestBody):
    spec: dict[str, Any]  # a program spec (subsidy_rules/spec.py; examples in .examples)
    effective_at: AwareDateTime | None = None


class ProgramEditIn(RequestBody):
    # A JSON merge patch (RFC 7396) of the latest version's spec: objects merge, null removes
    # a key, anything else replaces. Omitted: the spec stays as it is.
    spec: dict[str, Any] | None = None
    # When this version takes effect once approved (default: at approval).
    effective_at: AwareDateTime | None = None
    # Optimistic concurrency: refuse (409) if the latest version is no longer this one.
    base_version: VersionNumber | None = None


class SubmitIn(RequestBody):
    version: VersionNumber


class ApproveIn(RequestBody):
    version: VersionNumber
    content_hash: ContentHash
    totp_code: TotpCode


class LifecycleIn(RequestBody):
    reason: Reason = ""


class FundingIn(RequestBody):
    amount: BudgetAmount
    currency: Literal["THB"] = "THB"


class FundingApproveIn(RequestBody):
    totp_code: TotpCode


class SimulateIn(RequestBody):
    version: VersionNumber
    start: date = msgspec.field(name="from")
    end: date = msgspec.field(name="to")
    population: Population = Population.PROGRAM


def _program_id(text: str) -> uuid.UUID:
    value = parse_id("prg", text)
    if value is None:
        raise service.ProgramNotFound()
    return value


def _version_number(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10 or not 1 <= int(text) < 2**31:
        raise service.VersionNotFound()
    return int(text)


def _cursor(prefix: str, starting_after: str | None) -> uuid.UUID | None:
    if starting_after is None:
        return None
    value = parse_id(prefix, starting_after)
    if value is None:
        raise InvalidParameter(f"starting_after: not an id of the form {prefix}_...")
    return value


_READ = problem_responses(*AUTH_ERRORS, service.ProgramNotFound)
_WRITE = problem_responses(
    *AUTH_ERRORS,
    service.ProgramNotFound,
    service.InvalidSpec,
    service.InvalidTransition,
    service.VersionConflict,
)
_LIFECYCLE = problem_responses(*AUTH_ERRORS, service.ProgramNotFound, service.InvalidTransition)


class ProgramsController(Controller):
    path = "/v1/admin/programs"
    tags = ["back office: programs"]
    guards = [official_guard]

    @post(
        "/",
        opt=roles(Role.MAKER),
        dependencies={"claim": IDEMPOTENT},
        responses=problem_responses(
            *AUTH_ERRORS, *IDEMPOTENCY_ERRORS, service.InvalidSpec, service.ProgramCodeTaken
        ),
        status_code=201,
    )
    async def create(
        self,
        data: JSONBody[ProgramIn],
        claim: NamedDependency[IdempotencyClaim],
        request: Request[Any, Any, Any],
        state: State,
    ) -> Response[ProgramOut]:
        """Create a draft program (version 1) from a spec; 422 ``invalid_spec`` names the field."""
        async with state.pool.acquire() as conn, conn.transaction():
            out = await service.create_program(
                conn, principal_of(request), data.spec, effective_at=data.effective_at
            )
            return await claim.respond(conn, 201, out)

    @get(
        "/",
        opt=roles(*READERS),
        dependencies={"page": PAGINATED},
        responses=problem_responses(*AUTH_ERRORS),
    )
    async def list_programs(
        self,
        page: NamedDependency[PageParams],
        state: State,
        status: Annotated[
            ProgramStatus | None, QueryParameter(description="only this status")
        ] = None,
    ) -> Page[ProgramOut]:
        """Programs in id order (``starting_after=prg_...``), each with its latest version."""
        after = _cursor("prg", page.starting_after)
        async with state.pool.acquire() as conn:
            rows = await service.list_programs(
                conn, after=after, limit=page.limit + 1, status=status
            )
        return Page.of(rows, page)

    @get("/{program_id:str}", opt=roles(*READERS), responses=_READ)
    async def read(self, program_id: FromPath[str], state: State) -> ProgramOut:
        """A program: its status, latest version (spec, hash) and the version in effect."""
        async with state.pool.acquire() as conn:
            return await service.get_program(conn, _program_id(program_id))

    @patch("/{program_id:str}", opt=roles(Role.MAKER), responses=_WRITE)
    async def edit(
        self,
        program_id: FromPath[str],
        data: JSONBody[ProgramEditIn],
        request: Request[Any, Any, Any],
        state: State,
    ) -> ProgramOut:
        """Edit: a new version from a merge patch of the latest spec. It needs its own
        submission and approval; an approved program keeps its version in effect until the
        new one is approved and its ``effective_at`` has come."""
        async with state.pool.acquire() as conn, conn.transaction():
            return await service.edit_program(
                conn,
                principal_of(request),
                _program_id(program_id),
                patch=data.spec,
                effective_at=data.effective_at,
                base_version=data.base_version,
            )

    @get(
        "/{program_id:str}/versions",
        opt=roles(*READERS),
        dependencies={"page": PAGINATED},
        responses=_READ,
    )
    async def versions(
        self, program_id: FromPath[str], page: NamedDependency[PageParams], state: State
    ) -> Page[VersionOut]:
        """Every version of the program, oldest first (``starting_after=<version number>``)."""
        after = 0
        if page.starting_after is not None:
            if not page.starting_after.isdigit() or len(page.starting_after) > 10:
                raise InvalidParameter("starting_after: a version number")
            after = int(page.starting_after)
        async with state.pool.acquire() as conn:
            rows = await service.list_versions(
                conn, _program_id(program_id), after=after, limit=page.limit + 1
            )
        return Page.of(rows, page)

    @get(
        "/{program_id:str}/versions/{version:str}",
        opt=roles(*READERS),
        responses=problem_responses(*AUTH_ERRORS, service.ProgramNotFound, service.VersionNotFound),
    )
    async def version(
        self, program_id: FromPath[str], version: FromPath[str], state: State
    ) -> VersionOut:
        async with state.pool.acquire() as conn:
            return await service.get_version(
                conn, _program_id(program_id), _version_number(version)
            )

    @post("/{program_id:str}/submit", opt=roles(Role.MAKER), responses=_WRITE, status_code=200)
    async def submit(
        self,
        program_id: FromPath[str],
        data: JSONBody[SubmitIn],
        request: Request[Any, Any, Any],
        state: State,
    ) -> ProgramOut:
        """Submit the latest version (a draft) for approval."""
        async with state.pool.acquire() as conn, conn.transaction():
            return await service.submit_version(
                conn, principal_of(request), _program_id(program_id), data.version
            )

    @post(
        "/{program_id:str}/approve",
        opt=roles(Role.CHECKER),
        responses=problem_responses(
            *AUTH_ERRORS,
            service.ProgramNotFound,
            service.SelfApproval,
            TotpCodeInvalid,
            service.VersionConflict,
            service.InvalidTransition,
        ),
        status_code=200,
    )
    async def approve(
        self,
        program_id: FromPath[str],
        data: JSONBody[ApproveIn],
        request: Request[Any, Any, Any],
        state: State,
    ) -> ProgramOut:
        """Approve exactly this version (number and content hash) with a fresh TOTP code.
        403 for the version's maker; 409 if it is no longer the latest submitted version."""
        async with state.pool.acquire() as conn, conn.transaction():
            return await service.approve_version(
                conn,
                principal_of(request),
                _program_id(program_id),
                version=data.version,
                content_hash_hex=data.content_hash,
                totp_code=data.totp_code,
            )

    async def _lifecycle(
        self,
        action: LifecycleAction,
        program_id: str,
        data: LifecycleIn,
        request: Request[Any, Any, Any],
        state: State,
    ) -> ProgramOut:
        async with state.pool.acquire() as conn, conn.transaction():
            return await service.change_lifecycle(
                conn, principal_of(request), _program_id(program_id), action, data.reason
            )

    @post(
        "/{program_id:str}/activate", opt=roles(Role.ADMIN), responses=_LIFECYCLE, status_code=200
    )
    async def activate(
        self,
        program_id: FromPath[str],
        data: JSONBody[LifecycleIn],
        request: Request[Any, Any, Any],
        state: State,
    ) -> ProgramOut:
        """approved -> active."""
        return await self._lifecycle(LifecycleAction.ACTIVATE, program_id, data, request, state)

    @post("/{program_id:str}/pause", opt=roles(Role.ADMIN), responses=_LIFECYCLE, status_code=200)
    async def pause(
        self,
        program_id: FromPath[str],
        data: JSONBody[LifecycleIn],
        request: Request[Any, Any, Any],
        state: State,
    ) -> ProgramOut:
        """active -> paused: no enrolment, no subsidy until resumed."""
        return await self._lifecycle(LifecycleAction.PAUSE, program_id, data, request, state)

    @post("/{program_id:str}/resume", opt=roles(Role.ADMIN), responses=_LIFECYCLE, status_code=200)
    async def resume(
        self,
        program_id: FromPath[str],
        data: JSONBody[LifecycleIn],
        request: Request[Any, Any, Any],
        state: State,
    ) -> ProgramOut:
        """paused -> active."""
        return await self._lifecycle(LifecycleAction.RESUME, program_id, data, request, state)

    @post("/{program_id:str}/close", opt=roles(Role.ADMIN), responses=_LIFECYCLE, status_code=200)
    async def close(
        self,
        program_id: FromPath[str],
        data: JSONBody[LifecycleIn],
        request: Request[Any, Any, Any],
        state: State,
    ) -> ProgramOut:
        """active or paused -> closed, for good."""
        return await self._lifecycle(LifecycleAction.CLOSE, program_id, data, request, state)

    @post(
        "/{program_id:str}/funding",
        opt=roles(Role.MAKER),
        dependencies={"claim": IDEMPOTENT},
        responses=problem_responses(
            *AUTH_ERRORS,
            *IDEMPOTENCY_ERRORS,
            service.ProgramNotFound,
            service.ProgramNotFundable,
            service.FundingExceedsBudget,
        ),
        status_code=201,
    )
    async def request_funding(
        self,
        program_id: FromPath[str],
        data: JSONBody[FundingIn],
        claim: NamedDependency[IdempotencyClaim],
        request: Request[Any, Any, Any],
        state: State,
    ) -> Response[FundingOut]:
        """Ask for ``amount`` satang to move from the treasury into the program's budget; a
        checker approves it (``.../funding/{funding_id}/approve``)."""
        async with state.pool.acquire() as conn, conn.transaction():
            out = await service.request_funding(
                conn, principal_of(request), _program_id(program_id), data.amount
            )
            return await claim.respond(conn, 201, out)

    @get(
        "/{program_id:str}/funding",
        opt=roles(*READERS),
        dependencies={"page": PAGINATED},
        responses=_READ,
    )
    async def funding(
        self, program_id: FromPath[str], page: NamedDependency[PageParams], state: State
    ) -> Page[FundingOut]:
        """The program's funding requests (``starting_after=fnd_...``)."""
        after = _cursor("fnd", page.starting_after)
        async with state.pool.acquire() as conn:
            rows = await service.list_funding(
                conn, _program_id(program_id), after=after, limit=page.limit + 1
            )
        return Page.of(rows, page)

    @post(
        "/{program_id:str}/funding/{funding_id:str}/approve",
        opt=roles(Role.CHECKER),
        dependencies={"claim": IDEMPOTENT},
        responses=problem_responses(
            *AUTH_ERRORS,
            *IDEMPOTENCY_ERRORS,
            service.ProgramNotFound,
            service.FundingRequestNotFound,
            service.SelfApproval,
            TotpCodeInvalid,
            service.FundingAlreadyApproved,
            service.ProgramNotFundable,
            service.FundingRefused,
        ),
        status_code=200,
    )
    async def approve_funding(
        self,
        program_id: FromPath[str],
        funding_id: FromPath[str],
        data: JSONBody[FundingApproveIn],
        claim: NamedDependency[IdempotencyClaim],
        request: Request[Any, Any, Any],
        state: State,
    ) -> Response[FundingOut]:
        """Approve a funding request (a checker who did not request it, with a fresh TOTP
        code): the ledger moves the money treasury -> budget once, by a transfer whose id
        is derived from the request's; a second approval is 409 ``funding_already_approved``."""
        prg = _program_id(program_id)
        fnd = parse_id("fnd", funding_id)
        if fnd is None:
            raise service.FundingRequestNotFound()
        return await service.approve_funding(
            state.pool,
            state.engine,
            principal_of(request),
            prg,
            fnd,
            totp_code=data.totp_code,
            claim=claim,
        )

    @get("/{program_id:str}/stats", opt=roles(*READERS), responses=_READ)
    async def stats(self, program_id: FromPath[str], state: State) -> ProgramStats:
        """Budget (funded, disbursed, remaining, ``budget_exhausted``), enrolled, payments,
        by day / province / merchant category, and the forecast of budget burn."""
        async with state.pool.acquire() as conn:
            return await service.program_stats(conn, _program_id(program_id))

    @post(
        "/{program_id:str}/simulate",
        opt=roles(*READERS),
        responses=problem_responses(
            *AUTH_ERRORS,
            service.ProgramNotFound,
            service.VersionNotFound,
            service.SimulationTooLarge,
            service.SimulationBusy,
        ),
        status_code=200,
    )
    async def simulate(
        self, program_id: FromPath[str], data: JSONBody[SimulateIn], state: State
    ) -> SimulationReport:
        """Dry-run a version (any, drafts included) over the recorded payments of a period
        (Bangkok dates, both included; at most 92 days and 1,000,000 payments): per day the
        subsidy it would have paid and the cumulative total against its budget. Moves
        nothing. ``population``: ``program`` (its own payments) or ``all`` (every payment)."""
        return await service.simulate(
            state.pool,
            _program_id(program_id),
            version=data.version,
            start=data.start,
            end=data.end,
            population=data.population,
        )


PROGRAM_CONTROLLERS = [ProgramsController]
