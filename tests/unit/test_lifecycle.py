"""The process lifecycle starts numbering recovery's watchdog (handed to it by the wiring, not found on the service)."""

from __future__ import annotations

import asyncio
import contextlib

from chat_api.app import Lifecycle
from chat_api.resources.health import ProcessState
from tests.unit.fakes import build


async def test_startup_runs_the_numbering_watchdog():
    service, _ = build()
    watched = asyncio.Event()

    async def watchdog() -> None:
        watched.set()
        await asyncio.Event().wait()  # runs until cancelled, like NumberingRecovery.watch

    lifecycle = Lifecycle(service, [], None, ProcessState(), numbering_watchdog=watchdog)  # type: ignore[arg-type]
    await lifecycle.process_startup({}, {})
    try:
        await asyncio.wait_for(watched.wait(), 1)
        assert "numbering-watchdog" in {task.get_name() for task in lifecycle._tasks}
    finally:
        for task in lifecycle._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
