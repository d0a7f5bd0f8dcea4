"""Tenants' webhook endpoints, and the deliveries held back per chat (``services/webhook-dispatcher``).

- ``webhook_endpoints``: an application's endpoints (URL, event types, signing secret sealed with the deployment's
  sealing key, a second secret while one rotates), who manages each (``api``: the admin REST API; ``k8s``: the
  operator, from ``spec.webhooks`` of the Application resource), its delivery state (healthy, failing since,
  disabled and why), its place in the event log (``position``: every event up to it is delivered, given up or held)
  and the dispatcher process holding its lease.
- ``webhook_held``: events of a chat whose delivery failed and is retried later, with the events of the same chat
  that came after (held behind it, so a chat's events arrive in order); one row per (endpoint, event), keyed by the
  tenant first like every table of tenant data (a database sharded by application keeps them on its shard).

New tables: nothing existing is rewritten.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_520_ci"}
ID = mysql.BIGINT(unsigned=True)
NUMBER = mysql.INTEGER(unsigned=True)
TIME = mysql.DATETIME(fsp=6)
NOW = sa.text("CURRENT_TIMESTAMP(6)")


def ascii_(length: int) -> mysql.VARCHAR:
    return mysql.VARCHAR(length, charset="ascii", collation="ascii_bin")


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("application_id", ID, sa.ForeignKey("applications.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", ascii_(63), nullable=False),
        sa.Column("url", ascii_(2048), nullable=False),
        sa.Column("event_types", ascii_(255), nullable=False),
        sa.Column("secret_sealed", ascii_(255), nullable=False),
        sa.Column("previous_secret_sealed", ascii_(255), nullable=True),
        sa.Column("previous_secret_expires_at", TIME, nullable=True),
        sa.Column("managed_by", ascii_(8), nullable=False, server_default="api"),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default="1"),
        sa.Column("state", ascii_(16), nullable=False, server_default="healthy"),
        sa.Column("failing_since", TIME, nullable=True),
        sa.Column("disabled_at", TIME, nullable=True),
        sa.Column("disabled_reason", sa.String(255), nullable=True),
        sa.Column("last_success_at", TIME, nullable=True),
        sa.Column("last_failure_at", TIME, nullable=True),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.Column("position", ID, nullable=False, server_default="0"),
        sa.Column("lease_owner", ascii_(64), nullable=True),
        sa.Column("lease_until", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False, server_default=NOW),
        sa.Column("updated_at", TIME, nullable=False, server_default=NOW),
        sa.UniqueConstraint("application_id", "name", name="uq_webhook_endpoints_application_name"),
        **OPTIONS,
    )
    op.create_table(
        "webhook_held",
        sa.Column("application_id", ID, primary_key=True),
        sa.Column("endpoint_id", ID, sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("event_id", ID, primary_key=True, autoincrement=False),
        sa.Column("chat_number", NUMBER, nullable=False),
        sa.Column("attempts", NUMBER, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TIME, nullable=False, server_default=NOW),
        sa.Column("first_failed_at", TIME, nullable=True),
        **OPTIONS,
    )
    op.create_index("ix_webhook_held_chat", "webhook_held", ["endpoint_id", "chat_number", "event_id"])


def downgrade() -> None:
    op.drop_table("webhook_held")
    op.drop_table("webhook_endpoints")
