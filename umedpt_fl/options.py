"""The run settings as command-line options of `server` and `simulate`, built, not written.

Every option comes from a field of :class:`federation.settings.RunSettings` or of a
registered rule's options (:func:`strategies.rule_option_fields`): its flag, help, type
and choices are declared there, once. What differs per command is the one table below,
:data:`COMMAND_DEFAULTS`, so that a new setting or a new rule's option needs no change
here. ``@with_run_settings("server")`` adds the options to a command function, which
receives them as one :class:`RunOptions` argument named ``run``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from enum import Enum, StrEnum
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from federation.fields import SettingField, setting_fields
from federation.settings import RunSettings
from strategies import rule_option_fields, strategy_names

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class CommandDefault:
    """A command's own default (and, where it means something else there, its help)."""

    value: Any
    help: str = ""


# Why the commands differ from RunSettings' defaults (those of a bare `flwr run .`):
# - `server` coordinates real hospitals: a long run (100 rounds, evaluated every 5), slow
#   and remote sites (30 min per round, an hour to connect), at least two sites;
# - `simulate` is a researcher's test on one machine: 18 rounds evaluated every 3, and by
#   default every listed site must answer every round (min-sites = all).
COMMAND_DEFAULTS: Mapping[str, Mapping[str, CommandDefault]] = {
    "server": {
        "num_server_rounds": CommandDefault(100),
        "eval_every": CommandDefault(5),
        "min_sites": CommandDefault(2),
        "round_timeout": CommandDefault(1800.0),
        "node_wait_timeout": CommandDefault(3600.0),
    },
    "simulate": {
        "num_server_rounds": CommandDefault(18),
        "eval_every": CommandDefault(3),
        "min_sites": CommandDefault(
            None, "Fewest usable site replies for a round to count (default: all sites)."
        ),
    },
}


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The settings a command was given: plain values by field name, and rule options."""

    values: Mapping[str, Any]
    rule_options: Mapping[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def settings(self, **overrides: Any) -> RunSettings:
        """RunSettings of these options and ``overrides``; ConfigError naming a bad value."""
        return RunSettings(**{**self.values, **overrides}, rule_options=dict(self.rule_options))


def _choices_type(name: str, choices: tuple[str, ...]) -> type[StrEnum]:
    """An Enum of the choices, so that ``--help`` lists them and Typer checks them."""
    return StrEnum(name.title().replace("_", ""), {c: c for c in choices})


def _option(field: SettingField, command: str) -> inspect.Parameter:
    override = COMMAND_DEFAULTS.get(command, {}).get(field.name)
    default = override.value if override else field.default
    help_text = (override.help if override and override.help else "") or field.info.help
    kind: Any = field.type
    choices = strategy_names() if field.name == "strategy" else field.info.choices
    if choices:
        kind = _choices_type(field.name, tuple(choices))
        default = kind(default) if default is not None else None
    if default is None:
        kind = kind | None
    flags = [field.info.flag] if field.info.flag else [f"--{field.key}"]
    annotation = Annotated[kind, typer.Option(*flags, help=help_text)]
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def with_run_settings(command: str) -> Callable[[F], F]:
    """Add every run setting and rule option as an option of ``command``'s function.

    The function takes ``run: RunOptions`` in their place; its own parameters (``--out``,
    ``--host`` ...) come first in ``--help``.
    """

    def decorate(function: F) -> F:
        own = inspect.signature(function, eval_str=True)
        own_params = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in own.parameters.values()
            if p.name != "run"
        ]
        settings = [f for f in setting_fields(RunSettings) if f.info.command_line]
        rules = list(rule_option_fields().values())
        added = [_option(f, command) for f in [*settings, *rules]]
        if clash := {p.name for p in own_params} & {p.name for p in added}:
            raise ValueError(f"{function.__name__}: parameters {clash} are run settings")
        setting_names = {f.name for f in settings}
        rule_keys = {f.name: f.key for f in rules}

        @functools.wraps(function)
        def command_function(**kwargs: Any) -> Any:
            values = {n: _plain(kwargs.pop(n)) for n in setting_names}
            options = {rule_keys[n]: _plain(kwargs.pop(n)) for n in rule_keys}
            return function(**kwargs, run=RunOptions(values, options))

        parameters = own_params + added
        command_function.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
        command_function.__annotations__ = {
            **{k: v for k, v in get_type_hints(function, include_extras=True).items()
               if k != "run"},
            **{p.name: p.annotation for p in added},
        }  # fmt: skip
        del command_function.__wrapped__  # Typer must read the signature above
        return command_function  # type: ignore[return-value]

    return decorate


Verbose = Annotated[bool, typer.Option("--verbose", "-v")]
__all__ = ["COMMAND_DEFAULTS", "RunOptions", "Verbose", "with_run_settings"]
