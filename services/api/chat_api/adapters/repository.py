"""MySQL reads of chats and messages for the API (applications live in chat_common.tenancy)."""

from __future__ import annotations

from sqlalchemy import Engine, func, select, text

from chat_api.model import Chat, Message
from chat_common.tables import chats, messages


class SqlRepository:
    """Chat and message reads over one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- chats -----------------------------------------------------------------------------------------------
    def find_chat(self, application_id: int, number: int) -> Chat | None:
        """One chat of an application, or None while it is not written (yet)."""
        query = select(chats.c.number, chats.c.name, chats.c.messages_count).where(
            chats.c.application_id == application_id, chats.c.number == number
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return Chat(row.number, row.name, row.messages_count) if row else None

    def list_chats(self, application_id: int, offset: int, limit: int) -> list[Chat]:
        """An application's chats in number order."""
        query = (
            select(chats.c.number, chats.c.name, chats.c.messages_count)
            .where(chats.c.application_id == application_id)
            .order_by(chats.c.number)
            .offset(offset)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Chat(r.number, r.name, r.messages_count) for r in conn.execute(query)]

    def last_chat_number(self, application_id: int) -> int:
        """Highest chat number written for the application (0 if none)."""
        query = select(func.coalesce(func.max(chats.c.number), 0)).where(chats.c.application_id == application_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # -- messages --------------------------------------------------------------------------------------------
    def _chat_id(self, application_id: int, chat_number: int):
        return (
            select(chats.c.id)
            .where(chats.c.application_id == application_id, chats.c.number == chat_number)
            .scalar_subquery()
        )

    def find_message(self, application_id: int, chat_number: int, number: int) -> Message | None:
        """One message, or None while it is not written (yet)."""
        query = select(messages.c.number, messages.c.body).where(
            messages.c.chat_id == self._chat_id(application_id, chat_number), messages.c.number == number
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return Message(row.number, row.body) if row else None

    def list_messages(self, application_id: int, chat_number: int, offset: int, limit: int) -> list[Message]:
        """A chat's messages in number order."""
        query = (
            select(messages.c.number, messages.c.body)
            .where(messages.c.chat_id == self._chat_id(application_id, chat_number))
            .order_by(messages.c.number)
            .offset(offset)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Message(r.number, r.body) for r in conn.execute(query)]

    def last_message_number(self, application_id: int, chat_number: int) -> int:
        """Highest message number written in the chat (0 if none)."""
        query = select(func.coalesce(func.max(messages.c.number), 0)).where(
            messages.c.chat_id == self._chat_id(application_id, chat_number)
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def ping(self) -> bool:
        """True when the database answers."""
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar_one() == 1
