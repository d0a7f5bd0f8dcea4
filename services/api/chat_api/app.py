"""The Falcon ASGI application: ``create_app`` wires, ``get_app`` builds the collaborators from the environment.

gunicorn starts ``chat_api.app:get_app()`` in each uvicorn worker (see gunicorn.conf.py): one event loop per
process owns that process's Redis connections, its AMQP connection and confirm channel, and its MySQL pool.
Nothing connects at import or in the factory; :class:`Lifecycle` opens and closes the connections with the
ASGI lifespan events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import falcon
import falcon.asgi
import redis.asyncio as redis

from chat_api import errors
from chat_api.adapters.database import Database
from chat_api.adapters.events import SqlEventLog
from chat_api.adapters.idempotency import IdempotencyStore, StoredKeys
from chat_api.adapters.numbering import Numbering
from chat_api.adapters.publisher import ConfirmingPublisher
from chat_api.adapters.queue_health import QueueHealth
from chat_api.adapters.recovery import NumberingMarker, NumberingRecovery
from chat_api.adapters.replica import ReadRouter, ReplicaMonitor, replica_name
from chat_api.adapters.repository import SqlRepository
from chat_api.adapters.search import build_search_reader
from chat_api.adapters.search_budget import RedisSearchBudget
from chat_api.adapters.tenants import RedisRateLimiter, TenantDirectory
from chat_api.event_loop import install_blocking_guard
from chat_api.media import media_handlers
from chat_api.metrics_buffer import BUFFER
from chat_api.middleware import (
    HEADER_FORM,
    Cors,
    HeaderToken,
    RequestMetrics,
    SecureResponse,
    SizeLimits,
    TokenShape,
)
from chat_api.numbering import Numberer
from chat_api.ports import Publisher
from chat_api.resources.applications import ApplicationsResource, TenantAdminResource
from chat_api.resources.chats import ChatsResource
from chat_api.resources.events import EventsResource
from chat_api.resources.health import HealthResource, MetricsResource, ProcessState, ReadinessResource, StatusResource
from chat_api.resources.messages import MessageSearchResource, MessagesResource
from chat_api.resources.openapi import DocsResource, OpenApiResource
from chat_api.resources.params import NumberConverter
from chat_api.resources.streams import MessageStreamResource
from chat_api.resources.tickets import StreamTicketsResource, TicketStreamResource
from chat_api.resources.webhooks import WebhooksResource
from chat_api.services import ChatService, Limits
from chat_api.streams import StreamHub, build_hub
from chat_api.streams.asgi import StreamingApp, StreamsLifespan
from chat_api.use_cases.cors import parse_origins
from chat_api.use_cases.tickets import TicketSigner, parse_keys
from chat_common import logs
from chat_common.clients.broker import API, CHECK, BrokerNodes
from chat_common.clients.db import make_engine
from chat_common.clients.redis_client import async_client, sync_client
from chat_common.config import Settings
from chat_common.tenancy.applications import build_applications
from chat_common.tenancy.tokens import TokenSealer
from chat_common.tenancy.webhooks import WebhookEndpoints
from chat_common.validation import MAX_NUMBER
from chat_common.webhooks.egress import EgressPolicy
from chat_common.wire.keys import RedisKeys, slot_tag
from chat_common.wire.topology import Topology

# chat_api.resources.params.NumberConverter: strict ASCII [1-9][0-9]* within these bounds.
NUMBER = f"number(min=1, max={MAX_NUMBER})"

log = logging.getLogger(__name__)


@dataclass
class Lifecycle:
    """Falcon lifespan middleware: start the worker's connections and background tasks, and close them."""

    service: ChatService
    redis_clients: list[redis.Redis]
    db: Database
    state: ProcessState
    replicas: list[ReplicaMonitor] = field(default_factory=list)
    slow_callback_ms: float = 0.0
    numbering_watchdog: Callable[[], Awaitable[None]] | None = None  # NumberingRecovery.watch: lost slots re-open
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def process_startup(self, scope: dict, event: dict) -> None:  # noqa: D102
        install_blocking_guard(asyncio.get_running_loop(), self.slow_callback_ms)
        await self.service.publisher.start()
        self._tasks = [asyncio.create_task(BUFFER.flush_every(), name="metrics-flush")]
        if self.numbering_watchdog is not None:
            self._tasks.append(asyncio.create_task(self.numbering_watchdog(), name="numbering-watchdog"))
        for replica in self.replicas:
            self._tasks.append(asyncio.create_task(replica.watch(), name=f"replica-probe {replica.name}"))
        self.state.started = True

    async def process_shutdown(self, scope: dict, event: dict) -> None:  # noqa: D102
        self.state.draining = True
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.service.publisher.close()
        await self.service.search.close()
        for client in self.redis_clients:
            await client.aclose()
        await self.db.close()
        for replica in self.replicas:
            await replica.close()
        await asyncio.to_thread(self.service.applications.close)


def create_app(
    service: ChatService,
    settings: Settings,
    status_checks: dict,
    lifecycle: Lifecycle | None = None,
    streams: StreamHub | None = None,
) -> falcon.asgi.App:
    """Routes, media handlers, error handlers and middleware; nothing here opens a connection.

    ``streams``: the process's live streams (their broker connection opens with the first stream); without it the
    stream route answers 503. The app carries it for the server (``StreamingApp.streams``) and closes it at the
    lifespan shutdown, before ``lifecycle`` closes the connections.
    """
    middleware = [] if lifecycle is None else [lifecycle]
    if streams is not None:
        middleware.append(StreamsLifespan(streams))  # shut down first (Falcon runs process_shutdown in reverse)
    # Rate limits are a tenant rule: ChatService.tenant applies them (per application, RATE_LIMIT_PER_SECOND or
    # the tenant's own), with suspension and expired tokens.
    middleware += [RequestMetrics(), SizeLimits(settings.max_request_bytes), HeaderToken(), TokenShape(), Cors()]
    app = StreamingApp(middleware=middleware, response_type=SecureResponse)
    app.streams = streams
    handlers = media_handlers()
    app.req_options.media_handlers = handlers
    app.resp_options.media_handlers = handlers
    app.req_options.strip_url_path_trailing_slash = True
    app.router_options.converters["number"] = NumberConverter
    errors.register(app)

    applications = ApplicationsResource(service, settings.admin_api_key)
    chats = ChatsResource(service)
    messages = MessagesResource(service)
    app.add_route("/applications", applications)
    app.add_route("/applications/{token}", applications, suffix="item")
    tenant_admin = TenantAdminResource(service, settings.admin_api_key)
    for action in ("suspend", "resume", "rotate", "limits", "cors", "usage"):
        path = {"rotate": "rotate-token", "cors": "cors-origins"}.get(action, action)
        app.add_route(f"/applications/{{token}}/{path}", tenant_admin, suffix=action)
    webhooks = WebhooksResource(service, settings.admin_api_key)
    app.add_route("/applications/{token}/webhooks", webhooks)
    app.add_route("/applications/{token}/webhooks/{webhook_id}", webhooks, suffix="item")
    app.add_route("/applications/{token}/webhooks/{webhook_id}/rotate-secret", webhooks, suffix="rotate")
    app.add_route("/applications/{token}/webhooks/{webhook_id}/replay", webhooks, suffix="replay")
    events = EventsResource(service)
    search = MessageSearchResource(service)
    cors_origins = parse_origins(settings.cors_allowed_origins)
    stream_resource = MessageStreamResource(service, streams, cors_origins)
    tickets = StreamTicketsResource(service, cors_origins)
    app.add_route("/streams/{ticket}", TicketStreamResource(service, streams, cors_origins))
    # Every tenant route twice: the token in the path, and the header form (HeaderToken: Authorization: Bearer),
    # where no proxy or access log in front sees it. The same resources: one code path, one set of rules.
    app.add_route(HEADER_FORM, applications, suffix="own")
    for application in ("/applications/{token}", HEADER_FORM):
        chat = f"{application}/chats/{{chat_number:{NUMBER}}}"
        app.add_route(f"{application}/chats", chats)
        app.add_route(f"{application}/events", events)
        app.add_route(chat, chats, suffix="item")
        app.add_route(f"{chat}/messages", messages)
        app.add_route(f"{chat}/messages/search", search)
        app.add_route(f"{chat}/messages/stream", stream_resource)
        app.add_route(f"{chat}/stream-tickets", tickets)
        app.add_route(f"{chat}/messages/{{message_number:{NUMBER}}}", messages, suffix="item")
    app.add_route("/healthz", HealthResource())
    state = lifecycle.state if lifecycle is not None else ProcessState(started=True)
    app.add_route("/readyz", ReadinessResource(state))
    app.add_route("/status", StatusResource(status_checks))
    app.add_route("/metrics", MetricsResource())
    # The contract as configured: without an admin key, the admin operations are open and the document says so.
    app.add_route("/openapi.json", OpenApiResource(admin_api_key=settings.admin_api_key))
    app.add_route("/docs", DocsResource(admin_api_key=settings.admin_api_key))
    return app


def build_service(
    settings: Settings, publisher: Publisher | None = None
) -> tuple[ChatService, dict, Lifecycle, StreamHub]:
    """Collaborators for one process (unconnected), the status checks over them, their lifecycle and the live
    streams' hub. ``publisher`` stands in for the broker (the benchmarks' baseline that inserts in the request)."""
    client = async_client(settings.redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10)
    # Numbering's own client has no per-read timeout: its pipelined round trips are bounded as a whole (one timer
    # per round trip instead of one per reply).
    numbering_client = async_client(
        settings.redis_url, socket_timeout=None, socket_connect_timeout=2, health_check_interval=10
    )
    db = Database(settings.database_url, read_timeout=settings.read_statement_timeout_seconds)
    keys = RedisKeys(settings.redis_key_prefix)
    slot_tag(0)  # the slot-tag table (~0.1 s of CPU, once per process) is built now, never on the event loop
    topology = Topology.from_settings(settings)
    publisher = publisher or ConfirmingPublisher(
        BrokerNodes.from_settings(settings, API),
        declare=topology.declare,
        timeout=settings.publish_timeout_seconds,
        coalesce=settings.publish_coalesce,
        coalesce_wait=settings.publish_coalesce_wait_ms / 1000,
    )
    replicas = [
        ReplicaMonitor(
            Database(url, read_timeout=settings.read_statement_timeout_seconds),
            settings.database_read_max_lag_seconds,
            name=replica_name(url),
        )
        for url in (settings.database_read_url or "").split(",")
        if url.strip()
    ]
    router = ReadRouter(db, replicas)
    repository = SqlRepository(router)
    # With replicas (Sentinel, Cluster), numbers and idempotency records are answered only once replicated.
    replication = {
        "replicas": settings.redis_replicas_to_ack,
        "replica_timeout_ms": settings.redis_replica_ack_timeout_ms,
    }
    numbering = Numbering(numbering_client, keys, timeout=settings.redis_timeout_seconds, **replication)
    # The application lifecycle is shared with the operator and synchronous: the service runs it in threads,
    # over a small blocking pool of its own (it is admin work: rare, never on the create or read path).
    admin_engine = make_engine(settings.database_url, pool_size=2)
    recovery = NumberingRecovery(
        client,
        keys,
        BrokerNodes.from_settings(settings, CHECK),
        topology,
        settings.publish_timeout_seconds,
        NumberingMarker(db),
    )
    admin_redis = sync_client(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    egress = EgressPolicy.from_env()  # WEBHOOK_ALLOW_CIDRS, WEBHOOK_DENY_CIDRS, WEBHOOK_ALLOW_HTTP
    webhooks = WebhookEndpoints(admin_engine, TokenSealer.from_key(settings.webhook_sealing_key), egress)
    service = ChatService(
        applications=build_applications(settings, admin_engine, admin_redis),
        repository=repository,
        numbers=Numberer(
            store=numbering,
            counters=repository,
            recovery=recovery,
            # A claim outlives the longest a create can take (its publish timeout), then frees the key.
            idempotency=IdempotencyStore(
                client, keys, claim_seconds=settings.publish_timeout_seconds + 2, **replication
            ),
            stored_keys=StoredKeys(db),
        ),
        publisher=publisher,
        topology=topology,
        search=build_search_reader(settings, router),
        tenants=TenantDirectory(
            db,
            settings.tenant_cache_seconds,
            settings.tenant_cache_size,
            negative_ttl=settings.tenant_negative_cache_seconds,
            negative_max_entries=settings.tenant_negative_cache_size,
            unknown_lookups_per_second=settings.tenant_unknown_lookups_per_second,
            stale_seconds=settings.tenant_stale_seconds,
        ),
        rate_limiter=RedisRateLimiter(client, keys, fallback_processes=settings.rate_limit_fallback_processes),
        search_budget=RedisSearchBudget(
            client, keys, settings.search_seconds_per_second, settings.search_burst_seconds
        ),
        tickets=TicketSigner(parse_keys(settings.stream_ticket_keys), settings.stream_ticket_seconds),
        limits=Limits.from_settings(settings),
        events=SqlEventLog(router),
        webhooks=webhooks,
        egress=egress,
    )

    async def database() -> str:
        return "ok" if await repository.ping() else "unavailable"

    async def cache() -> str:
        return "ok" if await numbering.ping() else "unavailable"

    async def broker() -> str:
        return "ok" if publisher.is_ready else "unavailable"

    async def numbering_state() -> str:
        # Every slot that ever opened still has its epoch (a fresh system has none to check).
        return "recovering" if await recovery.closed_slots() else "open"

    queues = QueueHealth(
        client, keys, BrokerNodes.from_settings(settings, CHECK), topology, settings.retry_overdue_margin_seconds
    )
    status_checks = {
        "database": database,
        "redis": cache,
        "rabbitmq": broker,
        "numbering": numbering_state,
        "retry_tiers": queues.retry_tiers,
        "dead_letters": queues.dead_letters,
    }
    lifecycle = Lifecycle(
        service,
        [client, numbering_client],
        db,
        ProcessState(),
        replicas,
        settings.api_slow_callback_ms,
        numbering_watchdog=recovery.watch,
    )
    streams = build_hub(settings, db, client, keys, standing=service.stream_standing)
    return service, status_checks, lifecycle, streams


def get_app() -> falcon.asgi.App:
    """Entry point for gunicorn's uvicorn workers: settings from the environment, connections per worker."""
    logs.configure()
    settings = Settings.from_env()
    service, status_checks, lifecycle, streams = build_service(settings)
    return create_app(service, settings, status_checks, lifecycle, streams)
