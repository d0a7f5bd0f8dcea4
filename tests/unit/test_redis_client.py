"""REDIS_URL forms (plain, Sentinel, Cluster) and the clients each one builds, without connecting; slot tags."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot as redis_key_slot

from chat_common.clients.redis_client import (
    CLUSTER,
    PLAIN,
    SENTINEL,
    LazyCluster,
    RedisUrlError,
    async_client,
    is_cluster,
    parse_redis_url,
    sync_client,
)
from chat_common.wire.keys import SLOTS, RedisKeys, application_slot, slot_tag


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://u:p@h:6380/2", "unix:///run/redis.sock"])
def test_a_plain_url_is_left_to_redis_py(url):
    target = parse_redis_url(url)
    assert (target.mode, target.url, target.nodes) == (PLAIN, url, ())


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db():
    target = parse_redis_url("redis+sentinel://:s%40cret@h1:26379,h2,[::1]:26380/mymaster/3?sentinel_password=sp")
    assert target.mode == SENTINEL
    assert target.nodes == (("h1", 26379), ("h2", 26379), ("::1", 26380))  # default sentinel port 26379
    assert (target.service, target.db, target.password, target.ssl) == ("mymaster", 3, "s@cret", False)
    assert target.sentinel_password == "sp"
    assert "s@cret" not in repr(target)  # passwords never reach a log line


def test_a_sentinel_url_defaults_to_db_0_and_tls_by_scheme():
    target = parse_redis_url("rediss+sentinel://user:pw@sentinel.svc/chat")
    assert (target.service, target.db, target.ssl, target.username) == ("chat", 0, True, "user")


def test_a_cluster_url_lists_startup_nodes():
    target = parse_redis_url("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert target.mode == CLUSTER
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (target.password, target.db) == ("pw", 0)
    assert parse_redis_url("rediss+cluster://redis-cluster").nodes == (("redis-cluster", 6379),)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:1", "unknown scheme"),
        ("h1:6379", "unknown scheme"),
        ("redis+sentinel://h1:26379", "names its service"),
        ("redis+sentinel://h1:26379/svc/x", "/<service>"),
        ("redis+sentinel://h1:26379,h2:x/svc", "not a number"),
        ("redis+cluster://h1:7000/2", "one database"),
        ("redis+cluster://", "at least one host"),
        ("redis+cluster://:7000", "empty host"),
    ],
)
def test_a_malformed_url_says_what_is_wrong(url, says):
    with pytest.raises(RedisUrlError, match=says):
        parse_redis_url(url)


def test_each_form_builds_redis_pys_own_client_without_connecting():
    # tests/unit refuses every connection: building a client must not open one.
    options = {"socket_timeout": 2, "socket_connect_timeout": 2}
    assert type(sync_client("redis://127.0.0.1:1/0", **options)) is redis.Redis
    assert type(async_client("redis://127.0.0.1:1/0", **options)) is redis.asyncio.Redis
    sentinel = sync_client("redis+sentinel://127.0.0.1:1/svc/2", **options)
    assert type(sentinel) is redis.Redis and type(sentinel.connection_pool).__name__ == "SentinelConnectionPool"
    assert sentinel.connection_pool.service_name == "svc"
    assert sentinel.connection_pool.connection_kwargs["db"] == 2
    async_sentinel = async_client("redis+sentinel://127.0.0.1:1/svc", **options)
    assert type(async_sentinel.connection_pool).__name__ == "SentinelConnectionPool"
    cluster = sync_client("redis+cluster://127.0.0.1:1", **options)
    assert isinstance(cluster, LazyCluster) and is_cluster(cluster)
    async_cluster = async_client("redis+cluster://127.0.0.1:1,127.0.0.1:2", health_check_interval=10, **options)
    assert isinstance(async_cluster, redis.asyncio.cluster.RedisCluster) and is_cluster(async_cluster)
    assert not is_cluster(sentinel)


def test_every_slot_has_a_tag_in_that_slot():
    assert all(redis_key_slot(slot_tag(slot).encode()) == slot for slot in range(SLOTS))
    assert max(len(slot_tag(slot)) for slot in range(SLOTS)) <= 6


def test_keys_used_together_share_a_slot():
    keys = RedisKeys("ns:")
    for application_id in (1, 17, 4242, 10**9):
        slot = application_slot(application_id)
        same = {keys.numbers(application_id), keys.epoch_of(application_id), keys.idempotency(application_id, "s", "k")}
        assert {redis_key_slot(k.encode()) for k in same} == {slot}
        assert redis_key_slot(keys.slot_recovery_started(slot).encode()) == slot
    claim = keys.count_claim(keys.dirty_chats, "run")
    together = [keys.dirty_chats, keys.dirty_applications, claim, keys.count_claims, keys.counts_epoch]
    together += [keys.counts_epoch_pending, keys.writer_heartbeats, keys.deferred, keys.deferred_since]
    assert len({redis_key_slot(k.encode()) for k in together}) == 1
