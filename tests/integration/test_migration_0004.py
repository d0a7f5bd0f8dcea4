"""Migration 0004 (messages keyed by application), on a database of the test's own: from 0003 with data, back, and
on an empty database. Each test creates and drops its own database; none touches a shared one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from chat_common.ops.migrate import upgrade
from chat_devtools.sql import fetch_all
from tests.integration.conftest import differences_from_metadata, downgrade, migrated_database

# Ids across several backfill batches (0004 fills 10 000 ids a transaction), with gaps between them.
MESSAGE_IDS = (1, 2, 3, 9_999, 10_000, 10_001, 25_000, 40_123)


@pytest.fixture
def database() -> Iterator[tuple[str, Engine]]:
    """A database of this test's own at 0003 (URL, engine), dropped afterwards."""
    with migrated_database("cs_m4", "0003") as database:
        yield database


def _seed_0003(engine: Engine) -> dict[int, int]:
    """Two applications, three chats, messages spread over ids; returns message id -> its application id."""
    chat_of = {1: 11, 2: 11, 3: 12, 9_999: 21, 10_000: 21, 10_001: 11, 25_000: 12, 40_123: 21}
    application_of_chat = {11: 1, 12: 1, 21: 2}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO applications (id, token, name) VALUES (1, 'one', 'a'), (2, 'two', 'b')"))
        conn.execute(
            text(
                "INSERT INTO chats (id, application_id, number, name) VALUES (11, 1, 1, 'x'), (12, 1, 2, 'y'),"
                " (21, 2, 1, 'z')"
            )
        )
        for number, message_id in enumerate(MESSAGE_IDS, start=1):
            conn.execute(
                text("INSERT INTO messages (id, chat_id, number, body) VALUES (:i, :c, :n, 'b')"),
                {"i": message_id, "c": chat_of[message_id], "n": number},
            )
    return {i: application_of_chat[chat_of[i]] for i in MESSAGE_IDS}


def _indexes(engine: Engine) -> dict[str, list[str]]:
    """Index name -> its columns in order, of ``messages``."""
    rows = fetch_all(
        engine,
        "SELECT index_name, column_name FROM information_schema.statistics"
        " WHERE table_schema = DATABASE() AND table_name = 'messages' ORDER BY index_name, seq_in_index",
    )
    found: dict[str, list[str]] = {}
    for index, column in rows:
        found.setdefault(index, []).append(column)
    return found


def _foreign_keys(engine: Engine) -> dict[str, tuple[str, str]]:
    """Column -> (referenced table, delete rule) of each foreign key of ``messages``."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT k.column_name, k.referenced_table_name, r.delete_rule"
                " FROM information_schema.key_column_usage k JOIN information_schema.referential_constraints r"
                " ON r.constraint_schema = k.table_schema AND r.constraint_name = k.constraint_name"
                " WHERE k.table_schema = DATABASE() AND k.table_name = 'messages'"
            )
        ).all()
    return {column: (table, rule) for column, table, rule in rows}


def _nullable(engine: Engine, column: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT is_nullable FROM information_schema.columns"
                " WHERE table_schema = DATABASE() AND table_name = 'messages' AND column_name = :c"
            ),
            {"c": column},
        ).scalar_one()


def _assert_0004_shape(engine: Engine) -> None:
    indexes = _indexes(engine)
    assert indexes["uq_messages_application_chat_number"] == ["application_id", "chat_id", "number"]
    assert "uq_messages_chat_number" not in indexes
    # Every index of messages but the primary key leads with the tenant's key.
    assert all(cols[0] == "application_id" for name, cols in indexes.items() if name != "PRIMARY"), indexes
    assert _foreign_keys(engine) == {"application_id": ("applications", "CASCADE")}
    assert _nullable(engine, "application_id") == "NO"


def test_an_upgrade_from_0003_fills_application_id_and_moves_the_keys(database):
    url, engine = database
    expected = _seed_0003(engine)
    upgrade(url)

    with engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT id, application_id FROM messages")).all())
        mismatched = conn.execute(
            text(
                "SELECT COUNT(*) FROM messages m JOIN chats c ON c.id = m.chat_id"
                " WHERE m.application_id <> c.application_id"
            )
        ).scalar_one()
    assert stored == expected
    assert mismatched == 0
    _assert_0004_shape(engine)

    with engine.begin() as conn, pytest.raises(IntegrityError):  # the new key keeps (chat, number) unique
        conn.execute(text("INSERT INTO messages (application_id, chat_id, number, body) VALUES (1, 11, 1, 'again')"))
    with engine.begin() as conn:  # the cascade now comes from the application
        conn.execute(text("DELETE FROM chats WHERE application_id = 2"))
        conn.execute(text("DELETE FROM applications WHERE id = 2"))
    with engine.connect() as conn:
        left = set(conn.execute(text("SELECT DISTINCT application_id FROM messages")).scalars())
    assert left == {1}


def test_a_downgrade_restores_the_0003_shape_and_the_upgrade_runs_again(database):
    url, engine = database
    expected = _seed_0003(engine)
    upgrade(url)
    downgrade(engine, "0003")

    indexes = _indexes(engine)
    assert indexes["uq_messages_chat_number"] == ["chat_id", "number"]
    assert "uq_messages_application_chat_number" not in indexes and "application_id" not in {
        c for cols in indexes.values() for c in cols
    }
    assert _foreign_keys(engine) == {"chat_id": ("chats", "CASCADE")}

    upgrade(url)
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT id, application_id FROM messages")).all()) == expected
    _assert_0004_shape(engine)


def test_an_empty_database_reaches_head_in_the_shape_of_the_metadata():
    with migrated_database("cs_m4e") as (_, engine):
        _assert_0004_shape(engine)
        assert differences_from_metadata(engine, "messages", compare_types=False) == []


def test_a_run_killed_after_the_column_was_added_resumes(database):
    url, engine = database
    expected = _seed_0003(engine)
    with engine.begin() as conn:  # what a run killed during the backfill leaves: the column, partly filled
        conn.execute(text("ALTER TABLE messages ADD COLUMN application_id BIGINT UNSIGNED NULL AFTER id"))
        conn.execute(text("UPDATE messages SET application_id = 1 WHERE id = 1"))
    upgrade(url)
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT id, application_id FROM messages")).all()) == expected
    _assert_0004_shape(engine)
