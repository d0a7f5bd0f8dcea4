"""The one guard around every callback the API hands to pika (publisher confirms, stream announcements), and what
the API's two broker clients do alike with their connection.

pika calls these from inside its I/O handling; an exception escaping one would leave its connection state half
updated. The guard logs it and lets the owner drop the connection (``callback_failed``): it reconnects from scratch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel

log = logging.getLogger(__name__)


class ConnectionOwner(Protocol):
    """An object whose pika callbacks are guarded: it knows how to give up its connection."""

    def callback_failed(self) -> None:
        """A callback failed: drop the connection (the owner's reconnect logic takes over)."""


def guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """Keep exceptions out of pika: log them and drop the owner's connection instead."""

    @functools.wraps(callback)
    def wrapper(self: ConnectionOwner, *args: Any) -> None:
        try:
            callback(self, *args)
        except Exception:
            log.exception("%s callback %s failed; dropping the connection", type(self).__name__, callback.__name__)
            self.callback_failed()

    return wrapper


def close_if_open(connection: AsyncioConnection | None) -> None:
    """Close ``connection`` unless there is none or it is closed or closing already."""
    if connection is not None and not (connection.is_closing or connection.is_closed):
        connection.close()


class OneChannelClient:
    """A broker client with one connection at a time (a background task waits on ``_over`` while it lasts) and
    one channel on it, asked for as soon as the connection opens; ``_on_channel_open`` takes it from there."""

    _connection: AsyncioConnection | None
    _over: asyncio.Future[None] | None

    def callback_failed(self) -> None:
        """A callback failed: drop the connection (:class:`ConnectionOwner`)."""
        raise NotImplementedError

    def _on_channel_open(self, channel: Channel) -> None:
        raise NotImplementedError

    @guarded
    def _on_open(self, connection: AsyncioConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _end_wait(self) -> None:
        """The connection failed to open or closed: the task's wait for it ends."""
        if self._over is not None and not self._over.done():
            self._over.set_result(None)

    async def _close_connection(self, timeout: float) -> None:
        """Close the connection and wait up to ``timeout`` until it is over (the broker answers Connection.Close)."""
        close_if_open(self._connection)
        if self._over is not None and not self._over.done():
            await asyncio.wait([self._over], timeout=timeout)
