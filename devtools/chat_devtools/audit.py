"""The audit of a create load: what became of every answer a :class:`~chat_devtools.load.clients.Workload` got.

Every request carries a body nobody else sends, so each stored row can be traced back to the one request
that produced it. The audit then sorts the answers into: accepted (201) and stored exactly once with the
right number and text; lost (201 but not stored as answered); duplicated (stored more than once, or a number
answered twice); stored although the client was told 503 or lost the connection (allowed: the client was
told nothing was promised, it just happened to land); and invented (stored, but nobody sent it; never).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import requests
from sqlalchemy import Engine, text

from chat_devtools.http import wait_for
from chat_devtools.load.clients import Attempt
from chat_devtools.sql import fetch_all


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


def stored_creates(engine: Engine, token: str) -> tuple[list, list]:
    """The tenant's rows as MySQL holds them: (chat number, name) per chat, (chat, number, body) per message."""
    chats = fetch_all(
        engine,
        "SELECT c.number, c.name FROM chats c JOIN applications a ON a.id = c.application_id"
        " WHERE a.token_digest = SHA2(:t, 256)",
        t=token,
    )
    messages = fetch_all(
        engine,
        "SELECT c.number, m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id "
        "JOIN applications a ON a.id = c.application_id WHERE a.token_digest = SHA2(:t, 256)",
        t=token,
    )
    return list(chats), list(messages)


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
        chats, messages = stored_creates(engine, token)
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
        chats, messages = stored_creates(engine, token)
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
                "FROM applications a WHERE a.token_digest = SHA2(:t, 256)"
            ),
            {"t": token},
        ).one()
        chats = conn.execute(
            text(
                "SELECT c.number, c.messages_count, (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id) "
                "FROM chats c JOIN applications a ON a.id = c.application_id WHERE a.token_digest = SHA2(:t, 256)"
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
