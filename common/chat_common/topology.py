"""RabbitMQ topology: durable work queues, delayed-retry tiers and dead-letter queues.

Everything goes through the default exchange, routed by queue name. A retry tier is a queue without
consumers whose TTL dead-letters messages back into the work queue, so a retry waits without holding
a writer. A rejected (``nack`` without requeue) message dead-letters into ``<queue>.dead``.

This module is the source of the queue names. The Helm chart needs the work queues' names too (KEDA scales the
writers on their depth) and spells ``<prefix>.chats`` / ``<prefix>.messages`` in its ``chat-system.writers``
helper; tests/unit/test_writer_queue_names.py fails when the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

# Suffixes of the two work queues under ``QUEUE_PREFIX``.
CHATS = "chats"
MESSAGES = "messages"


@dataclass(frozen=True)
class WorkQueue:
    """Names and arguments of one work queue with its retry tiers and dead-letter queue."""

    name: str
    retry_delays_seconds: tuple[int, ...]

    @property
    def dead_letter(self) -> str:
        """Where messages no writer can apply are parked for a human."""
        return f"{self.name}.dead"

    def retry(self, attempt: int) -> str:
        """Retry tier for the given 1-based attempt: the delays grow, then stay at the longest."""
        delay = self.retry_delays_seconds[min(attempt, len(self.retry_delays_seconds)) - 1]
        return f"{self.name}.retry.{delay}s"

    @property
    def retry_queues(self) -> list[str]:
        """All retry tiers of this queue."""
        return [f"{self.name}.retry.{d}s" for d in self.retry_delays_seconds]

    def declare(self, channel) -> None:
        """Declare the work queue, its retry tiers and its dead-letter queue (idempotent)."""
        channel.queue_declare(self.dead_letter, durable=True)
        channel.queue_declare(
            self.name,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.dead_letter},
        )
        for delay, retry_name in zip(self.retry_delays_seconds, self.retry_queues, strict=True):
            channel.queue_declare(
                retry_name,
                durable=True,
                arguments={
                    "x-message-ttl": delay * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.name,
                },
            )


@dataclass(frozen=True)
class Topology:
    """The two work queues of one deployment, named under ``QUEUE_PREFIX``."""

    prefix: str = "chat_system"
    retry_delays_seconds: tuple[int, ...] = (1, 5, 30)

    @property
    def chats(self) -> WorkQueue:
        """Queue of chat creates and renames, consumed by the chat-writer."""
        return WorkQueue(f"{self.prefix}.{CHATS}", self.retry_delays_seconds)

    @property
    def messages(self) -> WorkQueue:
        """Queue of message creates and edits, consumed by the message-writer."""
        return WorkQueue(f"{self.prefix}.{MESSAGES}", self.retry_delays_seconds)

    def declare(self, channel) -> None:
        """Declare every queue of the deployment."""
        self.chats.declare(channel)
        self.messages.declare(channel)
