"""MySQL reads for live streams: a chat's stored messages after a number, with how long each row has been stored.

A stream was authorised when it opened (token → application, the chat's own check in the service layer); from
then on it reads by application id and chat number, one indexed range of ``messages (application_id, chat_id,
number)``. The age
of each row is computed by the database (``NOW(6) - created_at``), so the API's and the database's clocks never
need to agree: the gap rule of :mod:`chat_api.streams.hub` compares that age with ``STREAM_GAP_SECONDS``.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import bindparam, func, literal_column, select

from chat_api.adapters.database import Database
from chat_common.schema.tables import in_chat, messages

# (number, body, age in seconds) of a chat's messages in (after, upto], in number order.
Row = tuple[int, str, float]

_RANGE = (
    select(
        messages.c.number,
        messages.c.body,
        func.timestampdiff(literal_column("MICROSECOND"), messages.c.created_at, func.now(6)),
    )
    .where(
        *in_chat(bindparam("app"), bindparam("chat")),
        messages.c.number > bindparam("after"),
        messages.c.number <= bindparam("upto"),
    )
    .order_by(messages.c.number)
    .limit(bindparam("limit"))
)


class StreamReader(Protocol):
    """What the hub reads from MySQL (adapter: :class:`SqlStreamReader`; tests/unit fakes it)."""

    async def range(self, application_id: int, chat_number: int, after: int, upto: int, limit: int) -> list[Row]:
        """Stored messages numbered in ``(after, upto]``, in number order, at most ``limit``."""
        ...


class SqlStreamReader:
    """:class:`StreamReader` over the API's asyncmy pool."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def range(self, application_id: int, chat_number: int, after: int, upto: int, limit: int) -> list[Row]:
        """Stored messages numbered in ``(after, upto]``, in number order, at most ``limit``."""
        params = {"app": application_id, "chat": chat_number, "after": after, "upto": upto, "limit": limit}
        rows = await self.db.rows(_RANGE, params)
        return [(int(n), body, max(int(micros or 0), 0) / 1e6) for n, body, micros in rows]
