"""Migration 0009 (webhook endpoints), on a database of the test's own: from 0008 to head ``webhook_endpoints`` and
``webhook_held`` are what ``chat_common.schema.tables`` says, an application's deletion takes its endpoints and their
held deliveries with it (foreign key cascades), and a downgrade drops both."""

from __future__ import annotations

from sqlalchemy import text

from chat_common.ops.migrate import upgrade
from chat_common.tenancy.applications import Applications
from chat_common.wire.keys import RedisKeys
from tests.integration.conftest import differences_from_metadata, downgrade, migrated_database


def test_the_webhook_tables_match_the_metadata_go_with_their_application_and_downgrade(redis_client):
    with migrated_database("cs_m9", "0008") as (url, engine):
        upgrade(url, "0009")
        assert differences_from_metadata(engine, "webhook_endpoints") == []
        assert differences_from_metadata(engine, "webhook_held") == []
        with engine.begin() as conn:
            app = conn.execute(text("INSERT INTO applications (name) VALUES ('a')")).lastrowid
            other = conn.execute(text("INSERT INTO applications (name) VALUES ('b')")).lastrowid
            ids = []
            for application in (app, other):
                ids.append(
                    conn.execute(
                        text(
                            "INSERT INTO webhook_endpoints (application_id, name, url, event_types, secret_sealed)"
                            " VALUES (:a, 'e', 'https://example.com/h', 'chat.created', 'v1.x')"
                        ),
                        {"a": application},
                    ).lastrowid
                )
            for endpoint in ids:
                conn.execute(
                    text(
                        "INSERT INTO webhook_held (application_id, endpoint_id, event_id, chat_number)"
                        " SELECT application_id, id, 1, 1 FROM webhook_endpoints WHERE id = :e"
                    ),
                    {"e": endpoint},
                )
            row = conn.execute(text("SELECT managed_by, enabled, state, position FROM webhook_endpoints LIMIT 1"))
            assert row.one() == ("api", 1, "healthy", 0)
        applications = Applications(engine, client=redis_client, keys=RedisKeys("m9-test:"))  # no such keys
        applications.delete_application(applications.find_by_id(app))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT application_id FROM webhook_endpoints")).scalars().all() == [other]
            assert conn.execute(text("SELECT endpoint_id FROM webhook_held")).scalars().all() == [ids[1]]
        downgrade(engine, "0008")
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TABLES LIKE 'webhook%'")).all() == []
