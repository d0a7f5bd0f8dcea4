"""``/applications/{token}/events`` (and ``/application/events``): the application's event log, read with a cursor."""

from __future__ import annotations

import re

import falcon

from chat_api.resources.params import query_number
from chat_api.services import ChatService

MAX_CURSOR = 2**63 - 1
_CURSOR = re.compile(r"0|[1-9][0-9]{0,18}")


def cursor_param(req: falcon.Request) -> int | None:
    """``after``: a cursor the API handed out (an event's ``id`` or a page's ``next``); 400 when it is not one."""
    value = req.get_param("after")
    if value is None:
        return None
    if not _CURSOR.fullmatch(value) or int(value) > MAX_CURSOR:
        raise falcon.HTTPInvalidParam(
            "It must be a cursor this API handed out: an event's id or a page's next", "after"
        )
    return int(value)


class EventsResource:
    """An application's changes to its chats and messages, in commit order."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    async def on_get(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """A page of events after ``after`` (omitted: from the oldest kept), at most ``limit``; ``next`` continues."""
        limits = self.service.limits
        limit = query_number(req, "limit", 1, limits.max_page_size) or limits.default_page_size
        page = await self.service.events(token, cursor_param(req), limit)
        resp.media = {"events": [e.public() for e in page.events], "next": str(page.next), "has_more": page.has_more}
        resp.append_link(f"{req.prefix}{req.path}?after={page.next}&limit={limit}", "next")
