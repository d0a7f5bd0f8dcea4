"""Pages of a list: by page number (offset) or after a number (keyset)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from chat_api.model import Page
from chat_api.use_cases.limits import Limits


def page_bounds(limits: Limits, page: int, per_page: int | None) -> tuple[int, int]:
    """``(page, per_page)`` with the default page size filled in.

    The bounds (``1 <= per_page <= limits.max_page_size``, an offset of at most ``MAX_OFFSET`` rows) are checked
    once, where the query string is parsed (:func:`chat_api.resources.params.page_params`, 400), as the search
    query's shape is: callers of the service pass numbers already within them.
    """
    return page, limits.default_page_size if per_page is None else per_page


async def read_page(
    limits: Limits,
    fetch: Callable[[int, int], Awaitable[list]],
    page: int,
    per_page: int | None,
    after: int | None = None,
) -> Page:
    """One page: after ``after`` (keyset, cost independent of depth) when given, else by page number."""
    page, per_page = page_bounds(limits, page, per_page)
    offset = 0 if after is not None else (page - 1) * per_page
    rows = await fetch(offset, per_page + 1)
    return Page(rows[:per_page], page, per_page, has_next=len(rows) > per_page)
