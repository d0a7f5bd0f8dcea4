"""Process wiring shared by the chat-writer and message-writer: settings, connections, heartbeat, loop.

A writer package supplies only its queue and its batch handler (see ``chat_writer`` and ``message_writer``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
import sqlalchemy.exc
from sqlalchemy import Engine

from chat_common import logs
from chat_common.config import Settings
from chat_common.consumer import BatchConsumer, BatchHandler
from chat_common.db import make_engine
from chat_common.keys import RedisKeys
from chat_common.metrics import serve_metrics
from chat_common.topology import Topology, WorkQueue

log = logging.getLogger(__name__)

# Failures that say "a dependency is down, try the same batch again later", not "this batch is wrong".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


STALE_HEARTBEAT_SECONDS = 600


def prune_heartbeats(client: redis.Redis, keys: RedisKeys, now: float) -> int:
    """Forget heartbeats of writers that died without saying goodbye (SIGKILL, OOM); returns how many."""
    stale = []
    for field, raw in client.hgetall(keys.writer_heartbeats).items():
        try:
            at = float(raw.decode().partition(":")[2])
        except ValueError:
            at = 0.0
        if now - at > STALE_HEARTBEAT_SECONDS:
            stale.append(field)
    if stale:
        client.hdel(keys.writer_heartbeats, *stale)
    return len(stale)


@dataclass(frozen=True)
class WriterContext:
    """What a batch handler may use: settings and the connections of this process."""

    settings: Settings
    engine: Engine
    redis: redis.Redis
    keys: RedisKeys


def build_consumer(
    settings: Settings,
    pick_queue: Callable[[Topology], WorkQueue],
    make_handler: Callable[[WriterContext], BatchHandler],
) -> tuple[BatchConsumer, WriterContext]:
    """A consumer for one writer, connected to the configured database, Redis and broker."""
    context = WriterContext(
        settings=settings,
        engine=make_engine(settings.database_url, pool_size=2),
        redis=redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5),
        keys=RedisKeys(settings.redis_key_prefix),
    )
    topology = Topology(settings.queue_prefix, settings.writer_retry_delays_seconds)

    last_prune = [0.0]

    def heartbeat(consumer_id: str, unacked: int) -> None:
        now = time.time()
        context.redis.hset(context.keys.writer_heartbeats, consumer_id, f"{unacked}:{now:.3f}")
        if now - last_prune[0] > STALE_HEARTBEAT_SECONDS:
            last_prune[0] = now
            prune_heartbeats(context.redis, context.keys, now)

    consumer = BatchConsumer(
        amqp_url=settings.rabbitmq_url,
        queue=pick_queue(topology),
        handler=(handler := make_handler(context)),
        transient_errors=TRANSIENT_ERRORS,
        batch_size=settings.writer_batch_size,
        max_wait=settings.writer_max_wait_seconds,
        max_attempts=settings.writer_max_attempts,
        heartbeat=heartbeat,
        declare=topology.declare,
        tick=getattr(handler, "tick", None),
    )
    return consumer, context


def run_writer(
    pick_queue: Callable[[Topology], WorkQueue], make_handler: Callable[[WriterContext], BatchHandler]
) -> None:
    """Run a writer process until SIGTERM/SIGINT."""
    logs.configure()
    settings = Settings.from_env()
    serve_metrics(settings.metrics_port)
    consumer, context = build_consumer(settings, pick_queue, make_handler)
    consumer.install_signal_handlers()
    try:
        consumer.run()
    finally:
        with contextlib.suppress(redis.RedisError):
            context.redis.hdel(context.keys.writer_heartbeats, consumer.consumer_id)
        context.engine.dispose()
