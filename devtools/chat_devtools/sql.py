"""Reading a database in tests, benchmarks and audits: one statement, its rows, on a connection of its own."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, Row, text


def fetch_all(engine: Engine, sql: str, **params: object) -> Sequence[Row]:
    """Every row of one read-only statement (``:name`` placeholders bound from ``params``)."""
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()
