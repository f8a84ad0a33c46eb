"""Liveness, readiness, metrics, request ids and the request time limit."""

from __future__ import annotations

import re

import httpx

from tests.test_problems import assert_problem


async def test_healthz_says_the_process_is_alive(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "alive"})


async def test_readyz_is_200_when_postgres_and_redis_answer(api: httpx.AsyncClient) -> None:
    response = await api.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "postgres": "ok", "redis": "ok"}


async def test_readyz_is_a_503_problem_with_retry_after_when_redis_is_down(
    api_without_redis: httpx.AsyncClient,
) -> None:
    response = await api_without_redis.get("/readyz")
    problem = assert_problem(response, 503, "not_ready")
    assert response.headers["retry-after"] == "5"
    assert "redis: unreachable" in problem["detail"] and "postgres: ok" in problem["detail"]
    # Liveness does not depend on Redis.
    assert (await api_without_redis.get("/healthz")).status_code == 200


def _samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name) :]] = float(value)
    return out


async def test_metrics_label_requests_by_route_template_never_by_raw_path(
    api: httpx.AsyncClient,
) -> None:
    await api.get("/test/items/itm_secret_42")
    await api.get("/no/such/path-with-citizen-1234567890123")
    text = (await api.get("/metrics")).text
    requests = _samples(text, "gwallet_http_requests_total")
    assert requests['{method="GET",route="/test/items/{item_id}",status="200"}'] >= 1
    assert requests['{method="GET",route="unmatched",status="404"}'] >= 1
    assert "itm_secret_42" not in text and "1234567890123" not in text
    durations = _samples(text, "gwallet_http_request_duration_seconds_count")
    assert durations['{method="GET",route="/test/items/{item_id}",status="200"}'] >= 1
    assert re.search(r"^gwallet_ledger_queue_depth_transfers \d", text, re.MULTILINE)


async def test_metrics_are_prometheus_text_and_not_in_the_openapi_schema(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert response.headers["content-type"].count("charset") == 1
    assert "/metrics" not in (await api.get("/schema/openapi.json")).json()["paths"]


async def test_a_sane_request_id_is_echoed_and_an_insane_one_replaced(
    api: httpx.AsyncClient,
) -> None:
    echoed = await api.get("/healthz", headers={"X-Request-ID": "req-2026.11.24:abc_1"})
    assert echoed.headers["x-request-id"] == "req-2026.11.24:abc_1"
    replaced = await api.get(
        "/healthz", headers={"X-Request-ID": "bad id\u00e9 with spaces".encode()}
    )
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
    generated = await api.get("/no/such/path")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])


async def test_a_request_over_the_time_limit_is_a_fast_503_with_retry_after(
    api_without_redis: httpx.AsyncClient,
) -> None:
    response = await api_without_redis.get("/test/slow", params={"seconds": 5})
    assert_problem(response, 503, "request_timeout")
    assert response.headers["retry-after"] == "1"
    assert response.elapsed.total_seconds() < 3
