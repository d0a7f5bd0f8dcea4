"""``GET …/chats/{chat_number}/messages/stream``: the chat's messages as Server-Sent Events, live and resumable."""

from __future__ import annotations

import re

import falcon

from chat_api.errors import retry_hint
from chat_api.metrics_buffer import BUFFER
from chat_api.resources.params import after_param
from chat_api.services import ChatService
from chat_api.streams import Refused, StreamHub
from chat_api.streams.asgi import aborter, on_disconnect
from chat_api.use_cases.tickets import TicketHolder
from chat_common import metrics
from chat_common.validation import MAX_NUMBER

_EVENT_ID = re.compile(r"[0-9]{1,10}")  # the contract's pattern for the header


def last_event_id(req: falcon.Request) -> int | None:
    """The resume point: ``Last-Event-ID`` (what an EventSource sends back on reconnect) over ``?after=``.

    Every value the contract allows (1-10 ASCII digits) is accepted: one above the largest message number
    (MAX_NUMBER) resumes after it — nothing can come after it, so the stream replays nothing, as for any
    number past the chat's last. Anything else is a 400.
    """
    raw = req.get_header("Last-Event-ID")
    if raw is None or raw.strip() == "":
        return after_param(req)
    raw = raw.strip()
    if not _EVENT_ID.fullmatch(raw):
        raise falcon.HTTPBadRequest(description="Last-Event-ID must be a message number (1-10 ASCII digits)")
    return min(int(raw), MAX_NUMBER)


class MessageStreamResource:
    """One chat's messages as they are stored: ``event: message`` (id = number) and ``event: edit``.

    ``Last-Event-ID`` in the answer names the message number the stream resumes after (Mercure's convention), so a
    client back after a long absence can tell whether it missed anything. CORS: the tenant's origins, else the
    deployment's (this route takes the tenant's token, which a browser should not hold; pages use
    ``/streams/{ticket}``).
    """

    def __init__(self, service: ChatService, hub: StreamHub | None, cors_origins: tuple[str, ...] = ()) -> None:
        self.service = service
        self.hub = hub
        self.cors_origins = cors_origins

    async def on_get(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """Open a stream: replay after ``Last-Event-ID``/``?after=`` (default: from now), then live events."""
        after = last_event_id(req)
        require_hub(self.hub)
        application, after = await self.service.stream_position(token, chat_number, after)
        if application.cors_origins is not None:  # the tenant's own list replaces the deployment's (Cors middleware)
            req.context.cors_origins = application.cors_origins
        serve(req, resp, self.hub, application.id, chat_number, after, token)


def require_hub(hub: StreamHub | None) -> None:
    """503 where this process serves no live streams."""
    if hub is None:
        description = retry_hint("live streams are not served here", 5)
        raise falcon.HTTPServiceUnavailable(description=description, retry_after=5)


def serve(
    req: falcon.Request,
    resp: falcon.Response,
    hub: StreamHub,
    application_id: int,
    chat_number: int,
    after: int,
    credential: str | TicketHolder,
) -> None:
    """Open the stream on the hub (its limits: 429 the tenant's share, 503 the process full) and answer with it."""
    try:
        stream = hub.open(application_id, chat_number, after, aborter(req.scope), token=credential)
    except Refused as exc:
        BUFFER.inc(metrics.STREAM_REFUSED, exc.limit)
        if exc.limit == "tenant":  # this tenant's share is used up: its own doing
            raise falcon.HTTPTooManyRequests(description=str(exc), retry_after=5) from None
        # The process is full (every tenant's streams): a capacity fault; another process may have room.
        raise falcon.HTTPServiceUnavailable(description=str(exc), retry_after=5) from None
    on_disconnect(req.scope, lambda: hub.end(stream, "client"))  # frees its slot at once
    resp.set_header("X-Accel-Buffering", "no")  # nginx (the ingress): pass events through unbuffered
    resp.set_header("Last-Event-ID", str(after))  # where it resumes: events follow this message number
    resp.sse = hub.events(stream)
