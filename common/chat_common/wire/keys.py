"""The Redis key scheme: every key any service reads or writes is named here, under one prefix.

The prefix (``REDIS_KEY_PREFIX``) isolates tests, benchmarks and `make run` sharing one Redis.

Redis Cluster: every Lua script and multi-key command touches keys of one hash slot. A key's slot is that of its
hash tag (the first ``{…}`` in its name; the prefix must hold no ``{``): per-application keys carry the
application's tag ``{a<id>}``; the global keys that scripts combine (count sync, writer heartbeats) share the tag
``{meta}``; each of the 16384 slots has its own numbering epoch and recovery keys under a tag of that slot
(:func:`slot_tag`), so the numbering script reads the epoch of its application's slot in the same slot, and a
shard that lost its data pauses only the applications of its slots.
"""

from __future__ import annotations

from binascii import crc_hqx
from dataclasses import dataclass
from functools import cache

CLAIM_INFIX = ":claim:"
SLOTS = 16384
META_TAG = "{meta}"


def key_slot(tag: str) -> int:
    """The Redis Cluster slot of a hash tag's content (CRC16 mod 16384, as Redis computes it)."""
    return crc_hqx(tag.encode(), 0) % SLOTS


def application_slot(application_id: int) -> int:
    """The slot every key of one application lives in (that of its tag ``{a<id>}``)."""
    return key_slot(f"a{application_id}")


@cache
def _slot_tags() -> tuple[str, ...]:
    # Short strings "s0", "s1", … in order until each slot has one: about 315k CRCs, ~0.1 s, once per process.
    tags: list[str | None] = [None] * SLOTS
    missing, i = SLOTS, 0
    while missing:
        tag = f"s{i:x}"
        slot = crc_hqx(tag.encode(), 0) % SLOTS
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        i += 1
    return tuple(tags)  # type: ignore[arg-type]


def slot_tag(slot: int) -> str:
    """A hash tag (without braces) whose slot is ``slot``: the keys of a slot's own state are named with it."""
    return _slot_tags()[slot]


def dirty_chat_mark(application_id: int, row_id: int) -> str:
    """How a writer marks a chat dirty: ``<application id>:<chat id>``, so the recount is keyed by application."""
    return f"{application_id}:{row_id}"


def parse_dirty_marks(raw: list) -> tuple[list[int], dict[int, int]]:
    """Row ids of claimed dirty marks (ascending, unique) and the application of those that name one.

    A mark is ``<application id>:<row id>`` (chats, :func:`dirty_chat_mark`) or a bare row id (applications, whose
    id is the tenant, and chats marked by writers before marks carried the application); anything else is junk.
    """
    ids: set[int] = set()
    tenants: dict[int, int] = {}
    for member in raw:
        text_ = member.decode() if isinstance(member, bytes) else str(member)
        # upgrade-only: remove after release 0.2 (bare chat ids: dirty marks of 0.1.x writers; keep the
        # application-id form and drop a member without one)
        tenant, _, row = text_.rpartition(":")
        if not row.isdigit() or (tenant and not tenant.isdigit()):
            continue
        ids.add(int(row))
        if tenant:
            tenants[int(row)] = int(tenant)
    return sorted(ids), tenants


@dataclass(frozen=True)
class RedisKeys:
    """Key names for one deployment (one prefix)."""

    prefix: str = "chat:"

    def tag(self, application_id: int) -> str:
        """Redis Cluster hash tag of one application: every per-application key lives in its slot."""
        return f"{{a{application_id}}}"

    def numbers(self, application_id: int) -> str:
        """Hash per application: ``id`` (row id, "loaded"), ``chats`` (last chat number), ``m:<n>`` (last message
        of chat n), ``at`` (unix time of the last create or edit), ``v`` (the application's edit clock: last version
        handed to an edit, microseconds of Redis time, strictly increasing). Keyed by id, not token, so that every
        token of a rotated application numbers into the same sequence."""
        return f"{self.prefix}{self.tag(application_id)}:numbers"

    # upgrade-only: remove after release 0.2 (0.1.x's per-token counters, never seeded below)
    def legacy_application(self, token: str) -> str:
        """Where numbering kept an application's counters before they were keyed by id (read once, on load)."""
        return f"{self.prefix}app:{token}"

    def slot_epoch(self, slot: int) -> str:
        """Present while the counters of the applications in ``slot`` can be trusted; its absence on a slot that
        opened before means the shard holding it lost its data (see ``chat_api.numbering.recovery``)."""
        return f"{self.prefix}{{{slot_tag(slot)}}}:epoch"

    def epoch_of(self, application_id: int) -> str:
        """The epoch key of the application's slot (same slot as its numbering and idempotency keys)."""
        return self.slot_epoch(application_slot(application_id))

    def slot_recovery_lock(self, slot: int) -> str:
        """Held by the one API process that re-opens numbering of ``slot`` after its data was lost."""
        return f"{self.prefix}{{{slot_tag(slot)}}}:recovery"

    def slot_recovery_started(self, slot: int) -> str:
        """Unix time at which some API process first found the slot's epoch missing."""
        return f"{self.prefix}{{{slot_tag(slot)}}}:recovery_started"

    def slot_opening(self, slot: int) -> str:
        """``<incarnation>|<epoch>`` while ``slot`` is being opened for its first use (the epoch part empty until
        some API process found it never held numbers); gone with the epoch's arrival or with the shard's data
        (``chat_api.numbering.opening.SlotOpening``)."""
        return f"{self.prefix}{{{slot_tag(slot)}}}:opening"

    # upgrade-only: remove after release 0.2 (the single epoch of 0.1.x, behind recovery's LEGACY slot state)
    @property
    def epoch(self) -> str:
        """The single epoch of the version before per-slot epochs: read once per slot, on upgrade only (while it
        is there, Redis still holds that version's counters, so a slot without an epoch lost nothing)."""
        return f"{self.prefix}meta:epoch"

    @property
    def writer_heartbeats(self) -> str:
        """Hash writer-id -> heartbeat (:func:`chat_common.wire.heartbeats.format_heartbeat`) that numbering recovery
        reads: what each writer holds unacknowledged and what it last received."""
        return f"{self.prefix}{META_TAG}:writers"

    @property
    def retry_overdue(self) -> str:
        """Hash writer-id -> ``"<seconds>:<unix time>"``: how late the most overdue retry-tier message the writer
        held was, and when it said so (every heartbeat; the API's /status reads it)."""
        return f"{self.prefix}{META_TAG}:retry_overdue"

    @property
    def deferred(self) -> str:
        """Sorted set: digest of each message a writer sent to a retry tier -> its publish stamp, removed once the
        message is committed or dead-lettered (numbering recovery cannot read the retry queues themselves)."""
        return f"{self.prefix}{META_TAG}:deferred"

    @property
    def deferred_since(self) -> str:
        """Unix time :attr:`deferred` started keeping account (set if missing by every writer; gone with it)."""
        return f"{self.prefix}{META_TAG}:deferred_since"

    @property
    def dirty_applications(self) -> str:
        """Set of application ids whose ``chats_count`` may be stale."""
        return f"{self.prefix}{META_TAG}:dirty:applications"

    @property
    def dirty_chats(self) -> str:
        """Set of chats whose ``messages_count`` may be stale: marks ``<application id>:<chat id>``
        (:func:`dirty_chat_mark`; a bare chat id from writers of an earlier version)."""
        return f"{self.prefix}{META_TAG}:dirty:chats"

    @property
    def counts_epoch(self) -> str:
        """Present once the count sync has done a full pass since Redis last lost its data."""
        return f"{self.prefix}{META_TAG}:counts_epoch"

    @property
    def counts_epoch_pending(self) -> str:
        """Run id of the count sync doing a full recount; it becomes the ``counts_epoch`` when that run finishes."""
        return f"{self.counts_epoch}:pending"

    @property
    def count_claims(self) -> str:
        """Hash claim set name -> unix time it was taken, so a later count sync can return a crashed run's claims."""
        return f"{self.prefix}{META_TAG}:dirty:claims"

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

    def idempotency(self, application_id: int, scope: str, key: str) -> str:
        """What a create with an ``Idempotency-Key`` was given: "pending", or "<app id>:<number>:<fingerprint>".

        Per application, not per token: a retry with the new token of a create made with the old one replays."""
        return f"{self.prefix}{self.tag(application_id)}:idem:{scope}:{key}"

    def rate_window(self, application_id: int, second: int) -> str:
        """Counter of requests an application (all its tokens) made in one wall-clock second."""
        return f"{self.prefix}{self.tag(application_id)}:rate:{second}"

    def search_budget(self, application_id: int) -> str:
        """When an application's searches have used up their time (a GCRA arrival time, chat_api search budget)."""
        return f"{self.prefix}{self.tag(application_id)}:search-tat"

    @property
    def stream_rooms(self) -> str:
        """Sorted set of the chats some API worker streams live: member ``"<app id>.<chat number>"``, score the unix
        time the entry lapses. Workers refresh their chats' entries; the message-writer announces only chats listed
        and current (chat_common.wire.announcements)."""
        return f"{self.prefix}streams:rooms"
