"""The composition root: ``create_app(settings)`` builds the one Litestar application.

Everything the service uses is made here from ``Settings`` and kept on ``app.state``:
``settings``, ``metrics``, and, while the app runs (its lifespan), ``pool`` (asyncpg),
``redis`` (redis.asyncio) and ``engine`` (the ledger batching engine). Nothing else reads the
environment or opens a connection, so a test builds an app from a ``Settings`` value of its
own and never patches anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.datastructures import State
from litestar.types import ControllerRouterHandler
from redis.asyncio import BlockingConnectionPool, Redis

from gwallet import logs
from gwallet.access import AccessMiddleware
from gwallet.admission import AdmissionControl, admission_config  # issue 6
from gwallet.admission import create_pool as create_bounded_pool  # issue 6
from gwallet.embedded import start_postgres, start_redis
from gwallet.idempotency import IdempotentReplay, purge_expired, replay_response
from gwallet.keys import load_signing_key
from gwallet.metrics import Metrics
from gwallet.migrate import migrate
from gwallet.openapi import openapi_config, swagger_assets
from gwallet.ops import healthz, metrics, readyz
from gwallet.problems import problem_response
from gwallet.request import StrictRequest, check_request_bodies
from gwallet.runtime import tune_gc
from gwallet.settings import Settings
from ledger_core.engine import EngineConfig, LedgerEngine
from wallet.context import wallet_lifespan  # citizens (issue 4)
from wallet.http import WALLET_ROUTES  # citizens (issue 4)
from merchant_api.http import MERCHANT_ROUTES, merchant_lifespan  # merchants (issue 5)
from gwallet.admin import ADMIN_CONTROLLERS  # officials' back office (issue 3)
from subsidy_rules.http import PROGRAM_CONTROLLERS  # officials' back office (issue 3)
from wallet.paying_http import PaymentsController  # paying by QR (issue 5)
from merchant_api.refunds import RefundsController  # refunds (issue 5)
from merchant_api.settlement import settlement_routes  # T+1 settlement (issue 5)
from merchant_api.webhooks import WebhookEndpointController, webhook_lifespan  # issue 5

_log = logging.getLogger("gwallet.app")

_POOL_CLOSE_TIMEOUT_SECONDS = 10.0
_QUEUE_GAUGE_INTERVAL_SECONDS = 1.0


def create_app(
    settings: Settings, route_handlers: Sequence[ControllerRouterHandler] = ()
) -> Litestar:
    """Build the app. ``route_handlers`` adds routes (tests use it for test-only endpoints)."""
    logs.configure(settings.log_level, settings.log_json)
    app_metrics = Metrics()
    app = Litestar(
        route_handlers=[
            healthz, readyz, metrics, swagger_assets(), *WALLET_ROUTES,
            *ADMIN_CONTROLLERS, *PROGRAM_CONTROLLERS,  # issue 3
            *MERCHANT_ROUTES,  # issue 5
            PaymentsController, RefundsController,  # issue 5: paying by QR, refunds
            *settlement_routes(settings),  # issue 5: T+1 settlement
            WebhookEndpointController,  # issue 5: webhooks
            *route_handlers,
        ],
        # wallet_lifespan (issue 4) runs inside _resources: it uses app.state.pool.
        # merchant_lifespan (issue 5) reuses the wallet's personal-data keys: it comes after.
        # webhook_lifespan (issue 5) starts the delivery worker; it uses the wallet's cipher.
        lifespan=[_resources(settings), wallet_lifespan(settings), merchant_lifespan(settings),
                  webhook_lifespan(settings)],
        state=State({"settings": settings, "metrics": app_metrics}),
        request_class=StrictRequest,
        request_max_body_size=settings.max_request_body_bytes,
        # One handler turns every exception into problem+json (gwallet.problems); the
        # idempotent replay is not an error but travels the same way.
        exception_handlers={IdempotentReplay: replay_response, Exception: problem_response},
        openapi_config=openapi_config(_version()),
        logging_config=None,  # gwallet.logs configures logging; Litestar must not add its own
        debug=False,
    )
    check_request_bodies(h for route in app.routes for h in getattr(route, "route_handlers", ()))
    # Around Litestar's whole handler, not as a Litestar middleware, so that unrouted
    # requests (404, 405) are counted and logged too.
    # Issue 6: admission control inside the access middleware, so that refusals get a
    # request id, a log line and a metric, and a queued request's wait counts to its deadline.
    app.asgi_handler = AccessMiddleware(
        AdmissionControl(app.asgi_handler, app_metrics, admission_config(settings)),
        app_metrics, timeout_seconds=settings.request_timeout_seconds,
    )
    return app


def app_factory() -> Litestar:
    """For ``granian``/``uvicorn --factory``: settings from the environment."""
    return create_app(Settings.from_env())


def _resources(settings: Settings) -> Callable[[Litestar], Any]:
    @asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            database_url = settings.database_url or await asyncio.to_thread(
                start_postgres, settings.data_path
            )
            redis_url = settings.redis_url or await asyncio.to_thread(
                start_redis, settings.data_path
            )
            await migrate(database_url)

            # Issue 6: asyncpg's pool, whose acquire() within a request waits at most
            # db_pool_acquire_timeout_seconds (gwallet/admission.py).
            pool = await create_bounded_pool(
                database_url,
                min_size=settings.db_pool_min_size,
                max_size=settings.db_pool_max_size,
                command_timeout=settings.db_command_timeout_seconds,
                timeout=settings.db_connect_timeout_seconds,
                on_busy=app.state.metrics.admission_refusals.labels("pool_timeout").inc,
            )
            assert pool is not None
            stack.push_async_callback(_close_pool, pool)

            redis = Redis(
                connection_pool=BlockingConnectionPool.from_url(
                    redis_url,
                    max_connections=settings.redis_max_connections,
                    timeout=settings.redis_timeout_seconds,  # wait for a free connection
                    socket_timeout=settings.redis_timeout_seconds,
                    socket_connect_timeout=settings.redis_timeout_seconds,
                )
            )
            stack.push_async_callback(redis.aclose)

            engine = LedgerEngine(pool, _engine_config(settings), load_signing_key(settings))
            await engine.start()
            stack.push_async_callback(engine.stop)

            app.state.pool = pool
            app.state.redis = redis
            app.state.engine = engine
            metrics_ = app.state.metrics
            stack.callback(metrics_.close)

            async def update_queue_gauge() -> None:
                metrics_.ledger_queue_depth.set(engine.queue_depth)

            async def purge() -> None:
                await purge_expired(pool, settings.idempotency_retention_hours)

            for name, interval, job in (
                ("ledger-queue-gauge", _QUEUE_GAUGE_INTERVAL_SECONDS, update_queue_gauge),
                ("idempotency-purge", settings.idempotency_purge_interval_seconds, purge),
            ):
                task = asyncio.create_task(_every(interval, job, name), name=name)
                stack.push_async_callback(_cancel, task)

            tune_gc(settings.gc_gen0_threshold)  # after startup: what exists now is frozen
            _log.info("service started", extra={"settings": settings.redacted()})
            yield
            _log.info("service stopping")

    return resources


def _engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        batch_window_ms=settings.ledger_batch_window_ms,
        batch_max_transfers=settings.ledger_batch_max_transfers,
        batch_concurrency=settings.ledger_batch_concurrency,
        queue_max_transfers=settings.ledger_queue_max_transfers,
        retry_max=settings.ledger_batch_retry_max,
        checkpoint_every_batches=settings.ledger_checkpoint_every_batches,
        expiry_interval_seconds=settings.ledger_expiry_interval_seconds,
        shared_accounts_primed_max=settings.ledger_shared_accounts_primed_max,
    )


async def _every(interval_seconds: float, job: Callable[[], Awaitable[Any]], name: str) -> None:
    """Run ``job`` every ``interval_seconds`` until cancelled; a failed round is logged."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await job()
        except Exception:  # noqa: BLE001 - a periodic job must survive a bad round
            _log.exception("periodic job failed", extra={"job": name})


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), _POOL_CLOSE_TIMEOUT_SECONDS)
    except TimeoutError:
        _log.warning("database pool did not close in time; terminating connections")
        pool.terminate()


def _version() -> str:
    try:
        return version("gwallet")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"
