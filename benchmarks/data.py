"""Test data at benchmark scale: chat rows, millions of message rows, pre-filled queues, and waiting for drains.

Bulk data goes straight into MySQL or RabbitMQ (not through the API): the scenarios measure the system,
not how long it takes to set up their data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import pika
from sqlalchemy import Engine, text

from benchmarks.ceilings import pymysql_connection
from chat_common.clients.broker import BrokerNodes
from chat_common.wire import bundles
from chat_common.wire.contracts import MessageUpsert
from chat_common.wire.stamps import PUBLISHED_AT_HEADER, stamp_header
from chat_devtools.sql import fetch_all

# fmt: off
WORDS = (
    "hello", "world", "chat", "message", "benchmark", "queue", "writer", "redis", "rabbit", "mysql", "python",
    "falcon", "gunicorn", "latency", "throughput", "morning", "evening", "lunch", "meeting", "project", "deadline",
    "coffee", "weekend", "holiday", "review", "release", "deploy", "rollback", "incident", "pager", "alert",
    "metric", "dashboard", "search", "index", "fragment", "unicode", "emoji", "thanks", "please", "sorry", "great",
    "awesome", "okay", "maybe", "tomorrow", "today", "yesterday", "later", "soon", "never", "always", "sometimes",
    "question", "answer",
)
# fmt: on


def body_for(number: int) -> str:
    """A deterministic chat-like body of 6-10 words (~50 characters)."""
    count = 6 + number % 5
    return " ".join(WORDS[(number * 7 + i * 13) % len(WORDS)] for i in range(count)) + f" #{number}"


def application_id(engine: Engine, token: str) -> int:
    """Row id of an application created through the API."""
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)"), {"t": token}
        ).scalar_one()


def insert_chats(engine: Engine, app_id: int, numbers: Iterable[int]) -> dict[int, int]:
    """Chat rows written directly (numbers must be new for the application); returns number -> chat id."""
    numbers = list(numbers)
    with engine.begin() as conn:
        for chunk in _chunks(numbers, 5000):
            conn.execute(
                text("INSERT INTO chats (application_id, number, name) VALUES (:a, :n, :name)"),
                [{"a": app_id, "n": n, "name": f"chat {n}"} for n in chunk],
            )
        rows = conn.execute(
            text("SELECT number, id FROM chats WHERE application_id = :a AND number BETWEEN :lo AND :hi"),
            {"a": app_id, "lo": min(numbers), "hi": max(numbers)},
        )
        return {number: chat_id for number, chat_id in rows}


def bulk_messages(database_url: str, app_id: int, rows: Iterable[tuple[int, int]], batch_size: int = 5000) -> int:
    """Insert (chat id, number) message rows of one application with generated bodies, fast: big multi-row INSERTs."""
    sql = "INSERT INTO messages (application_id, chat_id, number, body) VALUES (%s, %s, %s, %s)"
    connection = pymysql_connection(database_url)
    written = 0
    try:
        with connection.cursor() as cursor:
            for chunk in _chunks(rows, batch_size):
                cursor.executemany(sql, [(app_id, chat_id, n, body_for(n)) for chat_id, n in chunk])
                connection.commit()
                written += len(chunk)
    finally:
        connection.close()
    return written


def message_rows(app_id: int, chat_ids: dict[int, int], per_chat: int) -> list[dict]:
    """Rows shaped like the message-writer's upsert parameters: ``per_chat`` messages in every chat."""
    return [
        {"application_id": app_id, "chat_id": chat_id, "number": n, "body": body_for(n), "version": 0}
        for chat_id in chat_ids.values()
        for n in range(1, per_chat + 1)
    ]


def message_payloads(app_id: int, chat_numbers: Iterable[int], per_chat: int) -> Iterator[bytes]:
    """Queue messages exactly as the API publishes them, ``per_chat`` for every chat."""
    for chat in chat_numbers:
        for n in range(1, per_chat + 1):
            yield MessageUpsert(app_id, chat, n, body_for(n)).encode()


def prefill_queue(amqp_url: str, queue: str, payloads: Iterable[bytes], bundle_size: int = 1) -> int:
    """Publish persistent messages without confirms, then wait until the queue holds all of them; returns how many
    upserts were queued. ``bundle_size`` > 1: consecutive payloads travel as bundles of that many upserts, as the
    coalescing API sends them (chat_common.wire.bundles; a last, smaller bundle of one is a single message)."""
    connection = BrokerNodes(amqp_url).connect_blocking()
    try:
        channel = connection.channel()
        start = channel.queue_declare(queue, passive=True).method.message_count
        messages = upserts = 0
        iterator = iter(payloads)
        while group := list(islice(iterator, max(bundle_size, 1))):
            stamp = time.time()
            if len(group) == 1:
                body, headers, content_type = group[0], {PUBLISHED_AT_HEADER: stamp_header(stamp)}, "application/json"
            else:
                body, headers = bundles.pack(group, [stamp] * len(group))
                content_type = bundles.BUNDLE_CONTENT_TYPE
            properties = pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent, content_type=content_type, headers=headers
            )
            channel.basic_publish("", queue, body, properties)
            messages += 1
            upserts += len(group)
        wait_for(lambda: channel.queue_declare(queue, passive=True).method.message_count >= start + messages, 60)
        return upserts
    finally:
        connection.close()


def queue_depth(amqp_url: str, queue: str) -> int:
    """Messages ready in a queue (not counting those delivered and unacknowledged)."""
    connection = BrokerNodes(amqp_url).connect_blocking()
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def count_messages(engine: Engine, app_id: int) -> int:
    """Message rows of one application."""
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT COUNT(*) FROM messages WHERE application_id = :a"),
            {"a": app_id},
        ).scalar_one()


def total_messages(engine: Engine) -> int:
    """All message rows (InnoDB's exact count, fine at a few million rows)."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM messages")).scalar_one()


def write_times(engine: Engine, app_id: int) -> dict[tuple[int, int], float]:
    """(chat number, message number) -> when its row was written (``created_at``, Unix seconds)."""
    rows = fetch_all(
        engine,
        "SELECT c.number, m.number, UNIX_TIMESTAMP(m.created_at) FROM messages m"
        " JOIN chats c ON c.application_id = m.application_id AND c.id = m.chat_id WHERE m.application_id = :a",
        a=app_id,
    )
    return {(chat, number): float(at) for chat, number, at in rows}


def drain_rate(engine: Engine, app_id: int) -> tuple[float, int, float]:
    """Rows/s of the writes of one application, from the rows' own ``created_at`` stamps.

    ``created_at`` is NOW(6) at the start of the statement that wrote the batch, so the span from the first
    to the last stamp covers every batch but the last: rate = rows before the last batch / span.
    Returns (rows per second, rows, seconds).
    """
    with engine.connect() as conn:
        first, last, rows = conn.execute(
            text("SELECT MIN(created_at), MAX(created_at), COUNT(*) FROM messages WHERE application_id = :a"),
            {"a": app_id},
        ).one()
        in_last = conn.execute(
            text("SELECT COUNT(*) FROM messages WHERE application_id = :a AND created_at = :last"),
            {"a": app_id, "last": last},
        ).scalar_one()
    span = (last - first).total_seconds()
    return ((rows - in_last) / span if span > 0 else 0.0), rows, span


def wait_for(probe: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll until ``probe()`` is truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
