"""OpenAPI 3.1 with every error documented; a docs UI that loads nothing from other hosts."""

from __future__ import annotations

import re

import httpx


async def test_the_schema_is_openapi_3_1_and_lists_the_endpoints(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/schema/openapi.json")).json()
    assert schema["openapi"].startswith("3.1")
    assert {"/healthz", "/readyz", "/test/effects", "/test/items"} <= schema["paths"].keys()
    assert not any(path.startswith(("/metrics", "/static", "/schema")) for path in schema["paths"])


async def test_every_operation_documents_its_errors_as_problem_json(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/schema/openapi.json")).json()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation["responses"]
            errors = {status: r for status, r in responses.items() if status.startswith(("4", "5"))}
            assert {"400", "413", "422", "500", "503"} <= errors.keys(), (
                method,
                path,
                responses.keys(),
            )
            for status, response in errors.items():
                assert "application/problem+json" in response["content"], (method, path, status)
                assert "`" in response["description"], (method, path, status)  # names the codes


async def test_an_idempotent_operation_documents_its_header_and_refusals(
    api: httpx.AsyncClient,
) -> None:
    operation = (await api.get("/schema/openapi.json")).json()["paths"]["/test/effects"]["post"]
    headers = [p for p in operation["parameters"] if p["in"] == "header"]
    assert [h["name"] for h in headers] == ["Idempotency-Key"]
    responses = operation["responses"]
    assert "idempotency_request_in_progress" in responses["409"]["description"]
    assert "idempotency_key_reused" in responses["422"]["description"]
    assert "idempotency_key_required" in responses["400"]["description"]
    assert "201" in responses


async def test_the_docs_ui_loads_only_assets_served_by_this_app(api: httpx.AsyncClient) -> None:
    response = await api.get("/schema")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    page = response.text
    assert not re.search(r"https?://", page), "the docs page names another host"
    assert not re.search(r'(?:src|href)="//', page), "a protocol-relative URL names another host"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        fetched = await api.get(asset)
        assert fetched.status_code == 200 and fetched.content, asset
    assert "validatorUrl: null" in page
    assert '"/schema/openapi.json"' in page
