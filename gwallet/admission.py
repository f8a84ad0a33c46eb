"""Admission control: when a worker is saturated, it refuses at once instead of queueing.

Issue 6, "Holding the spike": a saturated service answers 429/503 with Retry-After within
milliseconds instead of letting latency grow without bound; the requests it accepts keep
p99 under 1 s; it recovers by itself when the spike is over.

What goes wrong without it: an asyncio worker accepts every connection the server hands it.
Past its capacity every request in flight gets slower (they share one event loop, one pool
of PostgreSQL connections, one ledger queue), the queue in front of the database grows,
latency grows with it until requests hit the 10 s time limit (``request_timeout``), and the
clients' retries add more load: a spike becomes an outage that outlives it.

The design, per worker process (each worker has its own event loop and its own pools, so
the limits are per worker; N workers admit N times as much):

1. **A concurrency limit** (``admission_max_in_flight``): at most this many requests run at
   once. Little's law: throughput = in flight / latency, so once the worker is at capacity
   more in flight only adds latency. The limit need not be exact, it only has to sit above
   the concurrency at which the worker reaches its throughput (a few times the database
   pool) and well below the concurrency at which its latency passes the target.

2. **A short wait queue with a controlled delay** (Facebook's "CoDel + adaptive LIFO",
   after Nichols and Jacobson's CoDel): a request over the limit waits in a bounded queue
   (``admission_queue_max``; beyond it: refused at once) for a slot. Normally it may wait
   ``admission_queue_timeout_ms``, which absorbs a burst. But when the queue has not been
   empty for ``admission_overload_interval_ms`` it is a *standing* queue (arrivals exceed
   service): then a request may wait only ``admission_overload_queue_timeout_ms``, waiters
   already older than that are refused when a slot frees up, and the newest waiter is
   served first (LIFO): it is the one most likely still wanted by its client, and the old
   ones are refused fast rather than served late. So under overload a refusal takes a few
   milliseconds and an accepted request waited a few milliseconds; when the spike ends the
   queue empties, which ends overload mode at once: recovery needs no timer.

3. **Refusals are cheap and say when to come back**: 503 problem ``overloaded`` with
   ``Retry-After`` (``admission_retry_after_seconds``), sent by this middleware without
   touching Litestar, the database or Redis; counted in
   ``gwallet_admission_refusals_total{reason}`` (``queue_full``, ``queue_timeout``,
   ``pool_timeout``). ``/healthz``, ``/readyz`` and ``/metrics`` bypass it: an orchestrator
   must see a busy worker as alive, and a scraper must see the refusals.

4. **A request's wait for a database connection is bounded too**
   (``db_pool_acquire_timeout_seconds``): without it a request that got in waits for a
   pooled connection as long as it takes (asyncpg's default), which is the same unbounded
   queue one level down. Past the bound the request gets 503 ``database_busy`` with
   Retry-After. Only requests are bounded: the middleware sets the bound in a context
   variable for the request's task, so the ledger engine's batch workers and the periodic
   jobs (their own tasks, started before any request) wait as long as they need.

How it fits with the limits that were already there: ``request_timeout_seconds`` (503
``request_timeout``) stays the last resort for a request that got in and then took too long
(its queue wait counts: this middleware runs inside the access middleware's deadline); the
ledger engine's ``ledger_queue_max_transfers`` (503 ``ledger_overloaded``) bounds the queue
in front of the ledger across all requests of the worker; the merchant rate limit (429
``rate_limited``) is per API key, fairness between clients, not protection of the worker.

What it cannot do: a refusal still costs the worker an HTTP parse and a log line (~0.1 ms of
CPU), so clients must honour Retry-After; a client that retries at once can keep a worker
busy refusing. Protection against that is the job of a proxy in front, not of the worker.

Measured (one granian worker of the test app, ``/test/effects`` holding a transaction 20 ms,
~150 writes/s on this 2-core machine; 200 clients spiking from 20, retrying after the
Retry-After; tests/test_admission.py): without admission control accepted p50 1.0 s, p99
1.4 s and 503 ``database_busy`` after 1 s; with 32 in flight and 128 queued (the defaults)
p50 0.21 s, p99 0.36 s, refusals p50 ~3 ms; with 8 in flight p99 0.14 s. Writes completed
per second were close in all three (130, 115, 105): past saturation a limit trades queueing
for refusals, and only a limit near the pool's size starts to cost throughput.

Why not an adaptive limit (Netflix's concurrency-limits, gradient or Vegas): they estimate
the no-load latency from the minimum RTT and shrink the limit when latency rises, which on
a shared, noisy 2-core machine moves the limit with everybody else's load; and the queue
controller above already turns excess load into fast refusals whatever the limit is. The
limit is a setting, chosen by measurement (README), and the controller does the rest.
Why not granian's ``backpressure``: past it granian stops accepting connections, so clients
wait in the kernel's accept queue with no answer at all, which is the unbounded latency
this module exists to prevent.
"""

from __future__ import annotations

import asyncio
import weakref
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import asyncpg
import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from gwallet.metrics import Metrics
from gwallet.problems import PROBLEM_MEDIA_TYPE, DatabaseBusy, Overloaded
from gwallet.settings import Settings

BYPASS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

# The longest a request may wait for a pooled PostgreSQL connection; None outside requests.
_acquire_timeout_seconds: ContextVar[float | None] = ContextVar(
    "gwallet_pool_acquire_timeout_seconds", default=None
)


class AdmissionConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_in_flight: int = 32
    queue_max: int = 128
    queue_timeout_ms: float = 500.0
    overload_queue_timeout_ms: float = 10.0
    overload_interval_ms: float = 100.0
    retry_after_seconds: int = 1
    pool_acquire_timeout_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_in_flight <= 100_000:
            raise ValueError("GWALLET_ADMISSION_MAX_IN_FLIGHT must be 0 (off) .. 100000")
        if not 0 <= self.queue_max <= 100_000:
            raise ValueError("GWALLET_ADMISSION_QUEUE_MAX must be 0..100000")
        if not 0 < self.overload_queue_timeout_ms <= self.queue_timeout_ms <= 60_000:
            raise ValueError("admission queue timeouts: 0 < overload timeout <= timeout <= 60 s")
        if not 0 < self.overload_interval_ms <= 60_000:
            raise ValueError("GWALLET_ADMISSION_OVERLOAD_INTERVAL_MS must be within 0..60000")
        if not 1 <= self.retry_after_seconds <= 3600:
            raise ValueError("GWALLET_ADMISSION_RETRY_AFTER_SECONDS must be 1..3600")
        if not 0 < self.pool_acquire_timeout_seconds <= 600:
            raise ValueError("GWALLET_DB_POOL_ACQUIRE_TIMEOUT_SECONDS must be within 0..600")


def admission_config(settings: Settings) -> AdmissionConfig:
    return AdmissionConfig(
        max_in_flight=settings.admission_max_in_flight,
        queue_max=settings.admission_queue_max,
        queue_timeout_ms=settings.admission_queue_timeout_ms,
        overload_queue_timeout_ms=settings.admission_overload_queue_timeout_ms,
        overload_interval_ms=settings.admission_overload_interval_ms,
        retry_after_seconds=settings.admission_retry_after_seconds,
        pool_acquire_timeout_seconds=settings.db_pool_acquire_timeout_seconds,
    )


class _Waiter:
    __slots__ = ("future", "since", "timer")

    def __init__(self, future: asyncio.Future[bool], since: float) -> None:
        self.future = future  # True: a slot was handed over; False: refused
        self.since = since
        self.timer: asyncio.TimerHandle | None = None


class AdmissionControl:
    """Pure ASGI middleware around the app (inside the access middleware: see create_app)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, config: AdmissionConfig) -> None:
        self.app = app
        self.metrics = metrics
        self.config = config
        self.limit = config.max_in_flight  # 0: no limit
        self._queue_timeout = config.queue_timeout_ms / 1000
        self._overload_timeout = config.overload_queue_timeout_ms / 1000
        self._overload_interval = config.overload_interval_ms / 1000
        self._acquire_timeout = config.pool_acquire_timeout_seconds
        self.in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._last_empty = time.monotonic()  # when the wait queue was last seen empty
        refusal = Overloaded(
            "the service is at capacity; retry after the time in Retry-After",
            retry_after_seconds=config.retry_after_seconds,
        )
        self._refusal_body = msgspec.json.encode(refusal.to_problem())

    def overloaded(self, now: float) -> bool:
        """A standing queue: not empty at any moment of the last interval."""
        if not self._waiters:
            self._last_empty = now
            return False
        return now - self._last_empty >= self._overload_interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _acquire_timeout_seconds.set(self._acquire_timeout)
        try:
            if self.limit == 0 or scope["path"] in BYPASS_PATHS:
                await self.app(scope, receive, send)
                return
            if not await self._admit():
                await self._refuse(send)
                return
            try:
                await self.app(scope, receive, send)
            finally:
                self._release()
        finally:
            _acquire_timeout_seconds.reset(token)

    # -- slots ---------------------------------------------------------------------------

    async def _admit(self) -> bool:
        """Take a slot (True), or be refused (False: counted)."""
        if self.in_flight < self.limit and not self._waiters:
            self._take()
            return True
        if len(self._waiters) >= self.config.queue_max:
            self._count_refusal("queue_full")
            return False
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        waiter = _Waiter(loop.create_future(), now)
        timeout = self._overload_timeout if self.overloaded(now) else self._queue_timeout
        waiter.timer = loop.call_later(timeout, self._expire, waiter)
        self._waiters.append(waiter)
        self.metrics.admission_queued.inc()
        try:
            granted = await waiter.future
        except asyncio.CancelledError:
            # The client went away or the request's deadline passed while it waited.
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.result():
                self._release()  # the slot had just been handed over: pass it on
            else:
                self._forget(waiter)
            raise
        if not granted:
            self._count_refusal("queue_timeout")
        return granted

    def _take(self) -> None:
        self.in_flight += 1
        self.metrics.admission_in_flight.inc()

    def _release(self) -> None:
        """A request ended: hand its slot to a waiter, or free it."""
        now = time.monotonic()
        overloaded = self.overloaded(now)
        while self._waiters:
            # Under a standing queue every waiter older than the short timeout is refused now
            # (controlled delay), then the newest waiter goes first (adaptive LIFO). The old
            # ones are at the front: they came in order. Served newest-first they would
            # otherwise wait out the long timeout they were queued with before the queue
            # became a standing one (seen: refusals at 500 ms in a spike).
            if not overloaded or now - self._waiters[0].since > self._overload_timeout:
                waiter = self._waiters.popleft()
            else:
                waiter = self._waiters.pop()
            self.metrics.admission_queued.dec()
            if waiter.timer is not None:
                waiter.timer.cancel()
            if waiter.future.done():
                continue
            if overloaded and now - waiter.since > self._overload_timeout:
                waiter.future.set_result(False)
                continue
            waiter.future.set_result(True)  # the slot passes on: in_flight is unchanged
            if not self._waiters:
                self._last_empty = now
            return
        self._last_empty = now
        self.in_flight -= 1
        self.metrics.admission_in_flight.dec()

    def _expire(self, waiter: _Waiter) -> None:
        if not waiter.future.done():
            self._forget(waiter)
            waiter.future.set_result(False)

    def _forget(self, waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return  # already taken off the queue
        self.metrics.admission_queued.dec()
        if not self._waiters:
            self._last_empty = time.monotonic()

    # -- refusing ------------------------------------------------------------------------

    def _count_refusal(self, reason: str) -> None:
        self.metrics.admission_refusals.labels(reason).inc()

    async def _refuse(self, send: Send) -> None:
        body = self._refusal_body
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.config.retry_after_seconds).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


# --- the database pool: a request's wait for a connection is bounded ------------------------


class RequestBoundedPool(asyncpg.Pool):
    """An asyncpg pool whose ``acquire()`` without a timeout waits at most the bound that the
    admission middleware set for the current request (``DatabaseBusy`` past it), and as long
    as needed outside requests. ``fetch``, ``execute`` and the rest acquire through it."""

    __slots__ = ("_on_busy",)

    def acquire(self, *, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = _acquire_timeout_seconds.get()
            if timeout is not None:
                return _BoundedAcquire(super().acquire(timeout=timeout), self._on_busy)
        return super().acquire(timeout=timeout)


class _BoundedAcquire:
    """``pool.acquire()``'s awaitable / async context, with a timeout named ``DatabaseBusy``."""

    __slots__ = ("_inner", "_on_busy")

    def __init__(self, inner: Any, on_busy: Callable[[], None] | None) -> None:
        self._inner = inner
        self._on_busy = on_busy

    def _busy(self) -> DatabaseBusy:
        if self._on_busy is not None:
            self._on_busy()
        return DatabaseBusy(
            f"no database connection became free within {self._inner.timeout:g} s")

    async def __aenter__(self) -> Any:
        try:
            return await self._inner.__aenter__()
        except TimeoutError:
            raise self._busy() from None

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)

    def __await__(self) -> Any:
        return self._acquire().__await__()

    async def _acquire(self) -> Any:
        try:
            return await self._inner
        except TimeoutError:
            raise self._busy() from None


# Connections on which a caller changed session state that outlives a transaction (a
# session-level advisory lock: merchant_api/settlement.py). Only these get asyncpg's full
# reset query ("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL") when
# they go back to the pool. asyncpg runs it on every release by default: one more round trip
# after each query made through ``pool.fetch...``, four or five on the payment path, where a
# profile (py-spy, BENCHMARKS.md) showed it. Nothing else in the service leaves session
# state behind: no SET outside a transaction, no LISTEN, no cursor outside a transaction,
# advisory locks transaction-level; an open transaction is rolled back by asyncpg itself
# before ``reset`` is called.
_SESSION_STATE: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()


def keeps_session_state(conn: Any) -> None:
    """Say that ``conn`` (a pooled connection) now holds session state to reset on release."""
    _SESSION_STATE.add(getattr(conn, "_con", conn))  # the proxy's connection


async def _reset(conn: asyncpg.Connection) -> None:
    if conn in _SESSION_STATE:
        _SESSION_STATE.discard(conn)
        query = conn.get_reset_query()
        if query:
            await conn.execute(query)


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    on_busy: Callable[[], None] | None = None,
    **connect_kwargs: Any,
) -> RequestBoundedPool:
    """``asyncpg.create_pool`` (its defaults spelled out) making a ``RequestBoundedPool``."""
    pool = RequestBoundedPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        reset=_reset,
        **connect_kwargs,
    )
    pool._on_busy = on_busy
    await pool
    return pool
