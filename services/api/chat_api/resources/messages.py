"""``…/chats/{chat_number}/messages``, ``…/messages/{message_number}`` and ``…/messages/search``."""

from __future__ import annotations

import falcon

from chat_api.resources.params import add_page_links, after_param, body_field, page_params
from chat_api.services import ChatService


class MessagesResource:
    """A chat's messages."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    async def on_get(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """List messages in number order (``?after=m`` starts after message m)."""
        page, per_page = page_params(req, self.service.limits, keyset=True)
        result = await self.service.list_messages(token, chat_number, page, per_page, after_param(req))
        resp.media = [m.public() for m in result.items]
        last = result.items[-1].message_number if result.items else None
        add_page_links(req, resp, result.page, result.per_page, result.has_next, last)

    async def on_post(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """Create a message; the row is written asynchronously, the number is final.

        With ``Idempotency-Key``, a repeat answers the first request's number (and ``Idempotent-Replayed``).
        """
        key = req.get_header("Idempotency-Key")
        number, replayed = await self.service.create_message(
            token, chat_number, await body_field(req, "message", "body"), key
        )
        resp.status = falcon.HTTP_201
        if replayed:
            resp.set_header("Idempotent-Replayed", "true")
        resp.location = f"{req.prefix}{req.path}/{number}"
        resp.media = {"message_number": number}

    async def on_get_item(
        self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int, message_number: int
    ) -> None:
        """Show one message."""
        resp.media = (await self.service.get_message(token, chat_number, message_number)).public()

    async def on_patch_item(
        self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int, message_number: int
    ) -> None:
        """Edit a message: 200 with it as stored, or 202 when its row is not written yet (the edit is queued)."""
        body = await body_field(req, "message", "body")
        message, applied = await self.service.edit_message(token, chat_number, message_number, body)
        resp.status = falcon.HTTP_200 if applied else falcon.HTTP_202
        resp.media = message.public()

    on_put_item = on_patch_item


class MessageSearchResource:
    """``GET …/messages/search?query=…``: fragments of words, case-insensitive, within one chat."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    async def on_get(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """Search; a missing, blank or over-long query is a malformed request (400)."""
        query = req.get_param("query")
        if query is None or not query.strip():
            raise falcon.HTTPBadRequest(description="query parameter 'query' is required and must not be blank")
        if len(query) > self.service.limits.max_query_chars:
            raise falcon.HTTPBadRequest(
                description=f"query must be at most {self.service.limits.max_query_chars} characters"
            )
        page, per_page = page_params(req, self.service.limits)
        result = await self.service.search_messages(token, chat_number, query, page, per_page)
        resp.media = [
            {"message_number": h.message_number, "body": h.body, **({"score": h.score} if h.score is not None else {})}
            for h in result.items
        ]
        add_page_links(req, resp, result.page, result.per_page, result.has_next)
