"""Database engines: one place that knows how this system talks to MySQL/MariaDB."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url


def make_engine(database_url: str, *, pool_size: int = 10, read_timeout: float | None = 30, **kwargs: object) -> Engine:
    """An engine with the connection hygiene every service needs.

    READ COMMITTED avoids the gap locks REPEATABLE READ takes on ``INSERT … ON DUPLICATE KEY``,
    which would otherwise make concurrent writer batches deadlock each other. ``read_timeout`` (seconds, None:
    none) bounds the wait for one answer: migrations that rebuild a big table wait longer than services should.
    """
    return create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        isolation_level="READ COMMITTED",
        connect_args={"connect_timeout": 5, "read_timeout": read_timeout, "write_timeout": 30},
        **kwargs,
    )


def create_database_if_missing(database_url: str) -> bool:
    """Create the URL's database (utf8mb4) when it does not exist. Returns True when it was created."""
    url = make_url(database_url)
    name = url.database
    if not name:
        raise ValueError("DATABASE_URL names no database")
    server = create_engine(url.set(database=""), isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :n"), {"n": name}
            ).first()
            if exists:
                return False
            quoted = name.replace("`", "``")
            conn.execute(
                text(f"CREATE DATABASE IF NOT EXISTS `{quoted}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci")
            )
            return True
    finally:
        server.dispose()


def drop_database(database_url: str) -> None:
    """Drop the URL's database if it exists (tests and benchmarks clean up with this)."""
    url = make_url(database_url)
    server = create_engine(url.set(database=""), isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database.replace('`', '``')}`"))
    finally:
        server.dispose()
