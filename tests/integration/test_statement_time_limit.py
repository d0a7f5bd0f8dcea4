"""The API's reads run under a server-side statement time limit (issue #23): a slow read is stopped, not waited for."""

from __future__ import annotations

import time

import pytest

from chat_api.adapters.database import Database, limit_statement
from chat_api.model import StatementTimedOut


async def test_a_read_past_the_limit_is_stopped_by_the_server(namespace):
    db = Database(namespace.settings.database_url, read_timeout=0.3)
    try:
        began = time.monotonic()
        with pytest.raises(StatementTimedOut) as stopped:
            await db.rows_of_sql("SELECT SLEEP(5)", {})
        assert time.monotonic() - began < 2.0
        assert stopped.value.retry_after > 0 and "cheaper" in str(stopped.value)
        # Only the statement was stopped: the pool's connection serves the next read.
        assert await db.rows_of_sql("SELECT 1", {}) == ((1,),)
    finally:
        await db.close()


async def test_without_a_limit_the_read_runs_to_its_end(namespace):
    db = Database(namespace.settings.database_url, read_timeout=0)
    try:
        assert await db.rows_of_sql("SELECT SLEEP(0.4)", {}) == ((0,),)
    finally:
        await db.close()


def test_only_selects_are_limited_in_each_dialect():
    assert limit_statement("SELECT 1", 1.5, mariadb=True) == "SET STATEMENT max_statement_time=1.5 FOR SELECT 1"
    assert limit_statement("SELECT a FROM t", 0.25, mariadb=False) == "SELECT /*+ MAX_EXECUTION_TIME(250) */ a FROM t"
    assert limit_statement("UPDATE t SET a = 1", 1.0, mariadb=True) == "UPDATE t SET a = 1"
    assert limit_statement("SHOW REPLICA STATUS", 1.0, mariadb=True) == "SHOW REPLICA STATUS"
    assert limit_statement("SELECT 1", 0, mariadb=True) == "SELECT 1"
