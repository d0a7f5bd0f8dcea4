"""The two reference applications the benchmark serves under the API's own gunicorn configuration.

- ``bare_app()``: the framework ceiling. The same POST route answered by Falcon ASGI alone, under the same
  worker class as the API (``chat_api.worker.ApiWorker``: uvicorn on uvloop with httptools): read the JSON
  body, answer 201 with a number. No Redis, no broker, no middleware.
- ``naive_app()``: the design the queue replaces. The real API (same resources, validation, numbering in
  Redis) whose hand-off writes the row into MySQL inside the request instead of publishing it.

Started as ``gunicorn --config services/api/gunicorn.conf.py 'benchmarks.apps:bare_app()'``.
"""

from __future__ import annotations

import itertools

import falcon
import falcon.asgi
from sqlalchemy import text

from chat_api.adapters.database import Database
from chat_api.app import build_service, create_app
from chat_common.config import Settings
from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from chat_common.wire.topology import Topology


class _Hello:
    def __init__(self) -> None:
        self.numbers = itertools.count(1)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **_: object) -> None:
        await req.get_media()
        resp.status = falcon.HTTP_201
        resp.media = {"message_number": next(self.numbers)}


def bare_app() -> falcon.asgi.App:
    """Falcon ASGI alone: the same route shape, body parsed, 201 answered."""
    app = falcon.asgi.App()
    hello = _Hello()
    app.add_route("/applications/{token}/chats", hello)
    app.add_route("/applications/{token}/chats/{chat_number:int}/messages", hello)
    return app


INSERT_MESSAGE = text(
    "INSERT INTO messages (application_id, chat_id, number, body, version)"
    " SELECT application_id, id, :number, :body, :version FROM chats"
    " WHERE application_id = :application_id AND number = :chat_number"
)
INSERT_CHAT = text(
    "INSERT INTO chats (application_id, number, name, version) VALUES (:application_id, :chat_number, :name, :version)"
)


class InsertInRequest:
    """Stands where the publisher stands, but writes the row before the request answers (one commit each)."""

    def __init__(self, database_url: str, messages_queue: str) -> None:
        self.db = Database(database_url)  # the API's own pool: autocommit, so each INSERT commits by itself
        self.messages_queue = messages_queue
        self.is_ready = True

    async def start(self) -> None:
        """Nothing to open ahead: the pool connects on first use (the lifecycle calls this at ASGI startup)."""

    async def publish(self, queue: str, body: bytes, published_at: float) -> None:
        """Insert the row the message describes, in its own transaction, before answering (``published_at``, the
        numbering stamp a broker message carries, has no use here)."""
        upsert: MessageUpsert | ChatUpsert
        if queue == self.messages_queue:
            upsert = MessageUpsert.decode(body)
            statement, values = INSERT_MESSAGE, {"number": upsert.message_number, "body": upsert.body}
        else:
            upsert = ChatUpsert.decode(body)
            statement, values = INSERT_CHAT, {"name": upsert.name}
        values.update(application_id=upsert.application_id, chat_number=upsert.chat_number, version=upsert.version)
        await self.db.execute(statement, values)

    async def close(self) -> None:
        """Close the pool (ASGI shutdown)."""
        await self.db.close()


def naive_app() -> falcon.asgi.App:
    """The real API with the queue hand-off replaced by an INSERT inside the request.

    The lifecycle starts the stand-in publisher and the numbering watchdog, as it does for the real one.
    """
    settings = Settings.from_env()
    stand_in = InsertInRequest(settings.database_url, Topology.from_settings(settings).messages.name)
    service, readiness, lifecycle, streams = build_service(settings, publisher=stand_in)

    async def always_ready() -> bool:
        return True

    readiness["rabbitmq"] = always_ready
    return create_app(service, settings, readiness, lifecycle, streams)
