"""The chart's values against the server's settings, and the values schema against bad input.

vlmserve/config.py `Settings` is the one list of settings. The chart sets a few of them itself (the
VLMSERVE_* names written in its templates) and passes the rest through `settings:` maps, whose
allowed keys and types in values.schema.json must equal what `Settings` declares. Add a field to
`Settings` and test_settings_schema_matches_the_server fails until `python -m server.settings_doc`
rewrites the block.
"""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest

from vlmserve.config import Settings
from vlmserve.settings_doc import CHART, ENV_NAME, chart_owned_settings, env_to_field
from vlmserve.settings_doc import chart_settings_schema as expected_settings_schema


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def test_every_vlmserve_variable_named_in_the_chart_is_a_setting() -> None:
    """Templates, values comments and the chart README may only name variables the server reads."""
    fields = set(Settings.model_fields)
    for path in sorted(CHART.rglob("*")):
        if path.is_file():
            unknown = {
                n for n in ENV_NAME.findall(path.read_text()) if env_to_field(n) not in fields
            }
            assert not unknown, (
                f"{path.relative_to(CHART)} names {sorted(unknown)}, not in Settings"
            )


def test_chart_owned_settings_include_what_kubernetes_needs() -> None:
    # Sanity of the parser above: these are set by the templates, so `settings:` may not hold them.
    assert {
        "host",
        "port",
        "model",
        "engine",
        "tensor_parallel_size",
        "shutdown_grace_seconds",
    } <= (chart_owned_settings())


def test_settings_schema_matches_the_server() -> None:
    expected = expected_settings_schema()
    actual = schema()["definitions"]["settings"]
    assert actual == expected, (
        "values.schema.json definitions.settings is out of date with vlmserve/config.py; run: "
        "python -m vlmserve.settings_doc"
    )


def test_every_setting_is_reachable_from_the_chart() -> None:
    settable = set(schema()["definitions"]["settings"]["properties"])
    owned = chart_owned_settings()
    assert settable | owned == set(Settings.model_fields)
    assert not settable & owned


def test_values_settings_keys_are_settings() -> None:
    values = helm.values_from_yaml((CHART / "values.yaml").read_text())
    keys = set(values["settings"]) | {k for m in values["models"] for k in m.get("settings", {})}
    assert keys <= set(Settings.model_fields)


# -- The schema refuses bad values (helm install/template would stop with these messages) ---------

BAD_VALUES = [
    ("unknown setting", {"settings": {"max_tokens_default": 10}}, "max_tokens_default"),
    (
        "wrongly typed setting",
        {"settings": {"max_num_seqs": "lots"}},
        "/settings/max_num_seqs",
    ),
    ("setting the chart owns", {"settings": {"port": 9000}}, "port"),
    (
        "per-model unknown setting",
        {"models": [{"name": "a", "model": "x", "settings": {"gpus": 2}}]},
        "gpus",
    ),
    (
        "tensor parallel 0",
        {"models": [{"name": "a", "model": "x", "tensorParallelSize": 0}]},
        "/models/0/tensorParallelSize",
    ),
    (
        "model name not a DNS label",
        {"models": [{"name": "LLaVA_7B", "model": "x"}]},
        "/models/0/name",
    ),
    # <release>-vlmserve (up to 32) + "-" + name must stay within a 63-character object name.
    (
        "model name too long",
        {"models": [{"name": "a" * 25, "model": "x"}]},
        "/models/0/name",
    ),
    ("model without a model", {"models": [{"name": "a"}]}, "model"),
    ("no models", {"models": []}, "/models"),
    (
        "unknown engine",
        {"models": [{"name": "a", "model": "x", "engine": "tgi"}]},
        "/models/0/engine",
    ),
    (
        "VLMSERVE_ variable in extraEnv",
        {"extraEnv": [{"name": "VLMSERVE_PORT", "value": "1"}]},
        "/extraEnv/0",
    ),
    (
        "API key with a comma",
        {"auth": {"apiKeys": ["key-one,key-two"]}},
        "/auth/apiKeys/0",
    ),
    (
        "unknown autoscaling controller",
        {"autoscaling": {"controller": "vpa"}},
        "/autoscaling/controller",
    ),
    ("bad memory quantity", {"shmSize": "2 GB"}, "/shmSize"),
    ("typo at the top level", {"servicemonitor": {"enabled": True}}, "servicemonitor"),
]


@pytest.mark.parametrize(
    ("values", "where"), [v[1:] for v in BAD_VALUES], ids=[v[0] for v in BAD_VALUES]
)
def test_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name="demo", namespace="ai")


def test_schema_accepts_the_default_values() -> None:
    helm.Chart.load(CHART).validate_schema({})


# -- Rules across values that a schema cannot state; the templates refuse them -------------------

BAD_COMBINATIONS = [
    (
        "liveness window shorter than the drain",
        {"shutdown": {"drainSeconds": 120}},
        "must exceed shutdown.drainSeconds",
    ),
    (
        "two models with one name",
        {"models": [{"name": "a", "model": "x"}, {"name": "a", "model": "y"}]},
        "used twice",
    ),
    (
        "ingress host for an unknown model",
        {
            "ingress": {
                "enabled": True,
                "hosts": [{"host": "h.example.com", "model": "nope"}],
            }
        },
        "not in models",
    ),
    (
        "HPA scaling to zero",
        {"autoscaling": {"enabled": True, "controller": "hpa", "minReplicas": 0}},
        "minReplicas >= 1",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"),
    [v[1:] for v in BAD_COMBINATIONS],
    ids=[v[0] for v in BAD_COMBINATIONS],
)
def test_templates_refuse_contradictory_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        helm.Chart.load(CHART).render(values, name="demo", namespace="ai")
