"""Development tools shared by the test suite and the benchmarks (never installed in an image).

- :mod:`chat_devtools.namespace`: an isolated namespace (database, Redis prefix, queue prefix, search index).
- :mod:`chat_devtools.processes`: start the real processes (gunicorn API, writers, count sync) and stop them.
- :mod:`chat_devtools.http`: a small HTTP client of the API, and ``wait_for``.
- :mod:`chat_devtools.ports`: free ports on loopback.
- :mod:`chat_devtools.private_process`: one private server process (own directory, ports, process group);
  :mod:`chat_devtools.private_services` (MariaDB, Redis, RabbitMQ), :mod:`chat_devtools.rabbit_cluster`,
  :mod:`chat_devtools.redis_cluster` and :mod:`chat_devtools.redis_sentinel` are built of it.
- :mod:`chat_devtools.tcp`: a TCP balancer and a proxy that cuts or slows a connection.
- :mod:`chat_devtools.load`: every load generator (``requests`` clients, wrk, a paced client) and
  :mod:`chat_devtools.audit`, what became of every answer of a create load.

Tests and benchmarks import them from here (there is no ``tests/support`` any more).
"""
