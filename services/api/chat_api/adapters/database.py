"""The API's MySQL connection pool: SQLAlchemy builds and compiles each statement once, asyncmy runs it.

Measured on this machine (docs/performance.md, "Reads"): a page of 20 messages cost ~950 µs of client CPU through
SQLAlchemy's asyncio extension on aiomysql, ~700 µs through a thread pool on PyMySQL, ~360 µs with the same
compiled SQL handed straight to aiomysql, and ~145 µs handed to asyncmy (PyMySQL's protocol code, compiled with
Cython; aiomysql reads every row packet with its own await). So the request path keeps SQLAlchemy for what it is
good at — the tables and the statements, compiled to SQL text once per statement — and runs them on asyncmy.

Connections are autocommit (each statement is its own snapshot): no ``ROLLBACK`` when one goes back to the pool
and no ``ping`` when it leaves. A connection the server dropped fails its statement, is closed, and the statement
runs once more on a fresh one; a second failure is :class:`DatabaseUnavailable` (503). TLS options of the URL are
read by :func:`chat_common.clients.db.mysql_target`, as for every other MySQL client: a server failing verification is a
503.

Every read (``SELECT``) runs under a statement time limit (``READ_STATEMENT_TIMEOUT_SECONDS``, default 1 s): the
server stops it there (MariaDB ``SET STATEMENT max_statement_time=… FOR``, MySQL's ``MAX_EXECUTION_TIME`` hint),
so one expensive read — a fragment search over a very large chat — holds a server thread and a pool connection for
at most that long. A read stopped so is :class:`StatementTimedOut` (503 with ``Retry-After``), never retried here
(the same statement would be stopped again) and never a reason to set a read replica aside.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncmy
from asyncmy import errors
from sqlalchemy.dialects import mysql
from sqlalchemy.sql import ClauseElement

from chat_api.model import DatabaseUnavailable, StatementTimedOut
from chat_common.clients.db import mysql_target

_DIALECT = mysql.dialect(paramstyle="pyformat")

# The server's "statement stopped by its time limit" errors: MariaDB ER_STATEMENT_TIMEOUT, MySQL ER_QUERY_TIMEOUT.
_STATEMENT_TIMEOUT_ERRORS = frozenset({1969, 3024})


def limit_statement(sql: str, seconds: float, mariadb: bool) -> str:
    """``sql`` (a ``SELECT``) with a server-side time limit of ``seconds``; other statements as they are.

    MariaDB reads ``SET STATEMENT max_statement_time=<s> FOR <statement>`` (seconds, a fraction allowed); MySQL has no
    such prefix but reads the optimizer hint ``SELECT /*+ MAX_EXECUTION_TIME(<ms>) */`` (which MariaDB ignores).
    Per statement rather than per session, so writes and the server status statements keep no limit. A read that
    starts with ``WITH`` (the event log's page) is limited on MariaDB only: MySQL's hint belongs after a ``SELECT``.
    """
    head = sql.lstrip()[:7].split(None, 1)[0].upper() if sql.strip() else ""
    if seconds <= 0 or head not in ("SELECT", "WITH"):
        return sql
    if mariadb:
        return f"SET STATEMENT max_statement_time={seconds:g} FOR {sql}"
    if head != "SELECT":
        return sql
    head, _, rest = sql.lstrip().partition(" ")
    return f"{head} /*+ MAX_EXECUTION_TIME({max(1, round(seconds * 1000))}) */ {rest}"


class Database:
    """A small pool of asyncmy connections running compiled SQLAlchemy statements."""

    def __init__(
        self, database_url: str, *, pool_size: int = 10, timeout: float = 30.0, read_timeout: float = 0.0
    ) -> None:
        url, context = mysql_target(database_url)  # TLS options read as every other MySQL client reads them
        self.connect_args = {
            "host": url.host or "127.0.0.1",
            "port": url.port or 3306,
            "user": url.username or "root",
            "password": url.password or "",
            "database": url.database,
            "charset": url.query.get("charset", "utf8mb4"),
            "autocommit": True,
            "connect_timeout": 5,
        }
        if context is not None:
            self.connect_args["ssl"] = context
        self.pool_size = pool_size
        self.timeout = timeout
        self.read_timeout = read_timeout  # server-side limit of each SELECT (0: none)
        self._mariadb: bool | None = None  # known at the first connection
        self._pool: asyncmy.Pool | None = None
        self._compiled: dict[int, tuple[ClauseElement, str, dict]] = {}

    def sql(self, statement: ClauseElement, params: dict) -> tuple[str, dict]:
        """The statement's SQL text (``%(name)s`` parameters), compiled once per statement object, and its
        parameters: the values the statement itself carries (literals), overridden by ``params``."""
        cached = self._compiled.get(id(statement))
        if cached is None or cached[0] is not statement:
            compiled = statement.compile(dialect=_DIALECT)
            cached = self._compiled[id(statement)] = (statement, str(compiled), dict(compiled.params))
        return cached[1], {**cached[2], **params} if cached[2] else params

    async def _acquire(self) -> asyncmy.Connection:
        if self._pool is None:
            self._pool = await asyncmy.create_pool(minsize=0, maxsize=self.pool_size, **self.connect_args)
        return await self._pool.acquire()

    async def _run(self, sql: str, params: dict | None, fetch: bool, named: bool = False) -> Any:
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.timeout):
                    conn = await self._acquire()
            # RuntimeError: asyncmy's connect raises "Transport does not expose socket instance" when the peer
            # closes the connection as soon as it is accepted (a proxy or load balancer with no server behind it).
            except (errors.OperationalError, OSError, TimeoutError, RuntimeError) as exc:
                raise DatabaseUnavailable(exc.__class__.__name__) from None
            if self._mariadb is None:
                self._mariadb = "mariadb" in conn.get_server_info().lower()
            try:
                async with asyncio.timeout(self.timeout), conn.cursor() as cursor:
                    count = await cursor.execute(limit_statement(sql, self.read_timeout, self._mariadb), params)
                    result = await cursor.fetchall() if fetch else count
                    if named:  # column names with each row (server status statements)
                        names = [column[0] for column in cursor.description or ()]
                        result = [dict(zip(names, row, strict=True)) for row in result]
            except (errors.OperationalError, errors.InterfaceError, OSError, TimeoutError) as exc:
                if exc.args and exc.args[0] in _STATEMENT_TIMEOUT_ERRORS:  # only the statement was stopped: the
                    self._pool.release(conn)  # connection is fine, and the same statement would be stopped again
                    raise StatementTimedOut(self.read_timeout) from None
                conn.close()  # a broken connection never goes back to the pool
                self._pool.release(conn)
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise DatabaseUnavailable(exc.__class__.__name__) from None
                continue
            except BaseException:
                conn.close()  # cancelled or failed mid-statement: its protocol state is unknown
                self._pool.release(conn)
                raise
            self._pool.release(conn)
            return result
        raise AssertionError("unreachable")

    async def rows(self, statement: ClauseElement, params: dict | None = None) -> list[tuple]:
        """The rows of a query (tuples, in the statement's column order)."""
        return await self._run(*self.sql(statement, params or {}), fetch=True)

    async def rows_of_sql(self, sql: str, params: dict) -> list[tuple]:
        """The rows of SQL text compiled by the caller (statements built per call, like a search)."""
        return await self._run(sql, params, fetch=True)

    async def named_rows(self, sql: str) -> list[dict[str, Any]]:
        """The rows of a statement without parameters as dicts by column name (``SHOW REPLICA STATUS``)."""
        return await self._run(sql, None, fetch=True, named=True)

    async def execute(self, statement: ClauseElement, params: dict | None = None) -> int:
        """Run a write; returns the number of rows it matched."""
        return await self._run(*self.sql(statement, params or {}), fetch=False)

    async def close(self) -> None:
        """Close every pooled connection."""
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None


def compile_sql(statement: ClauseElement) -> tuple[str, dict]:
    """SQL text and parameters of a statement built per call (its bound values become parameters)."""
    compiled = statement.compile(dialect=_DIALECT)
    return str(compiled), dict(compiled.params)
