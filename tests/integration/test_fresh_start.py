"""A brand-new deployment takes writes as soon as it says it is ready: nothing was ever numbered, so there is
nothing to recover (the durable marker tells a new system from one whose Redis lost its data)."""

from __future__ import annotations

import time

import requests
from sqlalchemy import text

from chat_common.db import make_engine
from chat_devtools.results import Results
from tests.conftest import LOG_ROOT
from tests.support.namespace import Namespace
from tests.support.processes import System


def test_the_first_create_after_ready_is_accepted():
    results = Results("fresh_start")
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
        results.save()
        system.stop()
        ns.destroy()
