"""Where a live stream of a chat starts (the streams themselves: :mod:`chat_api.streams`)."""

from __future__ import annotations

from chat_api.model import Application
from chat_api.ports import Repository
from chat_api.use_cases.tenants import TenantGate


class StreamStart:
    """The tenant rules and the chat's existence, before a stream opens."""

    def __init__(self, gate: TenantGate, repository: Repository) -> None:
        self.gate = gate
        self.repository = repository

    async def position(self, token: str, chat_number: int, after: int | None) -> tuple[Application, int]:
        """Where a live stream of a chat starts: ``(application, last message number the client has)``.

        The same tenant rules and the same 404 as every chat route (the chat must belong to the token's
        application). Without ``after`` the stream starts after the chat's newest stored message.
        """
        application = await self.gate.tenant(token)
        await self.repository.locate(application.id, chat_number)
        if after is None:
            after = await self.repository.last_message_number(application.id, chat_number)
        return application, after
