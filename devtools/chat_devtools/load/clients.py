"""Create load from concurrent clients (threads and processes of ``requests``), recording every answer.

- :func:`create_concurrently`: a burst of ``total`` creates from several processes; every 201 body back.
- :class:`Workload`: a steady mix of chat and message creates until stopped, every request with a body nobody
  else sends, so :mod:`chat_devtools.audit` can trace each stored row back to the request that produced it.
- :class:`MessageLoad`: messages without pause into chat 1 of several applications (one per shard or slot), so a
  test can tell which tenants paused during a fault and which never did.

These are for correctness under faults; throughput is measured by :mod:`chat_devtools.load.wrk` and
:mod:`chat_devtools.load.paced`, which cost far less CPU per request.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import requests


def _create(args: tuple[str, str, dict, int, float]) -> list[tuple[int, int, dict | None]]:
    """One worker process: ``count`` POSTs from a thread pool; returns (index, status, json) per request."""
    url, field, payload, count, deadline_s = args
    session_per_thread: dict[int, requests.Session] = {}

    def one(i: int) -> tuple[int, int, dict | None]:
        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        body = {field: f"{payload[field]}#{i}"}
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                resp = session.post(url, json=body, timeout=10)
            except requests.RequestException:
                resp = None
            if resp is not None and resp.status_code == 201:
                return i, 201, {**resp.json(), field: body[field]}
            if (resp is not None and resp.status_code not in (503,)) or time.monotonic() > deadline:
                return i, resp.status_code if resp is not None else 0, None
            time.sleep(0.05)  # 503 or connection error: the documented answer is "retry later"

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, range(count)))


def create_concurrently(
    url: str, field: str, total: int, processes: int = 4, prefix: str = "item", retry_seconds: float = 30
) -> list[dict]:
    """POST ``total`` creates to ``url`` from ``processes`` processes x 16 threads; returns every 201 body.

    Each accepted body is returned with the text that was sent, so tests can check it was stored verbatim.
    503 answers are retried (that is the API's contract); any other failure is returned as a failure.
    """
    share = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        parts = pool.map(
            _create, [(url, field, {field: f"{prefix}-{p}"}, n, retry_seconds) for p, n in enumerate(share)]
        )
    results = [r for part in parts for r in part]
    failures = [r for r in results if r[1] != 201]
    if failures:
        raise AssertionError(f"{len(failures)} creates failed, e.g. {failures[:3]}")  # also under python -O
    return [r[2] for r in results]


@dataclass
class Attempt:
    """One create as the client saw it."""

    kind: str  # "chat" or "message"
    text: str
    chat: int | None  # the chat a message was sent to
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    number: int | None
    at: float  # monotonic time of the answer
    seconds: float  # latency


class Workload:
    """``threads`` clients creating messages (and every ``chat_every``-th request a chat) until stopped."""

    def __init__(self, base_url: str, token: str, chats: list[int], *, threads: int = 4, chat_every: int = 12,
                 pause: float = 0.005, label: str = "w") -> None:  # fmt: skip
        self.url = f"{base_url}/applications/{token}"
        self.chats = list(chats)
        self.threads = threads
        self.chat_every = chat_every
        self.pause = pause
        self.label = label
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> Workload:
        self._workers = [
            threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True) for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> list[Attempt]:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)
        return self.attempts

    def _run(self, index: int) -> None:
        session = requests.Session()
        rng = random.Random(index)
        i = 0
        while not self._stop.is_set():
            i += 1
            tag = f"{self.label}-{index}-{i}"
            if i % self.chat_every == 0:
                kind, chat, field_name, url = "chat", None, "name", f"{self.url}/chats"
                value = f"chaos chat {tag}"
            else:
                with self._lock:
                    chat = rng.choice(self.chats)
                kind, field_name, url = "message", "body", f"{self.url}/chats/{chat}/messages"
                value = f"chaos message {tag}"
            sent = time.monotonic()
            try:
                resp = session.post(url, json={field_name: value}, timeout=15)
                status = resp.status_code
                number = resp.json().get(f"{kind}_number") if status == 201 else None
            except (requests.RequestException, ValueError):
                status, number = 0, None
                session = requests.Session()
            with self._lock:
                now = time.monotonic()
                self.attempts.append(Attempt(kind, value, chat, status, number, now, now - sent))
                if kind == "chat" and number is not None:
                    self.chats.append(number)
            time.sleep(self.pause)

    def first_accepted_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first 201 answered after it."""
        times = [a.at for a in self.attempts if a.status == 201 and a.at > moment]
        return min(times) - moment if times else None

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for a in self.attempts if a.status == 201 and start < a.at < end)


class MessageAnswer(NamedTuple):
    """One message create as :class:`MessageLoad` saw it."""

    at: float  # monotonic time of the answer
    app: int  # the application id
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    number: int | None  # the message number of a 201
    body: str  # unique to this request


class MessageLoad:
    """``threads`` clients creating messages in chat 1 of every application of ``apps`` (id -> token) in turn,
    without pause, until the ``with`` block ends; every answer is kept in :attr:`answers`."""

    def __init__(self, base_url: str, apps: dict[int, str], threads: int = 4) -> None:
        self.base_url, self.apps = base_url, dict(apps)
        self.stop = threading.Event()
        self.answers: list[MessageAnswer] = []  # list.append is atomic: the threads share it without a lock
        self.threads = [threading.Thread(target=self._run, name=f"message-load-{i}", daemon=True)
                        for i in range(threads)]  # fmt: skip

    def _run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            for app, token in self.apps.items():
                body = f"b-{uuid.uuid4().hex}"
                url = f"{self.base_url}/applications/{token}/chats/1/messages"
                try:
                    resp = session.post(url, json={"body": body}, timeout=15)
                    status, number = resp.status_code, resp.json().get("message_number")
                except (requests.RequestException, ValueError):
                    status, number = 0, None
                self.answers.append(MessageAnswer(time.monotonic(), app, status, number, body))

    def __enter__(self) -> MessageLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def statuses(self, apps: Iterable[int], since: float = 0.0) -> Counter:
        """How often each status was answered to ``apps`` since the monotonic time ``since``."""
        wanted = set(apps)
        return Counter(a.status for a in list(self.answers) if a.app in wanted and a.at >= since)

    def first_201(self, app: int, since: float) -> float | None:
        """When ``app`` was first answered 201 at or after ``since`` (None: not yet)."""
        return min((a.at for a in list(self.answers) if a.app == app and a.status == 201 and a.at >= since),
                   default=None)  # fmt: skip

    def accepted(self) -> dict[int, list[tuple[int, str]]]:
        """Per application, the (number, body) of every 201."""
        out: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for a in list(self.answers):
            if a.status == 201:
                out[a.app].append((a.number, a.body))
        return out
