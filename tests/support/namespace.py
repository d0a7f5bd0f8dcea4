"""Moved to :mod:`chat_devtools.namespace` (shared with the benchmarks); re-exported so the tests' imports hold."""

from chat_devtools.namespace import BASE_DATABASE_URL, Namespace

__all__ = ["BASE_DATABASE_URL", "Namespace"]
