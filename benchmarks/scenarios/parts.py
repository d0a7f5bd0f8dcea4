"""Scenario ``ceilings``: the parts of a create alone (Redis numbering script, RabbitMQ publish with
confirms), the ceilings the create rate is compared with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from benchmarks import ceilings
from benchmarks.knobs import MESSAGE_BODY
from chat_common.clients.broker import BrokerNodes

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def part_ceilings(bench: Bench) -> dict:
    """Redis script, RabbitMQ publish with confirms, raw batched insert: each alone."""
    s = bench.settings
    out: dict = {}
    bench.log("ceilings of the parts")
    client = redis.Redis.from_url(s.redis_url)
    token = 1 << 40  # an application id no row has: the ceiling's own counters, in a slot of its own
    client.hset(bench.keys.numbers(token), mapping={"id": 1, "chats": 1, "m:1": 0})
    opened = client.set(bench.keys.epoch_of(token), "bench", nx=True)
    out["redis_script_per_call"] = ceilings.redis_numbering(s.redis_url, bench.keys, token, 1, 20_000, 1).as_dict()
    out["redis_script_pipelined_100"] = ceilings.redis_numbering(
        s.redis_url, bench.keys, token, 1, 100_000, 100
    ).as_dict()
    client.delete(bench.keys.numbers(token))
    if opened:
        client.delete(bench.keys.epoch_of(token))
    client.close()
    bench.log(
        f"  redis numbering script: {out['redis_script_per_call']['per_second']:.0f}/s one per round trip,"
        f" {out['redis_script_pipelined_100']['per_second']:.0f}/s pipelined by 100"
    )
    queue = f"{s.queue_prefix}.ceiling"
    connection = BrokerNodes(s.rabbitmq_url).connect_blocking()
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    body = (
        b'{"v":1,"application_id":1,"chat_number":1,"message_number":1,"body":"%s","version":0}'
        % (MESSAGE_BODY.encode()[10:-2])
    )
    try:
        out["rabbitmq_publish_confirm_each"] = ceilings.publish_confirmed(
            s.rabbitmq_url, queue, body, 3000, 1
        ).as_dict()
        for window in (16, 64, 256):
            out[f"rabbitmq_publish_confirm_window_{window}"] = ceilings.publish_confirmed(
                s.rabbitmq_url, queue, body, 20_000, window
            ).as_dict()
        unconfirmed = ceilings.publish_unconfirmed(s.rabbitmq_url, queue, body, 30_000)
        out["rabbitmq_publish_unconfirmed"] = unconfirmed.as_dict()
    finally:
        channel.queue_delete(queue)
        connection.close()
    rates = (f"{k.removeprefix('rabbitmq_publish_')} {v['per_second']:.0f}/s" for k, v in out.items() if "rabbit" in k)
    bench.log("  rabbitmq persistent publish: " + ", ".join(rates))
    return out


def run(bench: Bench) -> dict:
    """The figures under ``ceilings``."""
    return {"ceilings": part_ceilings(bench)}
