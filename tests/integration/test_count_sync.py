"""Count sync: exact after a run, safe when runs overlap or one crashed midway, full recount after Redis lost data."""

import threading
import time

import pytest
import redis
from sqlalchemy import text

from chat_common.clients.db import make_engine
from chat_common.wire.keys import RedisKeys
from counter_cron.sync import CountSync


@pytest.fixture
def seeded(fresh_namespace):
    """Two applications with chats and messages written straight into MySQL, all marked dirty."""
    engine = make_engine(fresh_namespace.settings.database_url)
    client = redis.Redis.from_url(fresh_namespace.settings.redis_url)
    keys = RedisKeys(fresh_namespace.settings.redis_key_prefix)
    with engine.begin() as conn:
        for app_id in (1, 2):
            conn.execute(
                text("INSERT INTO applications (id, token, name) VALUES (:i, :t, 'a')"),
                {"i": app_id, "t": f"t{app_id}"},
            )
        chat_id = 0
        expected = {}
        for app_id, chats in ((1, 3), (2, 40)):
            for n in range(1, chats + 1):
                chat_id += 1
                conn.execute(
                    text("INSERT INTO chats (id, application_id, number, name) VALUES (:c, :a, :n, 'c')"),
                    {"c": chat_id, "a": app_id, "n": n},
                )
                count = (chat_id * 7) % 11
                for m in range(1, count + 1):
                    conn.execute(
                        text("INSERT INTO messages (application_id, chat_id, number, body) VALUES (:a, :c, :m, 'b')"),
                        {"a": app_id, "c": chat_id, "m": m},
                    )
                expected[chat_id] = count
    client.sadd(keys.dirty_chats, *expected)
    client.sadd(keys.dirty_applications, 1, 2)
    client.set(keys.counts_epoch, "x")
    yield engine, client, keys, expected
    engine.dispose()
    client.close()


def _counts(engine):
    with engine.connect() as conn:
        chats = dict(conn.execute(text("SELECT id, messages_count FROM chats")).all())
        apps = dict(conn.execute(text("SELECT id, chats_count FROM applications")).all())
    return chats, apps


def test_counts_are_exact_after_a_sync(seeded):
    engine, client, keys, expected = seeded
    report = CountSync(engine, client, keys, batch_size=7).run()
    assert report.chats_recounted == len(expected) and report.applications_recounted == 2
    assert _counts(engine) == (expected, {1: 3, 2: 40})
    assert client.scard(keys.dirty_chats) == 0


def test_overlapping_syncs_agree(seeded):
    engine, client, keys, expected = seeded
    runs = [threading.Thread(target=CountSync(engine, client, keys, batch_size=5).run) for _ in range(3)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert _counts(engine) == (expected, {1: 3, 2: 40})


def test_claims_of_a_crashed_run_are_picked_up(seeded):
    engine, client, keys, expected = seeded
    crashed = CountSync(engine, client, keys, batch_size=10)
    claim = keys.count_claim(keys.dirty_chats, crashed.run_id)
    # The crashed run claimed ten ids and died before writing their counts.
    ids = crashed._claim(keys=[keys.dirty_chats, claim, keys.count_claims], args=[10, claim, time.time()])
    assert len(ids) == 10
    CountSync(engine, client, keys, stale_claim_seconds=60).run()
    assert client.exists(claim)  # a fresh claim may belong to a live run: left alone
    assert _counts(engine)[0] != expected
    CountSync(engine, client, keys, stale_claim_seconds=0).run()  # now stale: given back and recounted
    assert not client.exists(claim)
    assert _counts(engine) == (expected, {1: 3, 2: 40})


def test_full_recount_after_redis_lost_its_data(seeded):
    engine, client, keys, expected = seeded
    client.delete(keys.dirty_chats, keys.dirty_applications, keys.counts_epoch)  # as after FLUSHALL
    report = CountSync(engine, client, keys, batch_size=9).run()
    assert report.full
    assert _counts(engine) == (expected, {1: 3, 2: 40})
    assert client.exists(keys.counts_epoch)
    assert not CountSync(engine, client, keys).run().full
