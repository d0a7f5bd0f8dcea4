"""Scenario ``drain`` (scenario 4): how fast the message-writers drain a full queue, beside the writer's own
upsert run raw on the same rows and a consume-only ceiling."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import ceilings, data
from benchmarks.knobs import DRAIN_MESSAGES
from chat_common.clients.broker import BrokerNodes

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def drains(bench: Bench, label: str) -> dict:
    """Scenario 4 with its ceiling: the writer's own upsert run raw on the same rows, then 1 and 2 writers."""
    per_chat = max(DRAIN_MESSAGES // 100, 1)
    total = per_chat * 100
    out: dict = {
        "messages": total,
        "batch_size": bench.settings.writer_batch_size,
        "table_rows_before": data.total_messages(bench.engine),
    }
    token = bench.client.new_application(f"raw {label}")
    raw_app = data.application_id(bench.engine, token)
    raw_chats = data.insert_chats(bench.engine, raw_app, range(1, 101))
    rows = data.message_rows(raw_app, raw_chats, per_chat)
    bench.log(f"scenario 4 ({label}, {out['table_rows_before']} rows in the table): raw upsert of {total} rows")
    raw = ceilings.raw_insert(bench.settings.database_url, rows, bench.settings.writer_batch_size)
    out["raw_insert"] = raw.as_dict()
    bench.log(f"  raw batched upsert (batch {bench.settings.writer_batch_size}): {raw.per_second:.0f} rows/s")
    out["raw_consume"] = consume_ceiling(bench, data.message_payloads(1, range(1, 101), per_chat), total).as_dict()
    bench.log(f"  raw consume and ack, no database: {out['raw_consume']['per_second']:.0f} messages/s")
    for writers in (1, 2):
        token = bench.client.new_application(f"drain {label} {writers}")
        app_id = data.application_id(bench.engine, token)
        data.insert_chats(bench.engine, app_id, range(1, 101))
        bench.api.set_message_writers(0)
        payloads = data.message_payloads(app_id, range(1, 101), per_chat)
        queued = data.prefill_queue(bench.settings.rabbitmq_url, bench.topology.messages.name, payloads)
        bench.log(f"  {queued} messages queued; starting {writers} message-writer(s)")
        pids = bench.api.set_message_writers(writers)
        meter = bench.api.cpu_meter().start()
        meter.roles["writers"] = pids
        data.wait_for(lambda a=app_id: data.count_messages(bench.engine, a) >= total, 900, 0.5, "drain")
        cores = meter.stop()
        rate, count, span = data.drain_rate(bench.engine, app_id)
        out[f"writers_{writers}"] = {
            "rows_per_s": round(rate, 1),
            "rows": count,
            "seconds": round(span, 3),
            "cpu_cores": cores,
        }
        bench.log(f"  {writers} writer(s): {rate:.0f} rows/s ({count} rows in {span:.1f}s)")
    bench.api.set_message_writers(1)
    writer = out["writers_1"]["rows_per_s"]
    out["ratio_writer_vs_raw"] = round(writer / raw.per_second, 3)
    # Consuming and inserting one after the other, as one writer process does: 1 / (1/consume + 1/insert).
    serial = 1 / (1 / out["raw_consume"]["per_second"] + 1 / raw.per_second)
    out["ratio_writer_vs_consume_then_insert"] = round(writer / serial, 3)
    return out


def consume_ceiling(bench: Bench, payloads, count: int) -> ceilings.Rate:
    """The writer's consumption alone: the same messages from a queue of their own, consumed and acked."""
    queue = f"{bench.settings.queue_prefix}.ceiling"
    connection = BrokerNodes(bench.settings.rabbitmq_url).connect_blocking()
    try:
        connection.channel().queue_declare(queue, durable=True)
        data.prefill_queue(bench.settings.rabbitmq_url, queue, payloads)
        return ceilings.consume_only(bench.settings.rabbitmq_url, queue, count, bench.settings.writer_batch_size)
    finally:
        connection.channel().queue_delete(queue)
        connection.close()


def run(bench: Bench) -> dict:
    """The figures under ``drain``: the drain before the table is filled."""
    return {"drain": drains(bench, "before the fill")}
