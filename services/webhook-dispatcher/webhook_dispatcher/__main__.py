"""`python -m webhook_dispatcher`: deliver the tenants' event log to their webhook endpoints until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import uvloop

from chat_common.clients.db import make_engine
from chat_common.tenancy.tokens import TokenSealer
from webhook_dispatcher.config import DispatcherConfig
from webhook_dispatcher.leases import Dispatcher
from webhook_dispatcher.probes import serve_probes
from webhook_dispatcher.store import Store

log = logging.getLogger("webhook_dispatcher")

DB_THREADS = 8  # blocking database calls run on this many threads (and as many pooled connections)


async def main(config: DispatcherConfig) -> None:
    """Run the dispatcher until SIGTERM or SIGINT; leases are given back on the way out."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    engine = make_engine(config.database_url, pool_size=DB_THREADS, read_timeout=30)
    executor = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="webhook-db")
    dispatcher = Dispatcher(config, Store(engine, config.owner), TokenSealer.from_key(config.sealing_key), executor)
    probes = await serve_probes(config.port, dispatcher.ready)
    log.info(
        "webhook dispatcher %s started (lease %g s, probes on :%d)", config.owner, config.lease_seconds, config.port
    )
    try:
        await dispatcher.run(stop)
    finally:
        if probes is not None:
            await probes.cleanup()
        executor.shutdown(wait=True)
        engine.dispose()
        log.info("webhook dispatcher %s stopped", config.owner)


def run() -> None:
    """Read the configuration, check it, and run."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    config = DispatcherConfig.from_env()
    if not config.sealing_key:
        log.error("WEBHOOK_SEALING_KEY is required: the endpoints' signing secrets are sealed with it")
        sys.exit(2)
    # uvloop, as the API: the loop's own overhead is a large share of a delivery (an HTTP round trip per event).
    uvloop.run(main(config))


if __name__ == "__main__":
    run()
