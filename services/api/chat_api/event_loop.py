"""The guard against blocking calls on the event loop.

Everything a worker does runs on one asyncio loop: a call that blocks it (a synchronous driver, a sleep, a
heavy computation) stalls every request of the process. With ``API_SLOW_CALLBACK_MS`` set, the loop runs in
asyncio's debug mode, which times every callback and task step; a step longer than the threshold is logged as
an error naming the coroutine and counted in ``chat_api_event_loop_blocked_total``. The tests run the API with
the guard on and fail on any such report. Debug mode costs CPU, so production leaves it off.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

BLOCKED = Counter("chat_api_event_loop_blocked_total", "Loop steps longer than API_SLOW_CALLBACK_MS (debug only)")
BLOCKED_MESSAGE = "event loop blocked"

log = logging.getLogger(__name__)


class _SlowCallbackReporter(logging.Filter):
    """Turns asyncio's "Executing … took N seconds" warnings into one error line and a counted metric."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name == "asyncio" and message.startswith("Executing ") and " took " in message:
            BLOCKED.inc()
            log.error("%s: %s", BLOCKED_MESSAGE, message)
            return False
        return True


def install_blocking_guard(loop: asyncio.AbstractEventLoop, threshold_ms: float) -> None:
    """Report every loop step longer than ``threshold_ms`` (0 = off)."""
    if threshold_ms <= 0:
        return
    loop.set_debug(True)
    loop.slow_callback_duration = threshold_ms / 1000
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _SlowCallbackReporter) for f in asyncio_log.filters):
        asyncio_log.addFilter(_SlowCallbackReporter())
    log.warning("event-loop guard on: steps over %.0f ms are reported (debug mode, slower)", threshold_ms)
