"""Per request: a request id, a time limit, one access log line and the request metrics.

A plain ASGI wrapper around the whole Litestar handler (see ``create_app``) rather than a
Litestar middleware, because Litestar runs its middleware only for routed requests: 404s, 405s
and 413s must get a request id, a log line and a metric too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gwallet.logs import request_id_var
from gwallet.metrics import Metrics
from gwallet.problems import PROBLEM_MEDIA_TYPE, ServiceUnavailable

REQUEST_ID_HEADER = "x-request-id"
# A client's request id is echoed only if it is short and plain; otherwise we make one, so a
# header cannot inject text into logs.
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE = "unmatched"

_log = logging.getLogger("gwallet.access")


class RequestTimedOut(ServiceUnavailable):
    """The request took longer than the service's time limit; its outcome may be unknown."""

    code = "request_timeout"
    title = "Request timed out"
    retry_after_seconds = 1


class AccessMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, *, timeout_seconds: float) -> None:
        assert timeout_seconds > 0
        self.app = app
        self.metrics = metrics
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500
        response_started = False
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        deadline = asyncio.timeout(self.timeout_seconds)
        try:
            async with deadline:
                await self.app(scope, receive, send_with_request_id)
        except TimeoutError:
            # Only our own deadline is answered here; the app's own timeouts are its errors.
            if not deadline.expired() or response_started:
                raise
            # A retry is safe: writes are idempotent by key and by derived transfer ids.
            await _send_problem(
                send_with_request_id,
                RequestTimedOut(f"the request took longer than {self.timeout_seconds:g} s"),
            )
        finally:
            seconds = time.perf_counter() - started
            # Litestar puts the matched route's template into the scope while routing.
            route = scope.get("path_template") or UNMATCHED_ROUTE
            method = scope["method"]
            self.metrics.observe_request(method, route, status, seconds)
            _log.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                },
            )
            request_id_var.reset(token)


async def _send_problem(send: Send, error: ServiceUnavailable) -> None:
    body = msgspec.json.encode(error.to_problem())
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in error.headers().items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER.encode() and _SANE_REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return uuid.uuid4().hex
