"""What travels between processes, and where: queue message contracts, queues and exchanges, Redis keys,
announcements, writer heartbeats, idempotency keys and the rules for the text clients send."""
