"""Moved to :mod:`chat_devtools.http` (shared with the benchmarks); re-exported so the tests' imports hold."""

from chat_devtools.http import Api, wait_for

__all__ = ["Api", "wait_for"]
