"""Durable idempotency keys of chat and message creates, and system markers.

- ``idempotency_keys``: what a create with an ``Idempotency-Key`` was given, written by the writers in the same
  transaction as the row. The API consults it when Redis may have forgotten a key (after Redis lost its data),
  so a retry still answers the first number instead of storing a second row.
- ``system_markers``: durable facts about the deployment. ``numbering_opened`` is written the first time
  numbering opens: without it, a missing Redis epoch means a brand-new system (open at once), not a loss.
  Existing deployments (any application present) get the marker now, so an upgrade never skips a recovery.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_520_ci"}
ID = mysql.BIGINT(unsigned=True)
NUMBER = mysql.INTEGER(unsigned=True)
STAMP = mysql.DATETIME(fsp=6)
ASCII = {"charset": "ascii", "collation": "ascii_bin"}


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("application_id", ID, sa.ForeignKey("applications.id", ondelete="CASCADE"), nullable=False),
        # 0 for chat creates, else the chat the message was created in.
        sa.Column("chat_number", NUMBER, nullable=False),
        sa.Column("idempotency_key", mysql.VARCHAR(128, **ASCII), nullable=False),
        sa.Column("number", NUMBER, nullable=False),
        sa.Column("fingerprint", mysql.CHAR(32, **ASCII), nullable=False),
        sa.Column("created_at", STAMP, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP(6)")),
        sa.PrimaryKeyConstraint("application_id", "chat_number", "idempotency_key"),
        **OPTIONS,
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.create_table(
        "system_markers",
        sa.Column("name", mysql.VARCHAR(64, **ASCII), primary_key=True),
        sa.Column("created_at", STAMP, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP(6)")),
        **OPTIONS,
    )
    op.execute(
        "INSERT INTO system_markers (name)"
        " SELECT 'numbering_opened' FROM DUAL WHERE EXISTS (SELECT 1 FROM applications)"
    )


def downgrade() -> None:
    op.drop_table("system_markers")
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
