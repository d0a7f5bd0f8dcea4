"""Scenario ``drain`` (scenario 4): how fast the message-writers drain a full queue, beside the writer's own
upsert run raw on the same rows and a consume-only ceiling.

The queue is filled twice with the same upserts: as bundles of ``BENCH_DRAIN_BUNDLE`` (what the writers get from the
coalescing API: ``writers_<n>``, ``ratio_writer_vs_raw``), then as single messages (the format without coalescing, and
of every message before bundles: the ``..._singles`` keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import ceilings, data
from benchmarks.knobs import DRAIN_BUNDLE, DRAIN_MESSAGES
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
        "bundle_size": DRAIN_BUNDLE,
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
    for bundle_size, suffix in ((DRAIN_BUNDLE, ""), (1, "_singles")):
        for writers in (1, 2):
            out[f"writers_{writers}{suffix}"] = drain_once(bench, label, writers, per_chat, bundle_size)
    bench.api.set_message_writers(1)
    # Consuming and inserting one after the other, as one writer process does: 1 / (1/consume + 1/insert).
    serial = 1 / (1 / out["raw_consume"]["per_second"] + 1 / raw.per_second)
    for suffix in ("", "_singles"):
        writer = out[f"writers_1{suffix}"]["rows_per_s"]
        out[f"ratio_writer_vs_raw{suffix}"] = round(writer / raw.per_second, 3)
        out[f"ratio_writer_vs_consume_then_insert{suffix}"] = round(writer / serial, 3)
    return out


def drain_once(bench: Bench, label: str, writers: int, per_chat: int, bundle_size: int) -> dict:
    """``writers`` message-writers started in front of a queue filled with ``per_chat`` messages of 100 chats of a
    new application, in bundles of ``bundle_size`` (1: single messages): their rate, CPU and peak RSS."""
    total = per_chat * 100
    kind = f"bundles of {bundle_size}" if bundle_size > 1 else "single messages"
    token = bench.client.new_application(f"drain {label} {writers} {kind}")
    app_id = data.application_id(bench.engine, token)
    data.insert_chats(bench.engine, app_id, range(1, 101))
    bench.api.set_message_writers(0)
    payloads = data.message_payloads(app_id, range(1, 101), per_chat)
    queued = data.prefill_queue(bench.settings.rabbitmq_url, bench.topology.messages.name, payloads, bundle_size)
    bench.log(f"  {queued} upserts queued in {kind}; starting {writers} message-writer(s)")
    pids = bench.api.set_message_writers(writers)
    meter = bench.api.cpu_meter().start()
    meter.roles["writers"] = pids
    data.wait_for(lambda: data.count_messages(bench.engine, app_id) >= total, 900, 0.5, "drain")
    cores = meter.stop()
    rss = [peak_rss_mb(pid) for pid in pids]
    rate, count, span = data.drain_rate(bench.engine, app_id)
    bench.log(f"  {writers} writer(s), {kind}: {rate:.0f} rows/s ({count} rows in {span:.1f}s), peak RSS {max(rss)} MB")
    return {
        "rows_per_s": round(rate, 1),
        "rows": count,
        "seconds": round(span, 3),
        "cpu_cores": cores,
        "peak_rss_mb": max(rss),
    }


def peak_rss_mb(pid: int) -> float:
    """A running process's peak resident set (VmHWM), in MB; 0.0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


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
