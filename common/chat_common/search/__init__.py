"""Message search: one interface, two backends (MySQL/MariaDB embedded default, Elasticsearch).

The API searches, the message-writer indexes, application deletion cleans up; none of them knows which
backend is behind :func:`build_search`.
"""

from __future__ import annotations

from chat_common.search.base import (
    BulkOutcome,
    IndexedMessage,
    SearchBackend,
    SearchHit,
    SearchUnavailable,
    escape_like,
)

__all__ = [
    "BulkOutcome",
    "IndexedMessage",
    "SearchBackend",
    "SearchHit",
    "SearchUnavailable",
    "build_search",
    "escape_like",
]


def build_search(settings, engine) -> SearchBackend:
    """Elasticsearch when ``ELASTICSEARCH_URL`` is set, otherwise search inside MySQL/MariaDB."""
    if settings.elasticsearch_url:
        from chat_common.search.elastic import ElasticsearchSearch

        return ElasticsearchSearch.from_settings(settings, engine)
    from chat_common.search.mysql import MySqlSearch

    return MySqlSearch(engine)
