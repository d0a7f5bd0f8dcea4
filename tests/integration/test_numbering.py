"""Redis numbering scripts against a real Redis: atomic allocation, recovery gate, fenced loads."""

import threading

import pytest
import redis

from chat_api.adapters import numbering as codes
from chat_api.adapters.numbering import Numbering
from chat_common.keys import RedisKeys


@pytest.fixture
def numbering(fresh_namespace):
    client = redis.Redis.from_url(fresh_namespace.settings.redis_url)
    keys = RedisKeys(fresh_namespace.settings.redis_key_prefix)
    yield Numbering(client, keys), client, keys
    client.close()


def test_nothing_is_numbered_without_an_epoch(numbering):
    n, client, keys = numbering
    assert n.new_chat("tok").status == codes.RECOVERING
    client.set(keys.epoch, "e1")
    allocation = n.new_chat("tok")
    assert allocation.status == codes.APPLICATION_NOT_LOADED and allocation.epoch == "e1"


def test_allocation_after_load(numbering):
    n, client, keys = numbering
    client.set(keys.epoch, "e1")
    assert n.load_application("tok", "e1", application_id=42, last_chat_number=5)
    chat = n.new_chat("tok")
    assert (chat.status, chat.application_id, chat.value) == (codes.OK, 42, 6)
    assert [n.new_message("tok", 6).value for _ in range(3)] == [1, 2, 3]
    assert n.new_message("tok", 7).status == codes.NOT_FOUND  # chat 7 was never allocated
    assert n.new_message("tok", 2).status == codes.CHAT_NOT_LOADED  # chat 2 exists but its counter is not loaded
    assert n.load_chat("tok", "e1", 2, last_message_number=10)
    assert n.new_message("tok", 2).value == 11
    assert n.load_chat("tok", "e1", 2, last_message_number=3)  # never lowers a loaded counter (HSETNX)
    assert n.new_message("tok", 2).value == 12


def test_load_under_a_stale_epoch_is_refused(numbering):
    n, client, keys = numbering
    client.set(keys.epoch, "e2")
    assert not n.load_application("tok", "e1", 1, 100)
    assert n.new_chat("tok").status == codes.APPLICATION_NOT_LOADED


def test_edit_versions_strictly_increase_and_check_existence(numbering):
    n, client, keys = numbering
    client.set(keys.epoch, "e")
    n.load_application("tok", "e", 1, 0)
    chat = n.new_chat("tok").value
    n.new_message("tok", chat)
    versions = [n.edit_message("tok", chat, 1).value for _ in range(50)]
    assert versions == sorted(set(versions)) and versions[0] > 1_600_000_000_000_000  # microseconds since 1970
    assert n.edit_message("tok", chat, 2).status == codes.NOT_FOUND
    assert n.edit_chat("tok", chat).value > versions[-1]


def test_concurrent_allocation_never_duplicates(numbering):
    n, client, keys = numbering
    client.set(keys.epoch, "e")
    n.load_application("tok", "e", 1, 0)
    results: list[int] = []
    lock = threading.Lock()

    def worker():
        mine = [n.new_chat("tok").value for _ in range(200)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 1601))


def test_stale_writer_heartbeats_are_pruned(numbering):
    from chat_common.writer import STALE_HEARTBEAT_SECONDS, prune_heartbeats

    _, client, keys = numbering
    client.hset(keys.writer_heartbeats, mapping={"q|dead": "0:100.0", "q|alive": "0:5000.0", "q|junk": "x"})
    assert prune_heartbeats(client, keys, now=5000.0 + STALE_HEARTBEAT_SECONDS / 2) == 2
    assert list(client.hkeys(keys.writer_heartbeats)) == [b"q|alive"]


def test_idempotency_claims_records_and_releases(numbering):
    from chat_api.adapters.idempotency import IdempotencyStore, KeyInUse, Recorded

    _, client, keys = numbering
    store = IdempotencyStore(client, keys)
    assert store.claim("tok", "chats", "k1") is None
    with pytest.raises(KeyInUse):
        store.claim("tok", "chats", "k1")  # the first request is still being answered
    store.record("tok", "chats", "k1", Recorded(4, 9, "fp"))
    assert store.claim("tok", "chats", "k1") == Recorded(4, 9, "fp")
    assert store.claim("tok", "chats", "k2") is None
    store.release("tok", "chats", "k2")
    assert store.claim("tok", "chats", "k2") is None  # released: free again
