"""The embedded default: search one chat's messages inside MySQL/MariaDB with ``LIKE '%fragment%'``.

Scoped to one chat, the (application_id, chat_id, number) unique index narrows the scan to that chat's rows; the
``utf8mb4_unicode_520_ci`` collation makes the match case-insensitive and keeps emoji distinct. Ranking:
messages where the fragment starts a word first, then shorter bodies (the fragment is a larger share),
then newest first. Fine for chats of up to ~10^5 messages; use Elasticsearch beyond that.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, Select, case, func, literal, or_, select

from chat_common.schema.tables import in_chat, messages
from chat_common.search.base import BulkOutcome, IndexedMessage, SearchHit, escape_like


def search_statement(application_id: int, chat_number: int, query: str, offset: int, limit: int) -> Select:
    """Messages of one chat whose body contains ``query``, best first (shared by the writers' and the API's reads)."""
    fragment = escape_like(query)
    word_start = or_(
        messages.c.body.like(fragment + "%", escape="\\"), messages.c.body.like("% " + fragment + "%", escape="\\")
    )
    return (
        select(messages.c.number, messages.c.body)
        .where(
            # The tenant first: the unique key's prefix, and the shard key of a database sharded by application.
            *in_chat(application_id, chat_number),
            messages.c.body.like("%" + fragment + "%", escape="\\"),
        )
        .order_by(
            case((word_start, literal(0)), else_=literal(1)),
            func.char_length(messages.c.body),
            messages.c.number.desc(),
        )
        .offset(offset)
        .limit(limit)
    )


class MySqlSearch:
    """Search backend reading the messages table directly."""

    name = "mysql"
    needs_indexing = False  # the rows are the index

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def search(self, application_id: int, chat_number: int, query: str, offset: int, limit: int) -> list[SearchHit]:
        """Messages of the chat whose body contains ``query`` (case-insensitive)."""
        statement = search_statement(application_id, chat_number, query, offset, limit)
        with self.engine.connect() as conn:
            return [SearchHit(row.number, row.body) for row in conn.execute(statement)]

    def bulk(self, messages: Sequence[IndexedMessage]) -> BulkOutcome:
        """Nothing to send: every committed row is already searchable."""
        return BulkOutcome(indexed=list(messages))

    def index(self, messages: Sequence[IndexedMessage]) -> None:
        """Nothing to do: the rows are the index."""

    def delete_application(self, application_id: int) -> None:
        """Nothing to do: deleting the rows deleted the "documents"."""

    def ensure_ready(self) -> None:
        """Nothing to create."""

    def refresh(self) -> None:
        """Nothing to refresh: reads see committed rows."""
