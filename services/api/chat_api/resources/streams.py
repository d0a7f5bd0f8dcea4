"""``GET …/chats/{chat_number}/messages/stream``: the chat's messages as Server-Sent Events, live and resumable."""

from __future__ import annotations

import falcon

from chat_api.metrics_buffer import BUFFER
from chat_api.resources.params import after_param
from chat_api.services import ChatService
from chat_api.streams import Refused, StreamHub
from chat_api.streams.asgi import aborter, on_disconnect
from chat_common import metrics
from chat_common.validation import MAX_NUMBER


def last_event_id(req: falcon.Request) -> int | None:
    """The resume point: ``Last-Event-ID`` (what an EventSource sends back on reconnect) over ``?after=``."""
    raw = req.get_header("Last-Event-ID")
    if raw is None or raw.strip() == "":
        return after_param(req)
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_NUMBER:
        raise falcon.HTTPBadRequest(description="Last-Event-ID must be a message number")
    return int(raw)


class MessageStreamResource:
    """One chat's messages as they are stored: ``event: message`` (id = number) and ``event: edit``."""

    def __init__(self, service: ChatService, hub: StreamHub | None) -> None:
        self.service = service
        self.hub = hub

    async def on_get(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """Open a stream: replay after ``Last-Event-ID``/``?after=`` (default: from now), then live events."""
        after = last_event_id(req)
        if self.hub is None:
            raise falcon.HTTPServiceUnavailable(description="live streams are not served here", retry_after=5)
        application_id, after = await self.service.stream_position(token, chat_number, after)
        try:
            stream = self.hub.open(application_id, chat_number, after, aborter(req.scope), token=token)
        except Refused as exc:
            BUFFER.inc(metrics.STREAM_REFUSED, exc.limit)
            raise falcon.HTTPTooManyRequests(description=str(exc), retry_after=5) from None
        on_disconnect(req.scope, lambda: self.hub.end(stream, "client"))  # frees its slot at once
        resp.set_header("X-Accel-Buffering", "no")  # nginx (the ingress): pass events through unbuffered
        resp.sse = self.hub.events(stream)
