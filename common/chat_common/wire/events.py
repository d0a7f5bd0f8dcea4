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

from sqlalchemy import Connection, select, tuple_

from chat_common.schema.tables import events

CHAT_CREATED = "chat.created"
CHAT_UPDATED = "chat.updated"
MESSAGE_CREATED = "message.created"
MESSAGE_UPDATED = "message.updated"
EVENT_TYPES = (CHAT_CREATED, CHAT_UPDATED, MESSAGE_CREATED, MESSAGE_UPDATED)

Change = tuple[int, int, int, int]  # (application id, chat number, message number or 0, version)

# One statement of integer literals, formatted here: the rows are four integers each (checked by ``int``), and
# pymysql's escaping of 2,000 parameters per batch of 500 cost the writer about as much as the insert itself
# (measured: ~15 ms of a 36 ms record under load). committed_at is the column's default, NOW(6) of the statement.
_RECORD = "INSERT IGNORE INTO events (application_id, chat_number, message_number, version) VALUES "


def event_type(message_number: int, version: int) -> str:
    """The event's type: a chat's (message number 0) or a message's, created (version 0) or updated."""
    if message_number == 0:
        return CHAT_CREATED if version == 0 else CHAT_UPDATED
    return MESSAGE_CREATED if version == 0 else MESSAGE_UPDATED


def recorded(conn: Connection, changes: list[Change]) -> set[Change]:
    """Which of these changes the log holds already (a plain read of ``uq_events_change``)."""
    found: set[Change] = set()
    key = tuple_(events.c.application_id, events.c.chat_number, events.c.message_number, events.c.version)
    for start in range(0, len(changes), 500):
        query = select(*key.clauses).where(key.in_(changes[start : start + 500]))
        found.update((a, c, m, v) for a, c, m, v in conn.execute(query))
    return found


def record_events(conn: Connection, changes: Iterable[Change], seen_before: bool = False) -> int:
    """Record the applied changes of a batch in ``conn``'s transaction: one ``INSERT IGNORE`` (none when empty).

    Call it last before the commit: the ids it takes stay unsettled (readers wait at them) until the commit.
    ``seen_before``: the batch may repeat changes already recorded (redelivered or retried deliveries); those are
    left out first, because every ignored row burns an id, and a burned id holds the log's readers for the settle
    time. (The ``IGNORE`` still covers a race with a concurrent copy, and a duplicate publish on first delivery.)
    Returns the rows inserted.
    """
    unique = list(dict.fromkeys(changes))  # a duplicate publish in one batch: one row
    if seen_before and unique:
        known = recorded(conn, unique)
        unique = [change for change in unique if change not in known]
    if unique:
        values = ",".join(f"({int(a)},{int(c)},{int(m)},{int(v)})" for a, c, m, v in unique)
        conn.exec_driver_sql(_RECORD + values)
    return len(unique)
