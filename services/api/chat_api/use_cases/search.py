"""Searching one chat's messages, within the tenant's share of search time."""

from __future__ import annotations

import logging
import math
import time

from chat_api.metrics_buffer import BUFFER
from chat_api.model import Page, RateLimited, SearchUnavailable, Unavailable
from chat_api.ports import NumbersPort, Repository, SearchBudgetPort, SearchReader
from chat_api.use_cases.limits import Limits
from chat_api.use_cases.paging import read_page
from chat_api.use_cases.reads import from_replica
from chat_api.use_cases.tenants import TenantGate
from chat_common import metrics

log = logging.getLogger(__name__)


class SearchUseCase:
    """Fragment search in one chat."""

    def __init__(
        self,
        gate: TenantGate,
        repository: Repository,
        numbers: NumbersPort,
        search: SearchReader,
        limits: Limits,
        search_budget: SearchBudgetPort | None = None,
    ) -> None:
        self.gate = gate
        self.repository = repository
        self.numbers = numbers
        self.search = search
        self.limits = limits
        self.search_budget = search_budget  # None: searches spend no time budget

    async def messages(
        self, token: str, chat_number: int, query: str, page: int = 1, per_page: int | None = None
    ) -> Page:
        """Messages of one chat containing ``query`` (a fragment, case-insensitive), best matches first.

        The query's shape (present, not blank, not too long) is checked where it is parsed, in the resource.
        Search documents are keyed by application id, so they follow the application through token rotations.
        """
        application = await self.gate.tenant(token)
        if self.search_budget is not None and (wait := await self.search_budget.wait_seconds(application.id)):
            BUFFER.inc(metrics.TENANT_REFUSALS, "search_budget")
            raise RateLimited(
                "this application's searches have used up their share of search time; retry later, or search with"
                " longer fragments (or in smaller chats)",
                retry_after=math.ceil(wait),
            )
        await self.repository.locate(application.id, chat_number)  # the primary: a new chat is not missing
        replica = await from_replica(self.repository, self.numbers, application)
        started = time.perf_counter()
        try:
            result = await read_page(
                self.limits,
                lambda offset, limit: self.search.search(application.id, chat_number, query, offset, limit, replica),
                page,
                per_page,
            )
        except SearchUnavailable as exc:
            log.warning("search failed: %s", exc)  # hosts and index names stay in the log, out of the answer
            raise Unavailable("search unavailable", retry_after=5) from None
        finally:  # a search stopped by the statement time limit took its time too
            elapsed = time.perf_counter() - started
            if self.search_budget is not None:
                await self.search_budget.spend(application.id, elapsed)
        BUFFER.observe(metrics.SEARCH_SECONDS, elapsed, self.search.name)
        return result
