"""The light subcommands stay light: ``--help``, ``models`` and ``plan`` import no ML framework.

Each command runs in a fresh interpreter through the real entry point, which then reports the
modules it ended up importing; none of torch, transformers or vLLM may be among them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import FAMILIES
from tests.helpers import REPO

HEAVY = ("torch", "transformers", "vllm")

#: Runs ``vlmserve ARGS`` in-process, then prints the heavy modules loaded and the exit code.
PROBE = """
import json, sys
from vlmserve.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))
print(json.dumps({"heavy": heavy, "code": code}), file=sys.stderr)
"""


def run_cli(*args: str) -> tuple[dict[str, object], str]:
    """Run the command; return what the probe reported and the command's stdout."""
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report, done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["models"],
        ["models", "--json"],
        ["plan", "--help"],
        ["plan", "--model", "llava-1.5-7b", "--gpu", "A10G"],
        ["plan", "--model", "phi-3-vision", "--gpu", "RTX3070", "--json"],
        ["plan", "--model", "internvl2-8b", "--gpu", "A10G"],
    ],
    ids=lambda args: " ".join(args),
)
def test_light_commands_import_no_ml_framework(args: list[str]) -> None:
    report, stdout = run_cli(*args)
    assert report["heavy"] == [], f"vlmserve {' '.join(args)} imported {report['heavy']}"
    assert report["code"] in (0, 1, None)
    assert stdout.strip()


def test_help_lists_every_subcommand_without_importing_them() -> None:
    from vlmserve.cli.main import COMMANDS

    report, stdout = run_cli("--help")
    assert report["code"] == 0
    for name in COMMANDS:
        assert name in stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_of_a_checkpoint_folder_imports_no_ml_framework(
    family: str, tiny_model: Callable[[str], Path]
) -> None:
    report, stdout = run_cli("plan", "--model", str(tiny_model(family)), "--gpu", "A10G")
    assert report["heavy"] == []
    assert report["code"] == 0, stdout
