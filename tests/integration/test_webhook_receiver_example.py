"""The README's receiver (examples/webhook-receiver/receiver.py) against the real dispatcher: it verifies every
delivery with the Standard Webhooks library, handles each event once, and answers 401 to a forged one."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from chat_devtools.ports import free_port
from tests.integration.test_event_log import Writers
from tests.integration.webhook_kit import InProcessDispatcher, add_endpoint, event_ids, test_config, wait_until
from webhook_dispatcher.signing import new_secret, signed_headers

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webhook-receiver" / "receiver.py"


class ExampleReceiver:
    """The example as its README runs it, its printed lines collected."""

    def __init__(self, secret: str) -> None:
        self.port = free_port()
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), str(self.port)],
            env={"WEBHOOK_SECRET": secret, "PATH": ""},
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(lambda: any("listening" in line for line in self.lines), 10, "the example listening")

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.strip())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def writers(fresh_namespace) -> Iterator[Writers]:
    w = Writers(fresh_namespace)
    yield w
    w.close()


def test_the_readme_receiver_verifies_and_handles_every_event_once(writers, fresh_namespace):
    secret = new_secret()
    receiver = ExampleReceiver(secret)
    dispatcher = InProcessDispatcher(test_config(fresh_namespace))
    try:
        app = writers.new_application()
        add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url, secret=secret)
        writers.chats(writers.deliveries(ChatUpsert(app, 1, "support")))
        writers.messages(writers.deliveries(*(MessageUpsert(app, 1, m, f"hello {m}") for m in range(1, 4))))
        expected = event_ids(writers.engine, app)
        handled = lambda: [line for line in receiver.lines if "created" in line]  # noqa: E731
        wait_until(lambda: len(handled()) >= len(expected), 20, "every event handled by the example")
        assert handled() == [
            'chat.created chat 1: {"chat_number": 1, "name": "support", "messages_count": 0}',
            *(f'message.created chat 1 message {m}: {{"message_number": {m}, "body": "hello {m}"}}' for m in (1, 2, 3)),
        ]
        # A forged delivery (signed with another secret) is refused and never handled.
        body = b'{"type": "chat.created", "data": {}}'
        forged = requests.post(
            receiver.url, data=body, headers=signed_headers([new_secret()], "evt_1", int(time.time()), body)
        )
        assert forged.status_code == 401
        # A repeated one (same webhook-id, as after a crash) is answered and not handled again.
        first = f"evt_{expected[0][0]}"
        again = requests.post(receiver.url, data=body, headers=signed_headers([secret], first, int(time.time()), body))
        assert again.status_code == 204
        time.sleep(0.5)
        assert len(handled()) == len(expected)
    finally:
        dispatcher.stop()
        receiver.stop()
