"""Adapters: the only code in the API that talks to MySQL, Redis, RabbitMQ and the search backend."""
