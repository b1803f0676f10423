"""The README's settings table, generated from :class:`~server.config.Settings`.

``python -m server.settings_doc`` prints it; a test checks that the README holds this exact text.
"""

from __future__ import annotations

from server.config import Settings


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


if __name__ == "__main__":
    print(settings_table())
