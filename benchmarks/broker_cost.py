"""`python -m benchmarks.broker_cost [--nodes 1|3] [--rate N]`: RabbitMQ's CPU per message, single vs bundled.

A private broker (one node, or a 3-node cluster; ``chat_devtools.rabbit_cluster``) with one quorum queue: a publisher
in confirm mode (up to 32 messages unconfirmed, as the API's processes under load) and one consumer acknowledging
every 16 deliveries (``multiple``, as the writers do). It sends message creates' upserts one per message, then as
bundles of 16 (``chat_common.wire.bundles``), and prints one JSON line per run: the broker's CPU (every node's
user + system time) per message and per upsert. ``--rate``: messages per second (0: as fast as the broker confirms).

Why it exists (issue #27, docs/performance.md): the broker's cost is almost all per *message* and depends on the
message *rate* — each message is a Raft command, a WAL write and sync, and scheduler wake-ups, shared only by the
messages that arrive together — and hardly on its size: at a given rate a bundle of 16 costs about what one create
costs. The CPU per create the full benchmark reports therefore depends on how many messages per second the load
makes, not only on the bundle size.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import pika

from chat_devtools.rabbit_cluster import RabbitCluster

ONE_UPSERT = (
    b'{"application_id":1234,"chat_number":17,"message_number":123456,"body":"hello everyone, the benchmark says hi'
    b' and asks how you are","version":0,"idempotency_key":null,"fingerprint":null}'
)
WINDOW = 32  # messages published and not yet confirmed
ACK_EVERY = 16


def broker_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the broker's processes so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def consume(url: str, queue: str, total: int, done: threading.Event) -> None:
    """Take ``total`` messages, acknowledging every ``ACK_EVERY`` at once."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=WINDOW * 2)
    received = 0

    def on_message(ch, method, _properties, _body) -> None:
        nonlocal received
        received += 1
        if received % ACK_EVERY == 0 or received == total:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if received >= total:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    connection.close()
    done.set()


def publish(url: str, queue: str, total: int, body: bytes, headers: dict, rate: float) -> None:
    """Publish ``total`` persistent messages in confirm mode, at most ``WINDOW`` unconfirmed, paced at ``rate``."""
    sent = confirmed = 0
    started = time.monotonic()
    properties = pika.BasicProperties(delivery_mode=2, headers=headers)
    timer = None

    def pump(channel) -> None:
        nonlocal sent, timer
        allowed = total if not rate else min(total, int(rate * (time.monotonic() - started)) + 1)
        while sent < allowed and sent - confirmed < WINDOW:
            channel.basic_publish("", queue, body, properties)
            sent += 1
        if sent == allowed < total and timer is None:  # held by the pace, not the window: come back shortly
            timer = channel.connection.ioloop.call_later(0.002, lambda: tick(channel))

    def tick(channel) -> None:
        nonlocal timer
        timer = None
        pump(channel)

    def on_confirm(channel, frame) -> None:
        nonlocal confirmed
        confirmed = frame.method.delivery_tag
        if confirmed >= total:
            channel.connection.close()
        else:
            pump(channel)

    def on_channel(channel) -> None:
        channel.confirm_delivery(lambda frame: on_confirm(channel, frame))
        pump(channel)

    connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, _reason: c.ioloop.stop(),
    )
    connection.ioloop.start()


def measure(url: str, pids: list[int], parts: int, messages: int, rate: float) -> dict:
    """One run: ``messages`` messages of ``parts`` upserts each through a fresh quorum queue (deleted after)."""
    queue = f"broker-cost.{os.getpid()}.{parts}.{time.monotonic_ns()}"
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        connection.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    stamp = int(time.time() * 1000)
    headers: dict = {"x-published-at-ms": stamp}
    if parts > 1:
        headers |= {"x-bundle": parts, "x-published-at-ms-each": [stamp] * parts}
    done = threading.Event()
    consumer = threading.Thread(target=consume, args=(url, queue, messages, done), daemon=True)
    consumer.start()
    time.sleep(0.5)
    cpu, started = broker_cpu_seconds(pids), time.monotonic()
    publish(url, queue, messages, b"\n".join([ONE_UPSERT] * parts), headers, rate)
    done.wait(300)
    wall, cpu = time.monotonic() - started, broker_cpu_seconds(pids) - cpu
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        connection.channel().queue_delete(queue)
    return {
        "upserts_per_message": parts,
        "messages": messages,
        "messages_per_s": round(messages / wall),
        "broker_us_per_message": round(cpu / messages * 1e6, 1),
        "broker_us_per_upsert": round(cpu / messages / parts * 1e6, 1),
    }


def main() -> None:
    """Singles then bundles of 16 on a private broker; one JSON line per run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.broker_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1, choices=(1, 3))
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second (0: as fast as confirmed)")
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    with RabbitCluster(size=args.nodes) as cluster:
        pids = [pid for node in cluster.nodes if (pid := node.server_pid) is not None]
        time.sleep(3)  # let the nodes settle after boot
        for parts in (1, 16):
            result = measure(cluster.nodes[0].url, pids, parts, args.messages, args.rate)
            print(json.dumps({"nodes": args.nodes, "rate": args.rate, **result}), flush=True)


if __name__ == "__main__":
    main()
