"""A steady stream of creates from concurrent clients, and the audit of what became of every answer.

Every request carries a body nobody else sends, so each stored row can be traced back to the one request
that produced it. The audit then sorts the answers into: accepted (201) and stored exactly once with the
right number and text; lost (201 but not stored as answered); duplicated (stored more than once, or a number
answered twice); stored although the client was told 503 or lost the connection (allowed: the client was
told nothing was promised, it just happened to land); and invented (stored, but nobody sent it; never).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests
from sqlalchemy import Engine, text

from tests.support.http import wait_for


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


@dataclass
class Figures:
    """The audit of one run: counts per outcome, and the examples behind any that must be zero."""

    attempts: int = 0
    accepted_chats: int = 0
    accepted_messages: int = 0
    answered_503: int = 0
    no_answer: int = 0
    other_status: dict = field(default_factory=dict)
    persisted: int = 0
    lost: int = 0
    duplicated: int = 0
    numbers_answered_twice: int = 0
    stored_after_503: int = 0
    invented: int = 0
    examples: dict = field(default_factory=dict)
    seconds_to_persist: float = 0.0

    @property
    def accepted(self) -> int:
        return self.accepted_chats + self.accepted_messages


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


def _stored(engine: Engine, token: str) -> tuple[list, list]:
    with engine.connect() as conn:
        chats = conn.execute(
            text(
                "SELECT c.number, c.name FROM chats c JOIN applications a ON a.id = c.application_id WHERE a.token = :t"
            ),
            {"t": token},
        ).all()
        messages = conn.execute(
            text(
                "SELECT c.number, m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id "
                "JOIN applications a ON a.id = c.application_id WHERE a.token = :t"
            ),
            {"t": token},
        ).all()
    return chats, messages


def audit(
    engine: Engine, token: str, attempts: list[Attempt], seed_chats: dict[int, str], timeout: float = 90
) -> Figures:
    """Wait (up to ``timeout``) until every accepted create is stored, then sort every answer into its outcome."""
    figures = Figures(attempts=len(attempts))
    statuses = Counter(a.status for a in attempts)
    figures.answered_503 = statuses.pop(503, 0)
    figures.no_answer = statuses.pop(0, 0)
    accepted = [a for a in attempts if a.status == 201]
    statuses.pop(201, None)
    figures.other_status = dict(statuses)
    figures.accepted_chats = sum(a.kind == "chat" for a in accepted)
    figures.accepted_messages = sum(a.kind == "message" for a in accepted)

    expected_chats = {**seed_chats, **{a.number: a.text for a in accepted if a.kind == "chat"}}
    expected_messages = {(a.chat, a.number): a.text for a in accepted if a.kind == "message"}
    answered = Counter((a.kind, a.chat, a.number) for a in accepted)
    figures.numbers_answered_twice = sum(n - 1 for n in answered.values() if n > 1)

    def complete() -> tuple[list, list] | None:
        chats, messages = _stored(engine, token)
        stored_chats = {n: name for n, name in chats}
        stored_messages = {(c, m): body for c, m, body in messages}
        done = all(stored_chats.get(n) == t for n, t in expected_chats.items()) and all(
            stored_messages.get(k) == t for k, t in expected_messages.items()
        )
        return (chats, messages) if done else None

    started = time.monotonic()
    try:
        chats, messages = wait_for(complete, timeout=timeout, interval=0.5, what="every accepted create stored")
    except AssertionError:
        chats, messages = _stored(engine, token)
    figures.seconds_to_persist = round(time.monotonic() - started, 2)

    stored_chats = {n: name for n, name in chats}
    stored_messages = {(c, m): body for c, m, body in messages}
    lost = [("chat", n, t) for n, t in expected_chats.items() if stored_chats.get(n) != t]
    lost += [("message", k, t) for k, t in expected_messages.items() if stored_messages.get(k) != t]
    figures.lost = len(lost)
    figures.persisted = len(expected_chats) - len(seed_chats) + len(expected_messages) - figures.lost

    texts = Counter([name for _, name in chats] + [body for _, _, body in messages])
    figures.duplicated = sum(n - 1 for n in texts.values() if n > 1)
    unanswered = {a.text for a in attempts if a.status in (0, 503)}
    extra = [name for n, name in stored_chats.items() if n not in expected_chats]
    extra += [body for k, body in stored_messages.items() if k not in expected_messages]
    figures.stored_after_503 = sum(1 for t in extra if t in unanswered)
    invented = [t for t in extra if t not in unanswered]
    figures.invented = len(invented)
    figures.examples = {
        "lost": [str(x) for x in lost[:5]],
        "duplicated": [t for t, n in texts.items() if n > 1][:5],
        "invented": invented[:5],
    }
    return figures


def counts_are_exact(engine: Engine, token: str) -> dict:
    """Compare ``chats_count`` / ``messages_count`` with real counts; returns the mismatches (empty when exact)."""
    with engine.connect() as conn:
        app = conn.execute(
            text(
                "SELECT a.chats_count, (SELECT COUNT(*) FROM chats c WHERE c.application_id = a.id) AS real_count "
                "FROM applications a WHERE a.token = :t"
            ),
            {"t": token},
        ).one()
        chats = conn.execute(
            text(
                "SELECT c.number, c.messages_count, (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id) "
                "FROM chats c JOIN applications a ON a.id = c.application_id WHERE a.token = :t"
            ),
            {"t": token},
        ).all()
    mismatches = {f"chat {n}": (cached, real) for n, cached, real in chats if cached != real}
    if app.chats_count != app.real_count:
        mismatches["application"] = (app.chats_count, app.real_count)
    return mismatches


def search_agrees(base_url: str, engine: Engine, token: str, attempts: list[Attempt], sample: int = 15) -> dict:
    """Search for accepted messages by their unique text: each must be found, as exactly that message."""
    accepted = [a for a in attempts if a.status == 201 and a.kind == "message"]
    rng = random.Random(len(accepted))
    disagreements = {}
    session = requests.Session()
    for attempt in rng.sample(accepted, min(sample, len(accepted))):
        fragment = attempt.text.removeprefix("chaos message ").upper()  # case-insensitive, a word fragment
        resp = session.get(
            f"{base_url}/applications/{token}/chats/{attempt.chat}/messages/search",
            params={"query": fragment},
            timeout=15,
        )
        found = [(h["message_number"], h["body"]) for h in resp.json()] if resp.status_code == 200 else resp.status_code
        # A longer tag that starts with this one (w-1-12 vs w-1-120) is also a match; ours must be first.
        if not isinstance(found, list) or (attempt.number, attempt.text) not in found:
            disagreements[attempt.text] = found
    return disagreements
