"""Messages keyed by application: ``messages.application_id`` leads its unique key, so the table can shard by tenant.

- ``application_id``: the tenant of every message row, copied from its chat. Every query on ``messages`` names
  it first, so a sharded deployment (Vitess: a hash vindex on ``application_id``) routes each one to one shard.
- ``uq_messages_application_chat_number (application_id, chat_id, number)`` replaces
  ``uq_messages_chat_number (chat_id, number)``: the same uniqueness (a chat belongs to one application), with
  the tenant's key first.
- The foreign key moves from ``chat_id → chats`` to ``application_id → applications`` (ON DELETE CASCADE):
  the tenant's key leads every index, Vitess does not enforce foreign keys across shards, and deleting an
  application still cascades to its messages. Chats are never deleted one by one.

Safe on a big table: the column is added nullable (instant ADD COLUMN), filled in batches of ``messages.id``
ranges (each batch its own short transaction, progress logged), and only the last step locks ``messages``
(``LOCK TABLES messages WRITE``), so that no row inserted by a writer of the previous version slips in between
the last backfill and ``NOT NULL``. That step rebuilds the table once (one ``ALTER TABLE``), which takes about
as long as copying it: writers wait meanwhile (readers of ``messages`` too). See docs/schema.md, "Upgrading to
0004".

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import logging

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = mysql.BIGINT(unsigned=True)
# Rows per backfill transaction (an id range, so a sparse range holds fewer): short row locks for the writers.
BATCH = 10_000
NEW_KEY = "uq_messages_application_chat_number"
OLD_KEY = "uq_messages_chat_number"
NEW_FK = "fk_messages_application_id_applications"
log = logging.getLogger("chat_common.schema.migrations.0004")

FILL = (
    "UPDATE messages m JOIN chats c ON c.id = m.chat_id SET m.application_id = c.application_id"
    " WHERE m.id BETWEEN :low AND :high AND m.application_id IS NULL"
)


def _foreign_key(connection, column: str, referred: str) -> str | None:
    """The actual name of the foreign key of ``messages.column`` to ``referred`` (0001 let the server name it)."""
    return connection.execute(
        sa.text(
            "SELECT constraint_name FROM information_schema.key_column_usage"
            " WHERE table_schema = DATABASE() AND table_name = 'messages' AND column_name = :column"
            " AND referenced_table_name = :referred"
        ),
        {"column": column, "referred": referred},
    ).scalar()


def _commit(connection) -> None:
    # The migration runs inside one transaction opened by chat_common.ops.migrate; each batch must commit on its
    # own so its row locks are released at once (MySQL DDL commits implicitly anyway).
    connection.exec_driver_sql("COMMIT")


def _backfill(connection) -> int:
    """Fill ``application_id`` in batches of id ranges; returns the number of rows filled."""
    low, high = connection.execute(sa.text("SELECT MIN(id), MAX(id) FROM messages")).one()
    if low is None:
        return 0
    filled = 0
    for start in range(low, high + 1, BATCH):
        filled += connection.execute(sa.text(FILL), {"low": start, "high": start + BATCH - 1}).rowcount
        _commit(connection)
        log.info(
            "0004 backfill: application_id filled up to id %d of %d (%d rows)",
            min(start + BATCH - 1, high),
            high,
            filled,
        )
    return filled


def _has(connection, what: str, name: str) -> bool:
    """Whether ``messages`` has this column or index already (a run killed midway left it)."""
    table = {"column": "columns", "index": "statistics"}[what]
    return bool(
        connection.execute(
            sa.text(
                f"SELECT COUNT(*) FROM information_schema.{table}"
                f" WHERE table_schema = DATABASE() AND table_name = 'messages' AND {what}_name = :name"
            ),
            {"name": name},
        ).scalar()
    )


def upgrade() -> None:
    connection = op.get_bind()
    # MySQL DDL is not transactional: a run killed midway (a job deadline) leaves the column, the batches filled so
    # far, or even the final ALTER done. Each step is skipped when it is done, so running again resumes.
    if _has(connection, "index", NEW_KEY):
        log.info("0004: messages already keyed by application")
        return
    if not _has(connection, "column", "application_id"):
        # Nullable: instant ADD COLUMN on MariaDB 10.3+ / MySQL 8.0.29+ (no table rebuild, writers keep writing).
        op.add_column("messages", sa.Column("application_id", ID, nullable=True))
    _backfill(connection)
    old_fk = _foreign_key(connection, "chat_id", "chats")
    # The final step under a table lock: rows a writer of the previous version inserted since the batches
    # (without application_id) are filled, and none can be inserted before NOT NULL holds.
    connection.exec_driver_sql("LOCK TABLES messages WRITE, chats READ, applications READ")
    try:
        # No aliases: LOCK TABLES locks names, and an alias would be another table to lock. A scan of the table
        # (no index on application_id yet), as cheap as the rebuild below: rows an older writer inserted into a
        # range already filled, or committed late, are found wherever their id falls.
        rest = connection.execute(
            sa.text(
                "UPDATE messages JOIN chats ON chats.id = messages.chat_id"
                " SET messages.application_id = chats.application_id WHERE messages.application_id IS NULL"
            )
        ).rowcount
        log.info("0004: %d rows filled under the table lock; rebuilding messages", rest)
        changes = [
            "MODIFY application_id BIGINT UNSIGNED NOT NULL AFTER id",
            f"ADD CONSTRAINT {NEW_KEY} UNIQUE (application_id, chat_id, number)",
            f"ADD CONSTRAINT {NEW_FK} FOREIGN KEY (application_id) REFERENCES applications (id) ON DELETE CASCADE",
        ]
        if old_fk is not None:
            changes.append(f"DROP FOREIGN KEY `{old_fk}`")
        changes.append(f"DROP INDEX {OLD_KEY}")
        # One ALTER: the table is rebuilt once. A message whose chat row is missing cannot exist (the old foreign
        # key cascaded), so NOT NULL cannot fail on a row the fill above left NULL.
        connection.exec_driver_sql("ALTER TABLE messages " + ", ".join(changes))
    finally:
        connection.exec_driver_sql("UNLOCK TABLES")


def downgrade() -> None:
    connection = op.get_bind()
    new_fk = _foreign_key(connection, "application_id", "applications")
    changes = []
    if new_fk is not None:
        changes.append(f"DROP FOREIGN KEY `{new_fk}`")
    changes += [
        f"ADD CONSTRAINT {OLD_KEY} UNIQUE (chat_id, number)",
        "ADD CONSTRAINT fk_messages_chat_id_chats FOREIGN KEY (chat_id) REFERENCES chats (id) ON DELETE CASCADE",
        f"DROP INDEX {NEW_KEY}",
        "DROP COLUMN application_id",
    ]
    op.execute("ALTER TABLE messages " + ", ".join(changes))
