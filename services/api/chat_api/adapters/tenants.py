"""The tenant directory of one API process, and the per-tenant request rate limiter.

Every tenant-scoped request needs to know which application its token names, whether that application is
suspended, whether the token is a rotated-away one past its grace period, and the tenant's limits. Asking MySQL
each time would put a query on every request; :class:`TenantDirectory` keeps the answers in a small in-process
LRU instead:

- **bounded staleness**: an entry is used for at most ``ttl`` seconds (``TENANT_CACHE_SECONDS``, default 2) after
  the query that produced it *started*, so a suspension, a resume, a rotation or a limit change made anywhere (the
  admin API on another process, the operator) is in force on every API process within that bound;
- **bounded size**: at most ``max_entries`` tokens (least recently used go first);
- **negative caching**: an unknown token is remembered as unknown for the same ``ttl``, so a client hammering a
  wrong token costs one query per ``ttl``, not one per request;
- **one query per miss**: concurrent requests for the same token while it is being fetched share that one query;
- **stale if error**: when MySQL cannot be reached, the last known entry keeps being used (creates need only Redis
  and RabbitMQ, and must not fail because MySQL blinked); with no entry at all the request answers 503.

:class:`RedisRateLimiter` counts requests per application (every token of it) in one-second windows shared by every
API process. The rules that use both live in :meth:`chat_api.services.ChatService.tenant`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

from chat_api.adapters.database import Database
from chat_api.model import Application, DatabaseUnavailable
from chat_common.keys import RedisKeys
from chat_common.tenancy import TENANT_BY_TOKEN, application_from_row

log = logging.getLogger(__name__)


class TenantDirectory:
    """token -> :class:`Application` (or None: unknown), cached per process with bounded staleness and size."""

    def __init__(
        self,
        db: Database,
        ttl: float = 2.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Application | None]] = OrderedDict()
        self._fetching: dict[str, asyncio.Future] = {}
        self.queries = 0  # how many times MySQL was asked (tests and benchmarks read it)

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(self, token: str, fresh: bool = False) -> Application | None:
        """The application this token names now (None: no application has it); ``fresh`` skips the cache."""
        entry = self._entries.get(token)
        if entry is not None and not fresh and self.clock() - entry[0] < self.ttl:
            self._entries.move_to_end(token)
            return entry[1]
        pending = self._fetching.get(token)
        if pending is not None and not fresh:
            return await asyncio.shield(pending)
        return await self._fetch(token, entry)

    async def _fetch(self, token: str, entry: tuple[float, Application | None] | None) -> Application | None:
        future = asyncio.get_running_loop().create_future()
        self._fetching[token] = future
        started = self.clock()  # the entry's age counts from before the query: staleness stays within ttl
        try:
            self.queries += 1
            rows = await self.db.rows(TENANT_BY_TOKEN, {"token": token})
        except DatabaseUnavailable as exc:
            if entry is not None:
                log.debug("tenant directory: database unavailable, serving the last known entry")
                # Kept for another half second (at most ttl): one retry of MySQL per token then, not one per request.
                self._store(token, self.clock() - self.ttl + min(0.5, self.ttl), entry[1])
                future.set_result(entry[1])
                return entry[1]
            future.set_exception(exc)
            future.exception()  # retrieved here, so a future nobody else awaited does not warn
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            if self._fetching.get(token) is future:
                del self._fetching[token]
        application = application_from_row(rows[0]) if rows else None
        self._store(token, started, application)
        future.set_result(application)
        return application

    def _store(self, token: str, at: float, application: Application | None) -> None:
        self._entries[token] = (at, application)
        self._entries.move_to_end(token)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, token: str) -> None:
        """Forget one token (this process changed its application: the next request asks MySQL)."""
        self._entries.pop(token, None)


class RedisRateLimiter:
    """At most ``limit`` requests per application in each wall-clock second, counted in Redis (one INCR each).

    When Redis cannot be reached the request goes through: the limiter protects the system, it must not become
    the reason the API is down.
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    async def admit(self, application_id: int, limit: int) -> bool:
        """Count this request; False when it is over ``limit`` in the current second."""
        key = self.keys.rate_window(application_id, int(time.time()))
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                count = (await pipe.incr(key).expire(key, 2).execute())[0]
        except RedisError as exc:
            log.debug("rate limit not checked: %s", exc.__class__.__name__)
            return True
        return count <= limit
