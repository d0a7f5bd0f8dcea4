"""Count sync: drain the dirty sets the writers fill after each commit and recount exactly from MySQL.

Crash-safe: a run *claims* a batch of dirty ids (moved atomically into a set of its own) before counting,
and deletes the claim only after the database commit; claims a crashed run left behind are returned to the
dirty set by a later run. Overlap-safe: counts are computed inside the UPDATE and only ever raised
(``GREATEST``) — chats and messages are never deleted one by one, so a count never has to go down, and a
slower overlapping run cannot write back an older, smaller count.
After Redis lost its data (the dirty marks with it), the next run recounts everything once.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import redis
from sqlalchemy import Engine, bindparam, text

from chat_common.keys import RedisKeys

log = logging.getLogger(__name__)

STALE_CLAIM_SECONDS = 300

# KEYS: dirty set, claim set, claims hash   ARGV: count, claim name, now
_CLAIM = """
local ids = redis.call('SPOP', KEYS[1], ARGV[1])
if #ids > 0 then
  redis.call('SADD', KEYS[2], unpack(ids))
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
end
return ids
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

RECOUNT_CHATS = text(
    "UPDATE chats SET messages_count = GREATEST(messages_count,"
    " (SELECT COUNT(*) FROM messages WHERE messages.chat_id = chats.id)) WHERE chats.id IN :ids"
).bindparams(bindparam("ids", expanding=True))
RECOUNT_APPLICATIONS = text(
    "UPDATE applications SET chats_count = GREATEST(chats_count,"
    " (SELECT COUNT(*) FROM chats WHERE chats.application_id = applications.id)) WHERE applications.id IN :ids"
).bindparams(bindparam("ids", expanding=True))


@dataclass
class SyncReport:
    """What one run did."""

    chats_recounted: int = 0
    applications_recounted: int = 0
    rows_changed: int = 0
    full: bool = False
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


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
        self._finish_full = client.register_script(_FINISH_FULL)

    @property
    def _claims(self) -> str:
        return f"{self.keys.prefix}dirty:claims"

    def run(self) -> SyncReport:
        """Recount what is dirty (everything, after Redis lost its data)."""
        started = time.monotonic()
        report = SyncReport()
        self._return_stale_claims()
        if not self.client.exists(self.keys.counts_epoch):
            report.full = True
            self._full_recount(report)
        report.chats_recounted += self._drain(self.keys.dirty_chats, RECOUNT_CHATS, report)
        report.applications_recounted += self._drain(self.keys.dirty_applications, RECOUNT_APPLICATIONS, report)
        report.seconds = time.monotonic() - started
        return report

    def _execute(self, statement, ids: list[int]) -> int:
        with self.engine.begin() as conn:
            return conn.execute(statement, {"ids": ids}).rowcount

    def _drain(self, dirty_key: str, statement, report: SyncReport) -> int:
        done = 0
        claim = f"{dirty_key}:claim:{self.run_id}"
        while True:
            raw = self._claim(keys=[dirty_key, claim, self._claims], args=[self.batch_size, claim, time.time()])
            if not raw:
                break
            ids = sorted({int(i) for i in raw if i.isdigit()})
            if ids:
                report.rows_changed += self._execute(statement, ids)
            self.client.delete(claim)
            self.client.hdel(self._claims, claim)
            done += len(ids)
            log.info("recounted %d from %s (%d so far)", len(ids), dirty_key.rsplit(":", 1)[-1], done)
        return done

    def _return_stale_claims(self) -> None:
        """Give the ids of runs that died mid-batch back to their dirty set."""
        now = time.time()
        for name, stamp in self.client.hgetall(self._claims).items():
            name = name.decode()
            if now - float(stamp) < self.stale_claim_seconds:
                continue
            dirty_key = name.split(":claim:", 1)[0]
            if self.client.exists(name):
                self.client.sunionstore(dirty_key, [dirty_key, name])
                self.client.delete(name)
            self.client.hdel(self._claims, name)
            log.warning("returned a stale claim of a crashed run: %s", name)

    def _full_recount(self, report: SyncReport) -> None:
        """Recount every chat and application, in id ranges, then mark the namespace as synced."""
        pending = f"{self.keys.counts_epoch}:pending"
        self.client.set(pending, self.run_id)
        for table, statement in (("chats", RECOUNT_CHATS), ("applications", RECOUNT_APPLICATIONS)):
            last = 0
            while True:
                with self.engine.connect() as conn:
                    ids = list(
                        conn.execute(
                            text(f"SELECT id FROM {table} WHERE id > :last ORDER BY id LIMIT :n"),
                            {"last": last, "n": self.batch_size},
                        ).scalars()
                    )
                if not ids:
                    break
                report.rows_changed += self._execute(statement, ids)
                last = ids[-1]
                log.info("full recount: %s up to id %d", table, last)
        if not self._finish_full(keys=[pending, self.keys.counts_epoch], args=[self.run_id]):
            log.warning("Redis lost its data during the full recount; the next run recounts again")
