"""The numbering port's implementation: a number for a create, a version for an edit (:class:`NumbersPort`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from chat_api.model import Allocation, Application, Numbered
from chat_api.numbering.allocation import allocate
from chat_api.numbering.idempotency import number_once
from chat_api.ports import CounterSource, IdempotencyPort, NumberingPort, RecoveryPort, StoredKeysPort


class Numberer:
    """Numbers creates and versions edits over the numbering store, MySQL's counters, recovery and idempotency."""

    def __init__(
        self,
        *,
        store: NumberingPort,
        counters: CounterSource,
        recovery: RecoveryPort,
        idempotency: IdempotencyPort,
        stored_keys: StoredKeysPort,
    ) -> None:
        self.store = store
        self.counters = counters
        self.recovery = recovery
        self.idempotency = idempotency
        self.stored_keys = stored_keys

    async def for_chat(self, application: Application, name: str, key: str | None) -> Numbered:
        """The number of a new chat (within the tenant's ``maxChats``); a repeated key gets the first one."""
        max_chats = application.limits.max_chats or 0
        return await self._create(application, 0, name, key, lambda: self.store.new_chat(application.id, max_chats))

    async def for_message(self, application: Application, chat_number: int, body: str, key: str | None) -> Numbered:
        """The number of a new message of the chat; a repeated key gets the first one."""
        return await self._create(
            application, chat_number, body, key, lambda: self.store.new_message(application.id, chat_number)
        )

    async def for_chat_edit(self, application: Application, chat_number: int) -> Numbered:
        """A fresh version for a rename of the chat (NotFound when it does not exist)."""
        return await self._allocate(lambda: self.store.edit_chat(application.id, chat_number), application, chat_number)

    async def for_message_edit(self, application: Application, chat_number: int, message_number: int) -> Numbered:
        """A fresh version for an edit of the message (NotFound when it does not exist)."""
        return await self._allocate(
            lambda: self.store.edit_message(application.id, chat_number, message_number), application, chat_number
        )

    async def last_edit(self, application_id: int) -> float | None:
        """Unix time of the application's last edit; None if it never edited."""
        return await self.store.last_edit(application_id)

    async def _allocate(
        self, call: Callable[[], Awaitable[Allocation]], application: Application, chat_number: int
    ) -> Numbered:
        return await allocate(
            call, application, chat_number, store=self.store, counters=self.counters, recovery=self.recovery
        )

    async def _create(
        self,
        application: Application,
        chat_number: int,
        text: str,
        key: str | None,
        call: Callable[[], Awaitable[Allocation]],
    ) -> Numbered:
        if key is None:
            return await self._allocate(call, application, chat_number)
        return await number_once(
            application.id,
            chat_number,
            text,
            key,
            lambda: self._allocate(call, application, chat_number),
            idempotency=self.idempotency,
            stored_keys=self.stored_keys,
        )
