"""The tenant directory of one API process, and the per-tenant request rate limiter.

Every tenant-scoped request needs to know which application its token names, whether that application is
suspended, whether the token is a rotated-away one past its grace period, and the tenant's limits. Asking MySQL
each time would put a query on every request; :class:`TenantDirectory` keeps the answers in a small in-process
LRU instead:

- **bounded staleness**: an entry is used for at most ``ttl`` seconds (``TENANT_CACHE_SECONDS``, default 2) after
  the query that produced it *started*, so a suspension, a resume, a rotation or a limit change made anywhere (the
  admin API on another process, the operator) is in force on every API process within that bound;
- **refreshed ahead**: a request that finds its entry in the last quarter of that time (``refresh_ahead``, 0.75)
  is served from it and starts the entry's next query in the background, so a tenant in steady use (a request every
  half second or more often) never waits for a revalidation: before, one create in 40 of a tenant at 20 creates a
  second waited for a MySQL query — above the 1 % a p99 sees, and the query that queues behind a neighbour's load
  (issue #23). An entry is still never used past ``ttl`` after its query started;
- **bounded size**: at most ``max_entries`` known tokens (least recently used go first);
- **negative caching, apart**: an unknown token is remembered as unknown for ``negative_ttl`` seconds
  (``TENANT_NEGATIVE_CACHE_SECONDS``, default 30) in a bounded cache of its own (``negative_max_entries``), so a
  flood of random tokens never evicts a real tenant, and a client hammering a wrong token costs one query per
  ``negative_ttl`` — fresh lookups included. Longer than ``ttl`` is safe because a token only ever goes from known to
  unknown (deletion, the end of a grace period), never back: a new token is drawn from the CSPRNG when it is created
  or rotated to, so no process can have looked it up before it existed (2^-192), and the process that creates or
  rotates one invalidates it anyway;
- **a budget for strangers**: lookups that find nothing spend from a per-process token bucket of
  ``unknown_lookups_per_second`` (``TENANT_UNKNOWN_LOOKUPS_PER_SECOND``, default 100; as many at once); while it is
  empty, a token this process has no entry for answers 503 with Retry-After *before* any query of its own, so
  strangers cost MySQL at most that many queries a second per process. Lookups that find a tenant spend nothing — a
  process that just started and meets thousands of real tenants is not throttled — and revalidating a known entry is
  never refused;
- **real tenants apart from strangers, during a flood**: while the budget is empty, a token this process has no
  entry for is looked up anyway when its digest is among every application's token digests (:data:`TOKEN_DIGESTS`,
  one query read at most every ``known_digests_seconds``, default 5, and only while the budget refuses someone). A
  tenant this process has not met yet — the quiet tenant whose connection lands on another API process than before
  (issue #23: 19 of its creates in a row answered 503 while a random-token flood kept that process's budget empty)
  — is served, not refused with the strangers; a tenant created after the last read waits at most that long;
- **one query per miss**: concurrent requests for the same token while it is being fetched share that one query;
- **bounded stale if error**: when MySQL cannot be reached, the last known entry keeps being used (creates need
  only Redis and RabbitMQ, and must not fail because MySQL blinked) — but only up to ``stale_seconds``
  (``TENANT_STALE_SECONDS``, default 30) after MySQL last confirmed it; then, as with no entry at all, 503. A
  suspension or a rotation made just before the outage is in force within that bound.

:class:`RedisRateLimiter` counts requests per application (every token of it) in one-second windows shared by every
API process; while Redis cannot be reached it counts per process. The rules that use both live in
:meth:`chat_api.services.ChatService.tenant`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

from chat_api.adapters.database import Database
from chat_api.model import Application, DatabaseUnavailable, Unavailable
from chat_common.tenancy.applications import (
    MAX_KNOWN_DIGESTS,
    TENANT_BY_TOKEN,
    TOKEN_DIGESTS,
    application_from_row,
)
from chat_common.tenancy.tokens import token_digest
from chat_common.wire.keys import RedisKeys

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    at: float  # when the query behind it started (used until at + ttl)
    application: Application
    confirmed: float  # when MySQL last answered for this token (stale-if-error is bounded from here)


class TokenBucket:
    """``rate`` units a second on average, ``burst`` at once; spending may run into debt (down to ``-burst``), which
    later refills pay back first."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def available(self) -> bool:
        """Whether one unit is left now."""
        self._refill()
        return self._tokens >= 1

    def spend(self) -> None:
        """Use one unit (after the fact: several cold lookups may have been in flight at once)."""
        self._refill()
        self._tokens = max(-self.burst, self._tokens - 1)


def _digest_key(digest: str) -> int:
    """The first 64 bits of a hex token digest."""
    return int(digest[:16], 16)


class TenantDirectory:
    """token -> :class:`Application` (or None: unknown), cached per process with bounded staleness and size."""

    def __init__(
        self,
        db: Database,
        ttl: float = 2.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        *,
        negative_ttl: float = 30.0,
        negative_max_entries: int = 100_000,
        unknown_lookups_per_second: float = 100.0,
        stale_seconds: float = 30.0,
        known_digests_seconds: float = 5.0,
        refresh_ahead: float = 0.75,
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.refresh_after = ttl * refresh_ahead  # an entry this old is served and refreshed in the background
        self._refreshing: set[asyncio.Task] = set()  # the background refreshes (referenced until done)
        self.max_entries = max_entries
        self.clock = clock
        self.negative_ttl = negative_ttl
        self.negative_max_entries = negative_max_entries
        self.stale_seconds = stale_seconds
        # 0 turns the budget off (tests, benchmarks that create tenants faster than it allows).
        self._budget = (
            TokenBucket(unknown_lookups_per_second, max(1.0, unknown_lookups_per_second), clock)
            if unknown_lookups_per_second > 0
            else None
        )
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()  # token -> when MySQL said it names nothing
        self._fetching: dict[str, asyncio.Future] = {}
        # Every application's token digests, read while the budget refuses (None: not read yet); see _is_real.
        self.known_digests_seconds = known_digests_seconds
        # Each digest's first 64 bits (a false match costs one lookup; ~50 bytes an application instead of ~120).
        self._known_digests: frozenset[int] | None = None
        self._too_many_digests = False  # more applications than MAX_KNOWN_DIGESTS: the budget's rule alone
        self._known_digests_at = float("-inf")
        self._reading_digests: asyncio.Future[frozenset[int] | None] | None = None
        self.digest_reads = 0  # how many times every digest was read (tests read it)
        self.queries = 0  # how many times MySQL was asked (tests and benchmarks read it)
        self.throttled = 0  # cold lookups refused by the budget

    def __len__(self) -> int:
        return len(self._entries)

    def unknown_count(self) -> int:
        """How many unknown tokens are remembered."""
        return len(self._unknown)

    async def lookup(self, token: str, fresh: bool = False) -> Application | None:
        """The application this token names now (None: no application has it); ``fresh`` skips the cache of
        known tokens (an unknown token stays unknown for ``negative_ttl``, fresh or not)."""
        return await self._lookup(token, token_digest(token), fresh)

    async def lookup_digest(self, digest: str) -> Application | None:
        """The application whose token has this digest (stream tickets carry it), with the same cache, bounds and
        budget; its entries are apart from the tokens' (keyed ``#digest``: no token has a ``#``)."""
        return await self._lookup(f"#{digest}", digest, False)

    async def _lookup(self, token: str, digest: str, fresh: bool) -> Application | None:
        now = self.clock()
        entry = self._entries.get(token)
        if entry is not None and not fresh and now - entry.at < self.ttl:
            self._entries.move_to_end(token)
            # Not an entry kept on after MySQL failed (at > confirmed): that one is retried once it expires, as before.
            if now - entry.at >= self.refresh_after and entry.at == entry.confirmed and token not in self._fetching:
                self._refresh(token, digest, entry)
            return entry.application
        if entry is None:
            unknown_at = self._unknown.get(token)
            if unknown_at is not None and now - unknown_at < self.negative_ttl:
                return None
        pending = self._fetching.get(token)
        if pending is not None and not fresh:
            return await asyncio.shield(pending)
        refusable = entry is None and self._budget is not None and not self._budget.available()
        if refusable and not await self._is_real(digest):
            self.throttled += 1
            raise Unavailable("too many lookups of unknown tokens; try again", retry_after=1)
        return await self._fetch(token, digest, entry)

    def _refresh(self, token: str, digest: str, entry: _Entry) -> None:
        """The entry's next query, started now in the background (requests meanwhile are served from the entry, or
        share that query once the entry is past ``ttl``)."""

        async def refresh() -> None:
            try:
                await self._fetch(token, digest, entry)
            except Exception as exc:  # the entry's own expiry decides; the next request past it asks again
                log.debug("tenant directory: background refresh failed: %s", exc.__class__.__name__)

        task = asyncio.get_running_loop().create_task(refresh())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _is_real(self, digest: str) -> bool:
        """Whether ``digest`` is one of an application's tokens, as of the last read of every digest (read again
        when older than ``known_digests_seconds``; one read at a time, shared by every request waiting for it).

        Only asked while the budget refuses lookups, so the read costs nothing until strangers flood the process,
        then one query per ``known_digests_seconds``. A failed read counts as one (no retry before the interval):
        until then the budget's rule stands alone, as before."""
        if self._too_many_digests:
            return False
        key = _digest_key(digest)
        known = self._known_digests
        if known is not None and key in known:
            return True
        if self._reading_digests is not None or self.clock() - self._known_digests_at >= self.known_digests_seconds:
            known = await self._read_digests()  # a read under way is waited for: it may hold this digest
        return known is not None and key in known

    async def _read_digests(self) -> frozenset[int] | None:
        if self._reading_digests is not None:
            return await asyncio.shield(self._reading_digests)
        self._reading_digests = future = asyncio.get_running_loop().create_future()
        self._known_digests_at = self.clock()
        try:
            self.digest_reads += 1
            rows = await self.db.rows(TOKEN_DIGESTS)
        except Unavailable as exc:  # unreachable, or stopped by the statement time limit
            log.warning("tenant directory: could not read the token digests: %s", exc.__class__.__name__)
        else:
            if len(rows) > MAX_KNOWN_DIGESTS:
                log.warning(
                    "tenant directory: over %d applications; strangers' budget alone applies", MAX_KNOWN_DIGESTS
                )
                self._too_many_digests = True
            else:
                self._known_digests = frozenset(_digest_key(digest) for row in rows for digest in row if digest)
        finally:
            self._reading_digests = None
            future.set_result(self._known_digests)
        return self._known_digests

    async def _fetch(self, token: str, digest: str, entry: _Entry | None) -> Application | None:
        future = asyncio.get_running_loop().create_future()
        self._fetching[token] = future
        started = self.clock()  # the entry's age counts from before the query: staleness stays within ttl
        try:
            self.queries += 1
            rows = await self.db.rows(TENANT_BY_TOKEN, {"digest": digest})  # never the token itself
        except DatabaseUnavailable as exc:
            if entry is not None and self.clock() - entry.confirmed < self.stale_seconds:
                log.debug("tenant directory: database unavailable, serving the last known entry")
                # Kept for another half second (at most ttl): one retry of MySQL per token then, not one per request.
                entry.at = self.clock() - self.ttl + min(0.5, self.ttl)
                self._entries[token] = entry
                self._entries.move_to_end(token)
                future.set_result(entry.application)
                return entry.application
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
        if application is None:
            if entry is None and self._budget is not None:
                self._budget.spend()
            self._entries.pop(token, None)
            self._unknown[token] = started
            self._unknown.move_to_end(token)
            while len(self._unknown) > self.negative_max_entries:
                self._unknown.popitem(last=False)
        else:
            self._unknown.pop(token, None)
            self._entries[token] = _Entry(started, application, started)
            self._entries.move_to_end(token)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        future.set_result(application)
        return application

    def invalidate(self, token: str) -> None:
        """Forget one token, known or unknown (this process changed or created its application: the next request
        asks MySQL)."""
        for key in (token, f"#{token_digest(token)}"):  # and the tickets' entry of the same token
            self._entries.pop(key, None)
            self._unknown.pop(key, None)


class RedisRateLimiter:
    """At most ``limit`` requests per application in each wall-clock second, counted in Redis (one INCR each).

    Once Redis has said an application is over its limit in a second, the rest of its requests in that second are
    refused here without a round trip: the shared count only grows within a second, so Redis would say the same. A
    tenant flooding past its limit (~1,000 refusals a second in the noisy-neighbour test, issue #23) then costs
    each process one round trip per second and tenant instead of one per request, on the event loop every other
    tenant's requests share.

    When Redis cannot be reached the limit is counted in this process instead — its share of the limit,
    ``ceil(limit / fallback_processes)`` (``RATE_LIMIT_FALLBACK_PROCESSES``: the number of API processes, so the
    shares add up to about the limit) — and Redis is tried again after a second rather than on every request. The
    limiter protects the system; it must neither become the reason the API is down nor switch off when Redis is.
    """

    RETRY_SECONDS = 1.0

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        *,
        fallback_processes: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.keys = keys
        self.fallback_processes = max(1, fallback_processes)
        self.clock = clock
        self._redis_retry_at = 0.0
        self._local_second = -1
        self._local: dict[int, int] = {}  # application id -> requests in _local_second (this process)
        self._over_second = -1
        self._over: set[int] = set()  # applications Redis found over their limit in _over_second

    async def admit(self, application_id: int, limit: int) -> bool:
        """Count this request; False when it is over ``limit`` in the current second."""
        now = self.clock()
        second = int(now)
        if second == self._over_second and application_id in self._over:
            return False  # over in this second already: Redis would say so again
        if now >= self._redis_retry_at:
            key = self.keys.rate_window(application_id, second)
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    count = (await pipe.incr(key).expire(key, 2).execute())[0]
            except RedisError as exc:
                log.debug("rate limit counted in this process: %s", exc.__class__.__name__)
                self._redis_retry_at = now + self.RETRY_SECONDS
            else:
                if count <= limit:
                    return True
                if second != self._over_second:  # a new second: the set holds one second's tenants at most
                    self._over_second = second
                    self._over.clear()
                self._over.add(application_id)
                return False
        return self._admit_locally(application_id, limit, second)

    def _admit_locally(self, application_id: int, limit: int, second: int) -> bool:
        if second != self._local_second:  # a new window: the dict holds one second's tenants at most
            self._local_second = second
            self._local.clear()
        count = self._local.get(application_id, 0) + 1
        self._local[application_id] = count
        return count <= math.ceil(limit / self.fallback_processes)
