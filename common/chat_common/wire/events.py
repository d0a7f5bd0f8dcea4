"""The tenants' event log: what the writers record, in their upsert's transaction, and what an event is.

Each create or edit a writer really applied leaves one small row in ``events`` (no body: the API joins the row as it
is now): ``chat.created`` / ``chat.updated`` (``message_number`` 0) and ``message.created`` / ``message.updated``;
version 0 is a create, any other version an edit. The writers decide which changes were applied by the rule they
already use for the live streams (``message_writer.handler.to_announce``): every create, and an edit only when its
version is the one stored after the upsert — never an older edit that arrived late.

**Ids: gap-free, in commit order.** ``events.id`` is the log's order and the readers' cursor, so it must say the order
in which events became visible. It comes from the one-row table ``event_sequence`` (``last_id``: the last id handed
out), not from an ``AUTO_INCREMENT`` (which hands ids out when the insert runs, not when it commits, and burns them on
rollbacks and ignored rows). A batch's last two statements, right before its commit, are:

1. ``UPDATE event_sequence SET last_id = LAST_INSERT_ID(last_id + k) WHERE id = 1`` — k ids, the new ``last_id``
   read from the statement's own answer (the OK packet's insert id: ``LAST_INSERT_ID(expr)`` sets it), no round trip;
2. one multi-row ``INSERT`` of the k events with explicit ids ``last_id - k + 1 .. last_id``.

The ``UPDATE`` takes the row's exclusive lock, which InnoDB holds until the ``COMMIT``: the windows from allocation to
commit are serialized, so ids become visible in id order (a reader that sees id N sees every id below it that will
ever exist), and a batch rolled back after its ``UPDATE`` rolls its allocation back too: no id is ever burned. The
price is that every writer's allocation-to-commit window is one at a time, so **nothing may run between the UPDATE
and the COMMIT except the events' INSERT** (announcing, Redis marks, search: all after the commit, as before); a
batch takes the lock only when it has events to record.

k must be exact. Changes already logged are left out before (a redelivered or retried batch, ``seen_before``: a
plain read of ``uq_events_change``). A copy that still hits the unique key — a duplicate publish on first delivery,
or a concurrent copy in another writer — is found when the ``INSERT`` fails on it: that copy is committed (its writer
held the sequence lock, which this batch now holds), the failed statement alone is undone (InnoDB keeps the
transaction), so the batch reads which changes are logged (a locking read: the snapshot may predate that commit),
gives the unused ids back while still holding the lock (``last_id - k + k'``) and inserts the k' others. No hole.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select, tuple_
from sqlalchemy.exc import IntegrityError

from chat_common.schema.tables import events

CHAT_CREATED = "chat.created"
CHAT_UPDATED = "chat.updated"
MESSAGE_CREATED = "message.created"
MESSAGE_UPDATED = "message.updated"
EVENT_TYPES = (CHAT_CREATED, CHAT_UPDATED, MESSAGE_CREATED, MESSAGE_UPDATED)

Change = tuple[int, int, int, int]  # (application id, chat number, message number or 0, version)

# Integer literals, formatted here: every value is an int (checked by ``int``), and pymysql's escaping of 2,000
# parameters per batch of 500 cost the writer about as much as the insert itself (measured: ~15 ms of a 36 ms record
# under load). committed_at is the column's default, NOW(6) of the statement.
_ALLOCATE = "UPDATE event_sequence SET last_id = LAST_INSERT_ID(last_id + {delta}) WHERE id = 1"
_DUPLICATE_KEY = 1062  # ER_DUP_ENTRY
_RECORD = "INSERT INTO events (id, application_id, chat_number, message_number, version) VALUES "


def event_type(message_number: int, version: int) -> str:
    """The event's type: a chat's (message number 0) or a message's, created (version 0) or updated."""
    if message_number == 0:
        return CHAT_CREATED if version == 0 else CHAT_UPDATED
    return MESSAGE_CREATED if version == 0 else MESSAGE_UPDATED


def recorded(conn: Connection, changes: list[Change], locking: bool = False) -> set[Change]:
    """Which of these changes the log holds already (a read of ``uq_events_change``; ``locking``: of the latest
    committed rows, not of the transaction's snapshot)."""
    found: set[Change] = set()
    key = tuple_(events.c.application_id, events.c.chat_number, events.c.message_number, events.c.version)
    for start in range(0, len(changes), 500):
        query = select(*key.clauses).where(key.in_(changes[start : start + 500]))
        if locking:
            query = query.with_for_update(read=True)
        found.update((a, c, m, v) for a, c, m, v in conn.execute(query))
    return found


def _allocate(conn: Connection, delta: int) -> int:
    """Move the sequence by ``delta`` ids (negative: give back ids this transaction took); the new last id."""
    result = conn.exec_driver_sql(_ALLOCATE.format(delta=int(delta)))
    if result.rowcount != 1 or result.lastrowid is None:  # no row 1: ids from nowhere would collide later
        raise RuntimeError("event_sequence has no row 1 (migration 0008 seeds it)")
    return int(result.lastrowid)


def _insert(conn: Connection, last: int, changes: list[Change]) -> None:
    first = last - len(changes) + 1
    values = ",".join(f"({first + i},{int(a)},{int(c)},{int(m)},{int(v)})" for i, (a, c, m, v) in enumerate(changes))
    conn.exec_driver_sql(_RECORD + values)


def record_events(conn: Connection, changes: Iterable[Change], seen_before: bool = False) -> int:
    """Record the applied changes of a batch in ``conn``'s transaction; the caller commits right after.

    Must be the transaction's last work: it takes the event sequence's lock, held until the commit (see the module's
    docstring). ``seen_before``: the batch may repeat changes already recorded (redelivered or retried deliveries),
    which are left out first. Returns the rows inserted (0: no statement, no lock).
    """
    unique = list(dict.fromkeys(changes))  # a duplicate publish in one batch: one row
    if seen_before and unique:
        known = recorded(conn, unique)
        unique = [change for change in unique if change not in known]
    if not unique:
        return 0
    last = _allocate(conn, len(unique))
    try:
        _insert(conn, last, unique)
    except IntegrityError as exc:
        if getattr(exc.orig, "args", (None,))[0] != _DUPLICATE_KEY:
            raise
        # Only the failed INSERT was undone; this transaction still holds the sequence's lock and its k ids.
        known = recorded(conn, unique, locking=True)
        kept = [change for change in unique if change not in known]
        if len(kept) == len(unique):  # not a logged change but a taken id: the sequence is behind the table
            raise
        last = _allocate(conn, len(kept) - len(unique))
        if kept:
            _insert(conn, last, kept)
        return len(kept)
    return len(unique)
