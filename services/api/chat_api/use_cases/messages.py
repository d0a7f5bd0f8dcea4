"""Messages: create (numbered, then handed to the message-writer with a confirm), read, list, edit.

A tenant's ``maxMessageBytes`` is checked here (422: the body is invalid), on creates and edits.
"""

from __future__ import annotations

from chat_api.metrics_buffer import BUFFER
from chat_api.model import Application, DatabaseUnavailable, Invalid, Message, NotFound, Page
from chat_api.use_cases.paging import read_page
from chat_api.use_cases.publishing import WrittenRows, publish
from chat_api.use_cases.reads import from_replica
from chat_common import metrics
from chat_common.wire.contracts import MessageUpsert


def check_message_bytes(application: Application, body: str) -> None:
    """The tenant's ``maxMessageBytes`` (UTF-8), if it set one."""
    limit = application.limits.max_message_bytes
    if limit and len(body.encode()) > limit:
        BUFFER.inc(metrics.TENANT_REFUSALS, "max_message_bytes")
        raise Invalid(f"body is larger than this application's limit of {limit} bytes (UTF-8)")


class MessageUseCases(WrittenRows):
    """The operations on a chat's messages."""

    async def create(
        self, token: str, chat_number: int, body: object, idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        """Number a new message and hand it to the message-writer; returns (message number, replayed)."""
        application = await self.gate.tenant(token)
        body = self.limits.body(body)
        check_message_bytes(application, body)
        numbered = await self.numbers.for_message(application, chat_number, body, idempotency_key)
        row = MessageUpsert(numbered.application_id, chat_number, numbered.number, body, 0, *(numbered.keyed or ()))
        await publish(self.publisher, self.queue, row.encode(), numbered.published_at)  # a retry re-publishes
        return numbered.number, numbered.replayed

    async def get(self, token: str, chat_number: int, message_number: int) -> Message:
        """One message."""
        application = await self.gate.tenant(token)
        return await self.repository.find_message(application.id, chat_number, message_number)

    async def list(
        self, token: str, chat_number: int, page: int = 1, per_page: int | None = None, after: int | None = None
    ) -> Page:
        """A page of a chat's messages in number order (after message ``after`` when given)."""
        application = await self.gate.tenant(token)
        replica = await from_replica(self.repository, self.numbers, application)
        return await read_page(
            self.limits,
            lambda offset, limit: self.repository.list_messages(
                application.id, chat_number, after or 0, offset, limit, replica
            ),
            page,
            per_page,
            after,
        )

    async def edit(self, token: str, chat_number: int, message_number: int, body: object) -> tuple[Message, bool]:
        """Edit a message's body; returns ``(message as stored, applied)``, as a chat rename.

        The queued copy of the edit also brings the search index up to date (after the row, asynchronously).
        """
        application = await self.gate.tenant(token)
        body = self.limits.body(body)
        check_message_bytes(application, body)
        version = await self.numbers.for_message_edit(application, chat_number, message_number)
        change = MessageUpsert(version.application_id, chat_number, message_number, body, version.number)
        await publish(self.publisher, self.queue, change.encode(), version.published_at)
        try:
            await self.repository.edit_message(
                version.application_id, chat_number, message_number, body, version.number
            )
            return await self.repository.find_message(application.id, chat_number, message_number), True
        except (NotFound, DatabaseUnavailable):
            return Message(message_number, body), False
