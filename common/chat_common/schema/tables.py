"""The tables of the product, as SQLAlchemy Core metadata (the migrations create the same shape).

Why each index exists is written down in docs/schema.md.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    func,
    select,
)
from sqlalchemy.dialects import mysql

from chat_common.validation import NAME_MAX_CHARS

metadata = MetaData()

TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    # unicode_520 tells supplementary characters (emoji) apart, unlike general_ci, and exists on MySQL 8 and MariaDB.
    "mysql_collate": "utf8mb4_unicode_520_ci",
}

Id = BigInteger().with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb")
Number = Integer().with_variant(mysql.INTEGER(unsigned=True), "mysql", "mariadb")
# Tokens are case-sensitive base64url: a case-insensitive collation would make distinct tokens collide.
TokenType = String(64).with_variant(mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), "mysql", "mariadb")
KeyType = String(128).with_variant(mysql.VARCHAR(128, charset="ascii", collation="ascii_bin"), "mysql", "mariadb")
SealedType = String(128).with_variant(mysql.VARCHAR(128, charset="ascii", collation="ascii_bin"), "mysql", "mariadb")
FingerprintType = String(32).with_variant(mysql.VARCHAR(32, charset="ascii", collation="ascii_bin"), "mysql", "mariadb")
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BodyType = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _timestamps() -> list[Column]:
    return [
        Column("created_at", Timestamp, nullable=False, server_default=func.now(6)),
        Column("updated_at", Timestamp, nullable=False, server_default=func.now(6)),
    ]


applications = Table(
    "applications",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Tokens at rest (migration 0006, chat_common.tenancy.tokens): looked up by SHA-256 digest; the plaintext column is
    # NULL once the rollout's last step has erased it; the sealed copy (AES-GCM, key outside the database) serves the
    # few operations that must show a token again.
    Column("token", TokenType, nullable=True),
    Column("token_digest", TokenType, nullable=True),
    Column("token_sealed", SealedType, nullable=True),
    Column("name", String(NAME_MAX_CHARS), nullable=False),
    # REST keys are stored scoped to their caller ("api:<digest>"), the operator's as "k8s:<uid>" (docs/security.md).
    Column("idempotency_key", KeyType, nullable=True),
    Column("chats_count", Number, nullable=False, server_default="0"),
    *_timestamps(),
    # Tenant management (migration 0003). A suspended application keeps its data; its token answers 403.
    Column("suspended", Boolean, nullable=False, server_default="0"),
    # After a rotation the former token keeps working until previous_token_expires_at (then 404).
    Column("previous_token", TokenType, nullable=True),
    Column("previous_token_digest", TokenType, nullable=True),
    Column("previous_token_sealed", SealedType, nullable=True),
    Column("previous_token_expires_at", Timestamp, nullable=True),
    Column("token_rotated_at", Timestamp, nullable=True),
    # Rotations so far: the operator rotates while spec.rotateToken is above it (idempotent across retries).
    Column("token_generation", Number, nullable=False, server_default="0"),
    # Per-tenant limits; NULL = the deployment's default (RATE_LIMIT_PER_SECOND) or none.
    Column("requests_per_second", Number, nullable=True),
    Column("max_chats", Number, nullable=True),
    Column("max_message_bytes", Number, nullable=True),
    # Origins allowed by CORS on its stream and ticket routes, comma-separated (migration 0007); NULL = the
    # deployment's CORS_ALLOWED_ORIGINS.
    Column("cors_origins", Text, nullable=True),
    # Last create or edit, persisted from Redis when usage is read (the operator's refresh, the usage endpoint).
    Column("last_activity_at", Timestamp, nullable=True),
    # uid of the Application resource that manages it (set on creation and on adoption).
    Column("owner_uid", KeyType, nullable=True),
    # Digest of the request that created it with idempotency_key (migration 0005); NULL for the operator's keys.
    Column("idempotency_fingerprint", FingerprintType, nullable=True),
    UniqueConstraint("token", name="uq_applications_token"),
    UniqueConstraint("idempotency_key", name="uq_applications_idempotency_key"),
    UniqueConstraint("previous_token", name="uq_applications_previous_token"),
    UniqueConstraint("token_digest", name="uq_applications_token_digest"),
    UniqueConstraint("previous_token_digest", name="uq_applications_previous_token_digest"),
    **TABLE_OPTIONS,
)

chats = Table(
    "chats",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("application_id", Id, ForeignKey("applications.id", ondelete="CASCADE"), nullable=False),
    Column("number", Number, nullable=False),
    Column("name", String(NAME_MAX_CHARS), nullable=False),
    Column("messages_count", Number, nullable=False, server_default="0"),
    # Microsecond stamp of the write that set `name`; older writes never overwrite newer ones.
    Column("version", BigInteger, nullable=False, server_default="0"),
    *_timestamps(),
    UniqueConstraint("application_id", "number", name="uq_chats_application_number"),
    **TABLE_OPTIONS,
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # The tenant's key on every row (migration 0004): each query names it first, so the table can shard by
    # application (Vitess: a hash vindex on application_id) and no query needs a join to find its tenant.
    Column("application_id", Id, ForeignKey("applications.id", ondelete="CASCADE"), nullable=False),
    Column("chat_id", Id, nullable=False),
    Column("number", Number, nullable=False),
    Column("body", BodyType, nullable=False),
    Column("version", BigInteger, nullable=False, server_default="0"),
    *_timestamps(),
    UniqueConstraint("application_id", "chat_id", "number", name="uq_messages_application_chat_number"),
    **TABLE_OPTIONS,
)

# A chat with its messages, the tenant's key first: a join that walks uq_messages_application_chat_number.
chat_messages = chats.join(
    messages, and_(messages.c.application_id == chats.c.application_id, messages.c.chat_id == chats.c.id)
)


def in_chat(application_id, chat_number) -> list:
    """WHERE clauses for the messages of one chat (values or bind parameters): the application, then the chat's row
    id as a scalar subquery — both constants to the optimizer, so a range of uq_messages_application_chat_number is
    read in number order and ``ORDER BY number LIMIT n`` stops after n rows. (Joined to ``chats`` instead, MariaDB
    10.11 sorts every message of the chat first: 22 ms instead of 0.3 ms for a page of a 100k-message chat.)"""
    chat_id = select(chats.c.id).where(chats.c.application_id == application_id, chats.c.number == chat_number)
    return [messages.c.application_id == application_id, messages.c.chat_id == chat_id.scalar_subquery()]


Index("ix_applications_created_at", applications.c.created_at)
Index("ix_applications_owner_uid", applications.c.owner_uid)

# What a create with an Idempotency-Key was given, written by the writers beside the row (migration 0002).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("application_id", Id, ForeignKey("applications.id", ondelete="CASCADE"), primary_key=True),
    Column("chat_number", Number, primary_key=True),  # 0 for chat creates
    Column("idempotency_key", KeyType, primary_key=True),
    Column("number", Number, nullable=False),
    Column("fingerprint", String(32), nullable=False),
    Column("created_at", Timestamp, nullable=False, server_default=func.now(6)),
    **TABLE_OPTIONS,
)
Index("ix_idempotency_keys_created_at", idempotency_keys.c.created_at)

# Durable facts about the deployment, by name (``numbering_opened``: numbering has handed out numbers).
system_markers = Table(
    "system_markers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("created_at", Timestamp, nullable=False, server_default=func.now(6)),
    **TABLE_OPTIONS,
)

# The tenant's event log (migration 0008, chat_common.wire.events): one row per create or edit a writer applied,
# written in the upsert's own transaction. No body: the log points at the row, whose current state the API joins in.
events = Table(
    "events",
    metadata,
    # Not an AUTO_INCREMENT: handed out by event_sequence in commit order, gap-free (chat_common.wire.events); an
    # insert without an id fails.
    Column("id", Id, primary_key=True, autoincrement=False),
    # No foreign key: its check costs every inserted row a lookup (and a shared lock) in applications, measured at a
    # sixth of the insert; an application's deletion removes its events in batches (tenancy.applications). A writer's
    # batch committed during a deletion may leave a few behind: the retention window prunes them.
    Column("application_id", Id, nullable=False),
    Column("chat_number", Number, nullable=False),
    Column("message_number", Number, nullable=False),  # 0 for a chat's events
    Column("version", BigInteger, nullable=False),  # 0: created; else the edit's version
    # The insert's NOW(6), from the server's clock (the writers never send it: see chat_common.wire.events).
    Column("committed_at", Timestamp, nullable=False, server_default=func.now(6)),
    # One event per change: a redelivered batch finds its events here and adds none (the tenant's pages use
    # ix_events_application_id below).
    UniqueConstraint("application_id", "chat_number", "message_number", "version", name="uq_events_change"),
    **TABLE_OPTIONS,
)
# The tenant's page walks (application_id, id) in id order from the cursor; an application's deletion uses it too.
Index("ix_events_application_id", events.c.application_id, events.c.id)

# The event log's id sequence: one row (id 1, seeded by migration 0008), ``last_id`` the last event id handed out. A
# writer's batch moves it as its transaction's last update, so its lock serializes the allocation-to-commit windows.
event_sequence = Table(
    "event_sequence",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_id", Id, nullable=False),
    **TABLE_OPTIONS,
)


# Tenants' webhook endpoints (migration 0009, chat_common.tenancy.webhooks; delivered by services/webhook-dispatcher).
def _ascii(length: int):
    """A case-sensitive ASCII string column type (URLs, names, sealed values)."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )


webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("application_id", Id, ForeignKey("applications.id", ondelete="CASCADE"), nullable=False),
    Column("name", _ascii(63), nullable=False),  # unique per application; the operator's is the spec entry's name
    Column("url", _ascii(2048), nullable=False),  # https://… (or http:// where the deployment allows it), IDNA-encoded
    Column("event_types", _ascii(255), nullable=False),  # comma-separated subset of chat_common.wire.events.EVENT_TYPES
    # The signing secret (``whsec_<base64>``), sealed (AES-GCM, TOKEN_SEALING_KEY); the one it replaced keeps signing
    # beside it until previous_secret_expires_at, so receivers can switch without dropping deliveries.
    Column("secret_sealed", _ascii(255), nullable=False),
    Column("previous_secret_sealed", _ascii(255), nullable=True),
    Column("previous_secret_expires_at", Timestamp, nullable=True),
    Column("managed_by", _ascii(8), nullable=False, server_default="api"),  # "api" (admin REST) or "k8s" (operator)
    Column("enabled", Boolean, nullable=False, server_default="1"),  # what its manager wants
    # What the dispatcher found: healthy, failing (since failing_since) or disabled (410, or failing too long).
    Column("state", _ascii(16), nullable=False, server_default="healthy"),
    Column("failing_since", Timestamp, nullable=True),
    Column("disabled_at", Timestamp, nullable=True),
    Column("disabled_reason", String(255), nullable=True),
    Column("last_success_at", Timestamp, nullable=True),
    Column("last_failure_at", Timestamp, nullable=True),
    Column("last_error", String(255), nullable=True),
    # Its place in the event log: every event of the application up to here is delivered, given up, or held.
    Column("position", Id, nullable=False, server_default="0"),
    # The dispatcher process delivering it, until lease_until (renewed while it lives; another takes over after).
    Column("lease_owner", _ascii(64), nullable=True),
    Column("lease_until", Timestamp, nullable=True),
    *_timestamps(),
    UniqueConstraint("application_id", "name", name="uq_webhook_endpoints_application_name"),
    **TABLE_OPTIONS,
)

# Deliveries held back: a chat's event whose delivery failed (retried at next_attempt_at) and the same chat's later
# events behind it (attempts 0), so a chat's events reach the endpoint in order while its other chats go on.
webhook_held = Table(
    "webhook_held",
    metadata,
    Column("application_id", Id, primary_key=True),  # the tenant's key first, as on every table of tenant data
    Column("endpoint_id", Id, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), primary_key=True),
    Column("event_id", Id, primary_key=True, autoincrement=False),
    Column("chat_number", Number, nullable=False),
    Column("attempts", Number, nullable=False, server_default="0"),
    Column("next_attempt_at", Timestamp, nullable=False, server_default=func.now(6)),
    Column("first_failed_at", Timestamp, nullable=True),
    **TABLE_OPTIONS,
)
# A chat's held events in order: the head is the one to retry, the rest wait behind it.
Index("ix_webhook_held_chat", webhook_held.c.endpoint_id, webhook_held.c.chat_number, webhook_held.c.event_id)
