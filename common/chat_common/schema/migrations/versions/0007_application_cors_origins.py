"""Applications get their own CORS allow-list for the live stream and stream ticket routes.

- ``cors_origins``: the web origins (``scheme://host[:port]``, or ``*``) whose pages may read the application's live
  streams and mint tickets from a browser, comma-separated; NULL (every row before this revision) means the
  deployment's ``CORS_ALLOWED_ORIGINS``. Set from the Application resource's ``spec.corsOrigins`` (operator) or
  ``PUT /applications/{token}/cors-origins`` (admin REST).

Nullable column: instant ADD COLUMN on MariaDB 10.3+ / MySQL 8.0.29+ (no table rebuild).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("applications", sa.Column("cors_origins", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("applications", "cors_origins")
