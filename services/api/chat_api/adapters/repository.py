"""MySQL reads of chats and messages for the API: one statement, one round trip per read.

Every read joins from the application's token, so checking the token, checking the chat and fetching the
rows is one statement on one pooled connection (autocommit: no ping on checkout, no rollback on return; see
:mod:`chat_api.adapters.database`). Only when a statement finds nothing does a second query tell which part is
missing (application or chat). Statements are built once at import with bind parameters and compiled once.
"""

from __future__ import annotations

from sqlalchemy import and_, bindparam, func, literal_column, select, update

from chat_api.adapters.database import Database
from chat_api.model import Chat, Message, NotFound
from chat_common.tables import applications, chats, messages

_TOKEN = applications.c.token == bindparam("token")
_CHAT = chats.c.number == bindparam("chat")
_APP_CHATS = applications.join(chats, chats.c.application_id == applications.c.id)

# A chat of the token's application.
_FIND_CHAT = select(chats.c.number, chats.c.name, chats.c.messages_count).select_from(_APP_CHATS).where(_TOKEN, _CHAT)

# A page of an application's chats. Inner joins only: with the token and chat lookups resolved as constants, MySQL
# walks the (parent, number) index in order and stops after LIMIT rows (an outer join here makes it sort them
# all). An empty page costs a second query that tells an unknown token from an empty list.
_LIST_CHATS = (
    select(chats.c.number, chats.c.name, chats.c.messages_count)
    .select_from(_APP_CHATS)
    .where(_TOKEN, chats.c.number > bindparam("after"))
    .order_by(chats.c.number)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)

_FIND_MESSAGE = (
    select(messages.c.number, messages.c.body)
    .select_from(_APP_CHATS.join(messages, messages.c.chat_id == chats.c.id))
    .where(_TOKEN, _CHAT, messages.c.number == bindparam("message"))
)

# A page of a chat's messages, keyset (``number > after``) and/or offset; inner joins as for chats.
_LIST_MESSAGES = (
    select(messages.c.number, messages.c.body)
    .select_from(_APP_CHATS.join(messages, messages.c.chat_id == chats.c.id))
    .where(_TOKEN, _CHAT, messages.c.number > bindparam("after"))
    .order_by(messages.c.number)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)

# Which part of a path is missing: (application id, chat id or NULL), or no row for an unknown token.
_LOCATE = (
    select(applications.c.id, chats.c.id.label("chat_id"))
    .select_from(applications.outerjoin(chats, and_(chats.c.application_id == applications.c.id, _CHAT)))
    .where(_TOKEN)
)

_LAST_CHAT = select(func.coalesce(func.max(chats.c.number), 0)).where(chats.c.application_id == bindparam("app"))
_LAST_MESSAGE = (
    select(func.coalesce(func.max(messages.c.number), 0))
    .select_from(chats.join(messages, messages.c.chat_id == chats.c.id))
    .where(chats.c.application_id == bindparam("app"), _CHAT)
)
_PING = select(literal_column("1"))

# Edits in the request, versioned like the writers' upserts: an older edit never overwrites a newer one.
_RENAME_CHAT = (
    update(chats)
    .where(chats.c.application_id == bindparam("app"), _CHAT, chats.c.version < bindparam("new_version"))
    .values(name=bindparam("new_name"), version=bindparam("new_version"), updated_at=func.now(6))
)
_EDIT_MESSAGE = (
    update(messages)
    .where(
        messages.c.chat_id
        == select(chats.c.id).where(chats.c.application_id == bindparam("app"), _CHAT).scalar_subquery(),
        messages.c.number == bindparam("message"),
        messages.c.version < bindparam("new_version"),
    )
    .values(body=bindparam("new_body"), version=bindparam("new_version"), updated_at=func.now(6))
)


class SqlRepository:
    """Chat and message reads (and in-request edits) over the API's connection pool."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def rename_chat(self, application_id: int, chat_number: int, name: str, version: int) -> bool:
        """Apply a rename now if it is newer than the stored one; False when the row is not written yet
        or already newer (the queued copy of the edit applies it later, or finds it superseded)."""
        params = {"app": application_id, "chat": chat_number, "new_name": name, "new_version": version}
        return await self.db.execute(_RENAME_CHAT, params) == 1

    async def edit_message(
        self, application_id: int, chat_number: int, message_number: int, body: str, version: int
    ) -> bool:
        """Apply a message edit now if it is newer than the stored one (as :meth:`rename_chat`)."""
        params = {
            "app": application_id,
            "chat": chat_number,
            "message": message_number,
            "new_body": body,
            "new_version": version,
        }
        return await self.db.execute(_EDIT_MESSAGE, params) == 1

    async def _missing(self, token: str, chat_number: int = 0) -> NotFound | None:
        """What a path names that does not exist: the application, the chat, or nothing (None)."""
        rows = await self.db.rows(_LOCATE, {"token": token, "chat": chat_number})
        if not rows:
            return NotFound("application not found")
        if chat_number and rows[0][1] is None:
            return NotFound("chat not found")
        return None

    async def locate(self, token: str, chat_number: int) -> int:
        """The application id of a chat that exists; :class:`NotFound` naming what is missing otherwise."""
        rows = await self.db.rows(_LOCATE, {"token": token, "chat": chat_number})
        if rows and rows[0][1] is not None:
            return int(rows[0][0])
        raise NotFound("chat not found" if rows else "application not found")

    # -- chats -----------------------------------------------------------------------------------------------
    async def find_chat(self, token: str, number: int) -> Chat:
        """One chat of the token's application; :class:`NotFound` while it is not written (yet)."""
        rows = await self.db.rows(_FIND_CHAT, {"token": token, "chat": number})
        if not rows:
            raise await self._missing(token, number) or NotFound("chat not found")
        return Chat(*rows[0])

    async def list_chats(self, token: str, after: int, offset: int, limit: int) -> list[Chat]:
        """The application's chats numbered above ``after`` in number order, skipping ``offset``."""
        rows = await self.db.rows(_LIST_CHATS, {"token": token, "after": after, "offset": offset, "limit": limit})
        if not rows and (missing := await self._missing(token)):
            raise missing
        return [Chat(*row) for row in rows]

    async def last_chat_number(self, application_id: int) -> int:
        """Highest chat number written for the application (0 if none)."""
        return int((await self.db.rows(_LAST_CHAT, {"app": application_id}))[0][0])

    # -- messages --------------------------------------------------------------------------------------------
    async def find_message(self, token: str, chat_number: int, number: int) -> Message:
        """One message; :class:`NotFound` (application, chat or message) while it is not written (yet)."""
        rows = await self.db.rows(_FIND_MESSAGE, {"token": token, "chat": chat_number, "message": number})
        if not rows:
            raise await self._missing(token, chat_number) or NotFound("message not found")
        return Message(*rows[0])

    async def list_messages(self, token: str, chat_number: int, after: int, offset: int, limit: int) -> list[Message]:
        """The chat's messages numbered above ``after`` in number order, skipping ``offset``."""
        params = {"token": token, "chat": chat_number, "after": after, "offset": offset, "limit": limit}
        rows = await self.db.rows(_LIST_MESSAGES, params)
        if not rows and (missing := await self._missing(token, chat_number)):
            raise missing
        return [Message(*row) for row in rows]

    async def last_message_number(self, application_id: int, chat_number: int) -> int:
        """Highest message number written in the chat (0 if none)."""
        return int((await self.db.rows(_LAST_MESSAGE, {"app": application_id, "chat": chat_number}))[0][0])

    async def ping(self) -> bool:
        """True when the database answers."""
        return (await self.db.rows(_PING))[0][0] == 1
