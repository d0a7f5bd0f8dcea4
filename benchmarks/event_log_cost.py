"""`python -m benchmarks.event_log_cost [ROUNDS]`: what recording the event log costs the message-writer's batches.

In one process, on a namespace of its own: the real ``MessageBatchWriter`` applies batches of 500 first-delivery
creates (one tenant), with the event log recorded three ways, interleaved round by round in a shuffled order so a
shared, noisy machine weighs on each alike:

- ``none``: no record (the writer before the event log);
- ``autoinc``: the earlier design, one multi-row ``INSERT IGNORE`` with ``AUTO_INCREMENT`` ids (``events.id`` is
  made an ``AUTO_INCREMENT`` in this namespace for it; readers then had to wait at id gaps);
- ``sequence``: ``chat_common.wire.events`` as it is (ids from ``event_sequence``, its lock held to the commit).

Each way runs with 1 writer (batches one after another) and with 2 writers on the same tenant (two threads, each
its own connection and chats, batches at once). Prints one JSON line: messages/s per way and writer count (median
of the rounds), each way's ratio to ``none`` (of the medians, and the median of the ratios paired within a round).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable

import redis
from sqlalchemy import Connection, text

import message_writer.handler as handler
from chat_common.clients.db import make_engine
from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from chat_common.wire.events import Change, record_events
from chat_common.wire.keys import RedisKeys
from chat_common.writing.batches import Delivery
from chat_common.writing.writer import WriterContext
from chat_devtools.namespace import Namespace
from chat_writer.handler import ChatBatchWriter

BATCH, BATCHES = 500, 12


def _autoinc(conn: Connection, changes, seen_before: bool = False) -> int:
    """The earlier design's record (redelivered batches aside: every batch here is a first delivery)."""
    unique = list(dict.fromkeys(changes))
    if unique:
        values = ",".join(f"({int(a)},{int(c)},{int(m)},{int(v)})" for a, c, m, v in unique)
        conn.exec_driver_sql(
            "INSERT IGNORE INTO events (application_id, chat_number, message_number, version) VALUES " + values
        )
    return len(unique)


def _none(conn: Connection, changes: list[Change], seen_before: bool = False) -> int:
    return 0


WAYS: dict[str, Callable] = {"none": _none, "autoinc": _autoinc, "sequence": record_events}


class Bench:
    def __init__(self, namespace: Namespace) -> None:
        self.settings = namespace.settings
        self.engine = make_engine(self.settings.database_url, pool_size=4)
        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.keys = RedisKeys(self.settings.redis_key_prefix)
        with self.engine.begin() as conn:
            conn.execute(text("ALTER TABLE events MODIFY id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT"))
            self.app = int(conn.execute(text("INSERT INTO applications (name) VALUES ('bench')")).lastrowid)
        self.chats = 0
        self.tag = 0

    def writer(self) -> handler.MessageBatchWriter:
        return handler.MessageBatchWriter(WriterContext(self.settings, self.engine, self.redis, self.keys))

    def new_chat(self) -> int:
        self.chats += 1
        context = WriterContext(self.settings, self.engine, self.redis, self.keys)
        ChatBatchWriter(context)([Delivery(ChatUpsert(self.app, self.chats, "c").encode(), 0, False, 0)])
        return self.chats

    def batches(self, chat: int) -> list[list[Delivery]]:
        out = []
        for b in range(BATCHES):
            batch = []
            for m in range(b * BATCH + 1, (b + 1) * BATCH + 1):
                self.tag += 1
                batch.append(Delivery(MessageUpsert(self.app, chat, m, f"message {m}").encode(), self.tag, False, 0))
            out.append(batch)
        return out

    def run(self, way: str, writers: int) -> float:
        """Messages per second of ``writers`` writers on this tenant, each writing BATCHES batches."""
        handler.record_events = WAYS[way]
        with self.engine.begin() as conn:  # the sequence above every id the other way took
            conn.execute(text("UPDATE event_sequence SET last_id = (SELECT COALESCE(MAX(id), 0) FROM events)"))
        work = [(self.writer(), self.batches(self.new_chat())) for _ in range(writers)]
        for w, _ in work:  # warm the chat id cache
            w([Delivery(MessageUpsert(self.app, self.chats, 10**6, "warm").encode(), 0, False, 0)])
        start = threading.Barrier(writers + 1)

        def go(w, batches) -> None:
            start.wait()
            for batch in batches:
                w(batch)

        threads = [threading.Thread(target=go, args=item) for item in work]
        for t in threads:
            t.start()
        start.wait()
        began = time.perf_counter()
        for t in threads:
            t.join()
        return writers * BATCHES * BATCH / (time.perf_counter() - began)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    namespace = Namespace.create("evcost")
    try:
        bench = Bench(namespace)
        results: dict[tuple[str, int], list[float]] = {(w, n): [] for w in WAYS for n in (1, 2)}
        for _ in range(rounds):
            order = [(w, n) for w in WAYS for n in (1, 2)]
            random.shuffle(order)
            for way, writers in order:
                results[(way, writers)].append(bench.run(way, writers))
        report: dict[str, float] = {}
        for (way, writers), values in results.items():
            report[f"{way}_{writers}w_msgs_per_s"] = round(statistics.median(values))
        for way in ("autoinc", "sequence"):
            for n in (1, 2):
                medians = report[f"{way}_{n}w_msgs_per_s"] / report[f"none_{n}w_msgs_per_s"]
                report[f"ratio_{way}_{n}w"] = round(medians, 2)
                # Paired within each round (the same moment of a shared machine), then the median of the rounds.
                paired = [w / b for w, b in zip(results[(way, n)], results[("none", n)], strict=True)]
                report[f"paired_ratio_{way}_{n}w"] = round(statistics.median(paired), 2)
        for n in (1, 2):  # the two designs head to head, paired within each round
            paired = [s / a for s, a in zip(results[("sequence", n)], results[("autoinc", n)], strict=True)]
            report[f"paired_ratio_sequence_vs_autoinc_{n}w"] = round(statistics.median(paired), 2)
        report["rounds"] = rounds
        print(json.dumps(report))
        bench.engine.dispose()
    finally:
        namespace.destroy()


if __name__ == "__main__":
    main()
