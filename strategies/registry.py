"""Aggregation rules by name: ``register_strategy`` / ``strategy_names`` / ``build_strategy``.

Each rule's module registers itself with the constructor arguments it takes from the
run settings, e.g. ``register_strategy("fedprox", GroupedFedProx, lambda s:
{"proximal_mu": s.proximal_mu})``. Nothing here knows a rule by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from federation import wire
from federation.settings import SOURCE, RunSettings, Weighting
from strategies.base import GroupedStrategy
from strategies.central_dp import ClientDPConfig
from strategies.defences import UpdatePolicy
from strategies.metrics import merged_metrics
from strategies.secure_aggregation import SecAggConfig
from umedpt.errors import ConfigError

S = TypeVar("S", bound=type[GroupedStrategy])
SettingsArgs = Callable[[RunSettings], dict[str, Any]]

# The reply metric each weighting divides by (``weighted_by_key`` of Flower's FedAvg).
WEIGHT_KEYS = {Weighting.EXAMPLES: wire.NUM_EXAMPLES, Weighting.EQUAL: wire.UNIT_WEIGHT}


@dataclass(frozen=True)
class StrategyEntry:
    """A registered rule: its class and its own constructor arguments from the settings."""

    name: str
    cls: type[GroupedStrategy]
    args_from_settings: SettingsArgs


_REGISTRY: dict[str, StrategyEntry] = {}


def register_strategy(name: str, cls: S, args_from_settings: SettingsArgs | None = None) -> S:
    """Make ``cls`` available as run-config ``strategy = name``; returns ``cls``.

    ``args_from_settings`` gives the rule's own constructor arguments (beyond FedAvg's,
    which ``build_strategy`` sets for every rule).
    """
    if not issubclass(cls, GroupedStrategy):
        raise TypeError(f"strategy '{name}': {cls.__name__} is not a GroupedStrategy")
    if name in _REGISTRY and _REGISTRY[name].cls is not cls:
        raise ValueError(f"strategy '{name}' is already registered ({_REGISTRY[name].cls})")
    _REGISTRY[name] = StrategyEntry(name, cls, args_from_settings or (lambda _: {}))
    return cls


def strategy_names() -> tuple[str, ...]:
    """Registered rule names, sorted (the CLI's ``--strategy`` choices)."""
    return tuple(sorted(_REGISTRY))


def strategy_entry(name: str) -> StrategyEntry:
    """The registered rule; ConfigError naming run-config key ``strategy`` if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            SOURCE,
            "strategy",
            f"unknown aggregation rule {name!r}; valid: {', '.join(strategy_names())}",
        ) from None


def build_strategy(settings: RunSettings, *, query_timeout: float) -> GroupedStrategy:
    """The rule ``settings.strategy``, set up for ``settings`` (sites, weighting, timeouts)."""
    entry = strategy_entry(settings.strategy)
    common: dict[str, Any] = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=settings.min_sites,
        min_evaluate_nodes=settings.min_sites,
        min_available_nodes=settings.sites_to_wait_for,
        weighted_by_key=WEIGHT_KEYS[Weighting(settings.weighting)],
        arrayrecord_key=wire.SHARED_ARRAYS,
        configrecord_key=wire.CONFIG,
        train_metrics_aggr_fn=merged_metrics,
        evaluate_metrics_aggr_fn=merged_metrics,
    )
    own = entry.args_from_settings(settings)
    if clash := sorted(set(own) & set(common)):
        raise ValueError(f"strategy '{entry.name}' may not override the common arguments {clash}")
    strategy = entry.cls(**common, **own)
    strategy.setup(
        node_wait_timeout=settings.node_wait_timeout,
        query_timeout=query_timeout,
        min_replies=settings.min_sites,
        eval_every=settings.eval_every,
        policy=UpdatePolicy.from_settings(settings),
        client_dp=ClientDPConfig.from_settings(settings),
        secure_aggregation=secagg_config(settings),
    )
    return strategy


def secagg_config(settings: RunSettings) -> SecAggConfig | None:
    """The run's secure-aggregation settings, or None when it is off."""
    if not settings.secure_aggregation:
        return None
    return SecAggConfig(
        reconstruction_threshold=settings.secagg_reconstruction_threshold,
        clipping_range=settings.secagg_clipping_range,
        quantization_range=settings.secagg_quantization_range,
        allow_unshared_blocks=settings.secagg_allow_unshared_blocks,
    )
