"""Initial schema: applications, chats, messages.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_520_ci"}
ID = mysql.BIGINT(unsigned=True)
NUMBER = mysql.INTEGER(unsigned=True)
STAMP = mysql.DATETIME(fsp=6)


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", STAMP, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP(6)")),
        sa.Column("updated_at", STAMP, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP(6)")),
    ]


def upgrade() -> None:
    op.create_table(
        "applications",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("token", mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        # Set by clients that must not create twice (the operator uses the custom resource's uid).
        sa.Column("idempotency_key", mysql.VARCHAR(128, charset="ascii", collation="ascii_bin"), nullable=True),
        sa.Column("chats_count", NUMBER, nullable=False, server_default="0"),
        *_timestamps(),
        sa.UniqueConstraint("token", name="uq_applications_token"),
        sa.UniqueConstraint("idempotency_key", name="uq_applications_idempotency_key"),
        **OPTIONS,
    )
    op.create_index("ix_applications_created_at", "applications", ["created_at"])
    op.create_table(
        "chats",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("application_id", ID, sa.ForeignKey("applications.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", NUMBER, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("messages_count", NUMBER, nullable=False, server_default="0"),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        *_timestamps(),
        sa.UniqueConstraint("application_id", "number", name="uq_chats_application_number"),
        **OPTIONS,
    )
    op.create_table(
        "messages",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("chat_id", ID, sa.ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", NUMBER, nullable=False),
        sa.Column("body", mysql.MEDIUMTEXT(), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        *_timestamps(),
        sa.UniqueConstraint("chat_id", "number", name="uq_messages_chat_number"),
        **OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_table("chats")
    op.drop_index("ix_applications_created_at", table_name="applications")
    op.drop_table("applications")
