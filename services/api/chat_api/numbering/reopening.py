"""When numbering may re-open after Redis lost its data, without ever handing out a number twice: the rule, no I/O.

The I/O that feeds it (Redis, the broker's queue counts, MySQL markers) is :mod:`chat_api.adapters.recovery`.

A number (or edit version) handed out before the loss may still be on its way to MySQL: in an API process waiting
for its publish confirm, in a work queue, in a retry tier, or in a writer's unacknowledged batch. Counters are
re-seeded from MySQL, so a lost slot may re-open only once every such message is committed (or dead-lettered:
never written). Both rules below start once the grace period (the publish timeout) has passed since the loss was
first seen (``T``, per slot); either one re-opens.

**Coarse rule** (cheap; holds at once on an idle system): the work queues and their retry tiers hold no ready
message, and every consumer the broker knows of reported, in a heartbeat since ``T`` written before that count
and in another written after it, that it holds no unacknowledged message (a writer's held retry-tier messages
count) and received no delivery between the two (``deliveries`` unchanged). A count sees only ready messages and
a heartbeat is a moment old, so without the bracket a message moving between a queue and a writer — a drained
retry tier hands one back every second — could be in neither snapshot.

**Precise rule** (holds under any steady load of the other slots' applications). Its ingredients:

- *Stamps.* The API stamps every create and edit with the time just before its number or version was handed out
  (``x-published-at-ms``; :attr:`chat_api.model.Numbered.published_at`; a replay: just before its idempotency
  claim). The publisher neither sends it nor waits for its confirm later than ``stamp + publish timeout``. Writers
  keep the stamp on every retry-tier hop; dead-lettering keeps the headers. No stamp (an older API) reads as 0.
- *Heartbeats.* Every writer reports every 0.2 s (:func:`chat_common.wire.heartbeats.format_heartbeat`) the lowest stamp
  among the deliveries it holds unacknowledged (``oldest``), the stamp of the latest first-attempt delivery it
  received (``last``) and how many of those it received (``firsts``), its session (``session``: the broker
  connection number, also bumped when the writer re-subscribes to change its prefetch — either may let the broker
  requeue what it had sent), the heartbeat's own sequence number (``beat``) and how many deliveries of ``q`` and of
  its retry tiers it received in all (``deliveries``). A delivery is one upsert: a bundle
  (:mod:`chat_common.wire.bundles`) counts each upsert it holds, with the upsert's own stamp.
- *Deferral ledger.* Before a writer sends a message to a retry tier (so before it acknowledges the original) it
  adds ``digest -> stamp`` to ``RedisKeys.deferred``; once a retried or redelivered message is committed or
  dead-lettered, and before it is acknowledged, it removes it
  (:class:`chat_common.writing.consumer_hooks.DeferralLedger`; both idempotent). ``RedisKeys.deferred_since`` says since
  when the ledger is complete (set again by the writers within 0.2 s after Redis lost it). The retry queues themselves
  cannot be read without consuming them.
- *Drained tiers.* The writers of ``q`` consume its retry tiers and hold each message until due
  (:mod:`chat_common.writing.retry_tiers`); a held tier message counts in the writer's heartbeat like a held delivery of
  ``q`` (``oldest``). Assumption (drain): a writer returns a held tier message to ``q`` within 1 s of its due time,
  and a tier message is due at most the longest retry delay after it was sent to the tier.

With the cutoff ``C = T + grace`` and the evidence time ``E = max(C + grace, deferred_since + longest retry delay
+ 1 s)``, a round that starts after ``E`` reads the queue counts (ready, consumers) ``Q1``; four heartbeat snapshots
``H1..H4``, 0.5, 0.5, 0.5 and 0.8 s after the previous read; the ledger; the queue counts ``Q2``. The slots re-open when

(a) the ledger holds no stamp below ``C`` and ``deferred_since`` did not change during the round;

and for every work queue ``q``, calling *live* the writers of ``q`` whose beat numbers grow ``H1 < H2 < H3`` and
then by at least 2 to ``H4`` (so their ``H4`` beat was written at least one beat interval after the ``H3`` read),
all within one session:

(b) ``q`` had no ready message at ``Q1``, or a live writer received, between its ``H2`` and ``H3`` beats, a
    first-attempt delivery stamped at or after ``E``;
(c) no live writer reports in ``H4`` a held message stamped below ``C``;
(e) the broker counted exactly as many consumers of ``q`` as there are live writers, at ``Q1`` and at ``Q2``;
(f) no retry tier of ``q`` (nor one of an earlier version still there) had a ready message at ``Q1``.

*Why nothing with a pre-loss number is left then.* Let ``M`` carry a number of a lost slot handed out before the
loss. Its stamp ``s`` is below ``T`` (taken before the number was handed out; the numbering script refuses to
number without the slot's epoch), so below ``C``. ``M`` reached its work queue ``q`` before ``s + grace < E``, or
never will. Until it is committed or dead-lettered, ``M`` is in one of these places:

- *Ready in q, never deferred:* enqueued before ``E``, so before ``Q1``. If ``q`` had nothing ready at ``Q1``,
  ``M`` had been dispatched. Otherwise a delivery ``X`` stamped at or after ``E`` was published after ``E``, so
  enqueued after ``M``; a queue dispatches in order, so ``M`` was dispatched before ``X`` (requeues: below).
- *Dispatched to a consumer:* by (e) the consumers during ``Q1..Q2`` are exactly the live writers, whose
  connections did not change. Assumption (transit): a delivery the broker dispatched is in the writer's batch,
  and so in its next heartbeat's ``oldest``, within 0.2 s (one beat interval; a writer stuck in a longer turn of
  its loop does not beat, is not live, and (e) fails). ``M`` dispatched before ``Q1`` or before ``X`` was
  dispatched before the ``H3`` read (``X`` was received before its writer's ``H3`` beat), so it is held in some
  live writer's ``H4`` report: (c). ``X`` was received after its writer's ``H2`` beat, written after the ``H1``
  read, 0.5 s after ``Q1``: so ``X`` was dispatched after ``Q1``.
- *Requeued* (the broker returns a closing channel's unacknowledged messages to the head of ``q``): a channel
  that closed between ``Q1`` and ``Q2`` changed a consumer count or a session, (e). One that closed before
  ``Q1`` left ``M`` ready at the head at ``Q1``: the empty branch of (b) fails, and ``X``, dispatched after
  ``Q1``, came after ``M``, which was then held at ``H4``: (c). One that closes after ``Q2`` held ``M`` at
  ``H4``: (c).
- *Deferred* (in a retry tier, or back in ``q`` behind newer messages): its ledger entry was written before the
  writer let go of it and is removed only once it is committed or dead-lettered: (a). If the ledger itself was
  lost at ``V <= deferred_since``, a message deferred before ``V`` was due by ``V + longest delay``: if a writer
  held it, it was back in ``q`` by ``V + longest delay + 1 s <= E <= Q1`` (the drain assumption) and is covered like
  any message ready in ``q``; if none did, it was still ready in its tier at ``Q1``: (f). A loss during the round
  changes ``deferred_since``.
- *In an API process:* sent and confirmed, sent and given up (then in ``q`` like the others), or never sent,
  by ``s + grace < E``.

Messages stamped at or after ``C`` may be anywhere: they were numbered after the loss was seen, never in a lost
slot before it re-opens. Clocks: the API processes' and writers' clocks are assumed to agree within a fraction of
the grace period (stamps, ``T`` and ``E`` are compared across processes). A ledger entry whose message was
removed from the broker by hand (a purged queue) keeps the precise rule waiting; the coarse rule still re-opens
once everything is drained (or delete ``RedisKeys.deferred``). Cost: a round takes ~2.5 s and two short broker
connections; the ledger is written only for batches that retry or hold retried or redelivered messages.
Under retries the precise rule holds only in a round that finds every tier's messages held by its writers (f).

Only then is a new epoch written; the API's loads of counters from MySQL carry the epoch they read under.

Epochs are per Redis Cluster hash slot (``RedisKeys.slot_epoch``, in the slot of the applications it guards):
a shard that lost its data pauses only the applications of its slots while the others keep numbering; on a
single Redis every slot is on the one server, and a restart closes all of them. A missing epoch means a loss only
if the slot ever opened: a durable marker per slot in MySQL (``system_markers``, ``numbering_opened:<slot>``) is
written before the slot's first epoch, so a brand-new deployment — and a slot used for the first time on an old
one — opens at once instead of waiting out a recovery that has nothing to recover. Requests racing that first
opening wait for it (:class:`SlotOpening`: the marker is written before the epoch, so a process that reads the
marker before the epoch lands must not take the slot for a lost one; the opening in Redis tells it apart, and any
process can finish it). (A system that opened before
per-slot markers existed has only the ``numbering_opened`` marker: its slots recover once, unless the single epoch
of that version is still in Redis.) The epoch's value says which happened and when
(``<id>:fresh|recovered:<unix>``), which tells idempotency lookups whether Redis may have forgotten keys
(``keys_may_be_forgotten``). One API process at a time runs the recovery of a slot (a short Redis lock per
slot); the others answer 503 meanwhile. Slots lose data only when a shard loses its master and every replica
that acknowledged its writes (see ``REDIS_REPLICAS_TO_ACK``): a failover to a replica keeps every epoch and number.
Redis is asked on the event loop; the broker's queue counts come from a short blocking connection (to the first node
of ``RABBITMQ_URL`` that answers, :class:`chat_common.clients.broker.BrokerNodes`) run in a worker thread, so an attempt
never blocks the loop.
"""

from __future__ import annotations

from collections.abc import Iterable

from chat_common.wire.heartbeats import WriterHeartbeat

# Waits before the four heartbeat snapshots of the precise rule: writers beat every 0.2 s when busy and every
# 0.25 s when idle, so each window holds a beat, and the last one two.
SETTLE_SECONDS = (0.5, 0.5, 0.5, 0.8)
RETRY_EXPIRY_SLACK = 1.0  # a writer returns a held retry-tier message this long after it is due at most
STALE_BEAT_SECONDS = 2.0  # a heartbeat older than this was left by a writer that is gone

Beats = dict[str, WriterHeartbeat]
Counts = dict[str, tuple[int, int]]


def queue_settled(
    queue: str,
    first: Counts,
    second: Counts,
    beats: tuple[Beats, Beats, Beats, Beats],
    cutoff: float,
    evidence: float,
    tiers: tuple[str, ...] = (),
) -> bool:
    """Conditions (b), (c), (e) and (f) of the precise rule for one work queue (see the module docstring).

    ``first``/``second``: (ready, consumers) read before and after the four heartbeat snapshots ``beats``;
    ``tiers``: the queue's retry tiers.
    """
    if any(first.get(tier, (0, 0))[0] for tier in tiers):
        return False  # (f) a retried message no writer holds: it may have been deferred before the ledger was lost
    h1, h2, h3, h4 = beats
    live: list[tuple[WriterHeartbeat, WriterHeartbeat, WriterHeartbeat]] = []
    for field, b4 in h4.items():
        if not field.startswith(f"{queue}|") or not all(field in h for h in (h1, h2, h3)):
            continue
        b1, b2, b3 = h1[field], h2[field], h3[field]
        if b1.beat < b2.beat < b3.beat < b4.beat - 1 and b1.session == b2.session == b3.session == b4.session:
            live.append((b2, b3, b4))
    consumers = {first.get(queue, (0, 0))[1], second.get(queue, (0, 0))[1]}
    if consumers != {len(live)}:  # (e) a consumer came, went or reconnected: the broker may have requeued
        return False
    if any(b4.oldest is not None and b4.oldest < cutoff for _, _, b4 in live):
        return False  # (c) a writer still holds a message stamped before the cutoff
    if first.get(queue, (0, 0))[0] == 0:
        return True  # (b) nothing was waiting in the queue at a time after every such message was enqueued
    # (b) a first delivery stamped at or after ``evidence``, received between the H2 and H3 beats
    return any(b3.firsts > b2.firsts and b3.last >= evidence for b2, b3, _ in live)


def drained(counts: Counts) -> bool:
    """The coarse rule's count: no ready message in any work queue or retry tier."""
    return all(ready == 0 for ready, _ in counts.values())


def writers_idle_across(
    work_queues: Iterable[str], since: float, counted_at: float, before: Beats, after: Beats, counts: Counts, now: float
) -> bool:
    """The coarse rule's bracket: every writer of every work queue reported before and after the count, held nothing
    at both and received nothing in between; and at least as many such writers as the broker counted consumers."""
    for name in work_queues:
        consumers = counts.get(name, (0, 0))[1]
        idle = 0
        for writer, late in after.items():
            if not writer.startswith(f"{name}|") or now - late.at > STALE_BEAT_SECONDS:
                continue  # a heartbeat left by a writer that is gone: it consumes nothing (prune removes it)
            early = before.get(writer)
            if early is None or early.at <= since or late.at <= counted_at:
                return False  # a writer that started meanwhile, or reported too long ago
            if early.unacked or late.unacked:
                return False
            if (early.session, early.deliveries) != (late.session, late.deliveries):
                return False  # it received something around the count
            idle += 1
        if idle < consumers:
            return False
    return True


def still_to_report(before: Beats, beats: Beats, moment: float, now: float) -> list[str]:
    """Writers that reported before ``moment`` (recently) and have not reported again since."""
    return [w for w, b in before.items() if now - b.at <= STALE_BEAT_SECONDS and w in beats and beats[w].at <= moment]


def evidence_time(cutoff: float, grace_seconds: float, deferred_since: float, longest_retry: float) -> float:
    """``E`` of the precise rule: a round must start after it."""
    return max(cutoff + grace_seconds, deferred_since + longest_retry + RETRY_EXPIRY_SLACK)
