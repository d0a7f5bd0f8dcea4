"""The Redis client factory against the real Redis on localhost (the plain-URL case every deployment has)."""

from __future__ import annotations

import pytest
import redis

from chat_common.clients.redis_client import async_client, is_cluster, sync_client
from chat_common.wire.keys import RedisKeys


def test_the_blocking_client_of_a_plain_url_talks_to_redis(fresh_namespace):
    settings = fresh_namespace.settings
    client = sync_client(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    key = f"{settings.redis_key_prefix}factory"
    try:
        assert not is_cluster(client)
        assert client.set(key, "1") and client.get(key) == b"1"
        assert client.connection_pool.connection_kwargs["socket_timeout"] == 2  # the caller's timeouts are kept
    finally:
        client.close()


async def test_the_asyncio_client_runs_a_script_over_keys_of_one_slot(fresh_namespace):
    settings = fresh_namespace.settings
    keys = RedisKeys(settings.redis_key_prefix)
    client = async_client(settings.redis_url, socket_timeout=None, socket_connect_timeout=2)
    try:
        script = client.register_script("redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[2])")
        await client.set(keys.epoch_of(7), "e")
        assert await script(keys=[keys.numbers(7), keys.epoch_of(7)], args=["x"]) == b"e"
        assert client.connection_pool.connection_kwargs["socket_timeout"] is None
    finally:
        await client.aclose()


def test_an_unreachable_server_fails_on_use_not_on_construction():
    client = sync_client("redis://127.0.0.1:1/0", socket_timeout=0.5, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        client.ping()  # nothing listens on port 1
