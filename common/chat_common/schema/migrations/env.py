"""Alembic environment: runs revisions online against the engine handed in by chat_common.ops.migrate."""

from alembic import context

from chat_common.schema.tables import metadata

connectable = context.config.attributes.get("connection")


def run_migrations_online() -> None:
    """Run with the connection the caller opened, so tests can migrate their own database."""
    context.configure(connection=connectable, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run `python -m chat_common.ops.migrate`")
run_migrations_online()
