"""The operator's own settings; everything the services share comes from :class:`chat_common.config.Settings`."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from chat_common.config import Settings

LOG_FORMAT_ALIASES = {"plain": "text"}


class ConfigError(ValueError):
    """The environment does not describe a runnable operator."""


@dataclass(frozen=True)
class OperatorConfig:
    """Knobs of the operator process, read once from the environment at start."""

    settings: Settings
    api_internal_url: str
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    metrics_port: int = 0  # as everywhere: 0 = no /metrics listener (the chart sets 9090)
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    refresh_seconds: float = 60.0
    peering_name: str = "chat-system"
    priority: int = 1
    log_format: str = "text"  # as everywhere: text or json (the chart sets json)
    workers: int = 4
    # spec.existingToken adopts a tenant only when the deployment allows it (ALLOW_ADOPTION, chart value
    # operator.allowAdoption): whoever can create Applications would otherwise take over any tenant whose token
    # they hold, and receive every future token of it in their Secret.
    allow_adoption: bool = False

    @property
    def clusterwide(self) -> bool:
        """Whether the operator watches every namespace (and peers through a ClusterKopfPeering)."""
        return not self.namespaces

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read ``API_INTERNAL_URL``, ``WATCH_NAMESPACES`` and the operator knobs; fail early on nonsense."""
        env = os.environ if environ is None else environ
        api_url = env.get("API_INTERNAL_URL", "").strip()
        if not api_url.startswith(("http://", "https://")):
            raise ConfigError("API_INTERNAL_URL must be the API's in-cluster URL, e.g. http://chat-system-api:8080")
        namespaces = tuple(n.strip() for n in env.get("WATCH_NAMESPACES", "").split(",") if n.strip())
        # LOG_FORMAT means what it means in every service: text (the default) or json. "plain", the operator's
        # former word for text, is still accepted.
        log_format = LOG_FORMAT_ALIASES.get(raw := (env.get("LOG_FORMAT") or "text").lower(), raw)
        if log_format not in ("text", "json"):
            raise ConfigError("LOG_FORMAT must be text or json")
        refresh = float(env.get("STATUS_REFRESH_SECONDS") or 60)
        if refresh < 5:
            raise ConfigError("STATUS_REFRESH_SECONDS must be at least 5")
        # Replicas need distinct peering priorities: kopf freezes every operator that sees a peer of equal
        # priority. The active replica is the one with the highest; the others wait as hot standbys.
        priority = int(env.get("OPERATOR_PRIORITY") or 1 + secrets.randbelow(1_000_000))
        adoption = (env.get("ALLOW_ADOPTION") or "false").strip().lower()
        if adoption not in ("true", "false"):
            raise ConfigError("ALLOW_ADOPTION must be true or false")
        return cls(
            settings=Settings.from_env(),
            api_internal_url=api_url.rstrip("/"),
            namespaces=namespaces,
            metrics_port=int(env.get("METRICS_PORT") or cls.metrics_port),
            liveness_endpoint=env.get("LIVENESS_ENDPOINT") or cls.liveness_endpoint,
            refresh_seconds=refresh,
            peering_name=env.get("PEERING_NAME") or cls.peering_name,
            priority=priority,
            log_format=log_format,
            workers=int(env.get("OPERATOR_WORKERS") or 4),
            allow_adoption=adoption == "true",
        )
