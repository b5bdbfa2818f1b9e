"""The project is a Flower app: its pyproject sections must match what the apps read."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tomllib
from pathlib import Path

import pytest
import tomli_w

from federation.settings import (
    RUN_CONFIG_ENV,
    SERVER_SETTINGS_ENV,
    RunSettings,
    server_settings_for_app,
    write_server_settings,
)
from server import coordinator
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


SECRET_URI = "http://user:secret@mlflow.example.org:5000"


def coordinator_settings(tmp_path: Path) -> RunSettings:
    """A coordinator's settings with everything a site must not be given."""
    return RunSettings.of(
        num_server_rounds=7, local_steps=3, strategy="fedprox", proximal_mu=0.3, seed=4,
        preset="tiny", share_blocks=True, resume=True, tracking="mlflow",
        tracking_uri=SECRET_URI, out_dir=str(tmp_path / 'coordinator "out"'),
        state_root="/srv/coordinator/site-state",
        site_configs="/srv/hospital-b/site.toml,/srv/hospital-c/site.toml",
    )  # fmt: skip


def test_the_generated_app_gives_every_site_its_settings_and_nothing_else(tmp_path) -> None:
    """Flower hands the app's config to every site: no tracking URI, no coordinator path, no
    other site's path, no rule option; what a site needs round-trips."""
    settings = coordinator_settings(tmp_path)
    write_app_dir(tmp_path / "app", settings)
    text = (tmp_path / "app" / "pyproject.toml").read_text()
    for kept_home in ("secret", "mlflow.example.org", "coordinator", "/srv/", "hospital-b"):
        assert kept_home not in text
    config = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    assert config == settings.for_sites()
    assert set(config) == {
        "num-server-rounds", "local-steps", "preset", "encoder", "seed", "lr", "schedule",
        "share-blocks", "run-key",
    }  # fmt: skip
    # A site's ClientApp parses it into what the coordinator's settings hold for a site
    # (but the simulation's paths, which a real site never needs).
    simulation_paths = {"site_configs": "", "state_root": ""}
    assert RunSettings.from_run_config(config) == dataclasses.replace(
        settings.as_a_site_sees_it(), **simulation_paths
    )


def test_the_server_app_reads_the_rest_from_the_coordinators_file(tmp_path, monkeypatch) -> None:
    settings = coordinator_settings(tmp_path)
    write_app_dir(tmp_path / "app", settings)
    config = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    path = write_server_settings(tmp_path / "work" / "server-settings.json", settings)
    assert path.stat().st_mode & 0o077 == 0  # the coordinator's user alone
    monkeypatch.delenv(RUN_CONFIG_ENV, raising=False)
    monkeypatch.setenv(SERVER_SETTINGS_ENV, str(path))
    assert server_settings_for_app(config["tool"]["flwr"]["app"]["config"]) == settings
    monkeypatch.setenv(SERVER_SETTINGS_ENV, str(tmp_path / "gone.json"))
    with pytest.raises(ConfigError, match=SERVER_SETTINGS_ENV):
        server_settings_for_app({})


def test_a_simulated_site_works_with_a_sites_settings_only(tmp_path, monkeypatch) -> None:
    """`simulate` hands every app the whole settings in its environment; a ClientApp keeps
    what a site is given (and the simulation's paths), the rest at its defaults."""
    from flwr.app import Context, RecordDict

    from client.app import run_settings

    settings = coordinator_settings(tmp_path)
    monkeypatch.setenv(RUN_CONFIG_ENV, settings.to_json())
    seen = run_settings(Context(1, 7, {"partition-id": 0}, RecordDict(), {}))
    assert seen == settings.as_a_site_sees_it()
    assert (seen.tracking_uri, seen.out_dir, seen.rule_options) == ("", "runs/federated", {})
    assert seen.site_configs == settings.site_configs and seen.seed == 4


def test_the_coordinator_hands_the_server_app_its_settings_outside_the_app(
    tmp_path, monkeypatch
) -> None:
    """What `umedpt-fl server` submits and what its SuperLink (and so the ServerApp it
    starts) is given: the sites' settings in the app, the whole settings in a file."""
    seen: dict = {}

    @contextlib.contextmanager
    def serving(public, internal, env, out):
        seen["superlink_env"] = dict(env)
        yield

    def submit(env, app_dir):
        app = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
        seen["app_config"] = app["config"]
        monkeypatch.setattr(os, "environ", {**os.environ, **seen["superlink_env"]})
        seen["server_app"] = server_settings_for_app(app["config"])
        return "finished:completed"

    monkeypatch.setattr(coordinator, "_serving", serving)
    monkeypatch.setattr(coordinator, "_submit_run", submit)
    monkeypatch.delenv(RUN_CONFIG_ENV, raising=False)
    settings = dataclasses.replace(coordinator_settings(tmp_path), resume=False)
    options = coordinator.SuperLinkOptions(port=coordinator.free_loopback_port(), insecure=True)
    assert coordinator.coordinate(settings, options) == "finished:completed"
    assert seen["app_config"] == settings.for_sites()
    out = str(Path(settings.out_dir).resolve())
    assert seen["server_app"] == dataclasses.replace(settings, out_dir=out)
    assert SERVER_SETTINGS_ENV in seen["superlink_env"]
    assert not Path(out, coordinator.WORK_DIR).exists()  # the file went with the run


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
