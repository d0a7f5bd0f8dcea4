"""The one guard around every callback the API hands to pika (publisher confirms, stream announcements).

pika calls these from inside its I/O handling; an exception escaping one would leave its connection state half
updated. The guard logs it and lets the owner drop the connection (``callback_failed``): it reconnects from scratch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

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
