"""Write chats and messages straight into the tables (as the writers would), and read what is left."""

from __future__ import annotations

import redis
from sqlalchemy import Engine, func, select

from chat_common.schema.tables import applications, chats, messages
from chat_common.wire.keys import RedisKeys


def add_chats(engine: Engine, client: redis.Redis, keys: RedisKeys, application_id: int, per_chat: list[int]) -> None:
    """One chat per entry of ``per_chat`` with that many messages; marks them dirty like the writers do."""
    with engine.begin() as conn:
        start = conn.execute(
            select(func.coalesce(func.max(chats.c.number), 0)).where(chats.c.application_id == application_id)
        ).scalar_one()
        for offset, count in enumerate(per_chat, start=1):
            chat_id = conn.execute(
                chats.insert().values(application_id=application_id, number=start + offset, name=f"chat {offset}")
            ).inserted_primary_key[0]
            if count:
                conn.execute(
                    messages.insert(),
                    [
                        {"application_id": application_id, "chat_id": chat_id, "number": n, "body": f"m{n}"}
                        for n in range(1, count + 1)
                    ],
                )
            client.sadd(keys.dirty_chats, chat_id)
    client.sadd(keys.dirty_applications, application_id)


def rows_of(engine: Engine, application_id: int) -> tuple[int, int, int]:
    """(applications, chats, messages) rows that still belong to an application id."""
    with engine.connect() as conn:
        n_apps = conn.execute(
            select(func.count()).select_from(applications).where(applications.c.id == application_id)
        ).scalar_one()
        n_chats = conn.execute(
            select(func.count()).select_from(chats).where(chats.c.application_id == application_id)
        ).scalar_one()
        n_messages = conn.execute(
            select(func.count()).select_from(messages).where(messages.c.application_id == application_id)
        ).scalar_one()
    return int(n_apps), int(n_chats), int(n_messages)
