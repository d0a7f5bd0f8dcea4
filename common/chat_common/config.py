"""Settings read once from the environment, with defaults that match a local developer machine."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from chat_common.validation import BODY_MAX_CHARS, NAME_MAX_CHARS, QUERY_MAX_CHARS


def _env_str(name: str, default: str | None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if not value else int(value)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if not value else float(value)


@dataclass(frozen=True)
class Settings:
    """Every knob of the system. Build it with :meth:`from_env`; pass it down, never re-read the environment."""

    database_url: str = "mysql+pymysql://root@127.0.0.1:3306/chat_system?charset=utf8mb4"
    # A read replica of database_url (optional): the API's pages and embedded search read from it while it
    # replicates at most database_read_max_lag_seconds behind (chat_api.adapters.replica); everything else, and
    # every read of a tenant that edited more recently than the replica may lag, stays on the primary.
    database_read_url: str | None = None
    # The migrations' own user (DDL rights; chat_common.ops.grants), when DATABASE_URL's user may only read and write
    # rows.
    database_migrations_url: str | None = field(default=None, repr=False)
    database_read_max_lag_seconds: float = 5.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    # PEM file of the CA that signed the brokers' certificates, for amqps:// URLs (unset: the system's CA store).
    rabbitmq_ca_file: str | None = None
    elasticsearch_url: str | None = None
    # PEM file of the CA that signed Elasticsearch's certificate, for https:// URLs (unset: the system's CA store).
    elasticsearch_ca_file: str | None = None
    admin_api_key: str | None = field(default=None, repr=False)
    # AES-256-GCM key (base64url, 32 bytes) of the sealed token copies (chat_common.tenancy.tokens): never in the
    # database.
    token_sealing_key: str | None = field(default=None, repr=False)
    # The same for the webhook endpoints' signing secrets (chat_common.tenancy.webhooks): a key of its own, so the
    # webhook dispatcher, which must open those, holds no key to the tenants' tokens.
    webhook_sealing_key: str | None = field(default=None, repr=False)
    # Namespaces, so that tests, benchmarks and `make run` can share one Redis and one broker.
    redis_key_prefix: str = "chat:"
    queue_prefix: str = "chat_system"
    # RabbitMQ queue type: quorum (replicated, the default) or classic (one node); see chat_common.wire.topology.
    queue_type: str = "quorum"
    search_index: str = "chat_system_messages"  # an alias; the index behind it is versioned for rebuilds
    search_shards: int = 1
    search_replicas: int = 1
    # Limits of the public API.
    max_request_bytes: int = 64 * 1024
    max_name_chars: int = NAME_MAX_CHARS
    max_body_chars: int = BODY_MAX_CHARS
    max_query_chars: int = QUERY_MAX_CHARS
    default_page_size: int = 20
    max_page_size: int = 100
    # Server-side time limit of each read the API runs on MySQL (pages, lookups, the embedded search); a read stopped
    # by it answers 503 with Retry-After. 0 disables.
    read_statement_timeout_seconds: float = 1.0
    # Each application's share of search time (chat_api.adapters.search_budget): on average this many seconds of
    # search per second (0.1: a tenth of a database core), in bursts of up to search_burst_seconds; beyond it 429.
    # 0 disables.
    search_seconds_per_second: float = 0.1
    search_burst_seconds: float = 2.0
    rate_limit_per_second: int = 0  # per application (all its tokens); 0 disables; a tenant's own limit overrides
    # Tenant directory of each API process: token -> application, suspension, limits; entries at most this old.
    tenant_cache_seconds: float = 2.0
    tenant_cache_size: int = 10_000
    # Unknown tokens: remembered apart (a flood never evicts a tenant) for this long, and looked up in MySQL at most
    # this often per process and second while strangers flood it (0: no budget); see chat_api.adapters.tenants.
    tenant_negative_cache_seconds: float = 30.0
    tenant_negative_cache_size: int = 100_000
    tenant_unknown_lookups_per_second: float = 100.0
    # While MySQL is unreachable, a cached tenant is served at most this long after MySQL last confirmed it (then
    # 503): the bound on how long a suspension or a rotation can go unenforced during an outage.
    tenant_stale_seconds: float = 30.0
    # API processes (replicas x workers) sharing a tenant's limit while Redis is down: each counts limit / this.
    rate_limit_fallback_processes: int = 1
    # Hand-off to RabbitMQ.
    publish_timeout_seconds: float = 5.0
    # Coalescing (chat_common.wire.bundles): the creates and edits for one queue that are ready in the same event-loop
    # turn of an API worker travel as one AMQP message (one confirm, one Raft entry, one delivery). Turn it on only
    # once every writer reads bundles (rolling upgrade: writers first). The wait lets a bundle gather for up to this
    # many milliseconds more; 0 (the default) sends at the end of the loop turn and adds no latency.
    publish_coalesce: bool = True
    publish_coalesce_wait_ms: float = 0.0
    # Bound on one numbering round trip to Redis (connecting included), after which a create answers 503.
    redis_timeout_seconds: float = 2.0
    # Replicas that must hold a number (Redis WAIT) before it is handed out: 0 on a single node; 1 with Sentinel
    # or Cluster, so that a failover never loses a number already answered. Fewer acks in time -> 503.
    redis_replicas_to_ack: int = 0
    redis_replica_ack_timeout_ms: int = 500
    # HTTP limits of each API process (chat_api.protocol): request line + headers at most this many bytes and
    # headers (431), received within this time of the connection or the request's first byte (408); at most this
    # many open connections (503 with Retry-After, before anything is read; live streams count); idle kept-alive
    # connections closed after API_KEEPALIVE_SECONDS (keep it above a proxy's upstream keep-alive idle timeout).
    api_max_header_bytes: int = 16 * 1024
    api_max_headers: int = 100
    api_header_timeout_seconds: float = 10.0
    api_max_connections: int = 5_000
    api_keepalive_seconds: int = 30
    # API event loop: report any loop step longer than this (asyncio debug mode; tests only). 0 = off.
    api_slow_callback_ms: float = 0.0
    # Live message streams (SSE, chat_api.streams): limits per API process, heartbeat, client retry hint, buffer
    # per stream (a slower client is cut off and resumes), and how long a missing message number is waited for.
    # One tenant may hold a fortieth of a process's streams: every message it creates is written to each of them, so
    # streams x rate limit is what it may ask of the process (100 x 200/s = 20,000 frames/s). The process cap stays
    # below API_MAX_CONNECTIONS so requests still find room. Over the tenant's share: 429; the process full: 503.
    stream_max_per_process: int = 4_000
    stream_max_per_tenant: int = 100
    stream_heartbeat_seconds: float = 15.0
    stream_retry_ms: int = 3_000
    stream_buffer_bytes: int = 256 * 1024
    stream_gap_seconds: float = 10.0
    # Stream tickets (chat_api.use_cases.tickets): the HMAC keys, comma-separated, each >= 32 characters (the first
    # signs, all verify: rotate by putting a new one first); unset, no tickets are minted (503). How long a ticket
    # opens streams. Origins allowed by CORS on the ticket and stream routes (comma-separated; a tenant's own list,
    # when set, replaces it).
    stream_ticket_keys: str | None = None
    stream_ticket_seconds: int = 300
    cors_allowed_origins: str | None = None
    # Writers.
    writer_batch_size: int = 500
    writer_max_wait_seconds: float = 0.2
    writer_retry_delays_seconds: tuple[int, ...] = (1, 5, 30)
    writer_max_attempts: int = 40
    # Messages a writer holds per retry tier while they wait to be due (chat_common.writing.retry_tiers).
    writer_retry_prefetch: int = 1000
    # A retry-tier message held this long past its due time, or a tier with messages and no writer draining it,
    # shows as overdue on the API's /status (the chart's ChatRetryTierOverdue alert has its own threshold).
    retry_overdue_margin_seconds: float = 30.0
    # Test-only fault injection, off (0) by default: the writers send this fraction of first and second attempts to
    # the retry tiers instead of applying them, as if their chat were not written yet (tests/cluster).
    test_fault_writer_retry_ratio: float = 0.0
    metrics_port: int = 0  # writers and the operator serve /metrics here when non-zero
    # Count sync.
    counts_batch_size: int = 1000
    # The tenants' event log (chat_common.wire.events): events are kept this long (the count sync prunes older ones,
    # event_prune_chunk rows per transaction); a cursor from before the window answers 410.
    event_retention_seconds: int = 7 * 24 * 3600
    event_prune_chunk: int = 5000
    pushgateway_url: str | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read every setting from its upper-case environment variable (e.g. ``DATABASE_URL``)."""
        values: dict[str, object] = {}
        for f in fields(cls):
            env_name = f.name.upper()
            default = f.default
            if f.name == "writer_retry_delays_seconds":
                raw = os.environ.get(env_name)
                values[f.name] = tuple(int(x) for x in raw.split(",")) if raw else default
            elif isinstance(default, bool):
                values[f.name] = os.environ.get(env_name, str(default)).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                values[f.name] = _env_int(env_name, default)
            elif isinstance(default, float):
                values[f.name] = _env_float(env_name, default)
            else:
                values[f.name] = _env_str(env_name, default)  # type: ignore[arg-type]
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
