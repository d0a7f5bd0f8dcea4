"""The count sync every second under write load: no deadlock with the writers, and exact counts afterwards.

A deadlock between the sync and a writer shows up in one of two places, depending on which transaction
InnoDB picks as its victim: as an error escaping ``CountSync.run()`` (the sync lost), or as a failed writer
batch (the writer lost; its retry hides it from the data). Every test here fails on either.

* The end-to-end test runs the real API and both writers as processes; client threads create messages over
  HTTP in several hundred chats of two applications (and some chats) while a thread runs the sync every second.
* On a small machine the HTTP path cannot keep the message-writer busy enough to make a deadlock likely in a
  minute, so a second test drives the message-writer's real batch handler back to back in-process — one big
  batch after another, as under heavy load — against the sync every second. With the sync's former
  ``UPDATE chats … WHERE id IN (…)`` this deadlocks within seconds.
* Two small tests pin down the paths a lock conflict takes: rows a writer holds, and a retried deadlock victim.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pymysql
import pytest
import redis
import requests
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from chat_common.clients.db import make_engine
from chat_common.tenancy.tokens import token_digest
from chat_common.wire.contracts import MessageUpsert
from chat_common.wire.keys import RedisKeys
from chat_common.writing.consumer import Delivery
from chat_common.writing.writer import WriterContext
from chat_devtools.http import wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.sql import fetch_all
from counter_cron import sync as count_sync
from counter_cron.sync import CountSync
from message_writer.handler import MessageBatchWriter
from tests.conftest import LOG_ROOT

LOAD_SECONDS = 60  # a minute of writes (the scenario); the assertions are about the data, not about timing
SYNC_EVERY_SECONDS = 1.0
LOAD_THREADS = 8
CHATS_PER_APPLICATION = 300  # many dirty chats per sync run: the deadlock had an IN list of 500+ ids
WRITER_MAX_WAIT_SECONDS = 0.5  # bigger writer batches than the test default: more chats locked per transaction
HANDLER_SECONDS = 10  # the in-process writer-handler test
HANDLER_CHATS = 1500
HANDLER_BATCH = 300
LOCK_ERROR = re.compile(r"\((1213|1205),|Deadlock found|Lock wait timeout", re.IGNORECASE)


class SyncLoop(threading.Thread):
    """Runs the count sync every second until stopped; keeps every error and the retries it reported."""

    def __init__(self, engine, client: redis.Redis, keys: RedisKeys) -> None:
        super().__init__(daemon=True)
        self.engine, self.client, self.keys = engine, client, keys
        self.stop_event = threading.Event()
        self.runs = 0
        self.retries = 0
        self.contended = 0
        self.slowest = 0.0
        self.errors: list[BaseException] = []

    def run_once(self) -> None:
        try:
            report = CountSync(self.engine, self.client, self.keys).run()
        except Exception as exc:  # recorded, not raised: the tests assert on it after the load
            self.errors.append(exc)
        else:
            self.runs += 1
            self.retries += report.lock_retries
            self.contended += report.rows_contended
            self.slowest = max(self.slowest, report.seconds)

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            self.run_once()
            self.stop_event.wait(max(0.0, SYNC_EVERY_SECONDS - (time.monotonic() - started)))

    def finish(self) -> None:
        """Stop the loop, then one last run over what the writers marked last."""
        self.stop_event.set()
        self.join(60)
        self.run_once()

    def summary(self) -> str:
        return (
            f"{self.runs} sync runs, {self.retries} lock retries, {self.contended} contended rows,"
            f" slowest run {self.slowest:.2f}s"
        )


def _scalar(engine, sql: str, **params) -> int:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def assert_counts_exact(engine) -> None:
    """Every chat's messages_count and every application's chats_count equals its rows, exactly."""
    chats = fetch_all(
        engine,
        "SELECT c.id, c.messages_count, COUNT(m.id) FROM chats c LEFT JOIN messages m ON m.chat_id = c.id"
        " GROUP BY c.id, c.messages_count HAVING c.messages_count <> COUNT(m.id)",
    )
    apps = fetch_all(
        engine,
        "SELECT a.id, a.chats_count, COUNT(c.id) FROM applications a LEFT JOIN chats c ON c.application_id = a.id"
        " GROUP BY a.id, a.chats_count HAVING a.chats_count <> COUNT(c.id)",
    )
    assert not chats, f"{len(chats)} chats with a wrong messages_count (id, stored, exact), e.g. {chats[:5]}"
    assert not apps, f"applications with a wrong chats_count (id, stored, exact): {apps}"


def _lock_error(code: int) -> OperationalError:
    message = "Deadlock found when trying to get lock" if code == 1213 else "Lock wait timeout exceeded"
    return OperationalError("UPDATE chats …", {}, pymysql.err.OperationalError(code, message))


# -- end to end: the real system under HTTP load ------------------------------------------------------------------


@pytest.fixture
def loaded_system():
    ns = Namespace.create("csl", writer_max_wait_seconds=WRITER_MAX_WAIT_SECONDS)
    system = System(ns, LOG_ROOT / ns.name)
    try:
        yield system.start()
    finally:
        system.stop()
        ns.destroy()


def _post(session: requests.Session, url: str, body: dict, headers: dict | None = None) -> dict | None:
    """One create; None when the API did not accept it (503 is its documented 'try later')."""
    try:
        resp = session.post(url, json=body, timeout=10, headers=headers)
    except requests.RequestException:
        return None
    return resp.json() if resp.status_code == 201 else None


@pytest.mark.slow
def test_count_sync_every_second_under_http_write_load(loaded_system: System):
    system = loaded_system
    settings = system.namespace.settings
    base = system.base_url
    engine = make_engine(settings.database_url, pool_size=2)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        session = requests.Session()
        tokens = [session.post(f"{base}/applications", json={"name": f"load-{i}"}).json()["token"] for i in (1, 2)]

        # Several hundred chats up front, created concurrently; the load then spreads over all of them.
        def new_chat(job: tuple[str, int]) -> tuple[str, int] | None:
            token, i = job
            key = {"Idempotency-Key": f"setup-{token}-{i}"}  # a retry after a lost answer creates no second chat
            for _ in range(3):  # a 503 (or a timeout on a starved machine) means "try later": this is set-up
                created = _post(requests.Session(), f"{base}/applications/{token}/chats", {"name": f"c{i}"}, key)
                if created:
                    return token, created["chat_number"]
                time.sleep(0.5)
            return None

        jobs = [(t, i) for t in tokens for i in range(CHATS_PER_APPLICATION)]
        first = new_chat(jobs[0])
        assert first, f"the API does not create chats; see {system.log_dir}"  # fail fast, not 600 times over
        with ThreadPoolExecutor(8) as pool:
            targets = [first, *(c for c in pool.map(new_chat, jobs[1:]) if c)]
        assert len(targets) == len(jobs)
        wait_for(lambda: _scalar(engine, "SELECT COUNT(*) FROM chats") == len(targets), 30, what="chat rows")

        sync = SyncLoop(engine, client, RedisKeys(settings.redis_key_prefix))
        sync.start()
        accepted_messages: Counter[tuple[str, int]] = Counter()
        accepted_chats = Counter({t: CHATS_PER_APPLICATION for t in tokens})
        lock = threading.Lock()
        until = time.monotonic() + LOAD_SECONDS

        def write_messages(seed: int) -> None:
            rng, own = random.Random(seed), requests.Session()  # one keep-alive session per thread
            while time.monotonic() < until:
                token, chat = rng.choice(targets)
                if _post(own, f"{base}/applications/{token}/chats/{chat}/messages", {"body": "m"}):
                    with lock:
                        accepted_messages[(token, chat)] += 1

        def write_chats() -> None:  # the applications' chats_count changes under load too
            own = requests.Session()
            while time.monotonic() < until:
                token = random.choice(tokens)
                if _post(own, f"{base}/applications/{token}/chats", {"name": "late"}):
                    with lock:
                        accepted_chats[token] += 1
                time.sleep(0.05)

        workers = [threading.Thread(target=write_messages, args=(i,)) for i in range(LOAD_THREADS)]
        workers.append(threading.Thread(target=write_chats))
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

        # The writers drain what the API accepted (the sync still running), then one last sync.
        total_messages = accepted_messages.total()
        wait_for(lambda: _scalar(engine, "SELECT COUNT(*) FROM messages") == total_messages, 60, what="messages")
        wait_for(lambda: _scalar(engine, "SELECT COUNT(*) FROM chats") == accepted_chats.total(), 60, what="chats")
        sync.finish()
        print(f"\nHTTP load: {total_messages} messages in {len(accepted_messages)} chats; {sync.summary()}")

        assert not sync.errors, f"{len(sync.errors)} sync runs failed, e.g. {sync.errors[0]!r}"
        assert sync.runs >= LOAD_SECONDS // 2, "the sync did not run every second"
        assert total_messages > 1000, "too little load to mean anything"
        lost = [
            line
            for name in ("message-writer", "chat-writer")
            for line in (system.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
            if LOCK_ERROR.search(line)
        ]
        assert not lost, f"{len(lost)} writer batches lost a lock conflict, e.g. {lost[0]}"
        assert_counts_exact(engine)
        with engine.connect() as conn:
            per_digest = dict(conn.execute(text("SELECT token_digest, chats_count FROM applications")).all())
        assert per_digest == {token_digest(token): count for token, count in accepted_chats.items()}
    finally:
        client.close()
        engine.dispose()


# -- the message-writer's batch handler back to back, in-process ------------------------------------------------


@pytest.fixture
def seeded_chats(fresh_namespace: Namespace):
    """One application with many chats, written straight into MySQL; an engine, a Redis client and the keys."""
    engine = make_engine(fresh_namespace.settings.database_url, pool_size=4)
    client = redis.Redis.from_url(fresh_namespace.settings.redis_url)
    keys = RedisKeys(fresh_namespace.settings.redis_key_prefix)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO applications (id, token, name) VALUES (1, 't1', 'a')"))
        rows = [{"a": 1, "n": n} for n in range(1, HANDLER_CHATS + 1)]
        conn.execute(text("INSERT INTO chats (application_id, number, name) VALUES (:a, :n, 'c')"), rows)
    client.sadd(keys.dirty_applications, 1)
    client.set(keys.counts_epoch, "x")
    yield fresh_namespace, engine, client, keys
    client.close()
    engine.dispose()


def test_count_sync_every_second_against_back_to_back_writer_batches(seeded_chats):
    namespace, engine, client, keys = seeded_chats
    handler = MessageBatchWriter(WriterContext(namespace.settings, engine, client, keys))
    sync = SyncLoop(engine, client, keys)
    sync.start()
    rng = random.Random(7)
    last = Counter()
    batches, writer_errors, tag = 0, [], 0
    until = time.monotonic() + HANDLER_SECONDS
    while time.monotonic() < until:
        deliveries = []
        for chat in rng.sample(range(1, HANDLER_CHATS + 1), HANDLER_BATCH):  # chats in no particular order
            last[chat] += 1
            tag += 1
            body = MessageUpsert(1, chat, last[chat], "m").encode()
            deliveries.append(Delivery(body, tag, False, 0))
        for _attempt in range(5):  # what the consumer loop does with a failed batch: apply it again
            try:
                result = handler(deliveries)
            except OperationalError as exc:
                writer_errors.append(exc)
                continue
            assert not result.retry and not result.dead
            batches += 1
            break
    sync.finish()
    print(f"\nwriter handler: {batches} batches of {HANDLER_BATCH}, {len(writer_errors)} failed; {sync.summary()}")

    assert not sync.errors, f"{len(sync.errors)} sync runs failed, e.g. {sync.errors[0]!r}"
    assert not writer_errors, f"{len(writer_errors)} writer batches failed, e.g. {writer_errors[0]!r}"
    assert sync.runs >= HANDLER_SECONDS // 2
    assert _scalar(engine, "SELECT COUNT(*) FROM messages") == last.total()
    assert_counts_exact(engine)


# -- the two paths of a lock conflict -----------------------------------------------------------------------------


def _a_dirty_message_in_chats_up_to(last_chat: int, number: int, engine, client, keys) -> None:
    """Message ``number`` in each of chats 1 to ``last_chat``, and those chats marked dirty: the rows the count sync
    will lock."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (application_id, chat_id, number, body)"
                " SELECT application_id, id, :number, 'm' FROM chats WHERE id <= :last"
            ),
            {"number": number, "last": last_chat},
        )
    client.sadd(keys.dirty_chats, *range(1, last_chat + 1))


def test_rows_a_writer_holds_are_waited_for_one_at_a_time(seeded_chats):
    _, engine, client, keys = seeded_chats
    _a_dirty_message_in_chats_up_to(20, 1, engine, client, keys)
    holder = engine.connect()
    held = holder.begin()
    # A writer holding chat rows until it commits (a chat-writer's rename; before 0004, a message insert's FK check).
    holder.execute(text("SELECT id FROM chats WHERE id IN (3, 17) LOCK IN SHARE MODE")).all()
    releaser = threading.Timer(1.0, held.commit)
    releaser.start()
    try:
        report = CountSync(engine, client, keys).run()
    finally:
        releaser.join()
        holder.close()
    assert report.rows_contended == 2 and report.lock_retries == 0
    assert_counts_exact(engine)


def test_a_deadlock_victim_is_retried_and_a_batch_that_keeps_failing_is_given_back(seeded_chats, monkeypatch):
    _, engine, client, keys = seeded_chats
    _a_dirty_message_in_chats_up_to(20, 1, engine, client, keys)
    monkeypatch.setattr(count_sync, "LOCK_BACKOFF_SECONDS", 0.001)
    real = CountSync._raise_free_rows
    failures = iter([1213, 1205])

    def lose_twice(self, target, counts, apps):
        code = next(failures, None)
        if code:
            raise _lock_error(code)
        return real(self, target, counts, apps)

    monkeypatch.setattr(CountSync, "_raise_free_rows", lose_twice)
    report = CountSync(engine, client, keys).run()
    assert report.lock_retries == 2
    assert_counts_exact(engine)

    # A conflict that outlasts every retry escapes the run, and the claimed ids go straight back to the dirty set.
    _a_dirty_message_in_chats_up_to(5, 2, engine, client, keys)
    monkeypatch.setattr(CountSync, "_raise_free_rows", lambda *_: (_ for _ in ()).throw(_lock_error(1213)))
    with pytest.raises(OperationalError):
        CountSync(engine, client, keys).run()
    assert {int(i) for i in client.smembers(keys.dirty_chats)} == set(range(1, 6))
    assert not client.hlen(keys.count_claims)
    monkeypatch.setattr(CountSync, "_raise_free_rows", real)
    CountSync(engine, client, keys).run()
    assert_counts_exact(engine)
