"""Endpoints for operators and orchestrators: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import msgspec
from litestar import Response, get
from litestar.datastructures import State

from gwallet.metrics import CONTENT_TYPE_LATEST
from gwallet.problems import ServiceUnavailable, problem_responses


class Liveness(msgspec.Struct, frozen=True):
    status: str = "alive"


class Readiness(msgspec.Struct, frozen=True):
    status: str
    postgres: str
    redis: str


class NotReady(ServiceUnavailable):
    """A dependency (PostgreSQL or Redis) did not answer in time; do not route traffic here."""

    code = "not_ready"
    title = "Not ready"
    retry_after_seconds = 5


@get("/healthz", tags=["operations"], responses=problem_responses())
async def healthz() -> Liveness:
    """The process is alive and serving HTTP. Checks nothing else."""
    return Liveness()


@get("/readyz", tags=["operations"], responses=problem_responses(NotReady))
async def readyz(state: State) -> Readiness:
    """PostgreSQL and Redis both answer within the readiness timeout."""
    timeout = state.settings.readiness_timeout_seconds
    postgres, redis = await asyncio.gather(
        _probe(state.pool.fetchval("SELECT 1"), timeout),
        _probe(state.redis.ping(), timeout),
    )
    if postgres != "ok" or redis != "ok":
        raise NotReady(f"postgres: {postgres}, redis: {redis}")
    return Readiness(status="ready", postgres=postgres, redis=redis)


async def _probe(check: Awaitable[Any], timeout_seconds: float) -> str:
    try:
        async with asyncio.timeout(timeout_seconds):
            await check
    except TimeoutError:
        return "timeout"
    except Exception:  # noqa: BLE001 - any failure means "not reachable"; no details leak
        return "unreachable"
    return "ok"


# Litestar appends "; charset=utf-8" to text/* media types itself.
_METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


@get("/metrics", include_in_schema=False, media_type=_METRICS_MEDIA_TYPE)
async def metrics(state: State) -> Response[bytes]:
    """Prometheus text format (not in the OpenAPI schema: it is for the scraper)."""
    state.metrics.ledger_queue_depth.set(state.engine.queue_depth)
    return Response(state.metrics.exposition(), media_type=_METRICS_MEDIA_TYPE)
