"""Migration 0008 (the event log), on a database of the test's own: from 0007 to head the ``events`` and
``event_sequence`` tables are what ``chat_common.schema.tables`` says (the sequence seeded with its one row), an
application's deletion takes its events with it, and a downgrade drops both."""

from __future__ import annotations

from sqlalchemy import text

from chat_common.ops.migrate import upgrade
from chat_common.tenancy.applications import Applications
from chat_common.wire.events import record_events
from chat_common.wire.keys import RedisKeys
from tests.integration.conftest import differences_from_metadata, downgrade, migrated_database


def test_the_event_log_table_matches_the_metadata_goes_with_its_application_and_downgrades(redis_client):
    with migrated_database("cs_m8", "0007") as (url, engine):
        upgrade(url, "0008")
        assert differences_from_metadata(engine, "events") == []
        assert differences_from_metadata(engine, "event_sequence") == []
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id, last_id FROM event_sequence")).all() == [(1, 0)]
        with engine.begin() as conn:
            app = conn.execute(text("INSERT INTO applications (name) VALUES ('a')")).lastrowid
            other = conn.execute(text("INSERT INTO applications (name) VALUES ('b')")).lastrowid
            record_events(conn, [(app, 1, 0, 0), (other, 1, 0, 0)])
        applications = Applications(engine, client=redis_client, keys=RedisKeys("m8-test:"))  # no such keys
        applications.delete_application(applications.find_by_id(app), batch_size=1)  # batches of one event
        with engine.connect() as conn:
            assert conn.execute(text("SELECT application_id FROM events")).scalars().all() == [other]
        downgrade(engine, "0007")
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TABLES LIKE 'event%'")).all() == []
