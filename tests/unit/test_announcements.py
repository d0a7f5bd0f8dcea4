"""The writers' announcements of committed rows (chat_common.wire.announcements), on a fake channel: no broker
needed."""

from __future__ import annotations

import pika.exceptions

from chat_common.config import Settings
from chat_common.wire import announcements
from chat_common.wire.announcements import Announcer, Committed
from chat_common.wire.contracts import MessageUpsert
from chat_common.writing.batches import Delivery
from chat_common.writing.consumer_hooks import AnnouncementRetry
from chat_common.writing.writer import build_consumer
from message_writer.handler import may_be_stored, to_announce


class FakeChannel:
    def __init__(self) -> None:
        self.is_open = True
        self.sent: list[tuple[str, str, bytes]] = []
        self.fail = False

    def basic_publish(self, exchange, key, body, properties):
        if self.fail:
            raise pika.exceptions.ChannelWrongStateError("closed")
        self.sent.append((exchange, key, body))


class FakeConnectionChannel:
    """What ``attach`` is given: a channel of the consumer's connection, which opens the announcer's own."""

    def __init__(self, own: FakeChannel) -> None:
        self.connection = self
        self.own = own
        self.declared = []

    def channel(self):
        own = self.own
        own.exchange_declare = lambda name, **kwargs: self.declared.append((name, kwargs))
        return own


def rows(*pairs: tuple[int, int]) -> list[Committed]:
    return [Committed(1, chat, number, f"m{number}", 0) for chat, number in pairs]


def attached(listened=None) -> tuple[Announcer, FakeChannel]:
    channel = FakeChannel()
    announcer = Announcer("p.announcements", listened)
    announcer.attach(FakeConnectionChannel(channel))
    return announcer, channel


def test_one_announcement_per_chat_with_its_rows_in_number_order():
    announcer, channel = attached()
    announcer.committed(rows((1, 3), (2, 1), (1, 2)))
    assert announcer.flush() == 2
    sent = {key: announcements.decode(body)[1] for _, key, body in channel.sent}
    assert sent == {"1.1": [(2, "m2", 0), (3, "m3", 0)], "1.2": [(1, "m1", 0)]}
    assert {exchange for exchange, _, _ in channel.sent} == {"p.announcements"}


def test_only_chats_someone_streams_are_announced_and_unknown_means_all():
    announcer, channel = attached(lambda keys: {"1.2"})
    announcer.committed(rows((1, 1), (2, 1)))
    announcer.flush()
    assert [key for _, key, _ in channel.sent] == ["1.2"]
    everything, channel = attached(lambda keys: None)  # the registry could not be read
    everything.committed(rows((1, 1), (2, 1)))
    everything.flush()
    assert sorted(key for _, key, _ in channel.sent) == ["1.1", "1.2"]


def test_a_failed_publish_never_raises_and_is_sent_with_the_next_flush():
    announcer, channel = attached()
    channel.fail = True
    announcer.committed(rows((1, 1)))
    assert announcer.flush() == 0
    assert announcer.pending
    channel.fail = False
    hook = AnnouncementRetry(announcer)
    hook.on_iteration(state=None)  # the loop's next turn sends what was left
    assert [key for _, key, _ in channel.sent] == ["1.1"] and not announcer.pending


def test_without_a_channel_nothing_raises():
    announcer = Announcer("p.announcements")
    announcer.committed(rows((1, 1)))
    assert announcer.flush() == 0 and announcer.pending


def test_malformed_announcements_are_refused():
    for body in (b"[]", b'{"m": [[0, "x", 0]]}', b'{"m": [["1", "x", 0]]}', b"not json"):
        try:
            announcements.decode(body)
        except ValueError:
            continue
        raise AssertionError(body)


# -- what the message-writer announces of a batch (message_writer.handler) -----------------------------------------
def upsert(number: int, body: str, version: int = 0):
    return MessageUpsert(1, 2, number, body, version)


def delivery(redelivered: bool = False, attempt: int = 0):
    return Delivery(b"{}", 1, redelivered, attempt)


def test_only_batches_that_may_hold_stored_rows_read_them():
    assert not may_be_stored([(delivery(), upsert(1, "a")), (delivery(), upsert(2, "b"))])  # first-time creates
    assert may_be_stored([(delivery(), upsert(1, "a")), (delivery(redelivered=True), upsert(2, "b"))])
    assert may_be_stored([(delivery(attempt=1), upsert(1, "a"))])
    assert may_be_stored([(delivery(), upsert(1, "a", version=5))])


def test_a_redelivered_row_stored_with_its_version_is_announced_again_and_an_outdone_edit_never():
    applied = [
        (10, upsert(1, "created")),  # stored by a run of this batch that died before announcing
        (10, upsert(2, "edited", 7)),  # likewise: stored with the same version
        (10, upsert(3, "older edit", 4)),  # the stored row has a newer edit: never announced
        (10, upsert(4, "created first")),  # an edit got there first: the create carries the stored body
        (10, upsert(5, "new")),
    ]
    stored = {(10, 1): (0, "created"), (10, 2): (7, "edited"), (10, 3): (9, "newest"), (10, 4): (3, "edited early")}
    stored[(10, 5)] = (0, "new")
    announced = [(c.message_number, c.body, c.version) for c in to_announce(applied, stored)]
    assert announced == [(1, "created", 0), (2, "edited", 7), (4, "edited early", 0), (5, "new", 0)]
    # Not read (a batch of first-time creates): every row as delivered.
    assert [c.message_number for c in to_announce(applied, None)] == [1, 2, 3, 4, 5]


def test_only_a_writer_that_announces_gets_an_announcer_and_its_retry_hook():
    # build_consumer connects nothing: the clients, the engine and the broker nodes are lazy.
    def handler(context):
        return lambda deliveries: None

    silent, context = build_consumer(Settings(), lambda topology: topology.chats, handler)
    assert context.announcer is None
    assert not [h for h in silent.hooks if isinstance(h, AnnouncementRetry)]
    context.engine.dispose()

    loud, context = build_consumer(Settings(), lambda topology: topology.messages, handler, announces=True)
    assert isinstance(context.announcer, Announcer)
    assert [h.announcer for h in loud.hooks if isinstance(h, AnnouncementRetry)] == [context.announcer]
    context.engine.dispose()


def test_the_retry_hook_does_not_flush_after_a_batch_the_handler_announced():
    # One owner of the flush after a commit: the handler. The hook sends only what was left pending.
    announcer, channel = attached()
    announcer.committed(rows((1, 1)))
    AnnouncementRetry(announcer).on_batch_applied(None, [], 0.0)
    assert not channel.sent and announcer.pending
