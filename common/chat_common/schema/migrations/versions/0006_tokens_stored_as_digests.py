"""Tokens stored as digests: lookups by SHA-256, a sealed copy for the few answers that show a token again.

- ``token_digest`` / ``previous_token_digest``: SHA-256 (hex) of each token, UNIQUE; every lookup uses them.
- ``token_sealed`` / ``previous_token_sealed``: the token under AES-256-GCM with ``TOKEN_SEALING_KEY`` (never in the
  database; NULL without a key): the admin listing and answers, idempotent replays of a create, and the operator
  restoring a deleted Secret read it (chat_common.tenancy.tokens).
- ``token`` becomes nullable: the new version writes no plaintext, and ``python -m chat_common.ops.token_migration
  --erase-plaintext`` erases the older ones once no process of the previous version is left (docs/security.md,
  "Upgrading to digests"). Until then the previous version keeps finding tenants by the plaintext it knows.

Existing rows are converted here in batches of ``applications.id`` (each its own transaction, progress logged);
every step is skipped when done, so a run killed midway resumes. Nullable ADD COLUMN is instant on MariaDB 10.3+ /
MySQL 8.0.29+; ``applications`` holds one row per tenant, so the MODIFY and the two unique indexes are short.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import logging

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from chat_common.config import Settings
from chat_common.ops.token_migration import convert
from chat_common.tenancy.tokens import TokenSealer

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ASCII = {"charset": "ascii", "collation": "ascii_bin"}
COLUMNS = {
    "token_digest": mysql.VARCHAR(64, **ASCII),
    "token_sealed": mysql.VARCHAR(128, **ASCII),
    "previous_token_digest": mysql.VARCHAR(64, **ASCII),
    "previous_token_sealed": mysql.VARCHAR(128, **ASCII),
}
UNIQUE = {
    "uq_applications_token_digest": "token_digest",
    "uq_applications_previous_token_digest": "previous_token_digest",
}
log = logging.getLogger("chat_common.schema.migrations.0006")


def _has(connection, what: str, name: str) -> bool:
    table = {"column": "columns", "index": "statistics"}[what]
    return bool(
        connection.execute(
            sa.text(
                f"SELECT COUNT(*) FROM information_schema.{table}"
                f" WHERE table_schema = DATABASE() AND table_name = 'applications' AND {what}_name = :name"
            ),
            {"name": name},
        ).scalar()
    )


def upgrade() -> None:
    connection = op.get_bind()
    for name, type_ in COLUMNS.items():
        if not _has(connection, "column", name):
            op.add_column("applications", sa.Column(name, type_, nullable=True))
    op.alter_column("applications", "token", existing_type=mysql.VARCHAR(64, **ASCII), nullable=True)
    sealer = TokenSealer.from_key(Settings.from_env().token_sealing_key)
    if sealer is None:
        log.warning("0006: TOKEN_SEALING_KEY is unset: digests only, no sealed copies (see docs/security.md)")
    convert(connection, sealer, erase=False)
    for index, column in UNIQUE.items():
        if not _has(connection, "index", index):
            op.create_unique_constraint(index, "applications", [column])


def downgrade() -> None:
    connection = op.get_bind()
    # The previous version needs plaintexts: put back what the sealed copies hold (a row without either is lost to it).
    sealer = TokenSealer.from_key(Settings.from_env().token_sealing_key)
    rows = connection.execute(
        sa.text(
            "SELECT id, token_digest, token_sealed, previous_token_digest, previous_token_sealed FROM applications"
            " WHERE token IS NULL OR (previous_token IS NULL AND previous_token_digest IS NOT NULL)"
        )
    ).all()
    for row in rows:
        token = sealer.unseal(row.token_sealed, row.token_digest) if sealer else None
        previous = sealer.unseal(row.previous_token_sealed, row.previous_token_digest) if sealer else None
        if token is None:
            raise RuntimeError(
                f"application {row.id}: no plaintext and no sealed copy this key opens; cannot downgrade"
            )
        connection.execute(
            sa.text("UPDATE applications SET token = :t, previous_token = COALESCE(previous_token, :p) WHERE id = :id"),
            {"t": token, "p": previous, "id": row.id},
        )
    for index in UNIQUE:
        op.drop_constraint(index, "applications", type_="unique")
    op.alter_column("applications", "token", existing_type=mysql.VARCHAR(64, **ASCII), nullable=False)
    for name in COLUMNS:
        op.drop_column("applications", name)
