"""The schema can shard by tenant: every table of tenant data carries ``application_id``, and every query on
``messages`` reaches it through an index whose first column is ``application_id``, never by a full scan: the
message-writer's pre-read and search backlog drain, the count sync's per-chat count, the MySQL search, the tenant
delete, and the API's pages, single reads, last number, in-request edit and live streams' range.

The checks read ``EXPLAIN`` of the very statements the services build, on a table holding several tenants, and a
control statement without the tenant key shows that the check does fail when an index does not lead with it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.dialects import mysql

from chat_api.adapters import repository
from chat_api.adapters.database import Database
from chat_api.streams import reader
from chat_common.clients.db import make_engine
from chat_common.schema.tables import metadata
from chat_common.search.mysql import search_statement
from chat_common.tenancy.applications import message_batch
from counter_cron.sync import CHAT_MESSAGES
from message_writer.handler import stored_rows
from message_writer.indexing import backlog_query

# Tables whose rows belong to one application (``applications`` is keyed by its own id).
TENANT_TABLES = ("chats", "messages", "idempotency_keys", "events", "webhook_endpoints", "webhook_held")
# Tables of the deployment, not of a tenant.
DEPLOYMENT_TABLES = ("applications", "system_markers", "alembic_version", "event_sequence")
APPLICATIONS, CHATS_EACH, MESSAGES_EACH = 12, 10, 30


@pytest.fixture
def engine(fresh_namespace) -> Iterator[Engine]:
    """The test's own migrated database with several tenants' chats and messages, its statistics up to date."""
    eng = make_engine(fresh_namespace.settings.database_url, pool_size=1)
    with eng.begin() as conn:
        conn.execute(
            text("INSERT INTO applications (id, token, name) VALUES (:i, :t, 'a')"),
            [{"i": a, "t": f"token{a}"} for a in range(1, APPLICATIONS + 1)],
        )
        conn.execute(
            text("INSERT INTO chats (id, application_id, number, name) VALUES (:i, :a, :n, 'c')"),
            [
                {"i": (a - 1) * CHATS_EACH + n, "a": a, "n": n}
                for a in range(1, APPLICATIONS + 1)
                for n in range(1, CHATS_EACH + 1)
            ],
        )
        conn.execute(
            text("INSERT INTO messages (application_id, chat_id, number, body) VALUES (:a, :c, :n, :b)"),
            [
                {"a": a, "c": (a - 1) * CHATS_EACH + n, "n": m, "b": f"body {m}"}
                for a in range(1, APPLICATIONS + 1)
                for n in range(1, CHATS_EACH + 1)
                for m in range(1, MESSAGES_EACH + 1)
            ],
        )
        conn.execute(text("ANALYZE TABLE applications, chats, messages"))
    yield eng
    eng.dispose()


def _sql(statement) -> str:
    return str(statement.compile(dialect=mysql.dialect(), compile_kwargs={"literal_binds": True}))


def _leading_column(conn, table: str, index: str) -> str:
    return conn.execute(
        text(
            "SELECT column_name FROM information_schema.statistics WHERE table_schema = DATABASE()"
            " AND table_name = :t AND index_name = :i AND seq_in_index = 1"
        ),
        {"t": table, "i": index},
    ).scalar_one()


def messages_access(engine: Engine, sql: str, params: dict | None = None, ranked: bool = False) -> list[str]:
    """What is wrong with how the plan of ``sql`` reads ``messages`` (empty: through an application_id index, and,
    unless its order is a ranking computed per row (``ranked``), without sorting them)."""
    problems = []
    with engine.connect() as conn:
        if params is None:
            plan = [row._mapping for row in conn.execute(text("EXPLAIN " + sql))]
        else:  # SQL compiled with pyformat parameters, as the API's pool runs it
            plan = [row._mapping for row in conn.exec_driver_sql("EXPLAIN " + sql, params)]
        reads = [step for step in plan if step["table"] == "messages"]
        if any(step["Extra"] == "Select tables optimized away" for step in plan):
            return problems  # MIN/MAX answered from the index's ends: no rows read at all
        if not reads:
            problems.append(f"messages not in the plan: {plan}")
        for step in reads:
            # A sort: every message of the chat read and sorted before LIMIT applies.
            if not ranked and "filesort" in (step["Extra"] or ""):
                problems.append(f"sorts messages ({step['Extra']})")
            if step["type"] in ("ALL", "index") or not step["key"]:
                problems.append(f"scans messages ({step['type']}, key {step['key']})")
            elif _leading_column(conn, "messages", step["key"]) != "application_id":
                problems.append(f"reads messages through {step['key']}, which does not lead with application_id")
    return problems


def test_every_table_of_tenant_data_carries_application_id(engine):
    with engine.connect() as conn:
        tables = set(
            conn.execute(text("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"))
            .scalars()
            .all()
        )
        with_column = set(
            conn.execute(
                text(
                    "SELECT table_name FROM information_schema.columns"
                    " WHERE table_schema = DATABASE() AND column_name = 'application_id'"
                )
            )
            .scalars()
            .all()
        )
    # A new table is either the deployment's (listed above) or a tenant's, and then it must carry the key.
    assert tables - set(DEPLOYMENT_TABLES) == set(TENANT_TABLES)
    assert set(TENANT_TABLES) <= with_column
    for name in TENANT_TABLES:  # the metadata the services use says the same
        column = metadata.tables[name].c.get("application_id")
        assert column is not None and not column.nullable, name


def test_the_check_fails_for_a_read_of_messages_without_the_tenant_key(engine):
    # The former shape of the count and the search: chat_id alone, no index leads with it any more.
    assert messages_access(engine, "SELECT COUNT(*) FROM messages WHERE chat_id = 5")
    assert messages_access(engine, "SELECT id FROM messages WHERE number = 3")


def test_the_writers_pre_read_goes_through_the_tenant_key(engine):
    with engine.connect() as conn:
        keys = [
            (a, c, n)
            for a, c, n in conn.execute(
                text("SELECT application_id, chat_id, number FROM messages WHERE application_id = 3 LIMIT 20")
            )
        ]
    assert messages_access(engine, _sql(stored_rows(keys))) == []


def test_the_search_backlog_drain_goes_through_the_tenant_key(engine):
    assert messages_access(engine, _sql(backlog_query({(3, 2, 5), (4, 1, 7)}))) == []


def test_the_count_syncs_per_chat_count_goes_through_the_tenant_key(engine):
    assert messages_access(engine, _sql(CHAT_MESSAGES.stale([3, 17, 42]))) == []


def test_the_search_statement_goes_through_the_tenant_key(engine):
    assert messages_access(engine, _sql(search_statement(4, 2, "body", 0, 20)), ranked=True) == []


def test_the_delete_batch_goes_through_the_tenant_key(engine):
    assert messages_access(engine, _sql(message_batch(5, 5000))) == []


API_PARAMS = {"app": 3, "chat": 2, "message": 5, "after": 0, "upto": 30, "offset": 0, "limit": 21}


@pytest.mark.parametrize(
    "statement",
    [
        repository._FIND_MESSAGE,
        repository._LIST_MESSAGES,
        repository._LAST_MESSAGE,
        repository._EDIT_MESSAGE,
        reader._RANGE,
    ],
    ids=["find_message", "list_messages", "last_message", "edit_message", "stream_range"],
)
def test_the_apis_statements_go_through_the_tenant_key(engine, statement):
    sql, params = Database("mysql://x@127.0.0.1/x").sql(
        statement, {**API_PARAMS, "new_body": "b", "new_version": 1}
    )  # compiled exactly as the API's pool compiles it (nothing connects)
    assert messages_access(engine, sql, params) == []
