"""The README and --help are derived from the settings: check they have not drifted."""

from __future__ import annotations

from tests.helpers import REPO
from vlmserve.cli.main import build_parser
from vlmserve.config import Settings
from vlmserve.settings_doc import readme_table, settings_table


def test_readme_settings_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    assert readme_table(readme) == settings_table(), "run: python -m vlmserve.settings_doc"


def test_every_setting_is_a_serve_flag() -> None:
    parser = build_parser(["serve"])
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    dests = {action.dest for action in serve._actions}
    assert set(Settings.model_fields) <= dests


def test_flags_override_environment(monkeypatch) -> None:
    from vlmserve.cli.serve import settings_from_args

    monkeypatch.setenv("VLMSERVE_PORT", "9001")
    monkeypatch.setenv("VLMSERVE_MAX_BATCH_SIZE", "3")
    argv = ["serve", "--port", "9002", "--no-json-logs"]
    args = build_parser(argv).parse_args(argv)
    settings = settings_from_args(args)
    assert (settings.port, settings.max_batch_size, settings.json_logs) == (9002, 3, False)
