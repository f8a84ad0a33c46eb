"""Every error the HTTP API answers, as RFC 9457 ``application/problem+json``.

One mapping, one exception handler: domain errors (subclasses of ``DomainError``), Litestar's
own HTTP exceptions (404, 405, 413, parameter validation) and unexpected exceptions (500)
all become a ``Problem`` with a stable snake_case ``code``.

Why not Litestar's ``ProblemDetailsPlugin``: for plain ``HTTPException``s it puts the
exception's detail into ``title`` and leaves ``detail`` empty (see
``tests/test_problems.py``), and it knows nothing of ``code``. Writing the handler is shorter
than patching around it.

Features add refusals by subclassing ``DomainError``::

    class InsufficientFunds(DomainError):
        \"\"\"The wallet's balance is smaller than the amount to pay.\"\"\"
        status = 422
        code = "insufficient_funds"
        title = "Insufficient funds"
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from ledger_core.engine import LedgerOverloaded, LedgerUnavailable

PROBLEM_MEDIA_TYPE = "application/problem+json"

_log = logging.getLogger("gwallet.problems")


class FieldError(msgspec.Struct, frozen=True):
    """One invalid field of a request: where it is and what is wrong with it."""

    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """An RFC 9457 problem document with G-Wallet's stable machine ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[FieldError] | None = None


def problem_type(code: str) -> str:
    # A URN rather than a URL: stable, and it points at no host we would have to run.
    return f"urn:gwallet:problem:{code}"


class DomainError(Exception):
    """Base of every refusal the API names; the docstring of a subclass states the rule."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    # For 429 and 503: the Retry-After header, in seconds.
    retry_after_seconds: ClassVar[int | None] = None

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        retry_after_seconds: int | None = None,
    ) -> None:
        self.detail = detail or _first_line(type(self).__doc__) or self.title
        self.errors = errors
        if retry_after_seconds is not None:
            self.retry_after_seconds = retry_after_seconds
        super().__init__(self.detail)

    def to_problem(self) -> Problem:
        return Problem(
            type=problem_type(self.code),
            title=self.title,
            status=self.status,
            detail=self.detail,
            code=self.code,
            errors=self.errors,
        )

    def headers(self) -> dict[str, str]:
        if self.retry_after_seconds is None:
            return {}
        return {"Retry-After": str(self.retry_after_seconds)}


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0].strip() if text and text.strip() else ""


# --- Refusals of the HTTP layer itself ----------------------------------------------------


class MalformedJson(DomainError):
    """The request body is not valid JSON."""

    status = 400
    code = "malformed_json"
    title = "Malformed JSON"


class InvalidParameter(DomainError):
    """A query, path or header parameter is missing or has a value the endpoint does not accept."""

    status = 400
    code = "invalid_parameter"
    title = "Invalid parameter"


class InvalidRequest(DomainError):
    """The request body does not match the endpoint's schema (unknown field, wrong type, range)."""

    status = 422
    code = "invalid_request"
    title = "Invalid request"


class Unauthenticated(DomainError):
    """The request carries no valid credentials."""

    status = 401
    code = "unauthenticated"
    title = "Unauthenticated"


class Forbidden(DomainError):
    """The credentials are valid but do not allow this action."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(DomainError):
    """No resource exists at this path."""

    status = 404
    code = "not_found"
    title = "Not found"


class MethodNotAllowed(DomainError):
    """The resource exists but does not answer this HTTP method."""

    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class RequestTooLarge(DomainError):
    """The request body is larger than the service accepts."""

    status = 413
    code = "request_too_large"
    title = "Request too large"


class UnsupportedMediaType(DomainError):
    """The request body's media type is not one the endpoint reads."""

    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class RateLimited(DomainError):
    """Too many requests: slow down and retry after the given number of seconds."""

    status = 429
    code = "rate_limited"
    title = "Too many requests"
    retry_after_seconds = 1


class InternalError(DomainError):
    """The service failed unexpectedly; nothing about the failure is disclosed."""

    status = 500
    code = "internal_error"
    title = "Internal error"


class ServiceUnavailable(DomainError):
    """The service cannot answer now (overload or a dependency down); retry later."""

    status = 503
    code = "service_unavailable"
    title = "Service unavailable"
    retry_after_seconds = 5


class LedgerOverloadedError(ServiceUnavailable):
    """The ledger's queue is full; nothing was done. Retry after the given seconds."""

    code = "ledger_overloaded"
    title = "Ledger overloaded"
    retry_after_seconds = 1


class LedgerUnavailableError(ServiceUnavailable):
    """The ledger's database could not be reached; retrying with the same key is safe."""

    code = "ledger_unavailable"
    title = "Ledger unavailable"
    retry_after_seconds = 2


class Overloaded(ServiceUnavailable):
    """The service is at capacity and refused the request before doing anything; retry after
    the given seconds (gwallet/admission.py)."""

    code = "overloaded"
    title = "Overloaded"
    retry_after_seconds = 1


class DatabaseBusy(ServiceUnavailable):
    """No database connection became free in time; nothing was done. Retry after the given
    seconds (with the same Idempotency-Key)."""

    code = "database_busy"
    title = "Database busy"
    retry_after_seconds = 1


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL could not be reached or the connection was lost; retrying (with the same
    Idempotency-Key) is safe."""

    code = "database_unavailable"
    title = "Database unavailable"
    retry_after_seconds = 2


class DatabaseTimeout(ServiceUnavailable):
    """PostgreSQL did not answer in time (a hung or overloaded server); a write's outcome may
    be unknown, so retry with the same Idempotency-Key."""

    code = "database_timeout"
    title = "Database timeout"
    retry_after_seconds = 2


# The driver's ways of saying "no connection to PostgreSQL" (issue 6, faults): refused or
# reset sockets, a connection that died under a query, a server shutting down or starting up.
_DATABASE_GONE: tuple[type[Exception], ...] = (
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def database_gone(exc: BaseException) -> bool:
    """True when ``exc`` says PostgreSQL cannot be reached (refused, reset, shutting down)."""
    if isinstance(exc, _DATABASE_GONE):
        return True
    # A pooled connection that the server closed, used again before the pool noticed.
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


# Exceptions of lower layers that the API names. ledger_core raises plain exceptions and knows
# nothing of HTTP; they are translated here, once.
_FOREIGN: dict[type[Exception], type[DomainError]] = {
    LedgerOverloaded: LedgerOverloadedError,
    LedgerUnavailable: LedgerUnavailableError,
}


# Litestar raises its own HTTPExceptions for routing and protocol errors; each status gets the
# refusal above that names it. Statuses not listed keep their HTTP phrase as title.
_BY_STATUS: dict[int, type[DomainError]] = {
    400: InvalidParameter,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: RequestTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
    500: InternalError,
    503: ServiceUnavailable,
}


def to_domain_error(exc: Exception) -> DomainError:
    """The one mapping from any exception to the refusal the client is shown."""
    if isinstance(exc, DomainError):
        return exc
    for foreign, error_type in _FOREIGN.items():
        if isinstance(exc, foreign):
            return error_type()
    if database_gone(exc):
        return DatabaseUnavailable()
    if isinstance(exc, TimeoutError):
        # Only asyncpg raises the builtin TimeoutError into a handler here (its command and
        # connect timeouts): Redis and httpx have their own exception types, and the request
        # deadline cancels the handler rather than raising into it.
        return DatabaseTimeout()
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    if isinstance(exc, HTTPException):
        error_type = _BY_STATUS.get(exc.status_code)
        if error_type is None:
            return HttpError(exc.status_code)
        if exc.status_code >= 500 or exc.detail == HTTPStatus(exc.status_code).phrase:
            return error_type()  # the docstring says it better than the phrase; 5xx leak nothing
        return error_type(exc.detail)
    return InternalError()


class HttpError(DomainError):
    """An HTTP protocol error that no more specific refusal names."""

    def __init__(self, status: int) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        self.status = status
        self.code = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_") or "error"
        self.title = phrase
        super().__init__(phrase)


_MISSING_PARAMETER = re.compile(r"Missing required (?P<kind>\w+) parameter '(?P<name>[^']+)'")


def _from_validation(exc: ValidationException) -> DomainError:
    """Litestar's validation of parameters (and of bodies it decoded itself)."""
    items = exc.extra if isinstance(exc.extra, list) else []
    errors = [
        FieldError(field=str(item.get("key") or "?"), message=str(item.get("message") or "invalid"))
        for item in items
        if isinstance(item, Mapping)
    ]
    if not errors and (missing := _MISSING_PARAMETER.match(exc.detail)):
        errors = [
            FieldError(
                field=missing["name"], message=f"missing required {missing['kind']} parameter"
            )
        ]
    in_body = any(isinstance(item, Mapping) and item.get("source") == "body" for item in items)
    error_type = InvalidRequest if in_body else InvalidParameter
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors) or None
    return error_type(detail, errors=errors or None)


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar exception handler for every exception: the app registers it for ``Exception``."""
    error = to_domain_error(exc)
    if isinstance(error, InternalError) and not isinstance(exc, DomainError):
        # The client learns nothing; the log keeps the traceback, tagged with the request id.
        _log.error("unhandled exception", exc_info=exc)
    elif error.status >= 500 and not isinstance(exc, DomainError):
        # A dependency named above (the ledger, the database): expected in an outage.
        _log.warning("%s: %s", error.code, type(exc).__name__)
    problem = error.to_problem()
    return Response(
        content=msgspec.json.encode(problem),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers(),
    )


# --- OpenAPI documentation of errors ------------------------------------------------------

# Errors any endpoint can answer, whatever it does.
COMMON_ERRORS: tuple[type[DomainError], ...] = (
    InvalidParameter,
    MalformedJson,
    RequestTooLarge,
    InvalidRequest,
    RateLimited,
    InternalError,
    ServiceUnavailable,
    Overloaded,  # issue 6: admission control, the database's pool, faults
    DatabaseBusy,
    DatabaseUnavailable,
    DatabaseTimeout,
)


def problem_responses(*errors: type[DomainError]) -> dict[int, ResponseSpec]:
    """OpenAPI ``responses`` documenting ``errors`` plus ``COMMON_ERRORS``, by status."""
    by_status: dict[int, list[type[DomainError]]] = {}
    for error in _unique((*errors, *COMMON_ERRORS)):
        by_status.setdefault(error.status, []).append(error)
    return {status: _response_spec(status, group) for status, group in sorted(by_status.items())}


def _unique(errors: Iterable[type[DomainError]]) -> list[type[DomainError]]:
    seen: dict[str, type[DomainError]] = {}
    for error in errors:
        seen.setdefault(error.code, error)
    return list(seen.values())


def _response_spec(status: int, errors: list[type[DomainError]]) -> ResponseSpec:
    description = "; ".join(f"`{e.code}`: {_first_line(e.__doc__)}" for e in errors)
    examples = [
        Example(
            summary=error.code,
            value=msgspec.to_builtins(error().to_problem()),
        )
        for error in errors
    ]
    return ResponseSpec(
        data_container=Problem,
        description=description,
        media_type=PROBLEM_MEDIA_TYPE,
        generate_examples=False,
        examples=examples,
    )
