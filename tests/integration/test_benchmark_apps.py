"""The benchmarks' baseline app boots and writes its rows, as ``make bench`` starts it (so a refactoring of the API
breaks this test, not the next benchmark run)."""

import requests
import sqlalchemy as sa

from benchmarks.system import PeakMemory, Stack
from chat_common.clients.db import make_engine
from chat_devtools.http import wait_for
from tests.conftest import LOG_ROOT


def test_the_naive_baseline_answers_a_create_with_its_row_already_written(fresh_namespace):
    stack = Stack(fresh_namespace, LOG_ROOT / fresh_namespace.name / "naive", PeakMemory(),
                  workers=1, app="benchmarks.apps:naive_app()")  # fmt: skip
    stack.start_api()
    try:
        url = stack.base_url
        token = requests.post(f"{url}/applications", json={"name": "naive"}, timeout=15).json()["token"]
        chat = requests.post(f"{url}/applications/{token}/chats", json={"name": "c"}, timeout=15).json()["chat_number"]
        wait_for(lambda: requests.get(f"{url}/applications/{token}/chats/{chat}", timeout=15).ok, 15, what="chat row")
        resp = requests.post(f"{url}/applications/{token}/chats/{chat}/messages", json={"body": "b"}, timeout=15)
        assert resp.status_code == 201
        engine = make_engine(fresh_namespace.settings.database_url)
        with engine.connect() as conn:  # written before the answer: no writer runs here
            assert conn.execute(sa.text("SELECT body FROM messages")).scalars().all() == ["b"]
        engine.dispose()
    finally:
        stack.system.stop()
