"""Connections to the system's stores: RabbitMQ (broker), MySQL/MariaDB (db) and Redis (redis_client)."""
