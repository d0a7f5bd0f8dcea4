"""Tenant management: suspension, token rotation with a grace period, per-tenant limits, last activity.

- ``suspended``: the application's tokens answer 403 while set; nothing is deleted.
- ``previous_token`` / ``previous_token_expires_at`` / ``token_rotated_at`` / ``token_generation``: a rotation
  moves ``token`` to ``previous_token`` (valid until its expiry, then 404) and counts the rotation, so that the
  operator's ``spec.rotateToken`` counter is applied exactly once however often a reconcile is retried.
- ``requests_per_second`` / ``max_chats`` / ``max_message_bytes``: per-tenant limits (NULL: the default).
- ``last_activity_at``: the last create or edit, copied from Redis when usage is read.
- ``owner_uid``: the Application resource managing the tenant, so an adopted tenant is found again after its
  ``spec.existingToken`` was rotated away.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NUMBER = mysql.INTEGER(unsigned=True)
STAMP = mysql.DATETIME(fsp=6)
ASCII = {"charset": "ascii", "collation": "ascii_bin"}


def upgrade() -> None:
    # Nullable or defaulted columns: instant ADD COLUMN on MariaDB 10.3+ / MySQL 8.0.29+ (no table rebuild).
    op.add_column("applications", sa.Column("suspended", sa.Boolean(), nullable=False, server_default=sa.text("0")))
    op.add_column("applications", sa.Column("previous_token", mysql.VARCHAR(64, **ASCII), nullable=True))
    op.add_column("applications", sa.Column("previous_token_expires_at", STAMP, nullable=True))
    op.add_column("applications", sa.Column("token_rotated_at", STAMP, nullable=True))
    op.add_column("applications", sa.Column("token_generation", NUMBER, nullable=False, server_default=sa.text("0")))
    op.add_column("applications", sa.Column("requests_per_second", NUMBER, nullable=True))
    op.add_column("applications", sa.Column("max_chats", NUMBER, nullable=True))
    op.add_column("applications", sa.Column("max_message_bytes", NUMBER, nullable=True))
    op.add_column("applications", sa.Column("last_activity_at", STAMP, nullable=True))
    op.add_column("applications", sa.Column("owner_uid", mysql.VARCHAR(128, **ASCII), nullable=True))
    op.create_unique_constraint("uq_applications_previous_token", "applications", ["previous_token"])
    op.create_index("ix_applications_owner_uid", "applications", ["owner_uid"])


def downgrade() -> None:
    op.drop_index("ix_applications_owner_uid", table_name="applications")
    op.drop_constraint("uq_applications_previous_token", "applications", type_="unique")
    for column in (
        "owner_uid",
        "last_activity_at",
        "max_message_bytes",
        "max_chats",
        "requests_per_second",
        "token_generation",
        "token_rotated_at",
        "previous_token_expires_at",
        "previous_token",
        "suspended",
    ):
        op.drop_column("applications", column)
