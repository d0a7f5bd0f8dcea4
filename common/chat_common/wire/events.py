"""The tenants' event log: what the writers record, in their upsert's transaction, and what an event is.

Each create or edit a writer really applied leaves one small row in ``events`` (no body: the API joins the row as it
is now): ``chat.created`` / ``chat.updated`` (``message_number`` 0) and ``message.created`` / ``message.updated``;
version 0 is a create, any other version an edit. The writers decide which changes were applied by the rule they
already use for the live streams (``message_writer.handler.to_announce``): every create, and an edit only when its
version is the one stored after the upsert — never an older edit that arrived late.

Recording is one multi-row ``INSERT IGNORE`` per batch, the transaction's last statement (see below), and nothing
else: no lock of its own, no sequence row. The unique key ``(application, chat, message, version)`` makes a
redelivered batch add nothing (its rows are ignored).

**Ids and gaps.** ``events.id`` is an ``AUTO_INCREMENT``, the order the log is read in. InnoDB hands ids out when
the insert runs, not when it commits, so concurrent writers can commit a higher id before a lower one, and an id can
be burned for good: a rolled-back batch, and every ignored row of an ``INSERT IGNORE`` (MariaDB here runs
``innodb_autoinc_lock_mode = 1``: a multi-row ``INSERT IGNORE`` is a "simple insert", whose ids are reserved up
front, one per row, consecutive, ignored or not). A reader therefore stops at a missing id until it is settled (the
API's ``EVENT_GAP_SETTLE_SECONDS``): an id is allocated in the insert that stamps ``committed_at`` with ``NOW(6)``,
the insert is the transaction's last statement, so a transaction holding an id commits within the insert's own lock
waits (``innodb_lock_wait_timeout``) of that stamp, or never.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection
from sqlalchemy.dialects.mysql import insert

from chat_common.schema.tables import events

CHAT_CREATED = "chat.created"
CHAT_UPDATED = "chat.updated"
MESSAGE_CREATED = "message.created"
MESSAGE_UPDATED = "message.updated"
EVENT_TYPES = (CHAT_CREATED, CHAT_UPDATED, MESSAGE_CREATED, MESSAGE_UPDATED)

Change = tuple[int, int, int, int]  # (application id, chat number, message number or 0, version)

# committed_at is the column's default, NOW(6) of the statement: an SQL expression among the VALUES would stop pymysql
# from sending the batch as one multi-row INSERT (it batches only rows of plain placeholders).
_RECORD = insert(events).prefix_with("IGNORE")


def event_type(message_number: int, version: int) -> str:
    """The event's type: a chat's (message number 0) or a message's, created (version 0) or updated."""
    if message_number == 0:
        return CHAT_CREATED if version == 0 else CHAT_UPDATED
    return MESSAGE_CREATED if version == 0 else MESSAGE_UPDATED


def record_events(conn: Connection, changes: Iterable[Change]) -> int:
    """Record the applied changes of a batch in ``conn``'s transaction: one ``INSERT IGNORE`` (none when empty).

    Call it last before the commit: the ids it takes stay unsettled (readers wait at them) until the commit.
    Returns the rows the statement was given.
    """
    rows = [
        {"application_id": app, "chat_number": chat, "message_number": message, "version": version}
        for app, chat, message, version in dict.fromkeys(changes)  # a duplicate publish in one batch: one row
    ]
    if rows:
        conn.execute(_RECORD, rows)
    return len(rows)
