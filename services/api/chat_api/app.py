"""The Falcon application: ``create_app`` wires, ``get_app`` builds the collaborators from the environment.

gunicorn starts ``chat_api.app:get_app()`` (see gunicorn.conf.py).
"""

from __future__ import annotations

import falcon
import redis

from chat_api import errors
from chat_api.adapters.idempotency import IdempotencyStore
from chat_api.adapters.numbering import Numbering
from chat_api.adapters.publisher import ConfirmingPublisher
from chat_api.adapters.recovery import NumberingRecovery
from chat_api.adapters.repository import SqlRepository
from chat_api.media import media_handlers
from chat_api.middleware import BodyLimit, RateLimit, RequestMetrics, SecurityHeaders, TokenShape
from chat_api.resources.applications import ApplicationsResource
from chat_api.resources.chats import ChatsResource
from chat_api.resources.health import HealthResource, MetricsResource, ReadinessResource
from chat_api.resources.messages import MessageSearchResource, MessagesResource
from chat_api.resources.openapi import DocsResource, OpenApiResource
from chat_api.services import ChatService, Limits
from chat_common import logs
from chat_common.config import Settings
from chat_common.db import make_engine
from chat_common.keys import RedisKeys
from chat_common.search import build_search
from chat_common.tenancy import build_applications
from chat_common.topology import Topology

NUMBER = "int(min=1, max=4294967295)"


def create_app(service: ChatService, settings: Settings, readiness: dict) -> falcon.App:
    """Routes, media handlers, error handlers and middleware; nothing here opens a connection."""
    app = falcon.App(
        middleware=[
            RequestMetrics(),
            BodyLimit(settings.max_request_bytes),
            TokenShape(),
            RateLimit(service.numbering.client, RedisKeys(settings.redis_key_prefix), settings.rate_limit_per_second),
            SecurityHeaders(),
        ],
    )
    handlers = media_handlers()
    app.req_options.media_handlers = handlers
    app.resp_options.media_handlers = handlers
    app.req_options.strip_url_path_trailing_slash = True
    errors.register(app)

    applications = ApplicationsResource(service, settings.admin_api_key)
    chats = ChatsResource(service)
    messages = MessagesResource(service)
    app.add_route("/applications", applications)
    app.add_route("/applications/{token}", applications, suffix="item")
    app.add_route("/applications/{token}/chats", chats)
    app.add_route(f"/applications/{{token}}/chats/{{chat_number:{NUMBER}}}", chats, suffix="item")
    app.add_route(f"/applications/{{token}}/chats/{{chat_number:{NUMBER}}}/messages", messages)
    app.add_route(
        f"/applications/{{token}}/chats/{{chat_number:{NUMBER}}}/messages/search", MessageSearchResource(service)
    )
    app.add_route(
        f"/applications/{{token}}/chats/{{chat_number:{NUMBER}}}/messages/{{message_number:{NUMBER}}}",
        messages,
        suffix="item",
    )
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadinessResource(readiness))
    app.add_route("/metrics", MetricsResource())
    app.add_route("/openapi.json", OpenApiResource())
    app.add_route("/docs", DocsResource())
    return app


def build_service(settings: Settings) -> tuple[ChatService, dict]:
    """Collaborators for one process, and the readiness checks over them."""
    engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10
    )
    keys = RedisKeys(settings.redis_key_prefix)
    topology = Topology(settings.queue_prefix, settings.writer_retry_delays_seconds)
    publisher = ConfirmingPublisher(
        settings.rabbitmq_url, declare=topology.declare, timeout=settings.publish_timeout_seconds
    )
    repository = SqlRepository(engine)
    numbering = Numbering(client, keys)
    service = ChatService(
        applications=build_applications(settings, engine, client),
        repository=repository,
        numbering=numbering,
        recovery=NumberingRecovery(client, keys, settings.rabbitmq_url, topology, settings.publish_timeout_seconds),
        publisher=publisher,
        topology=topology,
        search=build_search(settings, engine),
        idempotency=IdempotencyStore(client, keys),
        limits=Limits(
            max_name_chars=settings.max_name_chars,
            max_body_chars=settings.max_body_chars,
            default_page_size=settings.default_page_size,
            max_page_size=settings.max_page_size,
            max_query_chars=settings.max_query_chars,
        ),
    )
    readiness = {"database": repository.ping, "redis": numbering.ping, "rabbitmq": lambda: publisher.is_ready}
    return service, readiness


def get_app() -> falcon.App:
    """Entry point for gunicorn: settings from the environment, one set of connections per worker."""
    logs.configure()
    settings = Settings.from_env()
    service, readiness = build_service(settings)
    service.recovery.start_watchdog()  # gunicorn loads the app in each worker, after the fork
    return create_app(service, settings, readiness)
