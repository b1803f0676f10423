"""Documents generated from :class:`~vlmserve.config.Settings`: the README's settings table and the
Helm chart's ``definitions.settings`` schema block.

``python -m vlmserve.settings_doc`` rewrites both in place after a settings change; tests check that
the files hold exactly what these functions produce, so neither can drift from the settings.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from vlmserve.config import Settings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CHART = REPO / "helm" / "vlmserve"
TABLE_START, TABLE_END = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
ENV_NAME = re.compile(r"\bVLMSERVE_[A-Z0-9_]+\b")


def settings_table() -> str:
    """A Markdown table: variable, flag, default, description."""
    rows = ["| Variable | Flag | Default | What it does |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = "" if info.default is None else f"`{info.default}`"
        if name == "cache_dir":
            default = "`~/.cache/vlmserve`"
        rows.append(
            f"| `VLMSERVE_{name.upper()}` | `--{name.replace('_', '-')}` | {default} | "
            f"{info.description} |"
        )
    return "\n".join(rows)


def env_to_field(name: str) -> str:
    """``VLMSERVE_MAX_MODEL_LEN`` -> ``max_model_len``."""
    return name.removeprefix("VLMSERVE_").lower()


def chart_owned_settings() -> set[str]:
    """Settings the chart's templates set by name, parsed from the template sources."""
    text = "".join(p.read_text() for p in sorted((CHART / "templates").iterdir()))
    return {env_to_field(n) for n in ENV_NAME.findall(text)}


def chart_settings_schema() -> dict[str, Any]:
    """``definitions.settings`` of the chart's values schema: every field the chart does not own."""
    owned = chart_owned_settings()
    properties = {
        name: {k: v for k, v in prop.items() if k not in ("title", "default")}
        for name, prop in Settings.model_json_schema()["properties"].items()
        if name not in owned
    }
    return {
        "type": "object",
        "description": "vlmserve settings (vlmserve/config.py), each rendered as VLMSERVE_<NAME>.",
        "additionalProperties": False,
        "properties": properties,
    }


def readme_table(text: str) -> str:
    """The settings table currently between the README's markers."""
    start = text.index(TABLE_START) + len(TABLE_START)
    return text[start : text.index(TABLE_END)]


def write_all() -> None:
    """Rewrite the README table and the chart schema block from the settings."""
    readme = README.read_text()
    README.write_text(readme.replace(readme_table(readme), settings_table(), 1))
    schema_path = CHART / "values.schema.json"
    schema = json.loads(schema_path.read_text())
    schema["definitions"]["settings"] = chart_settings_schema()
    schema_path.write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    write_all()
    sys.stdout.write("updated README.md and helm/vlmserve/values.schema.json\n")
