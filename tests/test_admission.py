"""Admission control (issue 6, "Holding the spike"): a saturated worker refuses at once.

Real HTTP through the app, real PostgreSQL and Redis: uvicorn in a thread for the mechanics,
granian in a subprocess (the app with the test-only routes) for the spike, and the real
``gwallet serve`` with two granian workers. Each configuration is an app of its own with
small limits, so that a handful of slow requests (``/test/slow``, ``/test/effects`` with
``hold_ms``) saturates it. Latencies are measured by the client on a shared 2-core machine
(in the same process as the server where it runs in a thread): the bounds leave room for
that, and the figures are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from litestar import Litestar

from gwallet.app import create_app
from gwallet.settings import Settings
from loadtests.faults import ServiceProcess
from tests.conftest import TEST_LEDGER_SIGNING_KEY_HEX
from tests.http_service import serving
from tests.routes_for_tests import CREATE_TEST_TABLES, TEST_ROUTES
from tests.test_merchants import application_body
from tests.test_problems import assert_problem

# Refusals are answered by the middleware without touching anything: a few ms on a quiet
# machine. The bound leaves room for a loaded one (client and server share the process).
REFUSAL_SECONDS_MAX = 0.05
SLOW = "/test/slow"


@contextmanager
def app_with(
    database_url: str, redis_url: str, data_dir: Path, **overrides: object
) -> Iterator[str]:
    values: dict[str, object] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "data_dir": str(data_dir),
        "ledger_batch_window_ms": 1.0,
        "ledger_signing_key_hex": TEST_LEDGER_SIGNING_KEY_HEX,
        "db_pool_min_size": 1,
        "db_pool_max_size": 4,  # PostgreSQL's connections are shared by every test's pools
        "log_level": "WARNING",
    }
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    with serving(create_app(settings, route_handlers=TEST_ROUTES)) as url:
        yield url


@pytest.fixture(scope="module", autouse=True)
async def test_tables(pool: asyncpg.Pool) -> None:
    await pool.execute(CREATE_TEST_TABLES)


def client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    return httpx.AsyncClient(base_url=url, timeout=30, limits=limits)


async def timed(api: httpx.AsyncClient, method: str, path: str, **kwargs: object) -> tuple[
    httpx.Response, float
]:
    started = time.perf_counter()
    response = await api.request(method, path, **kwargs)  # type: ignore[arg-type]
    return response, time.perf_counter() - started


async def gauges(api: httpx.AsyncClient) -> dict[str, float]:
    text = (await api.get("/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gwallet_admission_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def wait_until(predicate, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class RawConnection:
    """One keep-alive HTTP/1.1 connection, written by hand: httpx needs far more CPU per
    request than the server under test, and shares this process's CPU with it, so a
    burst of hundreds through httpx measures httpx. This is what wrk does, in Python."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}:{self.port}",
                 f"content-length: {len(body)}"]
        if body:
            lines.append("content-type: application/json")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        received = {}
        for line in header_lines:
            if line:
                name, value = line.split(":", 1)
                received[name.strip().lower()] = value.strip()
        content = await self.reader.readexactly(int(received.get("content-length", "0")))
        if received.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split(" ")[1]), received, content

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def raw_timed(
    connection: RawConnection, method: str, path: str, body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes, float]:
    started = time.perf_counter()
    status, received, content = await connection.request(method, path, body, headers)
    return status, received, content, time.perf_counter() - started


def assert_raw_overloaded(status: int, headers: dict[str, str], content: bytes) -> None:
    assert status == 503, content
    assert headers["content-type"] == "application/problem+json"
    assert headers["retry-after"] == "1"
    problem = json.loads(content)
    assert problem["code"] == "overloaded" and problem["status"] == 503, problem


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def assert_overloaded(response: httpx.Response) -> None:
    assert_problem(response, 503, "overloaded")
    assert response.headers["retry-after"] == "1"


# --- a saturated worker -----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def saturable(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """4 requests at once, 4 more may wait (a standing queue after 100 ms)."""
    with app_with(
        database_url, redis_url, tmp_path_factory.mktemp("admission"),
        admission_max_in_flight=4, admission_queue_max=4, admission_queue_timeout_ms=5000,
        admission_overload_queue_timeout_ms=10, admission_overload_interval_ms=100,
    ) as url:
        async with client(url) as api:
            yield api


async def test_a_saturated_worker_refuses_at_once_with_503_overloaded_and_retry_after_and_recovers(
    saturable: httpx.AsyncClient,
) -> None:
    api = saturable
    before = await gauges(api)
    # 4 run and 4 wait: the worker is full.
    slow = [asyncio.create_task(timed(api, "GET", SLOW, params={"seconds": 1.5}))
            for _ in range(8)]

    async def full() -> bool:
        g = await gauges(api)
        return (g.get("gwallet_admission_in_flight_requests") == 4
                and g.get("gwallet_admission_queued_requests") == 4)

    await wait_until(full)

    # One at a time: each refusal is measured alone.
    alone = []
    for _ in range(20):
        response, seconds = await timed(api, "GET", SLOW, params={"seconds": 0})
        assert_overloaded(response)
        alone.append(seconds)
    # And a burst of 100 at once, on connections opened beforehand.
    connections = [RawConnection(str(api.base_url).rstrip("/")) for _ in range(100)]
    try:
        for connection in connections:
            status, headers, content, _ = await raw_timed(connection, "GET", "/healthz")
            assert status == 200
        burst = await asyncio.gather(
            *(raw_timed(connection, "GET", "/test/items") for connection in connections))
    finally:
        for connection in connections:
            connection.close()
    for status, headers, content, _ in burst:
        assert_raw_overloaded(status, headers, content)
    burst_seconds = [seconds for *_, seconds in burst]
    print(f"\nrefusal latency alone: median {statistics.median(alone) * 1000:.1f} ms, "
          f"max {max(alone) * 1000:.1f} ms; burst of 100: median "
          f"{statistics.median(burst_seconds) * 1000:.1f} ms, "
          f"max {max(burst_seconds) * 1000:.1f} ms")
    assert statistics.median(alone) < REFUSAL_SECONDS_MAX / 2
    assert percentile(alone, 90) < REFUSAL_SECONDS_MAX
    # 100 sent at once by this process, which also runs the server: bounded by the client.
    assert percentile(burst_seconds, 50) < 0.25
    assert max(burst_seconds) < 1.0

    # The 4 running requests complete; the 4 that waited behind them through a standing
    # queue are refused when a slot frees up (their wait passed the overload timeout).
    results = await asyncio.gather(*slow)
    statuses = sorted(response.status_code for response, _ in results)
    assert statuses == [200] * 4 + [503] * 4, statuses
    for response, seconds in results:
        if response.status_code == 503:
            assert_overloaded(response)
            assert seconds < 2.0  # refused when the first slot freed, not at their timeout

    # Recovery: at once, the worker answers normally again.
    response, seconds = await timed(api, "GET", SLOW, params={"seconds": 0})
    assert response.status_code == 200, response.text
    after = await gauges(api)
    assert after["gwallet_admission_in_flight_requests"] == 0
    assert after["gwallet_admission_queued_requests"] == 0

    def refused(g: dict[str, float], reason: str) -> float:
        return g.get(f'gwallet_admission_refusals_total{{reason="{reason}"}}', 0.0)

    assert refused(after, "queue_full") - refused(before, "queue_full") == 120
    assert refused(after, "queue_timeout") - refused(before, "queue_timeout") == 4


async def test_health_readiness_and_metrics_bypass_admission_while_saturated(
    saturable: httpx.AsyncClient,
) -> None:
    api = saturable
    slow = [asyncio.create_task(api.get(SLOW, params={"seconds": 1.0})) for _ in range(8)]

    async def full() -> bool:
        g = await gauges(api)
        return g.get("gwallet_admission_queued_requests") == 4

    await wait_until(full)
    assert_overloaded(await api.get("/test/items"))
    for path in ("/healthz", "/readyz", "/metrics"):
        response, seconds = await timed(api, "GET", path)
        assert response.status_code == 200, (path, response.text)
        assert seconds < 1.0
    # Refusals are logged and counted like any request, with a request id.
    refused = await api.get("/test/items", headers={"X-Request-ID": "spike-1"})
    assert refused.headers["x-request-id"] == "spike-1"
    await asyncio.gather(*slow)
    text = (await api.get("/metrics")).text
    assert 'gwallet_http_requests_total{method="GET",route="unmatched",status="503"}' in text


# --- a burst that fits is absorbed by the queue ----------------------------------------------


async def test_a_short_burst_waits_in_the_queue_and_is_served_without_a_refusal(
    database_url: str, redis_url: str, tmp_path: Path,
) -> None:
    with app_with(
        database_url, redis_url, tmp_path,
        admission_max_in_flight=2, admission_queue_max=16, admission_queue_timeout_ms=5000,
        admission_overload_queue_timeout_ms=10, admission_overload_interval_ms=5000,
    ) as url:
        async with client(url) as api:
            results = await asyncio.gather(
                *(timed(api, "GET", SLOW, params={"seconds": 0.2}) for _ in range(10)))
    statuses = [response.status_code for response, _ in results]
    assert statuses == [200] * 10
    # Served two at a time: the last waited for four rounds before its own.
    assert max(seconds for _, seconds in results) >= 0.9


# --- under a standing queue, a wait is cut short ---------------------------------------------


async def test_under_a_standing_queue_a_request_waits_only_the_short_overload_delay(
    database_url: str, redis_url: str, tmp_path: Path,
) -> None:
    with app_with(
        database_url, redis_url, tmp_path,
        admission_max_in_flight=2, admission_queue_max=64, admission_queue_timeout_ms=5000,
        admission_overload_queue_timeout_ms=20, admission_overload_interval_ms=100,
    ) as url:
        async with client(url) as api:
            slow = [asyncio.create_task(api.get(SLOW, params={"seconds": 1.5}))
                    for _ in range(3)]  # 2 run, 1 waits: the queue stands

            async def standing() -> bool:
                return (await gauges(api)).get("gwallet_admission_queued_requests") == 1

            await wait_until(standing)
            await asyncio.sleep(0.2)  # longer than the interval: overload mode
            waits = []
            for _ in range(10):
                response, seconds = await timed(api, "GET", SLOW, params={"seconds": 0})
                assert_overloaded(response)
                waits.append(seconds)
            await asyncio.gather(*slow)
            # The spike is over: the queue empties and the normal wait applies again (one
            # request waits ~20 ms for a slot, well within the 100 ms interval).
            burst = await asyncio.gather(
                *(timed(api, "GET", SLOW, params={"seconds": 0.02}) for _ in range(3)))
    print(f"\nwait under a standing queue: median {statistics.median(waits) * 1000:.1f} ms, "
          f"max {max(waits) * 1000:.1f} ms (overload timeout 20 ms)")
    assert 0.02 <= statistics.median(waits) < 0.02 + REFUSAL_SECONDS_MAX
    assert [response.status_code for response, _ in burst] == [200] * 3


async def test_a_request_queued_before_the_queue_stood_is_refused_at_the_next_free_slot(
    database_url: str, redis_url: str, tmp_path: Path,
) -> None:
    """A request that queued while the queue was young got the long wait. Once the queue
    stands, the next free slot refuses it (it is older than the short delay) even though a
    newer request takes that slot first-in-LIFO: it must not wait out its long timeout, nor
    the slot after. (Seen in the 10x spike: 1 % of refusals took 500 ms.)"""
    with app_with(
        database_url, redis_url, tmp_path,
        admission_max_in_flight=1, admission_queue_max=64, admission_queue_timeout_ms=5000,
        admission_overload_queue_timeout_ms=200, admission_overload_interval_ms=100,
    ) as url:
        async with client(url) as api:
            started = time.perf_counter()
            holder = asyncio.create_task(api.get(SLOW, params={"seconds": 0.5}))
            await asyncio.sleep(0.05)
            early = asyncio.create_task(timed(api, "GET", SLOW, params={"seconds": 0}))
            await asyncio.sleep(0.35)  # the queue has stood for ~0.3 s: overload mode
            young = asyncio.create_task(api.get(SLOW, params={"seconds": 0.5}))
            (response, waited), first, second = await asyncio.gather(early, holder, young)
            elapsed = time.perf_counter() - started
    assert first.status_code == 200 and second.status_code == 200
    assert elapsed >= 1.0  # the young one was served after the holder
    assert_overloaded(response)
    # Refused when the holder's slot freed (~0.45 s after it queued), not when the young
    # one's did (~0.95 s), let alone after its own 5 s.
    assert waited < 0.7, waited


# --- real work: accepted latency stays bounded ------------------------------------------------


def app_factory() -> Litestar:
    """The app with the test-only routes, for granian in a subprocess (settings from the
    environment, as ``gwallet serve`` has them)."""
    return create_app(Settings.from_env(), route_handlers=TEST_ROUTES)


def service_env(database_url: str, redis_url: str, data_dir: Path, **settings: object) -> dict[
    str, str
]:
    values: dict[str, object] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "data_dir": str(data_dir),
        "ledger_signing_key_hex": TEST_LEDGER_SIGNING_KEY_HEX,
        "ledger_batch_window_ms": 1.0,
        "db_pool_min_size": 1,
        "db_pool_max_size": 4,
        "log_level": "WARNING",
        "webhook_delivery_concurrency": 0,
        **settings,
    }
    return {f"GWALLET_{name.upper()}": str(value) for name, value in values.items()}


async def test_under_a_10x_spike_accepted_writes_keep_p99_under_1_s_and_only_fast_refusals_fail(
    database_url: str, redis_url: str, tmp_path: Path, pool: asyncpg.Pool,
) -> None:
    """A granian worker (its own process, as in production) that runs 8 writes at once, each
    holding a transaction and a pooled connection for 20 ms (~150 writes/s here, CPU-bound); 20
    clients (a write, 300 ms of thought, the next) are a normal load, then 200 a spike of
    10x for 3 s. Clients keep their
    connections and retry a refusal after its Retry-After, as the API asks. Every answer is
    a 201 or a fast 503 overloaded; nothing waits for the time limit; each 201's effect
    exists once; after the spike the worker answers at once."""
    normal, spike, seconds_of_spike = 20, 200, 3.0
    THINK_SECONDS = 0.3  # noqa: N806 - between requests: 20 clients offer ~60/s, 200 ~600/s
    env = service_env(database_url, redis_url, tmp_path, admission_max_in_flight=8,
                      admission_queue_max=16)
    accepted: list[float] = []
    refused: list[float] = []
    keys: list[str] = []
    others: list[tuple[int, bytes]] = []
    body = json.dumps({"amount": 100, "hold_ms": 20}).encode()

    async def one_client(connection: RawConnection, stop_at: float) -> None:
        await asyncio.sleep(random.uniform(0, THINK_SECONDS))  # clients do not march in step
        while time.monotonic() < stop_at:
            key = secrets.token_hex(12)
            status, headers, content, seconds = await raw_timed(
                connection, "POST", "/test/effects", body, {"idempotency-key": key})
            if status == 201:
                accepted.append(seconds)
                keys.append(key)
                await asyncio.sleep(THINK_SECONDS)
            elif status == 503 and json.loads(content).get("code") == "overloaded":
                refused.append(seconds)
                await asyncio.sleep(min(float(headers["retry-after"]),
                                        max(0.0, stop_at - time.monotonic())))
            else:
                others.append((status, content[:200]))

    with ServiceProcess(env, workers=1, log_dir=tmp_path,
                        app_factory="tests.test_admission:app_factory") as service:
        connections = [RawConnection(service.base_url) for _ in range(spike)]
        try:
            for connection in connections:  # opened before, as a load generator does
                assert (await connection.request("GET", "/healthz"))[0] == 200
            # Warm up (the pool's connections, prepared statements), then the normal load.
            for _ in range(2):
                accepted.clear()
                refused.clear()
                await asyncio.gather(*(one_client(c, time.monotonic() + 1.0)
                                       for c in connections[:normal]))
            assert refused == [] and others == [], (refused, others)
            baseline = percentile(accepted, 99)
            accepted.clear()
            await asyncio.gather(*(one_client(c, time.monotonic() + seconds_of_spike)
                                   for c in connections))
            # Recovery: the spike is over, the next request is served at once.
            status, _, content, recovery = await raw_timed(
                connections[0], "POST", "/test/effects", body,
                {"idempotency-key": secrets.token_hex(12)})
            assert status == 201, content
        finally:
            for connection in connections:
                connection.close()
    print(f"\n{normal} clients: p99 {baseline * 1000:.0f} ms; spike of {spike} clients for "
          f"{seconds_of_spike:g} s: {len(accepted)} accepted "
          f"(p50 {percentile(accepted, 50) * 1000:.0f} ms, p99 "
          f"{percentile(accepted, 99) * 1000:.0f} ms), {len(refused)} refused (p50 "
          f"{percentile(refused, 50) * 1000:.1f} ms, p99 {percentile(refused, 99) * 1000:.1f} ms),"
          f" next request after the spike {recovery * 1000:.0f} ms")
    assert others == []
    assert len(refused) >= spike / 2, "the spike did not saturate the worker"
    assert len(accepted) >= 50
    assert percentile(accepted, 99) < 1.0
    assert percentile(refused, 50) < REFUSAL_SECONDS_MAX
    assert percentile(refused, 99) < 0.5
    assert recovery < 0.5
    rows = await pool.fetchval(
        "SELECT count(*) FROM test_http_effects WHERE idempotency_key = ANY($1::text[])", keys)
    assert rows == len(keys)


# --- the wait for a database connection is bounded ---------------------------------------------


async def test_a_request_waits_for_a_database_connection_at_most_the_acquire_timeout(
    database_url: str, redis_url: str, tmp_path: Path,
) -> None:
    with app_with(
        database_url, redis_url, tmp_path,
        db_pool_min_size=1, db_pool_max_size=1, db_pool_acquire_timeout_seconds=0.2,
        admission_max_in_flight=0,  # no admission limit: the pool is the bottleneck
    ) as url:
        async with client(url) as api:
            holder = asyncio.create_task(api.post(
                "/test/effects", json={"amount": 1, "hold_ms": 1500},
                headers={"Idempotency-Key": secrets.token_hex(12)}))
            await asyncio.sleep(0.5)  # the holder has the only connection in its transaction
            response, seconds = await timed(
                api, "POST", "/test/effects", json={"amount": 1},
                headers={"Idempotency-Key": secrets.token_hex(12)})
            assert_problem(response, 503, "database_busy")
            assert response.headers["retry-after"] == "1"
            assert 0.2 <= seconds < 0.2 + 0.5
            assert (await holder).status_code == 201
            metrics = (await api.get("/metrics")).text
            assert 'gwallet_admission_refusals_total{reason="pool_timeout"} 1.0' in metrics
            # The pool's own work (the ledger engine, periodic jobs) is not bounded by it, and
            # the next request is served normally.
            again = await api.post("/test/effects", json={"amount": 1},
                                   headers={"Idempotency-Key": secrets.token_hex(12)})
            assert again.status_code == 201, again.text


# --- the real server: gwallet serve, granian, two workers --------------------------------------


async def test_gwallet_serve_with_two_granian_workers_refuses_fast_past_its_limit(
    database_url: str, redis_url: str, tmp_path: Path,
) -> None:
    """No slow route in the real app: one request in flight per worker and no queue make
    50 concurrent applications saturate it."""
    env = service_env(database_url, redis_url, tmp_path, db_pool_max_size=3,
                      admission_max_in_flight=1, admission_queue_max=0)
    with ServiceProcess(env, workers=2, log_dir=tmp_path) as service:
        connections = [RawConnection(service.base_url) for _ in range(50)]
        try:
            for connection in connections:
                assert (await connection.request("GET", "/healthz"))[0] == 200
            results = await asyncio.gather(*(
                raw_timed(connection, "POST", "/v1/merchant/applications",
                          json.dumps(application_body()).encode())
                for connection in connections))
        finally:
            for connection in connections:
                connection.close()
        statuses = [status for status, *_ in results]
        refusals = [seconds for status, _, _, seconds in results if status == 503]
        for status, headers, content, _ in results:
            if status == 503:
                assert_raw_overloaded(status, headers, content)
            else:
                assert status == 201, content
        print(f"\ngwallet serve (granian, 2 workers, 1 in flight each): "
              f"{statuses.count(201)} accepted, {len(refusals)} refused, refusal p50 "
              f"{percentile(refusals, 50) * 1000:.1f} ms" if refusals else "")
        # At least one accepted (the kernel may hand every connection to one worker).
        assert statuses.count(201) >= 1 and refusals
        assert percentile(refusals, 50) < 0.25
        async with client(service.base_url) as api:
            metrics = (await api.get("/metrics")).text  # both workers' counters, added up
            total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith("gwallet_admission_refusals_total{"))
            assert total == len(refusals), metrics
            # Afterwards the service serves again.
            for _ in range(4):
                response = await api.post("/v1/merchant/applications", json=application_body())
                assert response.status_code == 201, response.text


async def test_only_a_connection_marked_as_holding_session_state_is_reset_on_release(
    database_url: str,
) -> None:
    """The pool skips asyncpg's reset query (a round trip per release) unless the connection
    was marked: a marked one loses its session lock; an unmarked one keeps its session."""
    from gwallet.admission import create_pool, keeps_session_state

    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(4242)")
            keeps_session_state(conn)
        async with pool.acquire() as conn:  # the same connection: max_size=1
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid()") == 0
            await conn.execute("SET application_name = 'kept'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "kept"
    finally:
        await pool.close()
