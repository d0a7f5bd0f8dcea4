"""Search reads for the API, on the event loop: the same queries as :mod:`chat_common.search`, async clients.

The writers index through the synchronous backends in :mod:`chat_common.search`; the API only searches, so
it needs just this small port: MySQL through the API's connection pool, Elasticsearch through ``AsyncElasticsearch``.
"""

from __future__ import annotations

from chat_api.adapters.database import compile_sql
from chat_api.adapters.replica import ReadRouter
from chat_api.ports import SearchReader
from chat_common.config import Settings
from chat_common.search import SearchHit, SearchUnavailable
from chat_common.search.mysql import search_statement


class MySqlSearchReader:
    """Search inside MySQL/MariaDB (the embedded default), on the read replica when allowed and healthy."""

    name = "mysql"

    def __init__(self, router: ReadRouter) -> None:
        self.router = router

    async def search(  # noqa: D102
        self, application_id: int, chat_number: int, query: str, offset: int, limit: int, from_replica: bool = False
    ) -> list[SearchHit]:
        sql, params = compile_sql(search_statement(application_id, chat_number, query, offset, limit))
        rows = await self.router.run(from_replica, lambda db: db.rows_of_sql(sql, params))
        return [SearchHit(number, body) for number, body in rows]

    async def close(self) -> None:
        """The pool belongs to the repository."""


class ElasticsearchSearchReader:
    """Search on Elasticsearch 8 with the async client (aiohttp transport)."""

    name = "elasticsearch"

    def __init__(self, url: str, alias: str, ca_file: str | None = None) -> None:
        from elasticsearch import AsyncElasticsearch

        from chat_common.search.elastic import client_options

        self.client = AsyncElasticsearch(**client_options(url, ca_file))
        self.alias = alias

    async def search(  # noqa: D102
        self, application_id: int, chat_number: int, query: str, offset: int, limit: int, from_replica: bool = False
    ) -> list[SearchHit]:
        from elasticsearch import ApiError, TransportError

        from chat_common.search.elastic import search_hits, search_request

        try:
            response = await self.client.search(
                **search_request(self.alias, application_id, chat_number, query, offset, limit)
            )
        except (TransportError, ApiError) as exc:
            raise SearchUnavailable(str(exc)) from exc
        return search_hits(response)

    async def close(self) -> None:  # noqa: D102
        await self.client.close()


def build_search_reader(settings: Settings, router: ReadRouter) -> SearchReader:
    """Elasticsearch when ``ELASTICSEARCH_URL`` is set, otherwise MySQL/MariaDB (as the writers decide)."""
    if settings.elasticsearch_url:
        return ElasticsearchSearchReader(
            settings.elasticsearch_url, settings.search_index, settings.elasticsearch_ca_file
        )
    return MySqlSearchReader(router)
