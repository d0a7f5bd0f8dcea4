"""MySQL reads of chats and messages for the API: one statement, one round trip per read.

Every read is keyed by the application's id, resolved before it by the tenant directory
(:meth:`chat_api.services.ChatService.tenant`), and names it first: each statement walks an index that leads with
``application_id`` (the key a sharded deployment routes on) with no join to ``applications``, and a token rotation
never changes what a read finds. Statements run on pooled autocommit connections (no ping on checkout, no rollback
on return; see :mod:`chat_api.adapters.database`). Only when a statement finds nothing does a second query, on the
primary, tell which part is missing (application or chat). Statements are built once at import and compiled once.

With a read replica (``DATABASE_READ_URL``), the reads the service marks lag-tolerant (pages of chats and messages,
the embedded search) run on it while :class:`chat_api.adapters.replica.ReplicaMonitor` finds it replicating within
its lag bound (:mod:`chat_api.adapters.replica`); one that fails a read is set aside and the read runs on the
primary.
"""

from __future__ import annotations

from sqlalchemy import and_, bindparam, func, literal_column, select, update

from chat_api.adapters.replica import ReadRouter
from chat_api.model import Chat, Message, NotFound
from chat_common.schema.tables import applications, chats, in_chat, messages

_APP = chats.c.application_id == bindparam("app")
_CHAT = chats.c.number == bindparam("chat")

_FIND_CHAT = select(chats.c.number, chats.c.name, chats.c.messages_count).where(_APP, _CHAT)

# A page of an application's chats: MySQL walks the (application_id, number) index in order and stops after LIMIT
# rows. An empty page costs a second query that tells a deleted application from an empty list.
_LIST_CHATS = (
    select(chats.c.number, chats.c.name, chats.c.messages_count)
    .where(_APP, chats.c.number > bindparam("after"))
    .order_by(chats.c.number)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)

_IN_CHAT = in_chat(bindparam("app"), bindparam("chat"))

_FIND_MESSAGE = select(messages.c.number, messages.c.body).where(*_IN_CHAT, messages.c.number == bindparam("message"))

# A page of a chat's messages, keyset (``number > after``) and/or offset, in the index's order.
_LIST_MESSAGES = (
    select(messages.c.number, messages.c.body)
    .where(*_IN_CHAT, messages.c.number > bindparam("after"))
    .order_by(messages.c.number)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)

# Which part of a path is missing: (application id, chat id or NULL), or no row once the application is deleted.
_LOCATE = (
    select(applications.c.id, chats.c.id.label("chat_id"))
    .select_from(applications.outerjoin(chats, and_(chats.c.application_id == applications.c.id, _CHAT)))
    .where(applications.c.id == bindparam("app"))
)

_LAST_CHAT = select(func.coalesce(func.max(chats.c.number), 0)).where(_APP)
_LAST_MESSAGE = select(func.coalesce(func.max(messages.c.number), 0)).where(*_IN_CHAT)
_PING = select(literal_column("1"))

# Edits in the request, versioned like the writers' upserts: an older edit never overwrites a newer one.
_RENAME_CHAT = (
    update(chats)
    .where(_APP, _CHAT, chats.c.version < bindparam("new_version"))
    .values(name=bindparam("new_name"), version=bindparam("new_version"), updated_at=func.now(6))
)
_EDIT_MESSAGE = (
    update(messages)
    .where(
        *_IN_CHAT,
        messages.c.number == bindparam("message"),
        messages.c.version < bindparam("new_version"),
    )
    .values(body=bindparam("new_body"), version=bindparam("new_version"), updated_at=func.now(6))
)


class SqlRepository:
    """Chat and message reads (and in-request edits) over the primary's pool, and the replica's when there is one."""

    def __init__(self, router: ReadRouter) -> None:
        self.router = router
        self.db = router.primary

    def replica_lag_bound(self) -> float | None:
        """How far behind the primary the replica's answers may be now (seconds); None: no replica may serve."""
        return self.router.lag_bound()

    async def _rows(self, statement, params: dict, from_replica: bool) -> list[tuple]:
        return await self.router.run(from_replica, lambda db: db.rows(statement, params))

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

    async def _missing(self, application_id: int, chat_number: int = 0) -> NotFound | None:
        """What a path names that does not exist: the application, the chat, or nothing (None).

        Always asked of the primary: a replica behind it would call a just-created chat missing."""
        rows = await self.db.rows(_LOCATE, {"app": application_id, "chat": chat_number})
        if not rows:
            return NotFound("application not found")
        if chat_number and rows[0][1] is None:
            return NotFound("chat not found")
        return None

    async def locate(self, application_id: int, chat_number: int) -> None:
        """Nothing when the chat exists; :class:`NotFound` naming what is missing otherwise."""
        if missing := await self._missing(application_id, chat_number):
            raise missing

    # -- chats -----------------------------------------------------------------------------------------------
    async def find_chat(self, application_id: int, number: int) -> Chat:
        """One chat of the application; :class:`NotFound` while it is not written (yet)."""
        rows = await self.db.rows(_FIND_CHAT, {"app": application_id, "chat": number})
        if not rows:
            raise await self._missing(application_id, number) or NotFound("chat not found")
        return Chat(*rows[0])

    async def list_chats(
        self, application_id: int, after: int, offset: int, limit: int, from_replica: bool = False
    ) -> list[Chat]:
        """The application's chats numbered above ``after`` in number order, skipping ``offset``."""
        params = {"app": application_id, "after": after, "offset": offset, "limit": limit}
        rows = await self._rows(_LIST_CHATS, params, from_replica)
        if not rows and (missing := await self._missing(application_id)):
            raise missing
        return [Chat(*row) for row in rows]

    async def last_chat_number(self, application_id: int) -> int:
        """Highest chat number written for the application (0 if none); always the primary's answer."""
        return int((await self.db.rows(_LAST_CHAT, {"app": application_id}))[0][0])

    # -- messages --------------------------------------------------------------------------------------------
    async def find_message(self, application_id: int, chat_number: int, number: int) -> Message:
        """One message; :class:`NotFound` (application, chat or message) while it is not written (yet)."""
        rows = await self.db.rows(_FIND_MESSAGE, {"app": application_id, "chat": chat_number, "message": number})
        if not rows:
            raise await self._missing(application_id, chat_number) or NotFound("message not found")
        return Message(*rows[0])

    async def list_messages(
        self, application_id: int, chat_number: int, after: int, offset: int, limit: int, from_replica: bool = False
    ) -> list[Message]:
        """The chat's messages numbered above ``after`` in number order, skipping ``offset``."""
        params = {"app": application_id, "chat": chat_number, "after": after, "offset": offset, "limit": limit}
        rows = await self._rows(_LIST_MESSAGES, params, from_replica)
        if not rows and (missing := await self._missing(application_id, chat_number)):
            raise missing
        return [Message(*row) for row in rows]

    async def last_message_number(self, application_id: int, chat_number: int) -> int:
        """Highest message number written in the chat (0 if none); always the primary's answer."""
        return int((await self.db.rows(_LAST_MESSAGE, {"app": application_id, "chat": chat_number}))[0][0])

    async def ping(self) -> bool:
        """True when the primary answers."""
        return (await self.db.rows(_PING))[0][0] == 1
