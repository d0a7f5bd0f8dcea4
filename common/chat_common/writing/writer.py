"""Process wiring shared by the chat-writer and message-writer: settings, connections, heartbeat, loop.

A writer package supplies only its queue, its batch handler and, if it has one, its periodic chore (see
``chat_writer`` and ``message_writer``). The heartbeat it writes has its format in :mod:`chat_common.wire.heartbeats`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
import sqlalchemy.exc
from sqlalchemy import Engine

from chat_common import logs
from chat_common.clients.broker import WRITER, BrokerNodes
from chat_common.clients.db import make_engine
from chat_common.clients.redis_client import sync_client
from chat_common.config import Settings
from chat_common.metrics import serve_metrics
from chat_common.wire.announcements import Announcer, listened_chats
from chat_common.wire.heartbeats import format_heartbeat, parse_heartbeat
from chat_common.wire.keys import RedisKeys
from chat_common.wire.topology import Topology, WorkQueue, announcements_exchange
from chat_common.writing.consumer import BatchConsumer, BatchHandler, BatchResult, Delivery, LoopState
from chat_common.writing.consumer_hooks import (
    AnnouncementRetry,
    DeferralLedger,
    HeartbeatHook,
    PeriodicChore,
    QueueDepthSampler,
    WriterMetrics,
)
from chat_common.writing.retry_tiers import format_overdue_report

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
# How often the message-writer drains its search backlog between batches.
CHORE_EVERY_SECONDS = 2.0


def prune_heartbeats(client: redis.Redis, keys: RedisKeys, now: float) -> int:
    """Forget heartbeats (and retry-tier reports) of writers that died without saying goodbye (SIGKILL, OOM);
    returns how many."""
    stale = []
    for field, raw in client.hgetall(keys.writer_heartbeats).items():
        if now - parse_heartbeat(raw).at > STALE_HEARTBEAT_SECONDS:
            stale.append(field)
    if stale:
        client.hdel(keys.writer_heartbeats, *stale)
        client.hdel(keys.retry_overdue, *stale)
    return len(stale)


def retry_some_on_purpose(handler: BatchHandler, ratio: float) -> BatchHandler:
    """Test-only fault (``TEST_FAULT_WRITER_RETRY_RATIO``): ``ratio`` of the first and second attempts go to the retry
    tiers without being applied, as if their chat were not written yet. The choice depends on the message and its
    attempt only, so a redelivered batch makes the same choice."""

    def chosen(delivery: Delivery) -> bool:
        digest = hashlib.blake2b(delivery.body + bytes([delivery.attempt]), digest_size=8).digest()
        return delivery.attempt < 2 and int.from_bytes(digest) / 2**64 < ratio

    def handle(deliveries):
        retried = [d for d in deliveries if chosen(d)]
        rest = [d for d in deliveries if not chosen(d)]
        result = handler(rest) if rest else BatchResult()
        result.retry.extend((d, "test fault: retried on purpose") for d in retried)
        return result

    return handle


@dataclass(frozen=True)
class WriterContext:
    """What a batch handler may use: settings and the connections of this process."""

    settings: Settings
    engine: Engine
    redis: redis.Redis
    keys: RedisKeys
    # Announces committed rows to the API's live streams: only for a writer built with ``announces=True`` (the
    # message-writer calls ``committed`` and ``flush`` after its commit); None for the others.
    announcer: Announcer | None = None


H = TypeVar("H", bound=BatchHandler)


def build_consumer(
    settings: Settings,
    pick_queue: Callable[[Topology], WorkQueue],
    make_handler: Callable[[WriterContext], H],
    chore: Callable[[H], None] | None = None,
    announces: bool = False,
) -> tuple[BatchConsumer, WriterContext]:
    """A consumer for one writer, connected to the configured database, Redis and broker.

    ``chore``, when given, is called with the handler every ``CHORE_EVERY_SECONDS`` between batches. ``announces``:
    the handler announces its commits to the API's live streams (it gets an announcer, with its own channel on each
    connection of the loop, and what it leaves unsent is sent again between batches).
    """
    client = sync_client(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    keys = RedisKeys(settings.redis_key_prefix)
    context = WriterContext(
        settings=settings,
        engine=make_engine(settings.database_url, pool_size=2),
        redis=client,
        keys=keys,
        announcer=(
            Announcer(announcements_exchange(settings.queue_prefix), listened_chats(client, keys.stream_rooms))
            if announces
            else None
        ),
    )
    topology = Topology.from_settings(settings)

    last_prune = [0.0]
    beats = [0]

    def heartbeat(state: LoopState) -> None:
        now = time.time()
        beats[0] += 1
        value = format_heartbeat(
            state.held, now, state.oldest, state.last, state.firsts, state.session, beats[0], state.deliveries
        )
        pipe = context.redis.pipeline(transaction=False)
        pipe.hset(context.keys.writer_heartbeats, state.consumer_id, value)
        pipe.hset(context.keys.retry_overdue, state.consumer_id, format_overdue_report(state.retry_overdue, now))
        # The deferral ledger is complete from this time on (set again right after Redis lost it).
        pipe.set(context.keys.deferred_since, f"{now:.3f}", nx=True)
        pipe.execute()
        if now - last_prune[0] > STALE_HEARTBEAT_SECONDS:
            last_prune[0] = now
            prune_heartbeats(context.redis, context.keys, now)

    def defer(entries: dict[str, float]) -> None:
        context.redis.zadd(context.keys.deferred, entries, lt=True)  # a copy published earlier keeps its stamp

    def settle(names: list[str]) -> None:
        context.redis.zrem(context.keys.deferred, *names)

    handler = make_handler(context)
    applied = (
        handler
        if not settings.test_fault_writer_retry_ratio
        else retry_some_on_purpose(handler, settings.test_fault_writer_retry_ratio)
    )
    hooks = [WriterMetrics(), HeartbeatHook(heartbeat, TRANSIENT_ERRORS), QueueDepthSampler()]
    hooks.append(DeferralLedger(defer, settle))
    announcer = context.announcer
    if announcer is not None:
        hooks.append(AnnouncementRetry(announcer))

    def declare(channel) -> None:
        topology.declare(channel)
        if announcer is not None:
            announcer.attach(channel)  # a channel of its own on each new connection of the loop

    if chore is not None:
        hooks.append(PeriodicChore(lambda: chore(handler), TRANSIENT_ERRORS, every=CHORE_EVERY_SECONDS))
    consumer = BatchConsumer(
        broker=BrokerNodes.from_settings(settings, WRITER),
        queue=pick_queue(topology),
        handler=applied,
        transient_errors=TRANSIENT_ERRORS,
        batch_size=settings.writer_batch_size,
        max_wait=settings.writer_max_wait_seconds,
        max_attempts=settings.writer_max_attempts,
        declare=declare,
        hooks=hooks,
        retry_prefetch=settings.writer_retry_prefetch,
    )
    return consumer, context


def run_writer(
    pick_queue: Callable[[Topology], WorkQueue],
    make_handler: Callable[[WriterContext], H],
    chore: Callable[[H], None] | None = None,
    announces: bool = False,
) -> None:
    """Run a writer process until SIGTERM/SIGINT (``chore``, ``announces``: see :func:`build_consumer`)."""
    logs.configure()
    settings = Settings.from_env()
    serve_metrics(settings.metrics_port)
    consumer, context = build_consumer(settings, pick_queue, make_handler, chore, announces)
    consumer.install_signal_handlers()
    try:
        consumer.run()
    finally:
        with contextlib.suppress(redis.RedisError):
            context.redis.hdel(context.keys.writer_heartbeats, consumer.consumer_id)
            context.redis.hdel(context.keys.retry_overdue, consumer.consumer_id)
        context.engine.dispose()
