"""Cursor pagination: ``?limit=1..100&starting_after=<id>`` -> ``{"data": [...], "has_more"}``.

A list handler takes ``page: PageParams`` (dependency ``PAGINATED``), fetches ``page.limit + 1``
rows with ``id > page.starting_after`` in id order, and returns ``Page.of(rows, page)``: the
extra row only tells whether there is more. Cursors are ids, never offsets, so pages stay
stable while rows are added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar import Request
from litestar.di import Provide
from litestar.params import QueryParameter

from gwallet.problems import FieldError, InvalidParameter

T = TypeVar("T")

LIMIT_DEFAULT = 20
LIMIT_MAX = 100  # the API contract's maximum; settings.page_limit_max may lower it
CURSOR_MAX_LENGTH = 128
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"


class PageParams(msgspec.Struct, frozen=True):
    limit: int
    starting_after: str | None


class Page(msgspec.Struct, Generic[T], frozen=True):
    data: list[T]
    has_more: bool

    @classmethod
    def of(cls, rows: Sequence[T], params: PageParams) -> Page[T]:
        """``rows`` was fetched with ``LIMIT params.limit + 1``."""
        assert len(rows) <= params.limit + 1, "fetch at most limit + 1 rows"
        return cls(data=list(rows[: params.limit]), has_more=len(rows) > params.limit)


async def _page_params(
    request: Request[Any, Any, Any],
    limit: Annotated[
        int,
        QueryParameter(ge=1, le=LIMIT_MAX, description="Page size, 1 to 100."),
    ] = LIMIT_DEFAULT,
    starting_after: Annotated[
        str | None,
        QueryParameter(
            pattern=CURSOR_PATTERN,
            max_length=CURSOR_MAX_LENGTH,
            description="Id of the last item of the previous page.",
        ),
    ] = None,
) -> PageParams:
    limit_max = min(LIMIT_MAX, request.app.state.settings.page_limit_max)
    if limit > limit_max:
        message = f"Expected `int` <= {limit_max}"
        raise InvalidParameter(
            f"limit: {message}", errors=[FieldError(field="limit", message=message)]
        )
    return PageParams(limit=limit, starting_after=starting_after)


PAGINATED = Provide(_page_params)
