"""Cursor pagination: ?limit=1..100&starting_after=<id> -> {"data": [...], "has_more": bool}."""

from __future__ import annotations

import httpx
import pytest

from gwallet.pagination import Page, PageParams
from tests.routes_for_tests import ITEM_IDS
from tests.test_problems import assert_problem


async def test_walking_the_cursor_visits_every_item_once_in_order(api: httpx.AsyncClient) -> None:
    seen: list[str] = []
    params: dict[str, str | int] = {}
    pages = 0
    while True:
        body = (await api.get("/test/items", params=params)).json()
        seen += [item["id"] for item in body["data"]]
        pages += 1
        if not body["has_more"]:
            break
        params = {"starting_after": seen[-1]}
    assert seen == ITEM_IDS
    assert pages == 3  # 20 + 20 + 5 with the default limit


async def test_the_limit_sets_the_page_size_up_to_100(api: httpx.AsyncClient) -> None:
    body = (await api.get("/test/items", params={"limit": 1})).json()
    assert body == {"data": [{"id": "itm_001"}], "has_more": True}
    body = (await api.get("/test/items", params={"limit": 100})).json()
    assert len(body["data"]) == len(ITEM_IDS) and body["has_more"] is False


async def test_a_cursor_past_the_end_gives_an_empty_last_page(api: httpx.AsyncClient) -> None:
    body = (await api.get("/test/items", params={"starting_after": "itm_999"})).json()
    assert body == {"data": [], "has_more": False}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"starting_after": "itm_001' OR 1=1"}, "starting_after"),
        ({"starting_after": "x" * 129}, "starting_after"),
    ],
    ids=["zero", "101", "negative", "text", "float", "injection-shaped cursor", "long cursor"],
)
async def test_a_bad_limit_or_cursor_is_a_400_problem(
    api: httpx.AsyncClient, params: dict, field: str
) -> None:
    problem = assert_problem(await api.get("/test/items", params=params), 400, "invalid_parameter")
    assert problem["errors"][0]["field"] == field


def test_a_page_of_limit_plus_one_rows_says_there_is_more() -> None:
    params = PageParams(limit=2, starting_after=None)
    assert Page.of([1, 2, 3], params) == Page(data=[1, 2], has_more=True)
    assert Page.of([1, 2], params) == Page(data=[1, 2], has_more=False)
    assert Page.of([], params) == Page(data=[], has_more=False)
