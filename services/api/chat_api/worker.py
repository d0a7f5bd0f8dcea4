"""The gunicorn worker class of the API: uvicorn on uvloop with the httptools parser, and no access log."""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker


class ApiWorker(UvicornWorker):
    """One process, one event loop: uvloop and httptools are required (pinned), never silently swapped."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "lifespan": "on", "access_log": False}
