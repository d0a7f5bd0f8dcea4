"""Elasticsearch backend: fragment search with a ``wildcard`` field, versioned documents, an alias for rebuilds.

Design (see docs/search.md for the reasoning and the index-size cost):

- ``body`` is indexed twice: as ``text`` (standard analyzer) for relevance, and as ``body.fragments`` of type
  ``wildcard``, which indexes every 1-3 character n-gram and verifies candidates against the stored value. A
  ``*fragment*`` query on it is an exact, case-insensitive substring match of any length, inside words and across
  word boundaries, in any script — without the false positives of an n-gram ``match`` query.
- Ranking: the substring match is the filter; whole-phrase and whole-word matches on ``body`` add score; ties go to
  the newest message.
- Document id ``<application>:<chat>:<message>``, routed by application (one chat's documents sit on one shard), and
  written with ``version_type=external_gte`` using the row's version (0 for a create, the edit's microsecond stamp
  otherwise): a redelivered or late, older write is rejected by Elasticsearch itself.
- Clients read and write through the alias ``SEARCH_INDEX``; ``python -m message_writer.reindex`` builds a new
  index behind it from MySQL and swaps the alias atomically.
- TLS: an ``https://`` URL is always verified (certificate and host name), against ``ELASTICSEARCH_CA_FILE`` when
  set (a private CA, as the chart's bundled Elasticsearch and most self-managed clusters have), else the system's CA
  store. Every client (the writers', the reindex tool's, the API's async one) is built from :func:`client_options`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from elasticsearch import ApiError, Elasticsearch, TransportError

from chat_common.search.base import BulkOutcome, IndexedMessage, SearchHit, SearchUnavailable

log = logging.getLogger(__name__)


def client_options(url: str, ca_file: str | None = None) -> dict:
    """Keyword arguments for ``Elasticsearch`` / ``AsyncElasticsearch`` on ``url`` (credentials may be in it).

    A CA file with a cleartext ``http://`` URL is refused (``ValueError``): it means TLS was wanted, and the request
    would otherwise go out in cleartext.
    """
    options: dict = {"hosts": [url], "request_timeout": 10, "retry_on_timeout": True, "max_retries": 2}
    if url.lower().startswith("https://"):
        options["verify_certs"] = True  # the client's default, stated: never turned off here
        if ca_file:
            options["ca_certs"] = ca_file
    elif ca_file:
        raise ValueError("ELASTICSEARCH_CA_FILE is set but ELASTICSEARCH_URL is not https://: refusing cleartext")
    return options


MAPPINGS = {
    "dynamic": "strict",
    "properties": {
        "application_id": {"type": "long"},
        "chat_number": {"type": "long"},
        "message_number": {"type": "long"},
        "body": {"type": "text", "fields": {"fragments": {"type": "wildcard"}}},
    },
}


def index_settings(shards: int = 1, replicas: int = 1) -> dict:
    """Settings of a message index."""
    return {"number_of_shards": shards, "number_of_replicas": replicas, "refresh_interval": "1s"}


def document_id(application_id: int, chat_number: int, message_number: int) -> str:
    """Stable id of a message's document: redelivery overwrites, never duplicates."""
    return f"{application_id}:{chat_number}:{message_number}"


def escape_wildcard(text: str) -> str:
    """Make ``*``, ``?`` and ``\\`` match literally in a wildcard pattern."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def search_query(application_id: int, chat_number: int, query: str) -> dict:
    """The query DSL for a fragment search inside one chat."""
    return {
        "bool": {
            "filter": [
                {"term": {"application_id": application_id}},
                {"term": {"chat_number": chat_number}},
                {"wildcard": {"body.fragments": {"value": f"*{escape_wildcard(query)}*", "case_insensitive": True}}},
            ],
            "should": [
                {"match_phrase": {"body": {"query": query, "boost": 3}}},
                {"match": {"body": {"query": query, "operator": "and"}}},
            ],
        }
    }


SEARCH_SORT = ["_score", {"message_number": "desc"}]


def search_request(alias: str, application_id: int, chat_number: int, query: str, offset: int, limit: int) -> dict:
    """Keyword arguments of the search call (the same for the sync client here and the API's async one)."""
    return {
        "index": alias,
        "query": search_query(application_id, chat_number, query),
        "sort": SEARCH_SORT,
        "from_": offset,
        "size": limit,
        "routing": str(application_id),
        "track_total_hits": False,
    }


def search_hits(response) -> list[SearchHit]:
    """The hits of a search response, best first."""
    return [
        SearchHit(hit["_source"]["message_number"], hit["_source"]["body"], hit.get("_score"))
        for hit in response["hits"]["hits"]
    ]


def bulk_operations(alias: str, messages: Sequence[IndexedMessage]) -> list[dict]:
    """Bulk API lines (action, source) indexing each message under its version."""
    operations: list[dict] = []
    for m in messages:
        operations.append(
            {
                "index": {
                    "_index": alias,
                    "_id": document_id(m.application_id, m.chat_number, m.message_number),
                    "routing": str(m.application_id),
                    "version": m.version,
                    "version_type": "external_gte",
                }
            }
        )
        operations.append(
            {
                "application_id": m.application_id,
                "chat_number": m.chat_number,
                "message_number": m.message_number,
                "body": m.body,
            }
        )
    return operations


def classify_bulk_response(messages: Sequence[IndexedMessage], response) -> BulkOutcome:
    """Sort a bulk response's items: 409 (a newer version is already there) counts as done."""
    outcome = BulkOutcome()
    items = response["items"] if response.get("errors") else None
    if items is None:
        outcome.indexed.extend(messages)
        return outcome
    for message, item in zip(messages, items, strict=True):
        result = item.get("index", {})
        status = int(result.get("status", 500))
        if status < 300 or status == 409:
            outcome.indexed.append(message)
        elif status in (404, 429) or status >= 500:  # 404: the alias is not there (yet)
            outcome.retry.append(message)
        else:
            reason = (
                result.get("error", {}).get("reason", f"status {status}")
                if isinstance(result.get("error"), dict)
                else str(result.get("error"))
            )
            outcome.rejected.append((message, reason))
    return outcome


class ElasticsearchSearch:
    """Search backend on an Elasticsearch 8 cluster."""

    name = "elasticsearch"
    needs_indexing = True

    def __init__(self, client: Elasticsearch, alias: str, *, shards: int = 1, replicas: int = 1) -> None:
        self.client = client
        self.alias = alias
        self.shards = shards
        self.replicas = replicas

    @classmethod
    def from_settings(cls, settings, engine=None) -> ElasticsearchSearch:
        """Client from ``ELASTICSEARCH_URL`` (credentials may be in the URL) and ``ELASTICSEARCH_CA_FILE``."""
        client = Elasticsearch(**client_options(settings.elasticsearch_url, settings.elasticsearch_ca_file))
        return cls(client, settings.search_index, shards=settings.search_shards, replicas=settings.search_replicas)

    # -- index management ------------------------------------------------------------------------------------
    def new_index_name(self) -> str:
        """A fresh concrete index name behind the alias."""
        return f"{self.alias}-{time.strftime('%Y%m%d%H%M%S')}-{time.monotonic_ns() % 1000:03d}"

    def create_index(self, name: str, with_alias: bool) -> None:
        """Create a concrete index with the message mapping (optionally already behind the alias)."""
        aliases = {self.alias: {"is_write_index": True}} if with_alias else None
        self.client.indices.create(
            index=name, mappings=MAPPINGS, settings=index_settings(self.shards, self.replicas), aliases=aliases
        )

    def ensure_ready(self) -> None:
        """Create the first index behind the alias unless the alias exists (idempotent, race-safe)."""
        try:
            if self.client.indices.exists_alias(name=self.alias):
                return
            self.create_index(self.new_index_name(), with_alias=True)
        except ApiError as exc:
            if "resource_already_exists" not in str(exc) and "invalid_alias_name" not in str(exc):
                raise SearchUnavailable(str(exc)) from exc
        except TransportError as exc:
            raise SearchUnavailable(str(exc)) from exc

    def indices_behind_alias(self) -> list[str]:
        """Concrete indices the alias points at."""
        return list(self.client.indices.get_alias(name=self.alias).keys())

    def swap_alias(self, new_index: str) -> list[str]:
        """Point the alias at ``new_index`` only, atomically; returns the indices it left."""
        old = self.indices_behind_alias() if self.client.indices.exists_alias(name=self.alias) else []
        actions = [{"remove": {"index": name, "alias": self.alias}} for name in old]
        actions.append({"add": {"index": new_index, "alias": self.alias, "is_write_index": True}})
        self.client.indices.update_aliases(actions=actions)
        return old

    # -- documents -------------------------------------------------------------------------------------------
    def bulk(self, messages: Sequence[IndexedMessage], index: str | None = None) -> BulkOutcome:
        """Index messages; transport failures raise :class:`SearchUnavailable`."""
        if not messages:
            return BulkOutcome()
        try:
            # require_alias: never let a missing alias auto-create an index without our mapping.
            response = self.client.bulk(
                operations=bulk_operations(index or self.alias, messages), require_alias=index is None
            )
        except (TransportError, ApiError) as exc:
            raise SearchUnavailable(str(exc)) from exc
        return classify_bulk_response(messages, response)

    def index(self, messages: Sequence[IndexedMessage]) -> None:
        """Index messages; raise :class:`SearchUnavailable` unless every one is indexed."""
        outcome = self.bulk(messages)
        if outcome.retry or outcome.rejected:
            raise SearchUnavailable(f"{len(outcome.retry) + len(outcome.rejected)} documents not indexed")

    def search(self, application_id: int, chat_number: int, query: str, offset: int, limit: int) -> list[SearchHit]:
        """Best matches first, ties newest first."""
        try:
            response = self.client.search(
                **search_request(self.alias, application_id, chat_number, query, offset, limit)
            )
        except (TransportError, ApiError) as exc:
            raise SearchUnavailable(str(exc)) from exc
        return search_hits(response)

    def delete_application(self, application_id: int) -> None:
        """Delete every document of an application."""
        try:
            self.client.delete_by_query(
                index=self.alias,
                query={"term": {"application_id": application_id}},
                routing=str(application_id),
                conflicts="proceed",
                refresh=True,
            )
        except (TransportError, ApiError) as exc:
            raise SearchUnavailable(str(exc)) from exc

    def refresh(self) -> None:
        """Make recent writes visible to search (tests and the reindex command)."""
        self.client.indices.refresh(index=self.alias)
