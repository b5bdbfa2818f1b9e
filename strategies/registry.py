"""Aggregation rules by name: ``register_strategy`` / ``strategy_names`` / ``strategy_entry``.

Each rule's module registers itself with its own options, a frozen dataclass of settings
(:func:`federation.fields.setting`), e.g. ``register_strategy("fedprox", GroupedFedProx,
FedProxOptions)``. The commands make a flag of each option and Flower's run config carries
it by key (``proximal-mu``); the server parses the options of the rule it builds
(:mod:`server.rules`). Nothing here knows a rule by name, and nothing here reads the run
settings: a new rule with one option touches its own module and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from federation.fields import SettingField, setting_fields, values_from_run_config
from strategies.base import GroupedStrategy

S = TypeVar("S", bound=type[GroupedStrategy])


class RuleOptions(Protocol):
    """A rule's own options: a frozen dataclass of settings that checks itself."""

    def rule_args(self) -> dict[str, Any]:
        """The rule's constructor arguments (beyond FedAvg's, set for every rule)."""
        ...


@dataclass(frozen=True)
class NoOptions:
    """For a rule with no options of its own."""

    def rule_args(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class StrategyEntry:
    """A registered rule: its class and the dataclass of its options."""

    name: str
    cls: type[GroupedStrategy]
    options: type[RuleOptions]

    def parse_options(self, run_config: Mapping[str, Any]) -> RuleOptions:
        """This rule's options from run-config keys (others' keys are ignored).

        Raises ConfigError naming the key when a value has the wrong type, or ValueError
        from the options' own checks.
        """
        return self.options(**values_from_run_config(self.options, run_config))


_REGISTRY: dict[str, StrategyEntry] = {}


def register_strategy(name: str, cls: S, options: type[RuleOptions] = NoOptions) -> S:
    """Make ``cls`` available as run-config ``strategy = name``; returns ``cls``.

    An option key two rules declare must mean the same (same type and default): it is one
    flag and one run-config key.
    """
    if not issubclass(cls, GroupedStrategy):
        raise TypeError(f"strategy '{name}': {cls.__name__} is not a GroupedStrategy")
    if name in _REGISTRY and _REGISTRY[name].cls is not cls:
        raise ValueError(f"strategy '{name}' is already registered ({_REGISTRY[name].cls})")
    for field in setting_fields(options):
        for other, known in rule_option_fields().items():
            if other == field.key and (known.type, known.default) != (field.type, field.default):
                raise ValueError(
                    f"strategy '{name}': option '{field.key}' is declared by another rule "
                    f"as {known.type.__name__} = {known.default!r}"
                )
    _REGISTRY[name] = StrategyEntry(name, cls, options)
    return cls


def strategy_names() -> tuple[str, ...]:
    """Registered rule names, sorted (the CLI's ``--strategy`` choices)."""
    return tuple(sorted(_REGISTRY))


def strategy_entry(name: str) -> StrategyEntry:
    """The registered rule; KeyError listing the valid names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown aggregation rule {name!r}; valid: {', '.join(strategy_names())}"
        ) from None


def rule_option_fields() -> dict[str, SettingField]:
    """Every registered rule's options by run-config key (one flag each)."""
    return {
        field.key: field for entry in _REGISTRY.values() for field in setting_fields(entry.options)
    }
