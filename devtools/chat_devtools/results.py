"""What the reliability suites observed, saved as JSON so that docs/reliability.md is generated, never typed.

Each suite (hostile input, security, fuzzing, chaos, soak) records one row per fault or input it tried and
writes ``<RELIABILITY_RESULTS_DIR>/<suite>.json`` when its tests finish, passed or not.
``python -m chat_devtools.reliability_report`` turns the files of the last run into the Markdown report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS_DIR = Path(os.environ.get("RELIABILITY_RESULTS_DIR", "/tmp/chat-system-reliability"))


class Results:
    """Rows of one suite, plus free-form figures (``meta``)."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.rows: list[dict] = []
        self.meta: dict = {}
        self.started = time.time()

    def add(self, **row: object) -> dict:
        """Record one row; returns it so a test can complete it (e.g. with ``outcome``) later."""
        self.rows.append(row)
        return row

    def save(self) -> Path:
        """Write the suite's file (overwriting the previous run's)."""
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.suite}.json"
        document = {
            "suite": self.suite,
            "started_at": self.started,
            "finished_at": time.time(),
            "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.platform()},
            "meta": self.meta,
            "rows": self.rows,
        }
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str))
        return path


def load_all(directory: Path = RESULTS_DIR) -> dict[str, dict]:
    """Every suite file in ``directory``, by suite name."""
    if not directory.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}
