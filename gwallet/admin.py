"""The back office's cross-cutting endpoints: sessions, officials, the audit log, the ledger.

Feature packages add their own admin controllers (``subsidy_rules.http`` for programs) behind
the same guard (``gwallet.officials.official_guard``); all are listed in ``ADMIN_CONTROLLERS``
for the composition root.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from gwallet import audit, officials
from gwallet.ids import parse_id
from gwallet.officials import (
    ALL_ROLES,
    AUTH_ERRORS,
    PASSWORD_MAX_LENGTH,
    USERNAME_PATTERN,
    InvalidCredentials,
    NewOfficial,
    OfficialOut,
    Role,
    Session,
    UsernameTaken,
    bearer_token,
    create_official,
    foreign_token_guard,
    log_out,
    login,
    official_guard,
    principal_of,
    roles,
)
from gwallet.pagination import PAGINATED, Page, PageParams
from gwallet.problems import Forbidden, InvalidParameter, problem_responses
from gwallet.request import RequestBody
from ledger_core import VerifyReport, verify_ledger


class SessionIn(RequestBody):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=PASSWORD_MAX_LENGTH)]
    totp_code: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]


class OfficialIn(RequestBody):
    username: Annotated[str, msgspec.Meta(pattern=USERNAME_PATTERN)]
    role: Role


def _cursor(prefix: str, starting_after: str | None) -> Any:
    if starting_after is None:
        return None
    value = parse_id(prefix, starting_after)
    if value is None:
        raise InvalidParameter(f"starting_after: not an id of the form {prefix}_...")
    return value


class SessionsController(Controller):
    path = "/v1/admin/sessions"
    tags = ["back office: officials"]

    @post(
        "/",
        guards=[foreign_token_guard],
        responses=problem_responses(InvalidCredentials, Forbidden),
        status_code=201,
    )
    async def create_session(self, data: JSONBody[SessionIn], state: State) -> Session:
        """Log in with username, password and a TOTP code; get a bearer token (``ost_...``).

        Every failure is the same 401 ``invalid_credentials``; 10 in a row lock the account
        for 30 minutes (settings ``official_login_max_failures``, ``official_lockout_minutes``).
        """
        return await login(
            state.pool,
            state.settings,
            username=data.username,
            password=data.password,
            totp_code=data.totp_code,
        )

    @delete(
        "/current",
        guards=[official_guard],
        opt=roles(*ALL_ROLES),
        responses=problem_responses(*AUTH_ERRORS),
        status_code=204,
    )
    async def delete_session(self, request: Request[Any, Any, Any], state: State) -> None:
        """Log out: this token stops working at once."""
        token = bearer_token(request)
        assert token is not None  # the guard admitted it
        await log_out(state.pool, token, principal_of(request))


class OfficialsController(Controller):
    path = "/v1/admin/officials"
    tags = ["back office: officials"]
    guards = [official_guard]

    @post(
        "/",
        opt=roles(Role.ADMIN),
        responses=problem_responses(*AUTH_ERRORS, UsernameTaken),
        status_code=201,
    )
    async def create(
        self, data: JSONBody[OfficialIn], request: Request[Any, Any, Any], state: State
    ) -> NewOfficial:
        """Create an official (admin only). The generated password and the TOTP secret are
        in this response only.

        No Idempotency-Key: the response holds secrets, which are never stored; a retry is
        a 409 ``username_taken`` instead of a second official.
        """
        async with state.pool.acquire() as conn, conn.transaction():
            return await create_official(
                conn,
                username=data.username,
                role=data.role,
                password=None,
                created_by=principal_of(request),
            )

    @get(
        "/",
        opt=roles(Role.ADMIN, Role.AUDITOR),
        dependencies={"page": PAGINATED},
        responses=problem_responses(*AUTH_ERRORS),
    )
    async def list_officials(
        self, page: NamedDependency[PageParams], state: State
    ) -> Page[OfficialOut]:
        """Officials in id order (``starting_after=off_...``)."""
        after = _cursor("off", page.starting_after)
        rows = await officials.list_officials(state.pool, after=after, limit=page.limit + 1)
        return Page.of(rows, page)


_ACTION_PATTERN = r"^[a-z][a-z_.]{1,63}$"
_TARGET_PATTERN = r"^[a-z]{2,5}_[0-9a-z]{26}$"


class AuditLogController(Controller):
    path = "/v1/admin/audit-log"
    tags = ["back office: audit"]
    guards = [official_guard]
    opt = roles(Role.AUDITOR, Role.ADMIN)

    @get("/", dependencies={"page": PAGINATED}, responses=problem_responses(*AUTH_ERRORS))
    async def list_entries(
        self,
        page: NamedDependency[PageParams],
        state: State,
        target_id: Annotated[
            str | None,
            QueryParameter(pattern=_TARGET_PATTERN, description="only entries about this id"),
        ] = None,
        action: Annotated[
            str | None,
            QueryParameter(pattern=_ACTION_PATTERN, description="e.g. program.approve"),
        ] = None,
    ) -> Page[audit.AuditEntry]:
        """Every official action in chain order: who, when, action, target, before/after,
        and the entry's hash chain (``starting_after=aud_...``)."""
        after_seq = 0
        entry_id = _cursor("aud", page.starting_after)
        if entry_id is not None:
            seq = await audit.seq_of(state.pool, entry_id)
            if seq is None:
                raise InvalidParameter("starting_after: no such audit entry")
            after_seq = seq
        entries = await audit.list_entries(
            state.pool,
            after_seq=after_seq,
            limit=page.limit + 1,
            target_id=target_id,
            action=action,
        )
        return Page.of(entries, page)

    @get("/verify", responses=problem_responses(*AUTH_ERRORS))
    async def verify(self, state: State) -> audit.AuditVerifyReport:
        """Recompute the audit log's hash chain; report the first broken entry."""
        return await audit.verify_audit_log(state.pool)


class LedgerController(Controller):
    path = "/v1/admin/ledger"
    tags = ["back office: audit"]
    guards = [official_guard]
    opt = roles(Role.AUDITOR, Role.ADMIN)

    @get("/verify", responses=problem_responses(*AUTH_ERRORS))
    async def verify(self, state: State) -> VerifyReport:
        """Check every ledger invariant and the signed hash chain (``gwallet ledger verify``)
        against this service's checkpoint key; ``ok`` false lists what failed."""
        public_key = Ed25519PublicKey.from_public_bytes(state.engine.public_key)
        return await verify_ledger(state.pool, public_key)


ADMIN_CONTROLLERS = [SessionsController, OfficialsController, AuditLogController, LedgerController]
