"""``/applications/{token}/chats`` and ``…/chats/{chat_number}``."""

from __future__ import annotations

import falcon

from chat_api.resources.params import add_page_links, after_param, body_field, page_params
from chat_api.services import ChatService


class ChatsResource:
    """An application's chats."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    async def on_get(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """List chats in number order (``?after=n`` starts after chat n)."""
        page, per_page = page_params(req, self.service.limits, keyset=True)
        result = await self.service.list_chats(token, page, per_page, after_param(req))
        resp.media = [c.public() for c in result.items]
        last = result.items[-1].chat_number if result.items else None
        add_page_links(req, resp, result.page, result.per_page, result.has_next, last)

    async def on_post(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Create a chat; the row is written asynchronously, the number is final.

        With ``Idempotency-Key``, a repeat answers the first request's number (and ``Idempotent-Replayed``).
        """
        key = req.get_header("Idempotency-Key")
        number, replayed = await self.service.create_chat(token, await body_field(req, "chat", "name"), key)
        resp.status = falcon.HTTP_201
        if replayed:
            resp.set_header("Idempotent-Replayed", "true")
        resp.location = f"{req.prefix}{req.path}/{number}"
        resp.media = {"chat_number": number}

    async def on_get_item(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """Show one chat."""
        resp.media = (await self.service.get_chat(token, chat_number)).public()

    async def on_patch_item(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """Rename a chat: 200 with the chat as stored, or 202 when its row is not written yet (the edit is queued)."""
        chat, applied = await self.service.rename_chat(token, chat_number, await body_field(req, "chat", "name"))
        resp.status = falcon.HTTP_200 if applied else falcon.HTTP_202
        resp.media = chat.public()

    on_put_item = on_patch_item
