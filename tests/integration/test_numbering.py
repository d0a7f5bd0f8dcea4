"""Redis numbering scripts against a real Redis: atomic allocation, recovery gate, fenced loads."""

import asyncio
import time

import pytest
import pytest_asyncio
import redis.asyncio as redis

from chat_api.adapters import numbering as codes
from chat_api.adapters.numbering import Numbering
from chat_common.wire.keys import RedisKeys


@pytest_asyncio.fixture
async def numbering(fresh_namespace):
    client = redis.Redis.from_url(fresh_namespace.settings.redis_url)
    keys = RedisKeys(fresh_namespace.settings.redis_key_prefix)
    yield Numbering(client, keys), client, keys
    await client.aclose()


async def test_nothing_is_numbered_without_an_epoch(numbering):
    n, client, keys = numbering
    assert (await n.new_chat(1)).status == codes.RECOVERING
    await client.set(keys.epoch_of(1), "e1")
    allocation = await n.new_chat(1)
    assert allocation.status == codes.APPLICATION_NOT_LOADED and allocation.epoch == "e1"


async def test_allocation_after_load(numbering):
    n, client, keys = numbering
    await client.set(keys.epoch_of(42), "e1")
    assert await n.load_application(42, "e1", last_chat_number=5)
    chat = await n.new_chat(42)
    assert (chat.status, chat.application_id, chat.value) == (codes.OK, 42, 6)
    assert [(await n.new_message(42, 6)).value for _ in range(3)] == [1, 2, 3]
    assert (await n.new_message(42, 7)).status == codes.NOT_FOUND  # chat 7 was never allocated
    assert (await n.new_message(42, 2)).status == codes.CHAT_NOT_LOADED  # chat 2 exists but its counter is not loaded
    assert await n.load_chat(42, "e1", 2, last_message_number=10)
    assert (await n.new_message(42, 2)).value == 11
    assert await n.load_chat(42, "e1", 2, last_message_number=3)  # never lowers a loaded counter (HSETNX)
    assert (await n.new_message(42, 2)).value == 12


async def test_load_under_a_stale_epoch_is_refused(numbering):
    n, client, keys = numbering
    await client.set(keys.epoch_of(1), "e2")
    assert not await n.load_application(1, "e1", 100)
    assert (await n.new_chat(1)).status == codes.APPLICATION_NOT_LOADED


async def test_edit_versions_strictly_increase_and_check_existence(numbering):
    n, client, keys = numbering
    await client.set(keys.epoch_of(1), "e")
    await n.load_application(1, "e", 0)
    chat = (await n.new_chat(1)).value
    await n.new_message(1, chat)
    versions = [(await n.edit_message(1, chat, 1)).value for _ in range(50)]
    assert versions == sorted(set(versions)) and versions[0] > 1_600_000_000_000_000  # microseconds since 1970
    assert (await n.edit_message(1, chat, 2)).status == codes.NOT_FOUND
    assert (await n.edit_chat(1, chat)).value > versions[-1]


async def test_concurrent_allocation_never_duplicates(numbering):
    n, client, keys = numbering
    await client.set(keys.epoch_of(1), "e")
    await n.load_application(1, "e", 0)

    async def worker():
        return [(await n.new_chat(1)).value for _ in range(200)]

    results = [number for mine in await asyncio.gather(*(worker() for _ in range(8))) for number in mine]
    assert sorted(results) == list(range(1, 1601))


def test_stale_writer_heartbeats_are_pruned(fresh_namespace):
    import redis as blocking_redis

    from chat_common.writing.writer import STALE_HEARTBEAT_SECONDS, prune_heartbeats

    client = blocking_redis.Redis.from_url(fresh_namespace.settings.redis_url)
    keys = RedisKeys(fresh_namespace.settings.redis_key_prefix)
    client.hset(keys.writer_heartbeats, mapping={"q|dead": "0:100.0", "q|alive": "0:5000.0", "q|junk": "x"})
    assert prune_heartbeats(client, keys, now=5000.0 + STALE_HEARTBEAT_SECONDS / 2) == 2
    assert list(client.hkeys(keys.writer_heartbeats)) == [b"q|alive"]
    client.close()


async def test_idempotency_claims_records_and_releases(numbering):
    from chat_api.adapters.idempotency import IdempotencyStore, KeyInUse, Recorded

    _, client, keys = numbering
    await client.set(keys.epoch_of(1), "e1:fresh:1")
    store = IdempotencyStore(client, keys, claim_seconds=5)
    first = await store.claim(1, "chats", "k1")
    assert first.earlier is None and first.epoch == "e1:fresh:1"  # the epoch comes with the claim
    with pytest.raises(KeyInUse) as busy:
        await store.claim(1, "chats", "k1")  # the first request is still being answered
    assert busy.value.retry_after in (4, 5)  # when its 5 s claim, taken just now, lapses (rounded up)
    await store.record(1, "chats", "k1", Recorded(4, 9, "fp"))
    assert (await store.claim(1, "chats", "k1")).earlier == Recorded(4, 9, "fp")
    assert (await store.claim(1, "chats", "k2")).earlier is None
    await store.release(1, "chats", "k2")
    assert (await store.claim(1, "chats", "k2")).earlier is None  # released: free again


async def test_a_claim_of_a_dead_request_lapses_within_its_bound(numbering):
    from chat_api.adapters.idempotency import IdempotencyStore

    _, client, keys = numbering
    store = IdempotencyStore(client, keys, claim_seconds=0.3)
    await store.claim(1, "chats", "k")  # the request "dies" here: no record, no release
    await asyncio.sleep(0.4)
    assert (await store.claim(1, "chats", "k")).earlier is None  # free again, no 409


async def test_pipelined_script_loads_itself_and_answers_each_caller(numbering):
    import uuid

    from chat_api.adapters.numbering import PipelinedScript

    _, client, keys = numbering
    # A script Redis has never seen: the first round trip answers NOSCRIPT, and it is loaded and run again.
    source = f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    script = PipelinedScript(client, source)
    counter = f"{keys.prefix}test:counter"
    replies = await asyncio.gather(*(script([counter], [1]) for _ in range(50)))
    assert sorted(replies) == list(range(1, 51))  # one reply per caller, every call ran exactly once
    failing = PipelinedScript(client, "return redis.error_reply('no')")
    with pytest.raises(Exception, match="no"):
        await failing([counter], [])  # an error reaches its own caller
    assert await script([counter], [5]) == 55


async def test_counters_are_keyed_by_application_id_under_its_hash_tag(numbering):
    n, client, keys = numbering
    await client.set(keys.epoch_of(7), "e")
    assert keys.numbers(7) == f"{keys.prefix}{{a7}}:numbers"
    assert keys.idempotency(7, "chats", "k").startswith(f"{keys.prefix}{{a7}}:")
    assert keys.rate_window(7, 100).startswith(f"{keys.prefix}{{a7}}:")
    await n.load_application(7, "e", 0)
    assert (await n.new_chat(7)).value == 1
    stored = await client.hgetall(keys.numbers(7))
    assert stored[b"id"] == b"7" and stored[b"chats"] == b"1"
    assert abs(int(stored[b"at"]) - time.time()) < 5  # the tenant's last activity, kept by numbering


async def test_max_chats_refuses_without_taking_a_number(numbering):
    n, client, keys = numbering
    await client.set(keys.epoch_of(3), "e")
    await n.load_application(3, "e", 0)
    assert [(await n.new_chat(3, max_chats=2)).value for _ in range(2)] == [1, 2]
    refused = await n.new_chat(3, max_chats=2)
    assert (refused.status, refused.application_id) == (codes.LIMIT_REACHED, 3)
    assert (await client.hget(keys.numbers(3), "chats")) == b"2"  # nothing burnt
    assert (await n.new_chat(3, max_chats=3)).value == 3  # a raised limit continues the same sequence
    assert (await n.new_chat(3)).value == 4  # 0: no limit


async def test_a_load_never_seeds_below_the_counters_kept_per_token_before_the_upgrade(numbering):
    n, client, keys = numbering
    await client.set(keys.epoch_of(9), "e")
    # What the previous version left: numbers handed out per token, maybe still on their way to MySQL.
    await client.hset(keys.legacy_application("old-tok"), mapping={"id": 9, "chats": 12, "m:3": 40})
    assert await n.load_application(9, "e", last_chat_number=10, legacy_token="old-tok")
    assert (await n.new_chat(9)).value == 13
    assert (await n.new_message(9, 3)).status == codes.CHAT_NOT_LOADED
    assert await n.load_chat(9, "e", 3, last_message_number=38, legacy_token="old-tok")
    assert (await n.new_message(9, 3)).value == 41
    assert await n.load_chat(9, "e", 4, last_message_number=5, legacy_token="old-tok")  # none kept: MySQL's
    assert (await n.new_message(9, 4)).value == 6
