"""The strategy registry: names, settings to constructor arguments, errors (no Ray)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import typer
from flwr.app import Array, ArrayRecord
from typer.testing import CliRunner

import strategies.registry as registry
from federation import wire
from federation.fields import setting
from federation.settings import RunSettings
from server.rules import build_rule
from strategies import (
    GroupedFedAdam,
    GroupedFedAvg,
    GroupedFedMedian,
    GroupedFedProx,
    GroupedFedTrimmedAvg,
    GroupedStrategy,
    merged_metrics,
    register_strategy,
    strategy_names,
)
from tests.federation.fakes import ScriptedGrid
from umedpt.errors import ConfigError
from umedpt_fl.options import RunOptions, with_run_settings


def test_names_and_classes() -> None:
    assert strategy_names() == ("fedadam", "fedavg", "fedmedian", "fedprox", "fedtrimmedavg")
    classes = {
        "fedavg": GroupedFedAvg,
        "fedprox": GroupedFedProx,
        "fedadam": GroupedFedAdam,
        "fedmedian": GroupedFedMedian,
        "fedtrimmedavg": GroupedFedTrimmedAvg,
    }
    for name, cls in classes.items():
        assert type(build_rule(RunSettings(strategy=name), query_timeout=1)) is cls


def test_unknown_name_is_a_config_error_naming_the_key_and_the_valid_names() -> None:
    settings = RunSettings.from_run_config({"strategy": "fedsgd"})  # parsing does not check it
    with pytest.raises(ConfigError, match="field 'strategy'") as caught:
        build_rule(settings, query_timeout=1)
    assert "'fedsgd'" in str(caught.value)
    assert all(name in str(caught.value) for name in strategy_names())


def test_each_rule_takes_its_own_arguments_from_the_settings() -> None:
    def built(name: str):
        settings = RunSettings.of(strategy=name, proximal_mu=0.7, server_lr=0.3, trim_beta=0.1)
        return build_rule(settings, query_timeout=1)

    assert built("fedprox").proximal_mu == 0.7
    assert built("fedadam").eta == 0.3
    assert built("fedtrimmedavg").beta == 0.1


def test_common_settings_reach_every_rule() -> None:
    for name in strategy_names():
        settings = RunSettings(
            strategy=name, min_sites=2, weighting="equal", node_wait_timeout=7, eval_every=3
        )
        strategy = build_rule(settings, query_timeout=4)
        assert strategy.weighted_by_key == wire.UNIT_WEIGHT
        assert (strategy.min_replies, strategy.min_available_nodes) == (2, 2)
        assert strategy.node_wait_timeout == 7 and strategy.query_timeout == 4
        assert strategy.eval_every == 3
        assert strategy.train_metrics_aggr_fn is merged_metrics
        assert strategy.evaluate_metrics_aggr_fn is merged_metrics
    examples = build_rule(RunSettings(weighting="examples"), query_timeout=1)
    assert examples.weighted_by_key == wire.NUM_EXAMPLES


def test_rounds_can_wait_for_more_sites_than_they_need_replies_from() -> None:
    waiting = build_rule(RunSettings(min_sites=1, wait_for_sites=3), query_timeout=1)
    assert (waiting.min_replies, waiting.min_available_nodes) == (1, 3)
    # never fewer than min-sites: a round cannot count with sites it did not wait for
    assert (
        build_rule(RunSettings(min_sites=2, wait_for_sites=1), query_timeout=1).min_available_nodes
        == 2
    )
    with pytest.raises(ConfigError, match="wait-for-sites"):
        RunSettings(wait_for_sites=-1)


def test_a_new_rule_is_a_few_lines(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class GroupedMax(GroupedStrategy):
        def reduce_group(self, group, arrays, weights):
            return {k: np.max([a[k] for a in arrays], axis=0) for k in arrays[0]}

    register_strategy("max", GroupedMax)
    assert "max" in strategy_names()
    sites = {11: ("a", ("seg",), 10), 22: ("b", ("seg",), 30)}
    initial = ArrayRecord(
        {k: Array(np.zeros(2, np.float32)) for k in ("encoder.w", "blocks.seg.w")}
    )
    strategy = build_rule(RunSettings(strategy="max"), query_timeout=1)
    result = strategy.start(ScriptedGrid(sites), initial, num_rounds=1, timeout=5)
    assert np.allclose(result.arrays["encoder.w"].numpy(), 0.22)


def test_registration_errors(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(TypeError, match="not a GroupedStrategy"):
        register_strategy("bad", int)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("fedavg", GroupedFedMedian)

    @dataclass(frozen=True)
    class Clashing:
        def rule_args(self):
            return {"min_train_nodes": 9}

    register_strategy("clash", GroupedFedAvg, Clashing)
    with pytest.raises(ValueError, match="common arguments"):
        build_rule(RunSettings(strategy="clash"), query_timeout=1)

    @dataclass(frozen=True)
    class OtherMu:
        proximal_mu: float = setting(0.5, "a different default for FedProx's key")

        def rule_args(self):
            return {}

    with pytest.raises(ValueError, match="'proximal-mu' is declared by another rule"):
        register_strategy("other-mu", GroupedFedAvg, OtherMu)


def test_a_new_rule_with_one_option_needs_nothing_outside_its_module(monkeypatch) -> None:
    """Its option becomes a flag of `server`/`simulate` and reaches the rule's constructor."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclass(frozen=True)
    class PowerOptions:
        power: float = setting(2.0, "Power mean: the exponent.")

        def rule_args(self):
            return {"power": self.power}

    class GroupedPowerMean(GroupedStrategy):
        def __init__(self, *, power: float, **kwargs) -> None:
            super().__init__(**kwargs)
            self.power = power

    register_strategy("powermean", GroupedPowerMean, PowerOptions)
    seen = {}

    @with_run_settings("server")
    def command(run: RunOptions) -> None:
        seen["rule"] = build_rule(run.settings(), query_timeout=1)

    app = typer.Typer()
    app.command()(command)
    app.command("other")(lambda: None)
    assert "--power" in CliRunner().invoke(app, ["command", "--help"]).output
    result = CliRunner().invoke(app, ["command", "--strategy", "powermean", "--power", "3"])
    assert result.exit_code == 0, result.output
    assert isinstance(seen["rule"], GroupedPowerMean) and seen["rule"].power == 3.0
