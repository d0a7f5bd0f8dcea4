"""The API's service layer: the one object the resources call, composed of the use cases of :mod:`chat_api.use_cases`.

Every rule of the product lives in one use-case module (tenant rules, applications, admin, chats, messages, search,
stream starts); numbering in :mod:`chat_api.numbering`. This module only composes them over the ports of
:mod:`chat_api.ports`, so the resources keep calling ``service.create_chat(...)`` and the wiring
(``chat_api.app``) hands in the adapters once. Nothing here knows HTTP.

Everything runs on the worker's event loop; the application lifecycle (:mod:`chat_common.tenancy.applications`, shared
with the operator, synchronous) runs in a worker thread, never on the loop.
"""

from __future__ import annotations

from chat_api.model import EventPage, Unavailable, WebhookEndpoint
from chat_api.ports import (
    Applications,
    EventLogPort,
    NumbersPort,
    Publisher,
    RateLimiterPort,
    Repository,
    SearchBudgetPort,
    SearchReader,
    TenantDirectoryPort,
    WebhookEndpointsPort,
)
from chat_api.use_cases.admin import TenantAdmin
from chat_api.use_cases.applications import ApplicationUseCases
from chat_api.use_cases.chats import ChatUseCases
from chat_api.use_cases.events import EventLogUseCase
from chat_api.use_cases.limits import MAX_OFFSET, Limits
from chat_api.use_cases.messages import MessageUseCases
from chat_api.use_cases.paging import page_bounds
from chat_api.use_cases.search import SearchUseCase
from chat_api.use_cases.streams import StreamStart
from chat_api.use_cases.tenants import TenantGate
from chat_api.use_cases.tickets import StreamTickets, TicketHolder, TicketSigner
from chat_api.use_cases.webhooks import WebhookAdmin
from chat_common.webhooks.egress import EgressPolicy
from chat_common.wire.topology import Topology

__all__ = ["MAX_OFFSET", "ChatService", "Limits"]


class ChatService:
    """Applications, chats and messages: the operations behind every endpoint, each delegated to its use case.

    Its collaborators are the ports of :mod:`chat_api.ports`: the real adapters in production, in-memory fakes in
    ``tests/unit``.
    """

    def __init__(
        self,
        *,
        applications: Applications,
        repository: Repository,
        numbers: NumbersPort,
        publisher: Publisher,
        topology: Topology,
        limits: Limits,
        search: SearchReader,
        tenants: TenantDirectoryPort,
        rate_limiter: RateLimiterPort,
        search_budget: SearchBudgetPort | None = None,
        tickets: TicketSigner | None = None,
        events: EventLogPort | None = None,
        webhooks: WebhookEndpointsPort | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.applications = applications  # closed by the process lifecycle
        self.publisher = publisher  # started and closed by the process lifecycle
        self.search = search  # closed by the process lifecycle
        self.limits = limits  # the resources check query shapes against them
        self.gate = gate = TenantGate(tenants, rate_limiter, limits)
        self.tenant = gate.tenant
        self.token_standing = gate.token_standing

        apps = ApplicationUseCases(applications, tenants, gate, limits)
        self.create_application = apps.create
        self.get_application = apps.get
        self.list_applications = apps.list
        self.rename_application = apps.rename
        self.delete_application = apps.delete

        admin = TenantAdmin(applications, tenants)
        self.admin_application = admin.application
        self.suspend_application = admin.suspend
        self.rotate_token = admin.rotate_token
        self.set_limits = admin.set_limits
        self.set_cors_origins = admin.set_cors_origins
        self.usage = admin.usage

        chats = ChatUseCases(gate, numbers, publisher, repository, topology.chats.name, limits)
        self.create_chat = chats.create
        self.get_chat = chats.get
        self.list_chats = chats.list
        self.rename_chat = chats.rename

        messages = MessageUseCases(gate, numbers, publisher, repository, topology.messages.name, limits)
        self.create_message = messages.create
        self.get_message = messages.get
        self.list_messages = messages.list
        self.edit_message = messages.edit

        self.event_log: EventLogUseCase | None = None  # without a log (unit tests' fakes) the route answers 503
        if events is not None:
            self.event_log = EventLogUseCase(gate, events, repository, numbers, limits.event_retention_seconds)

        # Without a store (unit tests' fakes that leave it out) the webhook routes answer 503.
        self._webhooks: WebhookAdmin | None = None
        if webhooks is not None:
            self._webhooks = WebhookAdmin(applications, webhooks, egress or EgressPolicy())

        self.search_messages = SearchUseCase(gate, repository, numbers, search, limits, search_budget).messages
        self.stream_position = StreamStart(gate, repository).position

        self.tickets = StreamTickets(tickets or TicketSigner(()), gate, tenants, repository)
        self.mint_stream_ticket = self.tickets.mint
        self.open_ticket = self.tickets.open

    async def stream_standing(self, credential: str | TicketHolder) -> tuple[str, str] | None:
        """For the hub's re-check of open streams: a token's standing, or a ticket's (its token must stay current)."""
        if isinstance(credential, TicketHolder):
            return await self.tickets.standing(credential)
        return await self.token_standing(credential)

    async def events(self, token: str, after: int | None, limit: int) -> EventPage:
        """A page of the application's event log after cursor ``after`` (:mod:`chat_api.use_cases.events`)."""
        if self.event_log is None:
            raise Unavailable("the event log is not configured", retry_after=30)
        return await self.event_log.page(token, after, limit)

    @property
    def webhooks(self) -> WebhookAdmin:
        """A tenant's webhook endpoints (:mod:`chat_api.use_cases.webhooks`); 503 where none are configured."""
        if self._webhooks is None:
            raise Unavailable("webhook endpoints are not configured", retry_after=30)
        return self._webhooks

    async def list_webhooks(self, token: str) -> list[WebhookEndpoint]:
        """The application's webhook endpoints (admin)."""
        return await self.webhooks.list(token)

    async def create_webhook(self, token: str, body: object) -> WebhookEndpoint:
        """Register a webhook endpoint (admin); the answer carries its secret."""
        return await self.webhooks.create(token, body)

    async def get_webhook(self, token: str, name: str) -> WebhookEndpoint:
        """One webhook endpoint (admin)."""
        return await self.webhooks.get(token, name)

    async def update_webhook(self, token: str, name: str, body: object) -> WebhookEndpoint:
        """Change a webhook endpoint (admin)."""
        return await self.webhooks.update(token, name, body)

    async def delete_webhook(self, token: str, name: str) -> None:
        """Delete a webhook endpoint (admin)."""
        await self.webhooks.delete(token, name)

    async def rotate_webhook_secret(self, token: str, name: str, body: object) -> WebhookEndpoint:
        """Rotate a webhook endpoint's signing secret (admin); the answer carries the new one."""
        return await self.webhooks.rotate_secret(token, name, body)

    async def replay_webhook(self, token: str, name: str, from_cursor: object) -> WebhookEndpoint:
        """Deliver the application's events to an endpoint again from after a cursor (admin)."""
        return await self.webhooks.replay(token, name, from_cursor)

    def page_bounds(self, page: int, per_page: int | None) -> tuple[int, int]:
        """``(page, per_page)`` with the default page size filled in (:func:`chat_api.use_cases.paging.page_bounds`)."""
        return page_bounds(self.limits, page, per_page)
