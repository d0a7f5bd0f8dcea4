"""Development tools shared by the test suite and the benchmarks (never installed in an image).

- :mod:`chat_devtools.namespace`: an isolated namespace (database, Redis prefix, queue prefix, search index).
- :mod:`chat_devtools.processes`: start the real processes (gunicorn API, writers, count sync) and stop them.
- :mod:`chat_devtools.http`: a small HTTP client of the API, and ``wait_for``.

``tests/support`` re-exports these, so the tests import them as before; the benchmarks import them from here.
"""
