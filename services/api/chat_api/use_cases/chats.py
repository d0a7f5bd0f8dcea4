"""Chats: create (numbered, then handed to the chat-writer with a confirm), read, list, rename.

Creates never touch MySQL: they number in Redis (:class:`chat_api.ports.NumbersPort`), hand the row to RabbitMQ
with a confirm, and only then return — so a number is reported only for a write the broker has durably accepted.
"""

from __future__ import annotations

from chat_api.model import Chat, DatabaseUnavailable, NotFound, Page
from chat_api.use_cases.paging import read_page
from chat_api.use_cases.publishing import WrittenRows, publish
from chat_api.use_cases.reads import from_replica
from chat_common.wire.contracts import ChatUpsert


class ChatUseCases(WrittenRows):
    """The operations on an application's chats."""

    async def create(self, token: str, name: object, idempotency_key: str | None = None) -> tuple[int, bool]:
        """Number a new chat and hand its row to the chat-writer; returns (chat number, replayed)."""
        application = await self.gate.tenant(token)
        name = self.limits.name(name)
        numbered = await self.numbers.for_chat(application, name, idempotency_key)
        row = ChatUpsert(numbered.application_id, numbered.number, name, 0, *(numbered.keyed or ()))
        await publish(self.publisher, self.queue, row.encode(), numbered.published_at)  # a retry re-publishes
        return numbered.number, numbered.replayed

    async def get(self, token: str, chat_number: int) -> Chat:
        """One chat."""
        application = await self.gate.tenant(token)
        return await self.repository.find_chat(application.id, chat_number)

    async def list(self, token: str, page: int = 1, per_page: int | None = None, after: int | None = None) -> Page:
        """A page of an application's chats in number order (after chat ``after`` when given)."""
        application = await self.gate.tenant(token)
        replica = await from_replica(self.repository, self.numbers, application)
        return await read_page(
            self.limits,
            lambda offset, limit: self.repository.list_chats(application.id, after or 0, offset, limit, replica),
            page,
            per_page,
            after,
        )

    async def rename(self, token: str, chat_number: int, name: object) -> tuple[Chat, bool]:
        """Rename a chat; returns ``(chat as stored, applied)``.

        The edit is versioned and made durable first (published to the chat-writer, as a create is), then
        applied to the row in this request, so the next read sees it. ``applied`` is False when the row is not
        written yet (or the database is unreachable): the queued edit is applied after the create, by version.
        """
        application = await self.gate.tenant(token)
        name = self.limits.name(name)
        version = await self.numbers.for_chat_edit(application, chat_number)
        change = ChatUpsert(version.application_id, chat_number, name, version.number)
        await publish(self.publisher, self.queue, change.encode(), version.published_at)
        try:
            await self.repository.rename_chat(version.application_id, chat_number, name, version.number)
            return await self.repository.find_chat(application.id, chat_number), True
        except (NotFound, DatabaseUnavailable):
            return Chat(chat_number, name, 0), False
