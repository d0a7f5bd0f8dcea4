"""The event log against the real MariaDB: what the writers record, how a reader pages and settles, and pruning.

The writers' real batch handlers run in-process on deliveries made here (as ``test_announce_redelivery`` does), the
reader is the API's real adapter and use case (``SqlEventLog`` + ``EventLogUseCase``) on the namespace's database,
and pruning is the count sync's ``prune_events``. The HTTP routes themselves are covered in ``tests/e2e`` and
``tests/unit/test_resources_http.py``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
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

    def __init__(self, namespace, settle_seconds: float = 60.0, scan_ids: int = 50_000) -> None:
        self.db = Database(namespace.settings.database_url, read_timeout=5)
        log = SqlEventLog(ReadRouter(self.db), scan_ids)
        self.use_case = EventLogUseCase(_Gate(), log, _NoReplica(), None, settle_seconds, 60)

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


def test_a_young_gap_stops_the_page_and_an_old_one_is_skipped(writers, fresh_namespace):
    app = writers.new_application()
    _created(writers, app, chats=1, messages=1)
    # A burned id (as a rolled-back batch or an ignored row leaves): reserve one and roll the insert back.
    with writers.engine.connect() as conn:
        conn.execute(
            text("INSERT INTO events (application_id, chat_number, message_number, version) VALUES (:a, 9, 9, 9)"),
            {"a": app},
        )
        conn.rollback()
    writers.messages(writers.deliveries(MessageUpsert(app, 1, 2, "after the gap")))
    page = Reader(fresh_namespace).page(app)
    assert [e.message_number for e in page.events] == [0, 1] and not page.has_more  # waits at the gap
    assert Reader(fresh_namespace).page(app, page.next).events == []
    # The event after the gap ages past the settle time: the gap is permanent, the page goes on.
    writers.sql("UPDATE events SET committed_at = committed_at - INTERVAL 2 MINUTE WHERE application_id = :a", a=app)
    resumed = Reader(fresh_namespace).page(app, page.next)
    assert [e.message_number for e in resumed.events] == [2]
    # A short settle time says the same at once.
    assert [e.message_number for e in Reader(fresh_namespace, settle_seconds=0.0).page(app).events] == [0, 1, 2]


def test_a_gap_left_by_another_tenant_holds_every_reader(writers, fresh_namespace):
    """Ids are the whole log's: an uncommitted id of any tenant may sit below this tenant's next event."""
    app, other = writers.new_application(), writers.new_application("other")
    _created(writers, app, chats=1)
    with writers.engine.connect() as conn:  # another tenant's batch, still open
        conn.execute(
            text("INSERT INTO events (application_id, chat_number, message_number, version) VALUES (:a, 1, 0, 0)"),
            {"a": other},
        )
        writers.messages(writers.deliveries(MessageUpsert(app, 1, 1, "behind an open batch")))
        page = Reader(fresh_namespace).page(app)
        assert [e.message_number for e in page.events] == [0]
        conn.commit()
    assert [e.message_number for e in Reader(fresh_namespace).page(app, page.next).events] == [1]


def test_the_bounded_scan_never_moves_the_cursor_into_a_gap(writers, fresh_namespace):
    """With the check bounded to a few ids, a bound inside an open batch's ids must not become the cursor."""
    app = writers.new_application()
    _created(writers, app, chats=1, messages=1)  # ids n, n+1
    insert = (
        "INSERT INTO events (application_id, chat_number, message_number, version) VALUES (:a, 1, 5, 0), (:a, 1, 6, 0)"
    )
    with writers.engine.connect() as conn:  # an open batch holding the next two ids
        conn.execute(text(insert), {"a": app})
        writers.messages(writers.deliveries(MessageUpsert(app, 1, 2, "after the open batch")))
        cursor, seen = None, []
        for _ in range(4):
            page = Reader(fresh_namespace, scan_ids=2).page(app, cursor)
            seen += [e.message_number for e in page.events]
            cursor = page.next
        assert seen == [0, 1]
        conn.commit()
    for _ in range(4):
        page = Reader(fresh_namespace, scan_ids=2).page(app, cursor)
        seen += [e.message_number for e in page.events]
        cursor = page.next
    assert seen == [0, 1, 5, 6, 2]


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
