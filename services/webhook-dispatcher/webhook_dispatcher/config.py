"""The dispatcher's settings, read once from the environment (defaults in :class:`DispatcherConfig`).

==================================  =========================================================================
``DATABASE_URL``                    the primary (the dispatcher writes leases, positions and held deliveries)
``WEBHOOK_SEALING_KEY``             opens the endpoints' sealed signing secrets (required)
``WEBHOOK_DISPATCHER_PORT``         /healthz, /readyz and /metrics (default 9102; 0: none)
``WEBHOOK_LEASE_SECONDS``           how long a claimed endpoint stays this process's without renewal (15)
``WEBHOOK_POLL_INTERVAL_MS``        how often the log's head is read to wake the endpoints (100)
``WEBHOOK_RETRY_SCHEDULE``          seconds between attempts, comma-separated (Svix's: 5,300,1800,7200,…)
``WEBHOOK_TIMEOUT_SECONDS``         one delivery's time limit, connection to answer (10)
``WEBHOOK_MAX_RESPONSE_BYTES``      at most this much of an answer's body is read (65536)
``WEBHOOK_MAX_IN_FLIGHT``           deliveries under way per endpoint, and connections per host (16)
``WEBHOOK_DISABLE_AFTER_SECONDS``   an endpoint failing this long is disabled (432000: 5 days)
``WEBHOOK_PAGE_SIZE``               events read per page of the log (200)
``WEBHOOK_ALLOW_CIDRS`` …           the egress rule (``chat_common.webhooks.egress``)
==================================  =========================================================================
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from chat_common.config import Settings
from chat_common.webhooks.egress import EgressPolicy
from webhook_dispatcher.schedule import DEFAULT_SCHEDULE, parse_schedule


def _owner() -> str:
    """This process's name in ``lease_owner``: host, pid and a random part (a restarted pid is another owner)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class DispatcherConfig:
    """Everything the dispatcher is told (module docstring)."""

    database_url: str = Settings.database_url
    sealing_key: str | None = field(default=None, repr=False)
    port: int = 9102
    lease_seconds: float = 15.0
    poll_interval_seconds: float = 0.1
    retry_schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    timeout_seconds: float = 10.0
    max_response_bytes: int = 65536
    max_in_flight: int = 16
    disable_after_seconds: float = 5 * 86400.0
    page_size: int = 200
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    owner: str = field(default_factory=_owner)

    @property
    def renew_seconds(self) -> float:
        """How often leases are renewed (and new endpoints claimed): a third of the lease."""
        return max(0.2, self.lease_seconds / 3)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DispatcherConfig:
        """The settings from the environment (module docstring)."""
        env = os.environ if environ is None else environ
        number = lambda name, default: float(env.get(name) or default)  # noqa: E731
        return cls(
            database_url=env.get("DATABASE_URL") or Settings.database_url,
            sealing_key=env.get("WEBHOOK_SEALING_KEY") or None,
            port=int(number("WEBHOOK_DISPATCHER_PORT", 9102)),
            lease_seconds=number("WEBHOOK_LEASE_SECONDS", 15),
            poll_interval_seconds=number("WEBHOOK_POLL_INTERVAL_MS", 100) / 1000,
            retry_schedule=parse_schedule(env.get("WEBHOOK_RETRY_SCHEDULE")),
            timeout_seconds=number("WEBHOOK_TIMEOUT_SECONDS", 10),
            max_response_bytes=int(number("WEBHOOK_MAX_RESPONSE_BYTES", 65536)),
            max_in_flight=max(1, int(number("WEBHOOK_MAX_IN_FLIGHT", 16))),
            disable_after_seconds=number("WEBHOOK_DISABLE_AFTER_SECONDS", 5 * 86400),
            page_size=max(1, int(number("WEBHOOK_PAGE_SIZE", 200))),
            egress=EgressPolicy.from_env(dict(env)),
        )
