"""Each application's share of search time, in the real Redis, shared by every API process (issue #23)."""

from __future__ import annotations

import redis.asyncio as redis

from chat_api.adapters.search_budget import RedisSearchBudget
from chat_common.wire.keys import RedisKeys


async def test_search_time_is_shared_by_processes_and_refills_at_its_rate(namespace):
    client = redis.Redis.from_url(namespace.settings.redis_url)
    keys = RedisKeys(namespace.settings.redis_key_prefix)
    one = RedisSearchBudget(client, keys, rate=0.5, burst=1.0)  # two processes, one Redis
    two = RedisSearchBudget(client, keys, rate=0.5, burst=1.0)
    try:
        assert await one.wait_seconds(7) == 0
        await one.spend(7, 0.4)  # 0.8 s ahead: within the 2 s the burst allows
        assert await two.wait_seconds(7) == 0
        await two.spend(7, 1.0)  # 2.8 s ahead: 0.8 s past the burst
        wait = await one.wait_seconds(7)
        assert 0.6 < wait <= 0.8
        assert await one.wait_seconds(8) == 0  # another application's share is its own
        ttl = await client.ttl(keys.search_budget(7))
        assert 1 <= ttl <= 4  # the key goes once the debt is repaid
    finally:
        await client.delete(keys.search_budget(7))
        await client.aclose()


async def test_without_redis_searches_are_admitted():
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    budget = RedisSearchBudget(client, RedisKeys("x:"), rate=0.1, burst=1.0)
    assert await budget.wait_seconds(1) == 0
    await budget.spend(1, 5.0)  # not charged, no error
    await client.aclose()
