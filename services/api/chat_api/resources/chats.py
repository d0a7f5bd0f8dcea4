"""``/applications/{token}/chats`` and ``…/chats/{chat_number}``."""

from __future__ import annotations

import falcon

from chat_api.resources.params import add_page_links, body_field, page_params
from chat_api.services import ChatService


class ChatsResource:
    """An application's chats."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """List chats in number order."""
        page, per_page = page_params(req, self.service.limits.max_page_size)
        result = self.service.list_chats(token, page, per_page)
        resp.media = [c.public() for c in result.items]
        add_page_links(req, resp, result.page, result.per_page, result.has_next)

    def on_post(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Create a chat; the row is written asynchronously, the number is final.

        With ``Idempotency-Key``, a repeat answers the first request's number (and ``Idempotent-Replayed``).
        """
        key = req.get_header("Idempotency-Key")
        number, replayed = self.service.create_chat(token, body_field(req, "chat", "name"), key)
        resp.status = falcon.HTTP_201
        if replayed:
            resp.set_header("Idempotent-Replayed", "true")
        resp.location = f"{req.prefix}{req.path}/{number}"
        resp.media = {"chat_number": number}

    def on_get_item(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """Show one chat."""
        resp.media = self.service.get_chat(token, chat_number).public()

    def on_patch_item(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """Rename a chat."""
        resp.media = self.service.rename_chat(token, chat_number, body_field(req, "chat", "name")).public()

    on_put_item = on_patch_item
