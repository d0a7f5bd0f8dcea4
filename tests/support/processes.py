"""Moved to :mod:`chat_devtools.processes` (shared with the benchmarks); re-exported so the tests' imports hold."""

from chat_devtools.processes import BIN, ROOT, Process, System, free_port

__all__ = ["BIN", "ROOT", "Process", "System", "free_port"]
