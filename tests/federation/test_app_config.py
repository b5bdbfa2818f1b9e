"""The project is a Flower app: its pyproject sections must match what the apps read."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from federation.settings import RunSettings
from server.flower_app import write_app_dir
from server.rules import build_rule, full_run_config
from umedpt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_run_config_is_every_setting_and_rule_option_at_its_default() -> None:
    """`flwr run .` reads the project's pyproject: it must list every key a run takes."""
    flwr = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    expected = full_run_config(RunSettings())
    missing = {k: v for k, v in expected.items() if k not in flwr["config"]}
    assert not missing, "add to [tool.flwr.app.config]:\n" + tomli_w.dumps(missing)
    assert flwr["config"] == expected


def test_generated_app_lists_every_rule_option() -> None:
    config = full_run_config(RunSettings.of(strategy="fedprox", proximal_mu=0.3))
    assert config["proximal-mu"] == 0.3
    assert config["trim-beta"] == 0.2  # another rule's option, at its default
    assert RunSettings.from_run_config(config).rule_options["proximal-mu"] == 0.3


def test_generated_app_dir_round_trips_the_settings(tmp_path) -> None:
    settings = RunSettings(
        num_server_rounds=7, strategy="fedadam", out_dir='/tmp/quote"d', resume=True
    )
    write_app_dir(tmp_path, settings)
    config = tomllib.loads((tmp_path / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    assert RunSettings.from_run_config(config) == RunSettings.from_run_config(
        full_run_config(settings)
    )
    assert RunSettings.from_run_config(config).num_server_rounds == 7


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"weighting": "by-size"}, "weighting"),
        ({"local-steps": "many"}, "local-steps"),
        ({"resume": "maybe"}, "resume"),
        ({"schedule": "step"}, "schedule"),
        ({"share-blocks": "sometimes"}, "share-blocks"),
    ],
)
def test_bad_run_config_names_the_key(values, field) -> None:
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        RunSettings.from_run_config(values)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"strategy": "fedtrimmedavg", "trim-beta": 0.5}, "trim-beta"),
        ({"strategy": "fedprox", "proximal-mu": -1}, "proximal-mu"),
        ({"strategy": "fedadam", "server-lr": "fast"}, "server-lr"),
        ({"strategy": "fedavg", "trim-betta": 0.1}, "trim-betta"),
    ],
)
def test_bad_rule_option_names_the_key_when_the_server_builds_the_rule(values, field) -> None:
    settings = RunSettings.from_run_config(values)
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        build_rule(settings, query_timeout=1)
