"""Stream tickets: ``POST …/chats/{n}/stream-tickets`` (the tenant's backend, with its token) and
``GET /streams/{ticket}`` (a browser, with the ticket alone). The rules: :mod:`chat_api.use_cases.tickets`."""

from __future__ import annotations

import falcon

from chat_api.errors import retry_hint
from chat_api.metrics_buffer import BUFFER
from chat_api.model import NotFound, Suspended
from chat_api.resources.streams import last_event_id, require_hub, serve
from chat_api.services import ChatService
from chat_api.streams import StreamHub
from chat_api.use_cases.tickets import TicketHolder, TicketRefused, TicketsNotConfigured
from chat_common import metrics


def _not_configured() -> falcon.HTTPServiceUnavailable:
    return falcon.HTTPServiceUnavailable(
        description=retry_hint("stream tickets are not configured", 60), retry_after=60
    )


class StreamTicketsResource:
    """Mint a ticket that lets a browser read one chat's live stream, and nothing else, for a few minutes."""

    def __init__(self, service: ChatService, cors_origins: tuple[str, ...] = ()) -> None:
        self.service = service
        self.cors_origins = cors_origins

    async def on_post(self, req: falcon.Request, resp: falcon.Response, token: str, chat_number: int) -> None:
        """201 ``{ticket, chat_number, expires_at, stream_path}``."""
        try:
            minted, application = await self.service.mint_stream_ticket(token, chat_number)
        except TicketsNotConfigured:
            raise _not_configured() from None
        except TicketRefused as exc:  # a rotated-away token (the tenant rules' refusals count as theirs)
            BUFFER.inc(metrics.STREAM_TICKETS, f"refused_{exc.reason}")
            raise
        BUFFER.inc(metrics.STREAM_TICKETS, "issued")
        if application.cors_origins is not None:  # the tenant's own list replaces the deployment's (Cors middleware)
            req.context.cors_origins = application.cors_origins
        resp.status = falcon.HTTP_201
        resp.set_header("Cache-Control", "no-store")
        resp.media = {**minted, "stream_path": f"/streams/{minted['ticket']}"}


class TicketStreamResource:
    """``GET /streams/{ticket}``: the ticket's chat as Server-Sent Events, as ``…/messages/stream`` answers it."""

    def __init__(self, service: ChatService, hub: StreamHub | None, cors_origins: tuple[str, ...] = ()) -> None:
        self.service = service
        self.hub = hub
        self.cors_origins = cors_origins

    async def on_get(self, req: falcon.Request, resp: falcon.Response, ticket: str) -> None:
        """Open the ticket's stream: replay after ``Last-Event-ID``/``?after=``, then live events."""
        after = last_event_id(req)
        require_hub(self.hub)
        try:
            application, claims, after = await self.service.open_ticket(ticket, after)
        except TicketsNotConfigured:
            raise _not_configured() from None
        except (NotFound, Suspended) as exc:
            reason = (
                exc.reason
                if isinstance(exc, TicketRefused)
                else "suspended"
                if isinstance(exc, Suspended)
                else "unknown"
            )
            BUFFER.inc(metrics.STREAM_TICKETS, f"refused_{reason}")
            raise
        if application.cors_origins is not None:  # the tenant's own list replaces the deployment's (Cors middleware)
            req.context.cors_origins = application.cors_origins
        serve(req, resp, self.hub, application.id, claims.chat_number, after, TicketHolder(claims.token_digest))
