"""RabbitMQ topology: durable work queues, retry tiers and dead-letter queues.

Everything goes through the default exchange, routed by queue name. A retry tier ``<queue>.delay.<d>s`` holds
messages a writer asked to retry until their due time (header ``x-due-at-ms``); the writers of ``<queue>`` consume
its tiers, hold each message until it is due and then publish it back to the work queue
(:mod:`chat_common.writing.retry_tiers`). A tier has no TTL and no dead-lettering: nothing leaves it but by a writer's
confirmed publish and acknowledgement. A rejected (``nack`` without requeue) message dead-letters into
``<queue>.dead``.

Retry tiers of earlier versions, ``<queue>.retry.<d>s``, were TTL queues dead-lettering back into the work queue
(:attr:`WorkQueue.legacy_retry_queues`). They are never declared any more; where they still exist the writers drain
them too, and ``python -m chat_common.ops.queue_migration`` moves what is left in them to the work queue and deletes
them (docs/architecture.md, "Retry tiers").

Queue type (``QUEUE_TYPE``): **quorum** by default — replicated over the cluster's nodes (Raft), so the loss of one
node loses no accepted message and the queue keeps serving from another node. Dead-lettering out of a quorum queue
is at-most-once unless the source queue has ``x-dead-letter-strategy: at-least-once`` with
``x-overflow: reject-publish``; the way into ``<queue>.dead`` is dead-lettering, so the work queue carries those
arguments: a message leaves it only once the dead-letter queue confirmed it. ``classic`` keeps the former
unreplicated work and dead-letter queues (declared with exactly the former arguments, so a deployment that already
has them may keep them). Declaring a queue that exists with another type fails with :class:`QueueMismatch`, which
names the fix (``python -m chat_common.ops.queue_migration``, or ``QUEUE_TYPE=classic``).

This module is the source of the queue names. The Helm chart needs the work queues' names too (KEDA scales the
writers on their depth) and spells ``<prefix>.chats`` / ``<prefix>.messages`` in its ``chat-system.writers``
helper; tests/unit/test_writer_queue_names.py fails when the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import pika.exceptions

# Suffixes of the two work queues under ``QUEUE_PREFIX``.
CHATS = "chats"
MESSAGES = "messages"

# Values of QUEUE_TYPE.
QUORUM = "quorum"
CLASSIC = "classic"
QUEUE_TYPES = (QUORUM, CLASSIC)
# Dead-letter at-least-once (quorum queues only): the message stays in the source queue until the target confirmed
# it. RabbitMQ honours the strategy only together with reject-publish overflow (and the stream_queue feature flag,
# enabled on every cluster created by 3.9+).
AT_LEAST_ONCE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
PRECONDITION_FAILED = 406


class QueueMismatch(RuntimeError):
    """A queue exists with other arguments than this deployment declares (typically: classic, not quorum)."""


@dataclass(frozen=True)
class WorkQueue:
    """Names and arguments of one work queue with its retry tiers and dead-letter queue."""

    name: str
    retry_delays_seconds: tuple[int, ...]
    queue_type: str = QUORUM

    @property
    def dead_letter(self) -> str:
        """Where messages no writer can apply are parked for a human."""
        return f"{self.name}.dead"

    def retry_delay(self, attempt: int) -> int:
        """Seconds the given 1-based attempt waits: the delays grow, then stay at the longest."""
        return self.retry_delays_seconds[min(attempt, len(self.retry_delays_seconds)) - 1]

    def retry(self, attempt: int) -> str:
        """Retry tier for the given 1-based attempt."""
        return self.tier(self.retry_delay(attempt))

    def tier(self, delay: int) -> str:
        """Name of the retry tier that holds messages for ``delay`` seconds."""
        return f"{self.name}.delay.{delay}s"

    @property
    def retry_tiers(self) -> dict[str, int]:
        """Every retry tier of this queue with its delay in seconds (in order of delay)."""
        return {self.tier(d): d for d in sorted(set(self.retry_delays_seconds))}

    @property
    def retry_queues(self) -> list[str]:
        """All retry tiers of this queue."""
        return list(self.retry_tiers)

    # upgrade-only: remove after release 0.2 (the TTL retry tiers 0.1.x declared)
    @property
    def legacy_retry_queues(self) -> dict[str, int]:
        """Retry tiers of earlier versions (TTL queues dead-lettering into the work queue) with their delay; never
        declared, drained where they still exist. Upgrade-only: delete in the release after 0.2 (0.1.x declared
        them)."""
        return {f"{self.name}.retry.{d}s": d for d in sorted(set(self.retry_delays_seconds))}

    def arguments(self) -> dict[str, dict]:
        """Every queue of this work queue (dead-letter queue, work queue, retry tiers) with its declare arguments."""
        quorum = self.queue_type == QUORUM
        typed = {"x-queue-type": QUORUM} if quorum else {}  # classic: exactly the arguments of earlier versions
        safe_dead_lettering = AT_LEAST_ONCE_DEAD_LETTERING if quorum else {}
        queues = {
            self.dead_letter: dict(typed),
            self.name: {
                **typed,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead_letter,
                **safe_dead_lettering,
            },
        }
        for (
            tier
        ) in self.retry_tiers:  # no TTL, no dead-lettering: only a writer's confirmed publish takes a message out
            queues[tier] = dict(typed)
        return queues

    def declare(self, channel) -> None:
        """Declare the work queue, its retry tiers and its dead-letter queue (idempotent).

        Raises :class:`QueueMismatch` (the channel is then closed) when one exists with other arguments.
        """
        for name, arguments in self.arguments().items():
            try:
                channel.queue_declare(name, durable=True, arguments=arguments or None)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != PRECONDITION_FAILED:
                    raise
                raise QueueMismatch(
                    f"queue {name!r} exists with other arguments than QUEUE_TYPE={self.queue_type} declares"
                    f" ({exc.reply_text}). Queues declared by an earlier version are classic: stop the API and the"
                    " writers and run `python -m chat_common.ops.queue_migration` (moves their messages into"
                    " quorum queues of the same names; `make migrate` does it), or set QUEUE_TYPE=classic to keep"
                    " the classic queues."
                ) from exc


@dataclass(frozen=True)
class Topology:
    """The two work queues of one deployment, named under ``QUEUE_PREFIX``."""

    prefix: str = "chat_system"
    retry_delays_seconds: tuple[int, ...] = (1, 5, 30)
    queue_type: str = QUORUM

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}, not {self.queue_type!r}")

    @classmethod
    def from_settings(cls, settings) -> Topology:
        """The topology a deployment's settings describe (``QUEUE_PREFIX``, retry delays, ``QUEUE_TYPE``)."""
        return cls(settings.queue_prefix, settings.writer_retry_delays_seconds, settings.queue_type)

    @property
    def chats(self) -> WorkQueue:
        """Queue of chat creates and renames, consumed by the chat-writer."""
        return WorkQueue(f"{self.prefix}.{CHATS}", self.retry_delays_seconds, self.queue_type)

    @property
    def messages(self) -> WorkQueue:
        """Queue of message creates and edits, consumed by the message-writer."""
        return WorkQueue(f"{self.prefix}.{MESSAGES}", self.retry_delays_seconds, self.queue_type)

    def declare(self, channel) -> None:
        """Declare every queue of the deployment."""
        self.chats.declare(channel)
        self.messages.declare(channel)


# -- Announcements of committed rows (live message streams) ---------------------------------------------------------
# Not a queue: a topic exchange the message-writer publishes to after each commit, routing key
# "<application id>.<chat number>" (chat_common.wire.announcements). Each API worker binds a queue of its own
# (exclusive, auto-delete, declared by the worker, never here) to the chats its open streams follow.
ANNOUNCEMENTS = "announcements"


def announcements_exchange(prefix: str) -> str:
    """Name of the announcement exchange of a deployment (``<QUEUE_PREFIX>.announcements``)."""
    return f"{prefix}.{ANNOUNCEMENTS}"


def declare_announcements(channel, exchange: str, callback=None) -> None:
    """Declare the announcement exchange (durable topic; idempotent). ``callback``: for an asynchronous channel."""
    extra = {} if callback is None else {"callback": callback}
    channel.exchange_declare(exchange, exchange_type="topic", durable=True, **extra)
