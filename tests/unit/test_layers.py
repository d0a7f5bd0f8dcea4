"""The layer contracts of pyproject.toml ([tool.importlinter]) hold: ports, model, services and numbering import no
adapter; resources -> services -> numbering -> ports -> model; the API never imports the writers or the operator;
chat_common never imports a service. Offline and fast (import-linter reads the source, imports nothing)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_layer_contracts_hold():
    lint_imports = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
