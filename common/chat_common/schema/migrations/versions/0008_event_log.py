"""The tenants' event log: one small row per create or edit a writer applied (``GET /applications/{token}/events``).

- ``events``: written by the chat- and message-writers in the transaction of their upsert, with a multi-row
  ``INSERT`` per batch (``chat_common.wire.events``); the unique key ``uq_events_change`` (application, chat,
  message — 0 for a chat — and version) keeps one event per change. Its ids are not an ``AUTO_INCREMENT``: they come
  from ``event_sequence``, gap-free and in commit order. No body is copied: the API joins
  the row as it is now. ``ix_events_application_id`` (application, id) is the tenant's page in id order; the count sync
  prunes rows older than ``EVENT_RETENTION_SECONDS``.
- ``event_sequence``: one row (id 1), ``last_id`` the last event id handed out, seeded with 0.

New tables: nothing existing is rewritten. Existing rows get no events (the log starts with this revision).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_520_ci"}
ID = mysql.BIGINT(unsigned=True)
NUMBER = mysql.INTEGER(unsigned=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", ID, primary_key=True, autoincrement=False),
        # No foreign key (a lookup per inserted row): deleting an application deletes its events in batches.
        sa.Column("application_id", ID, nullable=False),
        sa.Column("chat_number", NUMBER, nullable=False),
        sa.Column("message_number", NUMBER, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column(
            "committed_at", mysql.DATETIME(fsp=6), nullable=False, server_default=sa.text("CURRENT_TIMESTAMP(6)")
        ),
        sa.UniqueConstraint("application_id", "chat_number", "message_number", "version", name="uq_events_change"),
        **OPTIONS,
    )
    op.create_index("ix_events_application_id", "events", ["application_id", "id"])
    sequence = op.create_table(
        "event_sequence",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_id", ID, nullable=False),
        **OPTIONS,
    )
    op.bulk_insert(sequence, [{"id": 1, "last_id": 0}])


def downgrade() -> None:
    op.drop_table("event_sequence")
    op.drop_table("events")
