"""Application creates' idempotency keys are fingerprinted: the same key with a different request is refused.

- ``idempotency_fingerprint``: a digest of the request that created the application with ``idempotency_key``
  (method, route and canonical body; see :func:`chat_common.wire.idempotency.request_fingerprint`). NULL for the
  operator's keys (``k8s:<uid>``: its reconcile repeats with whatever name the spec has now) and for rows created
  before this revision. Since this revision the REST API stores its keys scoped to the caller (``api:<digest>``), so
  a key from before it no longer replays: a retry spanning the upgrade creates a second application (see
  docs/security.md).

Nullable column: instant ADD COLUMN on MariaDB 10.3+ / MySQL 8.0.29+ (no table rebuild).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "applications",
        sa.Column("idempotency_fingerprint", mysql.VARCHAR(32, charset="ascii", collation="ascii_bin"), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("applications", "idempotency_fingerprint")
