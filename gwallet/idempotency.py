"""Idempotency keys: a retried request has its effect once and gets the same answer.

The rule (shared/API.md): a POST that creates or moves something carries an
``Idempotency-Key`` header (1-255 printable ASCII).

- Same key, same request (method, path and body): the first response is replayed, same status
  and same body.
- Same key, different request: 422 ``idempotency_key_reused``.
- Same key while the first request still runs: 409 ``idempotency_request_in_progress``.
- No key on a money-moving POST: 400 ``idempotency_key_required``.

Where the truth lives: the completed response is a row of ``idempotency_keys`` in PostgreSQL,
inserted by ``record`` (or ``IdempotencyClaim.respond``) *inside the transaction of the
effect*, so the row exists exactly when the effect does. Two requests with one key that race
past every check both reach that INSERT; the primary key lets one commit, the other learns it
lost, its transaction (and effect) is rolled back and the winner's response is replayed.

Redis only makes the in-progress case cheap: a ``SET NX`` claim with an expiry, released when
the request ends, turns the second concurrent request away with a 409 before it does any
work. Redis never holds the only copy of anything: when it is down (or the claim expired),
requests proceed and the PostgreSQL key decides.

Effects that go through the ledger engine commit in the engine's batch transactions, not the
handler's. Their transfers get ids from ``derive_uuid(scope, key, purpose)``: a retry of the
same request submits the same transfer ids, and the ledger answers ``exists`` instead of
moving money twice. The response row rides along as an engine ``Effect``
(``claim.ledger_effect``), so it too commits in the very transaction of the transfers::

    transfer = Transfer(id=claim.derive_uuid("payment"), ...)
    await state.engine.create_transfers([transfer], effects=[claim.ledger_effect(respond)])
    return await claim.stored_response(state.pool)  # ours, or a concurrent duplicate's

Handlers use it with a dependency::

    @post("/v1/things", dependencies={"claim": IDEMPOTENT}, status_code=201,
          responses=problem_responses(*IDEMPOTENCY_ERRORS))
    async def create_thing(
        data: JSONBody[ThingIn], claim: NamedDependency[IdempotencyClaim], state: State
    ) -> Response[ThingOut]:
        async with state.pool.acquire() as conn, conn.transaction():
            thing = ...  # the effect
            return await claim.respond(conn, 201, ThingOut(...))
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.di import Provide
from litestar.params import HeaderParameter
from redis.asyncio import Redis

from gwallet.problems import PROBLEM_MEDIA_TYPE, DomainError
from ledger_core.checks import Computation
from ledger_core.engine import Effect, LedgerEngine
from ledger_core.model import CreateTransferResult
from ledger_core.sql import load_queries

_log = logging.getLogger("gwallet.idempotency")

QUERIES = load_queries(Path(__file__).with_name("queries_idempotency.sql"))

HEADER = "Idempotency-Key"
# Printable ASCII (space to tilde), 1 to 255 characters.
_KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,255}")
# Stored bodies are bounded (the table has the same CHECK).
MAX_STORED_BODY_BYTES = 1024 * 1024
# The API contract keeps keys at least this long; a shorter retention is refused.
MIN_RETENTION_HOURS = 24
PURGE_BATCH_ROWS = 5_000
PURGE_MAX_BATCHES = 1_000

# Fixed namespace of the ids derived from idempotency keys. Never change it: a changed
# namespace would give a retried request new transfer ids.
_DERIVED_ID_NAMESPACE = uuid.UUID("6d1f3c1e-8a52-4b7e-9c55-2f0f4d3b9a10")

# Compare-and-delete: release the claim only if it is still ours (it may have expired and
# been taken by another request).
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class IdempotencyKeyRequired(DomainError):
    """A POST that moves money must carry an Idempotency-Key header."""

    status = 400
    code = "idempotency_key_required"
    title = "Idempotency key required"


class InvalidIdempotencyKey(DomainError):
    """An Idempotency-Key is 1 to 255 printable ASCII characters."""

    status = 400
    code = "invalid_idempotency_key"
    title = "Invalid idempotency key"


class IdempotencyRequestInProgress(DomainError):
    """A request with this Idempotency-Key is still being processed; retry after it ends."""

    status = 409
    code = "idempotency_request_in_progress"
    title = "Idempotency request in progress"
    retry_after_seconds = 1


class IdempotencyKeyReused(DomainError):
    """An Idempotency-Key was reused with a different method, path or body."""

    status = 422
    code = "idempotency_key_reused"
    title = "Idempotency key reused"


IDEMPOTENCY_ERRORS: tuple[type[DomainError], ...] = (
    IdempotencyKeyRequired,
    InvalidIdempotencyKey,
    IdempotencyRequestInProgress,
    IdempotencyKeyReused,
)


class IdempotentReplay(Exception):
    """Not an error: control flow that answers a request with its stored first response.

    Raised from the dependency (before the handler runs) or from ``respond`` (rolling back the
    losing transaction); the app's exception handler ``replay_response`` sends it.
    """

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def replay_response(request: Request[Any, Any, Any], exc: IdempotentReplay) -> Response[bytes]:
    return Response(
        content=exc.body,
        status_code=exc.status,
        media_type=_media_type(exc.status),
        headers={"Idempotent-Replayed": "true"},
    )


# What a request's outcome is stored as: (status, content), or a refusal.
Outcome = tuple[int, Any] | DomainError


# Ledger results that mean a transfer id derived from the Idempotency-Key belongs to another
# request with that key (another body, or a first attempt the ledger refused): the ledger,
# not Redis, is what makes sure one key moves money once.
KEY_TAKEN = frozenset(
    r for r in CreateTransferResult
    if r.name.startswith("EXISTS_WITH_DIFFERENT_") or r is CreateTransferResult.ID_ALREADY_FAILED
)


def _encode(outcome: Outcome) -> tuple[int, bytes]:
    if isinstance(outcome, DomainError):
        return outcome.status, msgspec.json.encode(outcome.to_problem())
    status, content = outcome
    return status, msgspec.json.encode(content)


def _media_type(status: int) -> str:
    # Every error body of this API is a problem document (gwallet.problems).
    return PROBLEM_MEDIA_TYPE if status >= 400 else "application/json"


class _LedgerResponseWriter:
    """Writes idempotency rows inside the ledger engine's batch transaction."""

    async def write(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        await conn.executemany(QUERIES["record_response"], rows)


_LEDGER_WRITER = _LedgerResponseWriter()


def derive_uuid(scope: str, key: str, purpose: str) -> uuid.UUID:
    """A deterministic id for ``purpose`` (e.g. "subsidy_transfer") of one idempotent request.

    The same scope, key and purpose always give the same id; any difference gives another.
    """
    assert purpose, "purpose names which of the request's ids this is"
    # \x1f (unit separator) cannot occur in a key, so the parts cannot run into each other.
    return uuid.uuid5(_DERIVED_ID_NAMESPACE, f"{scope}\x1f{key}\x1f{purpose}")


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """SHA-256 of the request: method, path and the body in canonical JSON form.

    Canonical: keys sorted and whitespace dropped, so a client that re-serialises the same
    object differently is still recognised. A body that is not JSON is taken byte for byte.
    """
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except msgspec.DecodeError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguity
        digest.update(part)
    return digest.digest()


def parse_key(raw: str | None) -> str:
    if raw is None:
        raise IdempotencyKeyRequired()
    if not _KEY_PATTERN.fullmatch(raw):
        raise InvalidIdempotencyKey()
    return raw


def principal_scope(request: Request[Any, Any, Any]) -> str:
    """Whose keys these are: the authenticated principal's id, or "public".

    Authentication middleware (later issues) puts a user with a ``principal_id`` (for example
    a ``cit_...`` or ``mer_...`` id) into the connection scope.
    """
    user = request.scope.get("user")
    principal = getattr(user, "principal_id", None)
    return str(principal) if principal else "public"


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """The right to run one request with one key; handed to the handler by the dependency."""

    scope: str
    key: str
    fingerprint: bytes

    def derive_uuid(self, purpose: str) -> uuid.UUID:
        return derive_uuid(self.scope, self.key, purpose)

    def ledger_effect(self, respond: Callable[[list[CreateTransferResult]], Outcome]) -> Effect:
        """An engine ``Effect`` storing the response that ``respond`` makes of the transfers'
        results, in the same batch transaction as the transfers (refusals are stored too, so
        a retry gets the same answer even if it would now succeed)."""

        def make_row(results: list[CreateTransferResult]) -> tuple[Any, ...]:
            status, body = _encode(respond(results))
            assert len(body) <= MAX_STORED_BODY_BYTES
            return (self.scope, self.key, self.fingerprint, status, body)

        return Effect(writer=_LEDGER_WRITER, make_row=make_row)

    async def submit_computation(
        self,
        engine: LedgerEngine,
        db: asyncpg.Pool,
        computation: Computation,
        respond: Callable[[list[CreateTransferResult]], Outcome],
        effects: Sequence[Effect] = (),
    ) -> Response[Any]:
        """Commit a ledger computation with its effects and this key's answer in one batch.

        ``respond`` turns the batch's results into the answer (a success, or a refusal that is
        stored too). Returns this request's own success; a refusal, or the answer of a
        concurrent duplicate of this very request that committed first, is read back as
        stored, so every caller with the key gets the same answer.
        """
        answers: list[Outcome] = []

        def answer(results: list[CreateTransferResult]) -> Outcome:
            if any(r in KEY_TAKEN for r in results):
                # Another request with this key took these transfer ids first (they derive
                # from the key): nothing moved, and its answer, stored, is this one's too.
                answers.append(IdempotencyRequestInProgress())
            else:
                answers.append(respond(results))
            return answers[-1]

        _, results = await engine.submit(
            computation, effects=[*effects, self.ledger_effect(answer)]
        )
        duplicate = bool(results) and all(r is CreateTransferResult.EXISTS for r in results)
        if not answers or duplicate or isinstance(answers[-1], DomainError):
            return await self.stored_response(db)
        status, content = answers[-1]
        return Response(content, status_code=status)

    async def stored_response(self, db: asyncpg.Pool | asyncpg.Connection) -> Response[bytes]:
        """The response recorded for this key (after ``ledger_effect`` committed)."""
        stored = await db.fetchrow(QUERIES["find_response"], self.scope, self.key)
        assert stored is not None, "the engine committed the effect, so the row exists"
        if bytes(stored["request_fingerprint"]) != self.fingerprint:
            raise IdempotencyKeyReused()
        status = stored["response_status"]
        return Response(
            bytes(stored["response_body"]), status_code=status, media_type=_media_type(status)
        )

    async def respond(self, conn: asyncpg.Connection, status: int, content: Any) -> Response[Any]:
        """Record the response inside the caller's open transaction and return it.

        If another request with the key committed first, raise so that the caller's
        transaction (and its effect) rolls back and the winner's response is replayed.
        Expects the default READ COMMITTED isolation, so the winner's row is visible here.
        """
        status, body = _encode((status, content))
        if await record(conn, self, status, body):
            return Response(content=body, status_code=status, media_type=_media_type(status))
        stored = await conn.fetchrow(QUERIES["find_response"], self.scope, self.key)
        assert stored is not None, "the insert conflicted, so the row exists"
        raise _replay_or_reused(self, stored)


async def record(
    conn: asyncpg.Connection, claim: IdempotencyClaim, status: int, body: bytes
) -> bool:
    """Store the response in the caller's transaction; True if this request won the key."""
    assert conn.is_in_transaction(), "record() belongs inside the effect's transaction"
    assert len(body) <= MAX_STORED_BODY_BYTES, "responses of idempotent requests are small"
    won = await conn.fetchval(
        QUERIES["record_response"], claim.scope, claim.key, claim.fingerprint, status, body
    )
    return bool(won)


def _replay_or_reused(claim: IdempotencyClaim, stored: asyncpg.Record) -> Exception:
    if bytes(stored["request_fingerprint"]) != claim.fingerprint:
        return IdempotencyKeyReused()
    return IdempotentReplay(stored["response_status"], bytes(stored["response_body"]))


async def purge_expired(pool: asyncpg.Pool, retention_hours: int) -> int:
    """Delete keys older than ``retention_hours`` in bounded batches; return how many."""
    if retention_hours < MIN_RETENTION_HOURS:
        raise ValueError(f"idempotency keys are kept at least {MIN_RETENTION_HOURS} hours")
    deleted = 0
    for _ in range(PURGE_MAX_BATCHES):
        status = await pool.execute(QUERIES["purge_expired"], retention_hours, PURGE_BATCH_ROWS)
        count = int(status.split()[-1])  # "DELETE n"
        deleted += count
        if count < PURGE_BATCH_ROWS:
            break
    return deleted


class _RedisClaim:
    """The in-progress marker in Redis; every failure to reach Redis is treated as absent."""

    def __init__(self, redis: Redis, scope: str, key: str, lock_seconds: float) -> None:
        digest = hashlib.sha256(f"{scope}\x1f{key}".encode()).hexdigest()
        self._name = f"gwallet:idempotency:{digest}"
        self._token = secrets.token_hex(16)
        self._redis = redis
        self._lock_ms = max(1, int(lock_seconds * 1000))
        self._held = False

    async def acquire(self) -> bool:
        """False only if another request holds the claim; True if ours or Redis is down."""
        try:
            taken = await self._redis.set(self._name, self._token, nx=True, px=self._lock_ms)
        except Exception as exc:  # noqa: BLE001 - Redis only speeds things up
            _log.warning("idempotency claim skipped: redis unavailable (%s)", type(exc).__name__)
            return True
        self._held = bool(taken)
        return self._held

    async def release(self) -> None:
        if not self._held:
            return
        try:
            await self._redis.eval(_RELEASE_SCRIPT, 1, self._name, self._token)
        except Exception as exc:  # noqa: BLE001 - the claim expires by itself
            _log.warning("idempotency claim not released (%s)", type(exc).__name__)


_KeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name=HEADER,
        required=False,
        description="1-255 printable ASCII characters chosen by the client, unique per "
        "intended effect. Retrying with the same key and body replays the first response.",
    ),
]


async def _claim(
    request: Request[Any, Any, Any], idempotency_key: _KeyHeader = None
) -> AsyncIterator[IdempotencyClaim]:
    """Check the key, replay or refuse a known one, take the in-progress claim, and hand the
    claim to the handler; the Redis claim is released when the handler is done."""
    key = parse_key(idempotency_key)
    state = request.app.state
    scope = principal_scope(request)
    claim = IdempotencyClaim(
        scope=scope,
        key=key,
        fingerprint=fingerprint(request.method, request.url.path, await request.body()),
    )
    stored = await state.pool.fetchrow(QUERIES["find_response"], scope, key)
    if stored is not None:
        raise _replay_or_reused(claim, stored)
    in_progress = _RedisClaim(state.redis, scope, key, state.settings.idempotency_lock_seconds)
    if not await in_progress.acquire():
        raise IdempotencyRequestInProgress()
    try:
        yield claim
    finally:
        await in_progress.release()


# The dependency for handlers: ``dependencies={"claim": IDEMPOTENT}``.
IDEMPOTENT = Provide(_claim)
