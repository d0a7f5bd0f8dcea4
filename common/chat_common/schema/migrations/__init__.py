"""Alembic environment and revisions for the chat-system schema."""
