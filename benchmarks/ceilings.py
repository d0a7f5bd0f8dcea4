"""Ceilings: what each part the write path uses can do alone on this machine, measured in the same run.

- the Redis numbering script the API calls per create, one call per round trip and pipelined;
- RabbitMQ persistent publishes with publisher confirms, one outstanding at a time and with a window of
  outstanding confirms (what the API's shared confirm channel does), and without confirms;
- MySQL: the message-writer's own multi-row upsert statement, executed raw with the writer's batch size,
  and the same rows one per transaction (what a synchronous design pays).
Each returns operations per second (and the CPU the client used, where that matters).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pika
import pymysql
import redis
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url

from chat_api.adapters.numbering import NUMBERING_SCRIPT
from chat_common.clients.broker import BrokerNodes
from chat_common.wire.keys import RedisKeys
from message_writer.handler import UPSERT_MESSAGES


@dataclass
class Rate:
    """Operations per second, and the CPU (cores) the measuring client used meanwhile."""

    per_second: float
    client_cpu: float
    operations: int
    seconds: float

    def as_dict(self) -> dict:
        return {
            "per_second": round(self.per_second, 1),
            "client_cpu": round(self.client_cpu, 3),
            "operations": self.operations,
            "seconds": round(self.seconds, 3),
        }


class _Clock:
    def __enter__(self) -> _Clock:
        self.cpu = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.wall
        self.cpu_seconds = time.process_time() - self.cpu

    def rate(self, operations: int) -> Rate:
        return Rate(operations / self.seconds, self.cpu_seconds / self.seconds, operations, self.seconds)


# -- Redis ---------------------------------------------------------------------------------------------------
def redis_numbering(
    redis_url: str, keys: RedisKeys, application_id: int, chat_number: int, calls: int, pipeline: int
) -> Rate:
    """The API's numbering script (``new_message``): ``pipeline`` = 1 is one call per round trip, as a request does.

    The API calls it through ``redis.asyncio`` on its event loop; here the same script runs from a plain
    synchronous client (registered from the API's own source), so the figure is Redis's cost plus the least
    client work, not the benchmark's event loop.
    """
    client = redis.Redis.from_url(redis_url)
    script = client.register_script(NUMBERING_SCRIPT)
    script_keys = [keys.epoch_of(application_id), keys.numbers(application_id)]  # as Numbering.script_keys
    args = ["new_message", chat_number, 0, 0]
    try:
        status = int(script(keys=script_keys, args=args)[0])  # loads the script
        if status != 0:
            raise RuntimeError(f"numbering script answered status {status} (is numbering open in this namespace?)")
        with _Clock() as clock:
            if pipeline == 1:
                for _ in range(calls):
                    script(keys=script_keys, args=args)
            else:
                for _ in range(calls // pipeline):
                    pipe = client.pipeline(transaction=False)
                    for _ in range(pipeline):
                        script(keys=script_keys, args=args, client=pipe)
                    pipe.execute()
        return clock.rate(calls // pipeline * pipeline)
    finally:
        client.close()


# -- RabbitMQ ------------------------------------------------------------------------------------------------
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")


def publish_confirmed(amqp_url: str, queue: str, body: bytes, count: int, window: int) -> Rate:
    """Persistent publishes with confirms, keeping ``window`` unconfirmed at a time (1 = publish and wait)."""
    outstanding: set[int] = set()
    state = {"sent": 0, "confirmed": 0, "started": 0.0, "finished": 0.0, "cpu": 0.0}

    def fill(channel) -> None:
        while state["sent"] < count and len(outstanding) < window:
            state["sent"] += 1
            outstanding.add(state["sent"])
            channel.basic_publish("", queue, body, PERSISTENT, mandatory=True)

    def on_confirm(frame, channel, connection) -> None:
        tag = frame.method.delivery_tag
        done = [t for t in outstanding if t <= tag] if frame.method.multiple else [tag]
        outstanding.difference_update(done)
        state["confirmed"] += len(done)
        if state["confirmed"] >= count:
            state["finished"] = time.perf_counter()
            state["cpu"] = time.process_time() - state["cpu"]
            connection.close()
        else:
            fill(channel)

    def on_confirm_mode(channel, connection) -> None:
        state["started"], state["cpu"] = time.perf_counter(), time.process_time()
        fill(channel)

    def on_channel(channel, connection) -> None:
        channel.confirm_delivery(
            ack_nack_callback=lambda frame: on_confirm(frame, channel, connection),
            callback=lambda _frame: on_confirm_mode(channel, connection),
        )

    connection = pika.SelectConnection(
        BrokerNodes(amqp_url).parameters(0),
        on_open_callback=lambda conn: conn.channel(on_open_callback=lambda ch: on_channel(ch, conn)),
        on_close_callback=lambda conn, _reason: conn.ioloop.stop(),
    )
    connection.ioloop.start()
    seconds = state["finished"] - state["started"]
    return Rate(count / seconds, state["cpu"] / seconds, count, seconds)


def consume_only(amqp_url: str, queue: str, count: int, batch_size: int) -> Rate:
    """Drain ``count`` messages with the writer's prefetch and one ack per batch, and do nothing with them.

    The broker-side and pika-side cost of the writer's consumption alone, without decoding or the database.
    """
    connection = BrokerNodes(amqp_url).connect_blocking()
    state = {"seen": 0}
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=batch_size * 2)

        def on_message(ch, method, _properties, _body) -> None:
            state["seen"] += 1
            if state["seen"] % batch_size == 0 or state["seen"] == count:
                ch.basic_ack(method.delivery_tag, multiple=True)

        channel.basic_consume(queue, on_message)
        with _Clock() as clock:
            while state["seen"] < count:
                connection.process_data_events(time_limit=1)
        return clock.rate(count)
    finally:
        connection.close()


def publish_unconfirmed(amqp_url: str, queue: str, body: bytes, count: int) -> Rate:
    """Persistent publishes without confirms (the broker has accepted nothing durable when this returns)."""
    connection = BrokerNodes(amqp_url).connect_blocking()
    try:
        channel = connection.channel()
        with _Clock() as clock:
            for _ in range(count):
                channel.basic_publish("", queue, body, PERSISTENT)
            channel.queue_declare(queue, passive=True)  # one round trip: everything above was sent
        return clock.rate(count)
    finally:
        connection.close()


# -- MySQL ---------------------------------------------------------------------------------------------------
MESSAGE_COLUMNS = ["application_id", "chat_id", "number", "body", "version"]


def _upsert_sql() -> str:
    compiled = UPSERT_MESSAGES.compile(dialect=mysql.dialect(paramstyle="pyformat"), column_keys=MESSAGE_COLUMNS)
    return str(compiled)


def pymysql_connection(database_url: str) -> pymysql.Connection:
    """A plain DB-API connection to the URL's database (autocommit off, READ COMMITTED like the services)."""
    url = make_url(database_url)
    connection = pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=url.database,
        charset="utf8mb4",
        autocommit=False,
    )
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    return connection


def raw_insert(database_url: str, rows: Sequence[dict], batch_size: int) -> Rate:
    """The writer's upsert on ``rows`` (application_id, chat_id, number, body, version), one commit per batch."""
    sql = _upsert_sql()
    connection = pymysql_connection(database_url)
    try:
        with _Clock() as clock, connection.cursor() as cursor:
            for start in range(0, len(rows), batch_size):
                cursor.executemany(sql, rows[start : start + batch_size])
                connection.commit()
        return clock.rate(len(rows))
    finally:
        connection.close()
