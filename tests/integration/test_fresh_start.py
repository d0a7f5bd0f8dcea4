"""A brand-new deployment takes writes as soon as it says it is ready: nothing was ever numbered, so there is
nothing to recover (the durable marker tells a new system from one whose Redis lost its data); and new tenants'
first bursts, racing the first opening of their numbering across API workers, are never refused."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import text

from chat_common.clients.db import make_engine
from chat_devtools.http import wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.results import Results
from tests.conftest import LOG_ROOT


@pytest.fixture(scope="module")
def results() -> Iterator[Results]:
    """The rows of this file's checks (docs/reliability.md), saved once both tests ran."""
    rows = Results("fresh_start")
    yield rows
    rows.save()


def test_the_first_create_after_ready_is_accepted(results):
    ns = Namespace.create("fresh")
    system = System(ns, LOG_ROOT / ns.name)
    started = time.monotonic()
    try:
        system.start(wait_ready=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{system.base_url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.05)
        ready_after = time.monotonic() - started
        token = requests.post(f"{system.base_url}/applications", json={"name": "new"}, timeout=10).json()["token"]
        chat = requests.post(f"{system.base_url}/applications/{token}/chats", json={"name": "first"}, timeout=10)
        message = requests.post(
            f"{system.base_url}/applications/{token}/chats/1/messages", json={"body": "hello"}, timeout=10
        )
        engine = make_engine(ns.settings.database_url, pool_size=1)
        with engine.connect() as conn:
            marker = conn.execute(text("SELECT COUNT(*) FROM system_markers WHERE name = 'numbering_opened'"))
            marked = marker.scalar_one()
        engine.dispose()
        results.add(
            check="fresh deployment: the first create after /readyz answered 200",
            observed=f"ready after {ready_after:.1f} s; first chat create {chat.status_code}, "
            f"first message create {message.status_code}",
            outcome="pass" if (chat.status_code, message.status_code) == (201, 201) else "fail",
        )
        assert chat.status_code == 201, chat.text  # not "503 numbering is recovering"
        assert message.status_code == 201, message.text
        assert marked == 1  # the next time Redis comes up empty, it is a loss, not a new system
    finally:
        system.stop()
        ns.destroy()


TENANTS, BURST, AT_ONCE = 10, 120, 32
RECOVERING = "numbering is recovering after a cache restart; try again in 1 s"


def _burst(base_url: str, token: str) -> list[tuple[int, dict]]:
    """``BURST`` chat creates for one application, ``AT_ONCE`` in flight at a time; (status, body) of each."""
    sessions: dict[int, requests.Session] = {}

    def create(i: int) -> tuple[int, dict]:
        session = sessions.setdefault(threading.get_ident(), requests.Session())
        resp = session.post(f"{base_url}/applications/{token}/chats", json={"name": f"c{i}"}, timeout=30)
        return resp.status_code, resp.json()

    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        return list(pool.map(create, range(BURST)))


def test_new_tenants_first_bursts_are_never_refused_and_a_real_wipe_still_waits_for_recovery(results):
    """Ten new tenants on a fresh system with several API workers, each sending its first creates as one concurrent
    burst: every one is answered 201 (the first opening of numbering in each tenant's slot races the others), with
    numbers gap-free and unique. Then Redis really loses its data: creates answer "recovering" until it is safe."""
    ns = Namespace.create("burst")
    system = System(ns, LOG_ROOT / ns.name, api_workers=4)
    try:
        system.start()
        tokens = [
            requests.post(f"{system.base_url}/applications", json={"name": f"t{i}"}, timeout=10).json()["token"]
            for i in range(TENANTS)
        ]
        answers = {token: _burst(system.base_url, token) for token in tokens}
        statuses = Counter(status for token in tokens for status, _ in answers[token])
        refused = [body for token in tokens for status, body in answers[token] if status != 201]
        results.add(
            check=f"fresh system, 4 API workers: {TENANTS} new tenants x {BURST} concurrent first chat creates",
            observed=f"answers {dict(statuses)}",
            outcome="pass" if set(statuses) == {201} else "fail",
        )
        assert set(statuses) == {201}, f"{dict(statuses)}; first refusals: {refused[:3]}"
        for token in tokens:
            numbers = sorted(body["chat_number"] for _, body in answers[token])
            assert numbers == list(range(1, BURST + 1)), f"{token}: not gap-free and unique: {numbers}"

        # Everything stored, then a real loss: every key of this namespace's Redis is gone.
        probe = tokens[0]
        wait_for(
            lambda: requests.get(f"{system.base_url}/applications/{probe}/chats/{BURST}", timeout=5).status_code == 200,
            60,
            what="the burst's chats stored",
        )
        ns.flush_redis()
        first = requests.post(f"{system.base_url}/applications/{probe}/chats", json={"name": "after"}, timeout=30)
        assert (first.status_code, first.json()) == (503, {"error": RECOVERING}), first.text
        assert first.headers.get("Retry-After") == "1"
        answered: list[requests.Response] = []

        def reopened() -> bool:
            resp = requests.post(f"{system.base_url}/applications/{probe}/chats", json={"name": "after"}, timeout=30)
            answered.append(resp)
            return resp.status_code == 201

        wait_for(reopened, 60, interval=0.5, what="numbering re-opened after the wipe")
        assert all(resp.json() == {"error": RECOVERING} for resp in answered[:-1]), [r.text for r in answered]
        assert answered[-1].json()["chat_number"] == BURST + 1  # numbering went on from MySQL, never from 1 again
    finally:
        system.stop()
        ns.destroy()
