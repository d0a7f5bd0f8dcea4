"""Each application's share of search time, kept in Redis (issue #23: one tenant cannot starve the others).

A rate limit counts requests, but one embedded search (``LIKE '%q%'`` over a large chat) can cost the database a
full second — up to the statement time limit — where a page costs a millisecond: two clients searching in a loop
kept two database cores busy on a 2-core machine. So searches also spend from a budget of *time*, per application
and shared by every API process: a generic cell rate algorithm (GCRA) on the seconds searches took. Each search
moves the application's theoretical arrival time (TAT) on by ``elapsed / rate``; a new search is admitted while the
TAT is at most ``burst / rate`` ahead of now. So an application may search for ``rate`` database-seconds per second
on average (default 0.1: a tenth of one core), in bursts of ``burst`` seconds (default 2), and a client that
searches in a loop anyway gets 429 with ``Retry-After`` at the cost of one Redis read.

Searches that are admitted together can overshoot the burst by at most their number times the statement limit, once:
the debt is repaid before the next admission. When Redis cannot be reached, searches are admitted (as the request
rate limiter does: a protection must not become the reason the API is down).
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as redis
from redis.exceptions import RedisError

from chat_common.wire.keys import RedisKeys

log = logging.getLogger(__name__)

# KEYS[1]: the application's TAT; ARGV: now, the seconds this search added (elapsed / rate).
_SPEND = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
if tat < now then tat = now end
tat = tat + tonumber(ARGV[2])
redis.call('SET', KEYS[1], tostring(tat), 'EX', math.ceil(tat - now) + 1)
return tostring(tat)
"""


class RedisSearchBudget:
    """Per-application search time (GCRA on elapsed seconds), shared by every API process through Redis."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, rate: float, burst: float) -> None:
        self.client = client
        self.keys = keys
        self.rate = rate
        self.burst = burst
        self._spend = client.register_script(_SPEND)

    async def wait_seconds(self, application_id: int) -> float:
        """0 when the application may search now, else how long until it may."""
        if self.rate <= 0:
            return 0.0
        try:
            tat = await self.client.get(self.keys.search_budget(application_id))
        except RedisError as exc:
            log.debug("search budget not checked: %s", exc.__class__.__name__)
            return 0.0
        ahead = (float(tat) if tat else 0.0) - time.time()
        return max(0.0, ahead - self.burst / self.rate)

    async def spend(self, application_id: int, seconds: float) -> None:
        """Charge a search that took ``seconds``."""
        if self.rate <= 0:
            return
        try:
            await self._spend(keys=[self.keys.search_budget(application_id)], args=[time.time(), seconds / self.rate])
        except RedisError as exc:
            log.debug("search time not charged: %s", exc.__class__.__name__)
