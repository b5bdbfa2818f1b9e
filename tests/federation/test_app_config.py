"""The project is a Flower app: its pyproject sections must match what the apps read."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from federation.settings import RunSettings
from server.flower_app import write_app_dir
from umedpt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_run_config_matches_the_settings_defaults() -> None:
    flwr = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    assert flwr["config"] == RunSettings().to_run_config()


def test_generated_app_dir_round_trips_the_settings(tmp_path) -> None:
    settings = RunSettings(
        num_server_rounds=7, strategy="fedadam", out_dir='/tmp/quote"d', resume=True
    )
    write_app_dir(tmp_path, settings)
    config = tomllib.loads((tmp_path / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    assert RunSettings.from_run_config(config) == settings


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"weighting": "by-size"}, "weighting"),
        ({"trim-beta": 0.5}, "trim-beta"),
        ({"local-steps": "many"}, "local-steps"),
        ({"resume": "maybe"}, "resume"),
        ({"schedule": "step"}, "schedule"),
        ({"share-blocks": "sometimes"}, "share-blocks"),
    ],
)
def test_bad_run_config_names_the_key(values, field) -> None:
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        RunSettings.from_run_config(values)
