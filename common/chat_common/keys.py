"""The Redis key scheme: every key any service reads or writes is named here, under one prefix.

The prefix (``REDIS_KEY_PREFIX``) isolates tests, benchmarks and `make run` sharing one Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

CLAIM_INFIX = ":claim:"


@dataclass(frozen=True)
class RedisKeys:
    """Key names for one deployment (one prefix)."""

    prefix: str = "chat:"

    def application(self, token: str) -> str:
        """Hash per application: ``id`` (row id), ``chats`` (last chat number), ``m:<n>`` (last message of chat n)."""
        return f"{self.prefix}app:{token}"

    @property
    def epoch(self) -> str:
        """Present while the counters in Redis can be trusted; its absence means Redis lost its data."""
        return f"{self.prefix}meta:epoch"

    @property
    def recovery_lock(self) -> str:
        """Held by the one API process that re-opens numbering after Redis lost its data."""
        return f"{self.prefix}meta:recovery"

    @property
    def recovery_started(self) -> str:
        """Unix time at which some API process first found the epoch missing."""
        return f"{self.prefix}meta:recovery_started"

    @property
    def edit_clock(self) -> str:
        """Last version handed to an edit (microseconds of Redis time, strictly increasing)."""
        return f"{self.prefix}meta:clock"

    @property
    def writer_heartbeats(self) -> str:
        """Hash writer-id -> "<unacked>:<unix time>" that recovery reads to know the writers hold nothing."""
        return f"{self.prefix}meta:writers"

    @property
    def dirty_applications(self) -> str:
        """Set of application ids whose ``chats_count`` may be stale."""
        return f"{self.prefix}dirty:applications"

    @property
    def dirty_chats(self) -> str:
        """Set of chat ids whose ``messages_count`` may be stale."""
        return f"{self.prefix}dirty:chats"

    @property
    def counts_epoch(self) -> str:
        """Present once the count sync has done a full pass since Redis last lost its data."""
        return f"{self.prefix}meta:counts_epoch"

    @property
    def counts_epoch_pending(self) -> str:
        """Run id of the count sync doing a full recount; it becomes the ``counts_epoch`` when that run finishes."""
        return f"{self.counts_epoch}:pending"

    @property
    def count_claims(self) -> str:
        """Hash claim set name -> unix time it was taken, so a later count sync can return a crashed run's claims."""
        return f"{self.prefix}dirty:claims"

    @staticmethod
    def count_claim(dirty_set: str, run_id: str) -> str:
        """Set of the ids one count-sync run took from ``dirty_set`` (a dirty-set key) and is recounting."""
        return f"{dirty_set}{CLAIM_INFIX}{run_id}"

    @staticmethod
    def claimed_from(claim: str) -> str:
        """The dirty set a claim (named by :meth:`count_claim`) was taken from."""
        return claim.split(CLAIM_INFIX, 1)[0]

    @property
    def search_backlog(self) -> str:
        """Sorted set of message ids whose search document still has to be written (score = first failure)."""
        return f"{self.prefix}search:backlog"

    def idempotency(self, token: str, scope: str, key: str) -> str:
        """What a create with an ``Idempotency-Key`` was given: "pending", or "<app id>:<number>:<fingerprint>"."""
        return f"{self.prefix}idem:{token}:{scope}:{key}"

    def rate_window(self, token: str, second: int) -> str:
        """Counter of requests a token made in one wall-clock second."""
        return f"{self.prefix}rate:{token}:{second}"
