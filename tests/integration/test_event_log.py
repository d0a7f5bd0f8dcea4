"""The event log against the real MariaDB: what the writers record, that ids are gap-free and committed in id order
(concurrent writers, rollbacks, a concurrent reader), how a reader pages, and pruning.

The writers' real batch handlers run in-process on deliveries made here (as ``test_announce_redelivery`` does), the
reader is the API's real adapter and use case (``SqlEventLog`` + ``EventLogUseCase``) on the namespace's database,
and pruning is the count sync's ``prune_events``. The HTTP routes themselves are covered in ``tests/e2e`` and
``tests/unit/test_resources_http.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import text

from chat_api.adapters.database import Database
from chat_api.adapters.events import SqlEventLog
from chat_api.adapters.replica import ReadRouter
from chat_api.model import Application, CursorExpired
from chat_api.use_cases.events import EventLogUseCase
from chat_common.clients.db import make_engine
from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from chat_common.wire.events import Change, record_events
from chat_common.wire.keys import RedisKeys
from chat_common.writing.batches import Delivery
from chat_common.writing.writer import WriterContext
from chat_writer.handler import ChatBatchWriter
from counter_cron.pruning import prune_events
from message_writer.handler import MessageBatchWriter

V1, V2 = 1_000_000_000_000_000, 2_000_000_000_000_000


class Writers:
    """The real chat- and message-writer handlers over the namespace, fed deliveries directly."""

    def __init__(self, namespace) -> None:
        settings = namespace.settings
        self.engine = make_engine(settings.database_url, pool_size=2)
        self.redis = redis.Redis.from_url(settings.redis_url)
        context = WriterContext(settings, self.engine, self.redis, RedisKeys(settings.redis_key_prefix))
        self.chats = ChatBatchWriter(context)
        self.messages = MessageBatchWriter(context)  # no announcer: the log must not depend on one
        self._tag = 0

    def deliveries(self, *changes, redelivered: bool = False) -> list[Delivery]:
        out = []
        for change in changes:
            self._tag += 1
            out.append(Delivery(change.encode(), self._tag, redelivered, 0))
        return out

    def events(self, app_id: int) -> list[tuple]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    text(
                        "SELECT chat_number, message_number, version FROM events WHERE application_id = :a ORDER BY id"
                    ),
                    {"a": app_id},
                )
            )

    def sql(self, statement: str, **params):
        with self.engine.begin() as conn:
            return conn.execute(text(statement), params)

    def new_application(self, name: str = "a") -> int:
        result = self.sql("INSERT INTO applications (name) VALUES (:n)", n=name)
        return int(result.lastrowid)

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()


@pytest.fixture
def writers(fresh_namespace) -> Iterator[Writers]:
    w = Writers(fresh_namespace)
    yield w
    w.close()


class Reader:
    """The API's event-log use case over its real adapter (primary only), without the tenant gate's directory."""

    def __init__(self, namespace) -> None:
        self.db = Database(namespace.settings.database_url, read_timeout=5)
        self.use_case = EventLogUseCase(_Gate(), SqlEventLog(ReadRouter(self.db)), _NoReplica(), None, 60)

    def page(self, app_id: int, after: int | None = None, limit: int = 20):
        return asyncio.run(self._page(app_id, after, limit))

    async def _page(self, app_id, after, limit):
        try:
            return await self.use_case.page(str(app_id), after, limit)
        finally:
            await self.db.close()


class _Gate:
    async def tenant(self, token: str) -> Application:  # the token here is the application id itself
        return Application(token=token, name="a", chats_count=0, id=int(token))


class _NoReplica:
    def replica_lag_bound(self) -> None:
        return None


def _created(writers: Writers, app_id: int, chats: int = 1, messages: int = 0) -> None:
    writers.chats(writers.deliveries(*(ChatUpsert(app_id, n, f"chat {n}") for n in range(1, chats + 1))))
    if messages:
        writers.messages(writers.deliveries(*(MessageUpsert(app_id, 1, m, f"m{m}") for m in range(1, messages + 1))))


# -- what the writers record ----------------------------------------------------------------------------------------
def test_each_applied_create_and_edit_is_recorded_once(writers):
    app = writers.new_application()
    _created(writers, app, chats=2, messages=2)
    writers.chats(writers.deliveries(ChatUpsert(app, 1, "renamed", version=V1)))
    writers.messages(writers.deliveries(MessageUpsert(app, 1, 2, "edited", version=V1)))
    assert writers.events(app) == [(1, 0, 0), (2, 0, 0), (1, 1, 0), (1, 2, 0), (1, 0, V1), (1, 2, V1)]


def test_a_redelivered_batch_adds_nothing(writers):
    app = writers.new_application()
    _created(writers, app, chats=1, messages=3)
    before = writers.events(app)
    again = [MessageUpsert(app, 1, m, f"m{m}") for m in (1, 2, 3)] + [MessageUpsert(app, 1, 3, "x", version=V1)]
    writers.messages(writers.deliveries(*again[:3], redelivered=True))
    writers.messages(writers.deliveries(again[3]))
    writers.messages(writers.deliveries(again[3], redelivered=True))  # the edit redelivered too
    writers.chats(writers.deliveries(ChatUpsert(app, 1, "chat 1"), redelivered=True))
    assert writers.events(app) == [*before, (1, 3, V1)]
    # Redelivered changes are left out before the insert: no id burned, so no gap for readers to wait at.
    writers.messages(writers.deliveries(MessageUpsert(app, 1, 4, "m4")))
    ids = [row[0] for row in writers.sql("SELECT id FROM events WHERE application_id = :a ORDER BY id", a=app)]
    assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_an_older_edit_arriving_late_adds_none(writers):
    app = writers.new_application()
    _created(writers, app, chats=1, messages=1)
    writers.messages(writers.deliveries(MessageUpsert(app, 1, 1, "newer", version=V2)))
    writers.messages(writers.deliveries(MessageUpsert(app, 1, 1, "older", version=V1)))
    writers.chats(writers.deliveries(ChatUpsert(app, 1, "newer", version=V2)))
    writers.chats(writers.deliveries(ChatUpsert(app, 1, "older", version=V1)))
    # Both in one batch, the older last: only the newer one was applied.
    writers.messages(
        writers.deliveries(MessageUpsert(app, 1, 1, "3", version=V2 + 2), MessageUpsert(app, 1, 1, "2", version=V2 + 1))
    )
    assert writers.events(app) == [(1, 0, 0), (1, 1, 0), (1, 1, V2), (1, 0, V2), (1, 1, V2 + 2)]


# -- reading ----------------------------------------------------------------------------------------------------------
def test_pages_follow_the_log_in_order_with_the_cursor(writers, fresh_namespace):
    app, other = writers.new_application(), writers.new_application("other")
    _created(writers, app, chats=1, messages=5)
    _created(writers, other, chats=1, messages=2)
    writers.messages(writers.deliveries(MessageUpsert(app, 1, 2, "edited", version=V1)))
    seen, cursor, pages = [], None, 0
    while True:
        page = Reader(fresh_namespace).page(app, cursor, limit=3)
        pages += 1
        seen += page.events
        cursor = page.next
        if not page.has_more:
            break
    assert [(e.type, e.chat_number, e.message_number) for e in seen] == [
        ("chat.created", 1, 0),
        *(("message.created", 1, m) for m in range(1, 6)),
        ("message.updated", 1, 2),
    ]
    assert pages == 3 and [e.position for e in seen] == sorted(e.position for e in seen)
    created_2 = seen[2]
    assert created_2.superseded and created_2.resource.body == "edited"  # the row as it is now
    assert not seen[-1].superseded and seen[-1].version == V1
    assert seen[0].resource.name == "chat 1"
    # Caught up: the next page is empty and keeps (or advances) the cursor; the other tenant's events never show.
    tail = Reader(fresh_namespace).page(app, cursor)
    assert tail.events == [] and tail.next >= cursor
    assert [e.chat_number for e in Reader(fresh_namespace).page(other).events] == [1, 1, 1]
    assert all(e.position not in {s.position for s in seen} for e in Reader(fresh_namespace).page(other).events)


# -- ids: gap-free, in commit order ----------------------------------------------------------------------------------
def _batch(engine, changes: list[Change], hold: float = 0.0, rollback: bool = False) -> list[int]:
    """One writer transaction recording ``changes`` (after a little work, as a writer's upsert), its ids."""
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text("SELECT SLEEP(:s)"), {"s": random.uniform(0, 0.004)})  # the upsert's time
        record_events(conn, changes)
        ids = (
            conn.execute(
                text("SELECT id FROM events WHERE id > (SELECT last_id FROM event_sequence) - :k ORDER BY id"),
                {"k": len(changes)},
            )
            .scalars()
            .all()
        )
        time.sleep(hold)  # a commit that takes long: the next batch's allocation waits for it
        if rollback:
            transaction.rollback()
    return list(ids)


def _visible(engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM events ORDER BY id")).scalars())


def _contiguous(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids))) if ids else True


def _writing(engine, app: int, first_chat: int, batches: int, size: int, errors: list) -> threading.Thread:
    def run() -> None:
        try:
            for b in range(batches):
                chat = first_chat + b
                _batch(engine, [(app, chat, m, 0) for m in range(1, size + 1)], hold=random.uniform(0, 0.01))
        except Exception as exc:
            errors.append(exc)

    return threading.Thread(target=run)


def test_concurrent_writers_commit_gap_free_ids_in_id_order(writers):
    """Two writers' batches on their own connections: every snapshot a third connection takes shows the ids 1..n with
    no hole (a higher id is never visible before a lower one), and the end result is gap-free."""
    app = writers.new_application()
    errors: list = []
    threads = [_writing(writers.engine, app, 1, 40, 7, errors), _writing(writers.engine, app, 1001, 40, 5, errors)]
    for thread in threads:
        thread.start()
    snapshots = 0
    while any(thread.is_alive() for thread in threads):
        seen = _visible(writers.engine)
        assert _contiguous(seen) and (not seen or seen[0] == 1), f"a hole in a snapshot: {seen}"
        snapshots += 1
    for thread in threads:
        thread.join()
    assert not errors, errors
    final = _visible(writers.engine)
    assert final == list(range(1, 40 * 7 + 40 * 5 + 1)) and snapshots > 5
    assert writers.sql("SELECT last_id FROM event_sequence WHERE id = 1").scalar() == final[-1]


def test_two_real_message_writers_on_one_tenant_log_every_create_gap_free(writers, fresh_namespace):
    """The writers' own handlers (upsert, then the record last), two at once on their own connections: no deadlock
    between their row locks and the sequence's, every create logged once, ids 1..n."""
    app = writers.new_application()
    _created(writers, app, chats=2)
    other = Writers(fresh_namespace)
    errors: list = []

    def run(w: Writers, chat: int) -> None:
        try:
            for b in range(10):
                w.messages(w.deliveries(*(MessageUpsert(app, chat, m, "x") for m in range(b * 50 + 1, b * 50 + 51))))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w, chat)) for w, chat in ((writers, 1), (other, 2))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        other.close()
    assert not errors, errors
    assert _visible(writers.engine) == list(range(1, 2 + 2 * 500 + 1))  # the two chats' events, then the messages'
    assert sorted(writers.events(app)) == sorted(
        [(1, 0, 0), (2, 0, 0)] + [(chat, m, 0) for chat in (1, 2) for m in range(1, 501)]
    )


def test_a_batch_rolled_back_after_allocating_leaves_no_hole(writers):
    app = writers.new_application()
    assert _batch(writers.engine, [(app, 1, 0, 0)]) == [1]
    assert _batch(writers.engine, [(app, 2, 0, 0), (app, 3, 0, 0)], rollback=True) == [2, 3]  # allocated, undone
    assert _batch(writers.engine, [(app, 4, 0, 0)]) == [2]  # the sequence goes on from the last committed id
    # Concurrently: a batch waiting on an open one's allocation gets the ids the open one gives back by rolling back.
    with writers.engine.connect() as open_batch:
        open_batch.begin()
        record_events(open_batch, [(app, 5, 0, 0), (app, 6, 0, 0)])  # ids 3, 4, held
        errors: list = []
        waiting = _writing(writers.engine, app, 7, 1, 1, errors)  # (app, 7, 1, 0)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()  # waits on the sequence's lock
        open_batch.rollback()
        waiting.join(10)
    assert not errors and _visible(writers.engine) == [1, 2, 3]
    assert [tuple(r) for r in writers.sql("SELECT chat_number, message_number FROM events WHERE id = 3")] == [(7, 1)]


def test_a_change_logged_by_another_batch_meanwhile_costs_no_id(writers):
    """A duplicate publish on first delivery (not filtered before): the INSERT fails on the committed copy, the
    batch gives the ids back and records the others, with no hole and the sequence at the last id."""
    app = writers.new_application()
    _batch(writers.engine, [(app, 1, 0, 0), (app, 2, 0, 0)])
    with writers.engine.begin() as conn:
        assert record_events(conn, [(app, 3, 0, 0), (app, 1, 0, 0), (app, 4, 0, 0)]) == 2
    _batch(writers.engine, [(app, 5, 0, 0)])
    assert _visible(writers.engine) == [1, 2, 3, 4, 5]
    assert [r[0] for r in writers.events(app)] == [1, 2, 3, 4, 5]
    assert writers.sql("SELECT last_id FROM event_sequence WHERE id = 1").scalar() == 5


def test_a_reader_paging_while_two_writers_write_never_skips_an_event(writers, fresh_namespace):
    """The API's reader follows ``next`` page by page while two writers commit: the union of its pages is the
    table, in order, each event once."""
    app = writers.new_application()
    errors: list = []
    threads = [_writing(writers.engine, app, 1, 40, 6, errors), _writing(writers.engine, app, 1001, 40, 4, errors)]
    for thread in threads:
        thread.start()
    read: list[int] = []
    cursor = None
    reader = Reader(fresh_namespace)
    pages = 0
    while any(thread.is_alive() for thread in threads):
        page = reader.page(app, cursor, limit=7)
        read += [e.position for e in page.events]
        cursor, pages = page.next, pages + 1
    for thread in threads:
        thread.join()
    assert not errors, errors
    while True:  # the rest, after the writers are done
        page = reader.page(app, cursor, limit=7)
        read += [e.position for e in page.events]
        cursor = page.next
        if not page.has_more:
            break
    assert read == _visible(writers.engine) == list(range(1, 401)) and pages > 5


def test_a_cursor_older_than_the_window_is_gone_after_pruning(writers, fresh_namespace):
    app = writers.new_application()
    _created(writers, app, chats=1, messages=4)
    first = Reader(fresh_namespace).page(app, limit=2)
    writers.sql(
        "UPDATE events SET committed_at = NOW(6) - INTERVAL 8 DAY WHERE application_id = :a AND message_number < 3",
        a=app,
    )
    report = prune_events(writers.engine, 7 * 24 * 3600, chunk=2)
    assert report.deleted == 3 and report.chunks == 2  # the chat's and messages 1 and 2: two chunks of 2 at most
    with pytest.raises(CursorExpired):
        Reader(fresh_namespace).page(app, first.events[0].position)  # message 1 after it was pruned
    assert [e.message_number for e in Reader(fresh_namespace).page(app, first.events[-1].position + 1).events] == [3, 4]
    assert [e.message_number for e in Reader(fresh_namespace).page(app).events] == [3, 4]  # from the oldest kept


def test_pruning_keeps_the_newest_event(writers):
    app = writers.new_application()
    _created(writers, app, chats=1, messages=2)
    writers.sql("UPDATE events SET committed_at = NOW(6) - INTERVAL 8 DAY")
    report = prune_events(writers.engine, 7 * 24 * 3600, chunk=1000)
    assert report.deleted == 2 and writers.events(app) == [(1, 2, 0)]


def test_the_count_sync_run_prunes_and_says_so(writers, fresh_namespace):
    """``python -m counter_cron`` (the CronJob) prunes the log after the counts, with its progress in the log."""
    app = writers.new_application()
    _created(writers, app, chats=1, messages=3)
    writers.sql("UPDATE events SET committed_at = NOW(6) - INTERVAL 2 HOUR WHERE message_number < 3")
    env = {**os.environ, **fresh_namespace.environ(), "EVENT_RETENTION_SECONDS": "3600", "EVENT_PRUNE_CHUNK": "2"}
    run = subprocess.run([sys.executable, "-m", "counter_cron"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert writers.events(app) == [(1, 3, 0)]
    assert "3 events older than 3600 s deleted in 2 chunks" in run.stderr + run.stdout
