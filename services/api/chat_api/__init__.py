"""The chat-system REST API (Falcon, served by gunicorn)."""
