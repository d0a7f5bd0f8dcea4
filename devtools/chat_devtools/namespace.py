"""An isolated namespace per test run: its own database, Redis key prefix and queue names.

Two runs (or a run beside `make run`) never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pika
from sqlalchemy.engine import make_url

from chat_common.clients.broker import BrokerNodes
from chat_common.clients.db import drop_database
from chat_common.clients.redis_client import sync_client
from chat_common.config import Settings
from chat_common.ops.migrate import upgrade
from chat_common.tenancy.tokens import new_sealing_key
from chat_common.wire.topology import Topology, announcements_exchange

BASE_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/?charset=utf8mb4")
# The one origin the test systems allow by CORS (CORS_ALLOWED_ORIGINS) on the stream and ticket routes.
TEST_ORIGIN = "http://allowed-origin.test"


@dataclass(frozen=True)
class Namespace:
    """Names and settings of one isolated namespace."""

    name: str
    settings: Settings

    @classmethod
    def create(cls, label: str = "t", **overrides: object) -> Namespace:
        """Create and migrate a fresh database; choose fresh key and queue prefixes."""
        name = f"cs_{label}_{uuid.uuid4().hex[:10]}"
        url = make_url(BASE_DATABASE_URL).set(database=name).render_as_string(hide_password=False)
        defaults = dict(
            database_url=url,
            redis_key_prefix=f"{name}:",
            queue_prefix=name,
            search_index=f"{name}_messages",
            publish_timeout_seconds=2.0,
            writer_max_wait_seconds=0.1,
            writer_retry_delays_seconds=(1, 2),
            token_sealing_key=new_sealing_key(),  # as the chart generates one: sealed token copies (docs/security.md)
            webhook_sealing_key=new_sealing_key(),  # webhook endpoints' signing secrets (chat_common.tenancy.webhooks)
            stream_ticket_keys=new_sealing_key(),  # stream tickets are signed with it (chat_api.use_cases.tickets)
            cors_allowed_origins=TEST_ORIGIN,  # the origin the HTTP tests send for the routes that opt into CORS
        )
        defaults.update(overrides)
        settings = Settings.from_env(**defaults)
        upgrade(settings.database_url)
        return cls(name, settings)

    def environ(self) -> dict[str, str]:
        """Environment variables that make a child process use this namespace."""
        s = self.settings
        env = {
            "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url,
            "RABBITMQ_URL": s.rabbitmq_url,
            "REDIS_KEY_PREFIX": s.redis_key_prefix,
            "QUEUE_PREFIX": s.queue_prefix,
            "QUEUE_TYPE": s.queue_type,
            "SEARCH_INDEX": s.search_index,
            "PUBLISH_TIMEOUT_SECONDS": str(s.publish_timeout_seconds),
            "PUBLISH_COALESCE": str(s.publish_coalesce).lower(),
            "PUBLISH_COALESCE_WAIT_MS": str(s.publish_coalesce_wait_ms),
            "WRITER_MAX_WAIT_SECONDS": str(s.writer_max_wait_seconds),
            "WRITER_RETRY_DELAYS_SECONDS": ",".join(str(d) for d in s.writer_retry_delays_seconds),
            "WRITER_MAX_ATTEMPTS": str(s.writer_max_attempts),
        }
        if s.admin_api_key:
            env["ADMIN_API_KEY"] = s.admin_api_key
        if s.token_sealing_key:
            env["TOKEN_SEALING_KEY"] = s.token_sealing_key
        if s.webhook_sealing_key:
            env["WEBHOOK_SEALING_KEY"] = s.webhook_sealing_key
        if s.stream_ticket_keys:
            env["STREAM_TICKET_KEYS"] = s.stream_ticket_keys
        if s.cors_allowed_origins:
            env["CORS_ALLOWED_ORIGINS"] = s.cors_allowed_origins
        env["STREAM_TICKET_SECONDS"] = str(s.stream_ticket_seconds)
        if s.elasticsearch_url:
            env["ELASTICSEARCH_URL"] = s.elasticsearch_url
        return env

    def flush_redis(self) -> None:
        """Delete this namespace's Redis keys only (what FLUSHALL would do to it)."""
        client = sync_client(self.settings.redis_url)
        keys = list(client.scan_iter(match=f"{self.settings.redis_key_prefix}*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:  # one DEL each: on Redis Cluster the keys live in many slots
            pipe.delete(key)
        pipe.execute()
        client.close()

    def destroy(self) -> None:
        """Drop the database, the Redis keys and the queues."""
        self.flush_redis()
        drop_database(self.settings.database_url)
        topology = Topology(self.settings.queue_prefix, self.settings.writer_retry_delays_seconds)
        # RABBITMQ_URL may list several nodes (a cluster): any one of them can delete the queues.
        try:
            connection = BrokerNodes.from_settings(self.settings).connect_blocking()
        except (pika.exceptions.AMQPError, OSError):
            return
        try:
            channel = connection.channel()
            for queue in (topology.chats, topology.messages):
                for name in (queue.name, queue.dead_letter, *queue.retry_queues, *queue.legacy_retry_queues):
                    channel.queue_delete(name)
            channel.exchange_delete(announcements_exchange(self.settings.queue_prefix))  # live streams' exchange
        finally:
            connection.close()
