"""Count sync: drain the dirty sets the writers fill after each commit and recount exactly from MySQL.

Crash-safe: a run *claims* a batch of dirty ids (moved atomically into a set of its own) before counting,
and deletes the claim only after the database commits; a batch that fails (the database is down, a lock
conflict outlasted its retries) is given back to the dirty set at once, and claims a crashed run left behind
are returned to the dirty set by a later run.

Overlap-safe: counts are only ever raised (``GREATEST``) — chats and messages are never deleted one by one,
so a count never has to go down, and a slower overlapping run cannot write back an older, smaller count.
Each count is read *after* its id was claimed, so it includes every write committed before the claim; a
write committed later marks its id dirty again (the writers mark after their commit), and a later run
raises the count once more.

No deadlocks with the writers: a writer's batch takes locks on rows the sync locks too (shared ones on the
application rows: the foreign-key check of each inserted chat or, since migration 0004, message; a renamed chat's
row) in whatever order its batch has, so a sync that waits for such a row while holding others can close a cycle
with it — as the former single ``UPDATE … WHERE id IN (…)`` did,
locking rows in id order while it counted. Instead, each chunk of ids (ascending, ``LOCK_CHUNK`` at most) is
counted with a non-locking read first; then one short transaction locks those of its rows that nobody holds
(``FOR UPDATE SKIP LOCKED``) and raises their counts with one ``UPDATE`` of the rows it already holds. Rows a
writer held are tried again the same way a moment later, and any still held are then raised one per
transaction: a transaction that locks a single row never holds a lock while it waits. The sync therefore
does not wait while holding a lock — with one exception observed on MariaDB 10.11: under heavy contention a
``SKIP LOCKED`` read occasionally (about one chunk in a few hundred) waits for a row instead of skipping it.
InnoDB then rolls back the lighter transaction, which is the sync's (it has written nothing yet), and the
sync runs that transaction again: a deadlock or lock-wait timeout is retried ``LOCK_ATTEMPTS`` times with a
short jittered backoff, counted in ``SyncReport.lock_retries``.

Keyed by application: a writer marks a chat ``<application id>:<chat id>`` (``chat_common.wire.keys.dirty_chat_mark``),
so every statement of a recount names the applications of its rows before their ids (``application_id IN (…) AND
id IN (…)``): on a database sharded by tenant it reaches those tenants' shards only. Bare ids (marks of writers of
an earlier version) are recounted by id alone. The full recount below walks every row.

A run recounts what was dirty when it started (ids marked while it runs are left to the next run, so a
run ends even under a steady write load). After Redis lost its data (the dirty marks with it), the next run
recounts everything once.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
from sqlalchemy import Column, Engine, Table, func, select, text
from sqlalchemy.exc import OperationalError

from chat_common.schema.tables import applications, chats, messages
from chat_common.wire.keys import RedisKeys, parse_dirty_marks

log = logging.getLogger(__name__)

STALE_CLAIM_SECONDS = 300
# Rows locked by one write transaction of the sync: small, so a writer waiting on one waits briefly.
LOCK_CHUNK = 250
# MySQL/MariaDB errors that roll back a transaction which may simply be run again.
DEADLOCK, LOCK_WAIT_TIMEOUT = 1213, 1205
LOCK_ATTEMPTS = 5
# Passes over the rows a writer held (``SKIP LOCKED``), a short pause apart, before raising each of the rest alone.
SKIP_LOCKED_PASSES = 3
CONTENDED_PAUSE_SECONDS = 0.02
LOCK_BACKOFF_SECONDS = 0.05

T = TypeVar("T")

# KEYS: dirty set, claim set, claims hash   ARGV: count, claim name, now
_CLAIM = """
local ids = redis.call('SPOP', KEYS[1], ARGV[1])
if #ids > 0 then
  redis.call('SADD', KEYS[2], unpack(ids))
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
end
return ids
"""
# KEYS: dirty set, claim set, claims hash   ARGV: claim name
_GIVE_BACK = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SUNIONSTORE', KEYS[1], KEYS[1], KEYS[2])
  redis.call('DEL', KEYS[2])
end
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""
# KEYS: pending marker, epoch   ARGV: run id
_FINISH_FULL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class CountColumn:
    """A stored count: ``column`` of ``table`` holds the number of rows whose ``child_key`` points at the row.

    ``tenant_key`` (child column, parent column), when set, is matched too, first: the children are keyed by
    tenant (``messages``: unique key ``(application_id, chat_id, number)``), so the count reads a range of that
    key's prefix, and on a database sharded by application it stays on the parent's shard.
    """

    table: Table
    column: Column
    child_key: Column
    tenant_key: tuple[Column, Column] | None = None

    def tenants_of(self, ids: list[int], tenants: dict[int, int] | None) -> list[int] | None:
        """The applications the rows ``ids`` belong to, when every one is known (else None: no tenant filter)."""
        if self.tenant_key is None or not tenants or any(i not in tenants for i in ids):
            return None
        return sorted({tenants[i] for i in ids})

    def _rows(self, ids: list[int], apps: list[int] | None) -> list:
        """WHERE of the rows ``ids``: with their applications first when known, so a sharded database routes the
        statement to those tenants' shards (``application_id IN (…)``) instead of asking every shard."""
        rows = [self.table.c.id.in_(ids)]
        if apps is not None and self.tenant_key is not None:
            rows.insert(0, self.tenant_key[1].in_(apps))
        return rows

    def stale(self, ids: list[int], apps: list[int] | None = None):
        """(id, stored count, exact count) of the ids — a plain SELECT: a non-locking, consistent read."""
        match = [self.child_key == self.table.c.id]
        if self.tenant_key is not None:
            child_tenant, parent_tenant = self.tenant_key
            match.insert(0, child_tenant == parent_tenant)
        exact = select(func.count()).where(*match).scalar_subquery()
        return select(self.table.c.id, self.column, exact).where(*self._rows(ids, apps))

    def lock_free_rows(self, ids: list[int], apps: list[int] | None = None):
        """Lock, in id order, those of the rows nobody else holds, skipping the rest (see the module docstring)."""
        return (
            select(self.table.c.id)
            .where(*self._rows(ids, apps))
            .order_by(self.table.c.id)
            .with_for_update(skip_locked=True)
        )

    def raise_to(self, counts: dict[int, int], apps: list[int] | None = None):
        """Raise each row's count to the given one (never lower it).

        Integers are written inline: building this statement is on the path of a held lock, and a ``CASE`` of a
        few hundred bound parameters costs milliseconds of SQL compilation each time.
        """
        table, column = self.table.name, self.column.name
        whens = " ".join(f"WHEN {int(i)} THEN {int(n)}" for i, n in counts.items())
        ids = ", ".join(str(int(i)) for i in counts)
        tenant = ""
        if apps is not None and self.tenant_key is not None:
            tenant = f"{self.tenant_key[1].name} IN ({', '.join(str(int(a)) for a in apps)}) AND "
        return text(
            f"UPDATE {table} SET {column} = GREATEST({column}, CASE id {whens} ELSE {column} END) "
            f"WHERE {tenant}id IN ({ids})"
        )


CHAT_MESSAGES = CountColumn(
    chats, chats.c.messages_count, messages.c.chat_id, tenant_key=(messages.c.application_id, chats.c.application_id)
)
APPLICATION_CHATS = CountColumn(applications, applications.c.chats_count, chats.c.application_id)


@dataclass
class SyncReport:
    """What one run did."""

    chats_recounted: int = 0
    applications_recounted: int = 0
    rows_changed: int = 0
    full: bool = False
    seconds: float = 0.0
    lock_retries: int = 0  # transactions retried after a deadlock or a lock-wait timeout
    rows_contended: int = 0  # rows a writer held at the time, raised one at a time


def _lock_conflict(exc: OperationalError) -> bool:
    args = getattr(exc.orig, "args", ())
    return bool(args) and args[0] in (DEADLOCK, LOCK_WAIT_TIMEOUT)


class CountSync:
    """One count-sync run over a database and a Redis namespace."""

    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        keys: RedisKeys,
        batch_size: int = 1000,
        stale_claim_seconds: float = STALE_CLAIM_SECONDS,
    ) -> None:
        self.engine = engine
        self.client = client
        self.keys = keys
        self.batch_size = batch_size
        self.stale_claim_seconds = stale_claim_seconds
        self.run_id = uuid.uuid4().hex
        self._claim = client.register_script(_CLAIM)
        self._give_back = client.register_script(_GIVE_BACK)
        self._finish_full = client.register_script(_FINISH_FULL)

    def run(self) -> SyncReport:
        """Recount what is dirty (everything, after Redis lost its data)."""
        started = time.monotonic()
        report = SyncReport()
        self._return_stale_claims()
        if not self.client.exists(self.keys.counts_epoch):
            report.full = True
            self._full_recount(report)
        report.chats_recounted += self._drain(self.keys.dirty_chats, CHAT_MESSAGES, report)
        report.applications_recounted += self._drain(self.keys.dirty_applications, APPLICATION_CHATS, report)
        report.seconds = time.monotonic() - started
        return report

    # -- the database side ------------------------------------------------------------------------------------
    def _recount(
        self, target: CountColumn, ids: list[int], report: SyncReport, tenants: dict[int, int] | None = None
    ) -> None:
        """Bring the stored counts of ``ids`` up to the exact ones, in ascending chunks, without deadlocks.

        ``tenants`` (row id -> application id, as the dirty marks carry it) keys each statement by application."""
        ids = sorted(ids)
        for start in range(0, len(ids), LOCK_CHUNK):
            chunk = ids[start : start + LOCK_CHUNK]
            apps = target.tenants_of(chunk, tenants)
            with self.engine.connect() as conn:
                rows = conn.execute(target.stale(chunk, apps)).all()
            counts = {row_id: exact for row_id, stored, exact in rows if exact > stored}
            if not counts:
                continue
            contended = sorted(counts)
            for attempt in range(SKIP_LOCKED_PASSES):
                if attempt:  # the writers hold their locks for one short batch: wait for it to commit
                    time.sleep(CONTENDED_PAUSE_SECONDS)
                pending = {i: counts[i] for i in contended}
                changed, contended = self._retrying(
                    report, lambda p=pending, a=apps: self._raise_free_rows(target, p, a)
                )
                report.rows_changed += changed
                if not contended:
                    break
            for row_id in contended:
                one = {row_id: counts[row_id]}
                report.rows_changed += self._retrying(report, lambda o=one, a=apps: self._write(target.raise_to(o, a)))
            report.rows_contended += len(contended)

    def _raise_free_rows(
        self, target: CountColumn, counts: dict[int, int], apps: list[int] | None
    ) -> tuple[int, list[int]]:
        """One transaction: lock the rows nobody holds and raise their counts; (rows changed, ids skipped)."""
        with self.engine.begin() as conn:
            free = set(conn.execute(target.lock_free_rows(list(counts), apps)).scalars())
            changed = conn.execute(target.raise_to({i: counts[i] for i in free}, apps)).rowcount if free else 0
        return changed, [i for i in counts if i not in free]

    def _write(self, statement) -> int:
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount

    def _retrying(self, report: SyncReport, work: Callable[[], T]) -> T:
        """Run ``work`` (one whole transaction) again when it lost a deadlock or timed out waiting for a lock."""
        for attempt in range(1, LOCK_ATTEMPTS + 1):
            try:
                return work()
            except OperationalError as exc:
                if not _lock_conflict(exc) or attempt == LOCK_ATTEMPTS:
                    raise
                report.lock_retries += 1
                delay = LOCK_BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                log.warning(
                    "count sync transaction lost a lock conflict (%s); retry %d in %.2fs", exc.orig, attempt, delay
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    # -- the Redis side ---------------------------------------------------------------------------------------
    def _drain(self, dirty_key: str, target: CountColumn, report: SyncReport) -> int:
        """Recount as many ids as were dirty when the drain began; ids marked since are left for the next run.

        Under a steady write load the writers mark ids as fast as a run recounts them: a run that chased the
        set until it was empty might never end.
        """
        done = 0
        left = self.client.scard(dirty_key)
        claim = self.keys.count_claim(dirty_key, self.run_id)
        while left > 0:
            count = min(self.batch_size, left)
            raw = self._claim(keys=[dirty_key, claim, self.keys.count_claims], args=[count, claim, time.time()])
            if not raw:
                break
            left -= len(raw)
            # upgrade-only: remove after release 0.2 (0.1.x writers' bare ids leave ``tenants`` partial)
            ids, tenants = parse_dirty_marks(raw)
            try:
                if ids:
                    self._recount(target, ids, report, tenants)
            except BaseException:
                self._give_back_claim(dirty_key, claim)
                raise
            self.client.delete(claim)
            self.client.hdel(self.keys.count_claims, claim)
            done += len(ids)
            log.info("recounted %d from %s (%d so far)", len(ids), dirty_key.rsplit(":", 1)[-1], done)
        return done

    def _give_back_claim(self, dirty_key: str, claim: str) -> None:
        """Return a failed batch to the dirty set now (if Redis fails too, a later run finds the stale claim)."""
        try:
            self._give_back(keys=[dirty_key, claim, self.keys.count_claims], args=[claim])
        except redis.RedisError as exc:
            log.warning("could not give claim %s back (%s); a later run returns it once stale", claim, exc)

    def _return_stale_claims(self) -> None:
        """Give the ids of runs that died mid-batch back to their dirty set."""
        now = time.time()
        for name, stamp in self.client.hgetall(self.keys.count_claims).items():
            name = name.decode()
            if now - float(stamp) < self.stale_claim_seconds:
                continue
            dirty_key = self.keys.claimed_from(name)
            self._give_back(keys=[dirty_key, name, self.keys.count_claims], args=[name])
            log.warning("returned a stale claim of a crashed run: %s", name)

    def _full_recount(self, report: SyncReport) -> None:
        """Recount every chat and application, in id ranges, then mark the namespace as synced."""
        pending = self.keys.counts_epoch_pending
        self.client.set(pending, self.run_id)
        for target in (CHAT_MESSAGES, APPLICATION_CHATS):
            table = target.table.name
            # Every row, so every shard: the one pass that is not keyed by application (after Redis lost the marks).
            tenant = target.tenant_key[1].name if target.tenant_key is not None else "id"
            last = 0
            while True:
                with self.engine.connect() as conn:
                    tenants = dict(
                        conn.execute(
                            text(f"SELECT id, {tenant} FROM {table} WHERE id > :last ORDER BY id LIMIT :n"),
                            {"last": last, "n": self.batch_size},
                        ).all()
                    )
                if not tenants:
                    break
                ids = sorted(tenants)
                self._recount(target, ids, report, tenants)
                last = ids[-1]
                log.info("full recount: %s up to id %d", table, last)
        if not self._finish_full(keys=[pending, self.keys.counts_epoch], args=[self.run_id]):
            log.warning("Redis lost its data during the full recount; the next run recounts again")
