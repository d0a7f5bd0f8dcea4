"""One endpoint's delivery loop (webhook_dispatcher.endpoint_worker) on fakes of its store and sender: per-chat order
with held deliveries, the retry schedule running out, a failing receiver not draining the log into held rows, 410,
and a replay noticed by the compare-and-set on the position."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from dataclasses import replace

from chat_common.tenancy.tokens import TokenSealer, new_sealing_key
from chat_common.wire.event_pages import LoggedEvent, ScannedPage
from chat_common.wire.events import EVENT_TYPES
from webhook_dispatcher.config import DispatcherConfig
from webhook_dispatcher.delivery import Attempt, Outcome
from webhook_dispatcher.endpoint_worker import EndpointWorker
from webhook_dispatcher.signing import new_secret
from webhook_dispatcher.store import Endpoint, HeldEvent

T0 = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
KEY = new_sealing_key()


class FakeStore:
    """The store's rows in memory: one application's log, one endpoint, its held deliveries."""

    def __init__(self, events: list[tuple[int, int]]) -> None:  # (event id, chat number)
        self.log = [LoggedEvent(i, "chat.updated", c, 0, i, T0, f"chat {c}", 0, None, i) for i, c in events]
        self.head = max((i for i, _ in events), default=0)
        self.pos = 0
        self.held: dict[int, HeldEvent] = {}
        self.disabled: str | None = None
        self.health: list[tuple] = []

    def scan(self, application_id: int, after: int, limit: int) -> ScannedPage:
        page = [e for e in self.log if e.position > after][:limit]
        return ScannedPage(page, self.head, 1)

    def event(self, application_id: int, event_id: int) -> LoggedEvent | None:
        return next((e for e in self.log if e.position == event_id), None)

    def advance(self, endpoint_id: int, old: int, new: int, held: list[HeldEvent]) -> bool:
        if self.pos != old:
            return False
        self.pos = new
        for h in held:
            self.held.setdefault(h.event_id, h)
        return True

    def heads(self, endpoint_id: int) -> list[HeldEvent]:
        chats: dict[int, HeldEvent] = {}
        for event_id in sorted(self.held):
            chats.setdefault(self.held[event_id].chat_number, self.held[event_id])
        return sorted(chats.values(), key=lambda h: h.event_id)

    def chat_head(self, endpoint_id: int, chat_number: int) -> HeldEvent | None:
        return next((self.held[i] for i in sorted(self.held) if self.held[i].chat_number == chat_number), None)

    def settle(self, endpoint_id: int, event_id: int) -> None:
        self.held.pop(event_id, None)

    def reschedule(self, endpoint_id: int, held: HeldEvent) -> None:
        if held.event_id in self.held:
            self.held[held.event_id] = held

    def position(self, endpoint_id: int) -> int:
        return self.pos

    def record_health(self, endpoint_id, state, failing_since, success, failure, error) -> None:
        self.health.append((state, error))

    def disable(self, endpoint_id: int, reason: str, error: str) -> None:
        self.disabled = reason


class FakeSender:
    """Answers each POST as ``answer(event id, attempt number)`` says; records (event id, attempt) in order."""

    def __init__(self, answer: Callable[[int, int], Attempt]) -> None:
        self.answer = answer
        self.posts: list[int] = []

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Attempt:
        event_id = int(headers["webhook-id"].removeprefix("evt_"))
        self.posts.append(event_id)
        await asyncio.sleep(0)
        return self.answer(event_id, self.posts.count(event_id))


def _worker(store: FakeStore, sender: FakeSender, **config: object) -> EndpointWorker:
    sealer = TokenSealer(KEY)
    endpoint = Endpoint(
        1, 7, "main", "https://example.com/", frozenset(EVENT_TYPES), "", None, None, 0, "healthy", None
    )
    endpoint = replace(endpoint, secret_sealed=sealer.seal_for(new_secret(), endpoint.secret_context))
    settings = DispatcherConfig(sealing_key=KEY, retry_schedule=(0.01, 0.01), page_size=4, **config)  # type: ignore[arg-type]

    async def run_db(call, *args):
        return call(*args)

    return EndpointWorker(endpoint, store, sender, sealer, settings, run_db)  # type: ignore[arg-type]


async def _turns(worker: EndpointWorker, count: int) -> None:
    """``count`` turns of the loop, each after the fake schedule's step (no idle sleeping in between)."""

    async def no_sleep(seconds: float) -> None:
        return None

    worker._sleep = no_sleep  # type: ignore[method-assign]
    for _ in range(count):
        await worker._turn()
        await asyncio.sleep(0.02)


OK = Attempt(Outcome.DELIVERED, 204)
DOWN = Attempt(Outcome.RETRY, error="cannot connect")


async def test_a_failed_event_holds_its_chat_behind_it_and_the_others_go_on():
    store = FakeStore([(1, 1), (2, 2), (3, 1), (4, 2), (5, 1), (6, 2)])
    sender = FakeSender(lambda event, attempt: DOWN if (event, attempt) == (1, 1) else OK)
    worker = _worker(store, sender)
    await _turns(worker, 1)
    assert sender.posts == [1, 2, 4] and store.pos == 4  # chat 1 stopped at 1; chat 2 went on (page of 4)
    assert {i: h.attempts for i, h in store.held.items()} == {1: 1, 3: 0}
    await _turns(worker, 3)
    posts = sender.posts
    assert sorted(set(posts)) == [1, 2, 3, 4, 5, 6] and store.held == {} and store.pos == 6
    chat1 = [e for e in posts if e in (1, 3, 5)]
    assert chat1 == [1, 1, 3, 5]  # in order, 1 retried before anything after it


async def test_an_event_is_given_up_when_the_schedule_runs_out_and_its_chat_goes_on():
    store = FakeStore([(1, 1), (2, 1)])
    sender = FakeSender(lambda event, attempt: DOWN if event == 1 else OK)
    worker = _worker(store, sender)
    await _turns(worker, 5)
    assert sender.posts == [1, 1, 1, 2]  # the first attempt and the schedule's two retries, then the next event
    assert store.held == {} and store.pos == 2


async def test_a_failing_receiver_is_probed_by_retries_and_the_log_is_not_copied_into_held_rows():
    store = FakeStore([(i, i % 3) for i in range(1, 21)])
    sender = FakeSender(lambda event, attempt: DOWN)
    worker = _worker(store, sender, max_in_flight=1)
    await _turns(worker, 3)
    assert store.pos == 4 and len(store.held) <= 4  # one page, then only retries of its heads
    assert worker.health.failing and store.health[0] == ("failing", "cannot connect")


async def test_410_disables_and_stops():
    store = FakeStore([(1, 1), (2, 1)])
    sender = FakeSender(lambda event, attempt: Attempt(Outcome.GONE, 410, "410 Gone"))
    worker = _worker(store, sender)
    await _turns(worker, 1)
    assert worker.disabled and "410" in (store.disabled or "") and store.pos == 0


async def test_a_client_error_is_given_up_at_once():
    store = FakeStore([(1, 1), (2, 1)])
    sender = FakeSender(lambda event, attempt: Attempt(Outcome.FAILED, 400, "HTTP 400") if event == 1 else OK)
    worker = _worker(store, sender)
    await _turns(worker, 2)
    assert sender.posts == [1, 2] and store.held == {} and store.pos == 2


async def test_a_replay_moves_the_worker_back():
    store = FakeStore([(1, 1), (2, 2)])
    sender = FakeSender(lambda event, attempt: OK)
    worker = _worker(store, sender)
    await _turns(worker, 1)
    assert store.pos == 2 and sender.posts == [1, 2]
    store.pos = 0  # the admin's replay
    worker.refresh(replace(worker.endpoint, position=0))
    await _turns(worker, 1)
    assert sorted(sender.posts) == [1, 1, 2, 2] and store.pos == 2
