"""Move queues declared with other arguments (classic queues of earlier versions) to the configured ``QUEUE_TYPE``.

RabbitMQ cannot change a queue's type, and declaring an existing queue with another type fails
(``PRECONDITION_FAILED``). For each queue of the topology whose declaration is refused, this moves its messages
into a holding queue of the right type (``<name>.migrating``), deletes the old queue, declares it anew and moves
the messages back. Every move publishes with confirms and acknowledges only after the confirm, so a crash halfway
loses nothing: running it again finishes the job (a message may then be moved twice, and the writers' idempotent
upserts store it once). Queues that already have the right arguments, or do not exist, are left alone, so it is a
no-op on a migrated or fresh broker (it declares nothing there); `make migrate` (hence `make run`) runs it.

Retry tiers of earlier versions (``<queue>.retry.<d>s``, TTL queues; see :mod:`chat_common.wire.topology`) are emptied
into their work queue (their messages are retried a little early, attempt and stamps kept) and deleted. Writers
drain those tiers while they exist, so a rolling upgrade needs none of this; it only tidies up afterwards.

Run it with the API and the writers stopped: while the old queue is gone, a create would find no queue and answer
503 (and a writer of an earlier version would fail to send a retry to a deleted tier). Retry tiers' messages start
their delay afresh.

    python -m chat_common.ops.queue_migration        # uses RABBITMQ_URL, QUEUE_PREFIX, QUEUE_TYPE, retry delays
"""

from __future__ import annotations

import logging
import sys

import pika
import pika.exceptions

from chat_common.clients.broker import WRITER, BrokerNodes
from chat_common.config import Settings
from chat_common.wire.topology import PRECONDITION_FAILED, QUORUM, Topology, WorkQueue

log = logging.getLogger(__name__)
HOLDING_SUFFIX = ".migrating"


def _refused(connection, name: str, arguments: dict) -> bool:
    """True when declaring ``name`` with ``arguments`` is refused as inequivalent (a fresh channel is spent)."""
    channel = connection.channel()
    try:
        channel.queue_declare(name, durable=True, arguments=arguments or None)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != PRECONDITION_FAILED:
            raise
        return True
    channel.close()
    return False


def _move(connection, source: str, target: str) -> int:
    """Move every message of ``source`` to ``target`` (confirmed publish, then ack); returns how many."""
    channel = connection.channel()
    channel.confirm_delivery()
    moved = 0
    while True:
        method, properties, body = channel.basic_get(source, auto_ack=False)
        if method is None:
            break
        channel.basic_publish("", target, body, properties, mandatory=True)  # raises unless confirmed
        channel.basic_ack(method.delivery_tag)
        moved += 1
    channel.close()
    return moved


def _delete_empty(connection, name: str) -> None:
    """Delete a queue we just emptied (quorum queues refuse ``if_empty``: count first; nothing else publishes)."""
    channel = connection.channel()
    left = channel.queue_declare(name, passive=True).method.message_count
    if left:
        raise RuntimeError(f"queue {name} received {left} messages while being migrated: stop the API, run again")
    channel.queue_delete(name)
    channel.close()


def _exists(connection, name: str) -> bool:
    channel = connection.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    channel.close()
    return True


def migrate(settings: Settings) -> list[str]:
    """Bring every queue of the deployment to its configured arguments and empty the retry tiers of earlier versions
    into their work queues; returns the names of the queues migrated or deleted."""
    topology = Topology.from_settings(settings)
    connection = _connect(settings)
    migrated = []
    try:
        for queue in (topology.chats, topology.messages):
            for name, arguments in queue.arguments().items():
                holding = name + HOLDING_SUFFIX
                if _exists(connection, name) and _refused(connection, name, arguments):
                    holding_arguments = {"x-queue-type": QUORUM} if settings.queue_type == QUORUM else {}
                    connection.channel().queue_declare(holding, durable=True, arguments=holding_arguments or None)
                    _move(connection, name, holding)
                    _delete_empty(connection, name)
                    channel = connection.channel()
                    channel.queue_declare(name, durable=True, arguments=arguments or None)
                    channel.close()
                    migrated.append(name)
                if _exists(connection, holding):  # also what an interrupted earlier run left behind
                    channel = connection.channel()
                    channel.queue_declare(name, durable=True, arguments=arguments or None)
                    channel.close()
                    moved = _move(connection, holding, name)
                    _delete_empty(connection, holding)
                    log.warning("queue %s is %s now (%d messages moved back)", name, settings.queue_type, moved)
            migrated += _retire_legacy_tiers(connection, queue)
    finally:
        if connection.is_open:
            connection.close()
    return migrated


# upgrade-only: remove after release 0.2 (deletes the TTL retry tiers 0.1.x declared)
def _retire_legacy_tiers(connection, queue: WorkQueue) -> list[str]:
    """Move what the retry tiers of earlier versions hold into the work queue, then delete them; their names."""
    retired = []
    for tier in queue.legacy_retry_queues:
        if not _exists(connection, tier):
            continue
        moved = _move(connection, tier, queue.name)
        _delete_empty(connection, tier)
        log.warning("retry tier %s of an earlier version deleted (%d messages moved to %s)", tier, moved, queue.name)
        retired.append(tier)
    return retired


def _connect(settings: Settings):
    try:
        return BrokerNodes.from_settings(settings, WRITER).connect_blocking()
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerUnreachable(f"no broker node answered: {exc!r}") from exc


class BrokerUnreachable(RuntimeError):
    """No node of ``RABBITMQ_URL`` accepted a connection."""


def main() -> None:
    """Migrate the queues of the configured deployment; exit 1 with the reason when the broker refuses.

    An unreachable broker is not an error here (exit 0 with a warning): there is nothing to migrate before it is
    up, and the API and the writers wait for it and report a queue of the wrong type themselves.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # the probes of missing queues are expected refusals
    settings = Settings.from_env()
    try:
        migrated = migrate(settings)
    except BrokerUnreachable as exc:
        print(f"queue migration skipped: {exc}", file=sys.stderr)
        return
    except (pika.exceptions.AMQPError, RuntimeError) as exc:
        print(f"queue migration failed: {exc!r}", file=sys.stderr)
        sys.exit(1)
    print(f"queues of {settings.queue_prefix!r}: " + (f"migrated {', '.join(migrated)}" if migrated else "up to date"))


if __name__ == "__main__":
    main()
