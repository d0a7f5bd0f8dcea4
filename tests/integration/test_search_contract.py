"""One contract for every search backend: MariaDB always, Elasticsearch whenever ELASTICSEARCH_URL is set.

No Elasticsearch server can be installed on these machines from the reachable registries, so here the
Elasticsearch run is skipped with that reason; it is never faked.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from chat_common.clients.db import make_engine
from chat_common.search import IndexedMessage
from chat_common.search.elastic import ElasticsearchSearch
from chat_common.search.mysql import MySqlSearch
from chat_devtools.namespace import Namespace

ES_URL = os.environ.get("ELASTICSEARCH_URL")


class Corpus:
    """Rows in MySQL and, for indexing backends, documents in the index."""

    def __init__(self, namespace: Namespace, backend) -> None:
        self.engine = make_engine(namespace.settings.database_url, pool_size=1)
        self.backend = backend

    def chat(self, application_id: int, number: int, bodies: list[str]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT IGNORE INTO applications (id, token, name) VALUES (:a, :t, 'a')"),
                {"a": application_id, "t": f"tok{application_id}"},
            )
            chat_id = conn.execute(
                text("INSERT INTO chats (application_id, number, name) VALUES (:a, :n, 'c')"),
                {"a": application_id, "n": number},
            ).lastrowid
            for i, body in enumerate(bodies, start=1):
                conn.execute(
                    text("INSERT INTO messages (application_id, chat_id, number, body) VALUES (:a, :c, :m, :b)"),
                    {"a": application_id, "c": chat_id, "m": i, "b": body},
                )
        self.backend.index([IndexedMessage(application_id, number, i, b, 0) for i, b in enumerate(bodies, start=1)])
        self.backend.refresh()

    def edit(self, application_id: int, number: int, message: int, body: str, version: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE messages m JOIN chats c ON c.application_id = m.application_id AND c.id = m.chat_id"
                    " SET m.body = :b, m.version = :v"
                    " WHERE m.application_id = :a AND c.number = :n AND m.number = :m AND m.version < :v"
                ),
                {"b": body, "v": version, "a": application_id, "n": number, "m": message},
            )
        self.backend.index([IndexedMessage(application_id, number, message, body, version)])
        self.backend.refresh()

    def search(self, query: str, application_id: int = 1, chat: int = 1, offset: int = 0, limit: int = 50):
        return self.backend.search(application_id, chat, query, offset, limit)


def _backends():
    yield pytest.param("mysql", id="mysql")
    yield pytest.param(
        "elasticsearch",
        id="elasticsearch",
        marks=pytest.mark.skipif(
            not ES_URL,
            reason="ELASTICSEARCH_URL is not set: no Elasticsearch server can be installed on this machine "
            "(no registry here ships one); set it to run this contract against a real cluster",
        ),
    )


@pytest.fixture(params=list(_backends()))
def corpus(request, fresh_namespace):
    if request.param == "mysql":
        backend = MySqlSearch(make_engine(fresh_namespace.settings.database_url, pool_size=1))
    else:
        settings = fresh_namespace.settings.__class__(
            **{**fresh_namespace.settings.__dict__, "elasticsearch_url": ES_URL, "search_replicas": 0}
        )
        backend = ElasticsearchSearch.from_settings(settings)
        backend.ensure_ready()
    c = Corpus(fresh_namespace, backend)
    c.chat(1, 1, ["Hello world", "yellow submarine", "say hello", "HELLO AGAIN", "nothing", "hell is other people"])
    c.chat(1, 2, ["hello from another chat"])
    c.chat(2, 1, ["hello from another application"])
    yield c
    if request.param == "elasticsearch":
        for name in backend.indices_behind_alias():
            backend.client.indices.delete(index=name)


def bodies(hits):
    return [h.body for h in hits]


def test_fragments_inside_words_any_case(corpus):
    assert set(bodies(corpus.search("ell"))) == {
        "Hello world",
        "yellow submarine",
        "say hello",
        "HELLO AGAIN",
        "hell is other people",
    }
    assert set(bodies(corpus.search("HeLlO"))) == {"Hello world", "say hello", "HELLO AGAIN"}


def test_fragments_across_word_boundaries(corpus):
    assert bodies(corpus.search("lo wor")) == ["Hello world"]
    assert bodies(corpus.search("o a")) == ["HELLO AGAIN"]


def test_scoped_to_one_chat_of_one_application(corpus):
    found = bodies(corpus.search("another"))
    assert found == []
    assert bodies(corpus.search("another", chat=2)) == ["hello from another chat"]
    assert bodies(corpus.search("another", application_id=2)) == ["hello from another application"]


def test_unicode_scripts_and_emoji(corpus):
    corpus.chat(3, 1, ["مرحبا بالعالم", "你好世界", "pizza 🍕 night", "grüße aus Köln", "Ça va"])
    assert bodies(corpus.search("بالع", application_id=3)) == ["مرحبا بالعالم"]
    assert bodies(corpus.search("好世", application_id=3)) == ["你好世界"]
    assert bodies(corpus.search("🍕", application_id=3)) == ["pizza 🍕 night"]
    assert bodies(corpus.search("KÖLN", application_id=3)) == ["grüße aus Köln"]
    assert bodies(corpus.search("ça", application_id=3)) == ["Ça va"]


def test_literal_special_characters(corpus):
    corpus.chat(4, 1, ["100% sure", "snake_case", "a*b", "what?"])
    assert bodies(corpus.search("%", application_id=4)) == ["100% sure"]
    assert bodies(corpus.search("_c", application_id=4)) == ["snake_case"]
    assert bodies(corpus.search("*", application_id=4)) == ["a*b"]
    assert bodies(corpus.search("?", application_id=4)) == ["what?"]


def test_ranking_puts_whole_words_before_fragments(corpus):
    corpus.chat(5, 1, ["othello was here", "hello there", "chellos"])
    hits = bodies(corpus.search("hello", application_id=5))
    assert hits[0] == "hello there" and set(hits) == {"othello was here", "hello there", "chellos"}


def test_edits_are_reflected_and_old_text_no_longer_matches(corpus):
    corpus.edit(1, 1, 5, "now it says banana", version=10)
    assert bodies(corpus.search("banana")) == ["now it says banana"]
    assert bodies(corpus.search("nothing")) == []


def test_an_older_edit_never_wins(corpus):
    corpus.edit(1, 1, 5, "newest text", version=20)
    corpus.edit(1, 1, 5, "stale text", version=10)  # arrives late
    assert bodies(corpus.search("newest")) == ["newest text"]
    assert bodies(corpus.search("stale")) == []


def test_pagination_is_stable(corpus):
    everything = bodies(corpus.search("e", limit=50))
    pages = (
        bodies(corpus.search("e", offset=0, limit=2))
        + bodies(corpus.search("e", offset=2, limit=2))
        + bodies(corpus.search("e", offset=4, limit=50))
    )
    assert pages == everything and len(everything) == len(set(everything))


def test_deleted_application_has_no_documents(corpus):
    corpus.backend.delete_application(2)
    with corpus.engine.begin() as conn:
        conn.execute(text("DELETE FROM applications WHERE id = 2"))
    corpus.backend.refresh()
    assert corpus.search("hello", application_id=2) == []
