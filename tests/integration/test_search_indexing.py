"""Indexing never blocks or loses a write: what the search backend does not take waits in the backlog.

The "cluster down" case uses a real Elasticsearch client against a port where nothing listens (a real refused
connection). Draining is checked with a recording backend, because no Elasticsearch server can run here.
"""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import text

from chat_common.clients.db import make_engine
from chat_common.search.elastic import BulkOutcome, ElasticsearchSearch
from chat_common.wire.contracts import MessageUpsert
from chat_common.wire.keys import RedisKeys
from chat_devtools.http import Api, wait_for
from chat_devtools.ports import free_port
from chat_devtools.processes import System
from message_writer.indexing import SearchIndexer


class RecordingBackend:
    """Stands in for an indexing backend that accepts everything, and remembers what it got."""

    name = "recording"
    needs_indexing = True

    def __init__(self) -> None:
        self.docs = []

    def bulk(self, docs):
        self.docs.extend(docs)
        return BulkOutcome(indexed=list(docs))

    def ensure_ready(self) -> None:
        pass


def _down_backend(namespace) -> ElasticsearchSearch:
    settings = namespace.settings.__class__(
        **{**namespace.settings.__dict__, "elasticsearch_url": f"http://127.0.0.1:{free_port()}"}
    )
    backend = ElasticsearchSearch.from_settings(settings)
    backend.client = backend.client.options(request_timeout=1, max_retries=0)
    return backend


@pytest.fixture
def parts(fresh_namespace):
    engine = make_engine(fresh_namespace.settings.database_url, pool_size=1)
    client = redis.Redis.from_url(fresh_namespace.settings.redis_url)
    keys = RedisKeys(fresh_namespace.settings.redis_key_prefix)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO applications (id, token, name) VALUES (1, 't', 'a')"))
        conn.execute(text("INSERT INTO chats (id, application_id, number, name) VALUES (10, 1, 1, 'c')"))
        for n in (1, 2, 3):
            conn.execute(
                text("INSERT INTO messages (application_id, chat_id, number, body, version) VALUES (1, 10, :n, :b, 5)"),
                {"n": n, "b": f"current {n}"},
            )
    yield engine, client, keys
    engine.dispose()
    client.close()


def test_cluster_down_defers_to_the_backlog(parts, fresh_namespace):
    engine, client, keys = parts
    indexer = SearchIndexer(_down_backend(fresh_namespace), engine, client, keys)
    indexer.after_commit([(10, MessageUpsert(1, 1, n, f"old {n}")) for n in (1, 2, 3)])
    assert sorted(m.decode() for m in client.zrange(keys.search_backlog, 0, -1)) == ["1:1:1", "1:1:2", "1:1:3"]
    assert indexer.drain() == 0  # still down: nothing settled, nothing lost
    assert client.zcard(keys.search_backlog) == 3


def test_drain_indexes_the_current_rows_and_empties_the_backlog(parts):
    engine, client, keys = parts
    client.zadd(keys.search_backlog, {"1:1:1": 1, "1:1:3": 2, "1:9:9": 3})  # 1:9:9 no longer exists
    backend = RecordingBackend()
    indexer = SearchIndexer(backend, engine, client, keys)
    assert indexer.drain() == 3
    assert client.zcard(keys.search_backlog) == 0
    assert sorted((d.message_number, d.body, d.version) for d in backend.docs) == [
        (1, "current 1", 5),
        (3, "current 3", 5),
    ]


def test_system_keeps_writing_mysql_while_search_is_down(fresh_namespace, tmp_path):
    system = System(
        fresh_namespace, tmp_path, extra_env={"ELASTICSEARCH_URL": f"http://127.0.0.1:{free_port()}"}
    ).start()
    try:
        api = Api(system.base_url)
        token = api.new_application("no-search")
        chat = api.new_chat(token)
        numbers = [api.new_message(token, chat, f"kept {i}") for i in range(5)]
        for n in numbers:
            api.wait_message(token, chat, n)
        client = redis.Redis.from_url(fresh_namespace.settings.redis_url)
        keys = RedisKeys(fresh_namespace.settings.redis_key_prefix)
        wait_for(lambda: client.zcard(keys.search_backlog) == 5, what="5 deferred search documents")
        resp = api.get(f"/applications/{token}/chats/{chat}/messages/search", params={"query": "kept"})
        assert resp.status_code == 503 and "Retry-After" in resp.headers
    finally:
        system.stop()
