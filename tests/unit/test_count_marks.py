"""The count sync's dirty marks carry the tenant: ``<application id>:<chat id>``, so each recount statement on
``chats`` names the applications of its rows first (a sharded database routes it to their shards)."""

from __future__ import annotations

from sqlalchemy.dialects import mysql

from chat_common.wire.keys import dirty_chat_mark, parse_dirty_marks
from counter_cron.sync import APPLICATION_CHATS, CHAT_MESSAGES


def sql(statement) -> str:
    return str(statement.compile(dialect=mysql.dialect(), compile_kwargs={"literal_binds": True}))


def test_a_mark_names_the_application_and_the_chat_and_parses_back():
    marks = [dirty_chat_mark(7, 120).encode(), dirty_chat_mark(7, 3).encode(), dirty_chat_mark(9, 44).encode()]
    assert parse_dirty_marks(marks) == ([3, 44, 120], {3: 7, 44: 9, 120: 7})


def test_bare_ids_of_earlier_writers_still_count_and_junk_is_dropped():
    ids, tenants = parse_dirty_marks([b"5", b"7:6", b"junk", b"x:8", b"9:", b""])
    assert (ids, tenants) == ([5, 6], {6: 7})


def test_chat_recounts_are_keyed_by_application_when_every_row_names_one():
    apps = CHAT_MESSAGES.tenants_of([3, 120], {3: 7, 120: 7, 44: 9})
    assert apps == [7]
    assert "chats.application_id IN (7) AND chats.id IN (3, 120)" in sql(CHAT_MESSAGES.stale([3, 120], apps))
    assert "chats.application_id IN (7) AND chats.id IN (3, 120)" in sql(CHAT_MESSAGES.lock_free_rows([3, 120], apps))
    assert "WHERE application_id IN (7) AND id IN (3, 120)" in str(CHAT_MESSAGES.raise_to({3: 4, 120: 2}, apps))


def test_without_the_tenant_of_every_row_the_statement_is_not_filtered_by_one():
    # A bare id (an earlier writer's mark) in the chunk: filtering by the others' tenants would skip its row.
    assert CHAT_MESSAGES.tenants_of([3, 5], {3: 7}) is None
    assert "application_id IN" not in sql(CHAT_MESSAGES.stale([3, 5], None))
    assert "application_id IN" not in str(CHAT_MESSAGES.raise_to({3: 4}, None))


def test_applications_are_their_own_tenant_key():
    assert APPLICATION_CHATS.tenants_of([1, 2], {1: 1, 2: 2}) is None  # keyed by id already
    assert "WHERE id IN (1, 2)" in str(APPLICATION_CHATS.raise_to({1: 3, 2: 4}))
