"""Typed settings that describe themselves: one declaration gives the run-config key, the
command-line flag, its help and its choices.

A setting is a dataclass field made with :func:`setting`. The run settings
(:class:`federation.settings.RunSettings`) and each aggregation rule's own options (e.g.
FedProx's ``proximal_mu``, declared in the rule's module) are such dataclasses, so a new
option is written once, where it is used: the commands build their flags from these
fields (``umedpt_fl.options``) and Flower's run config is parsed by them
(:func:`from_run_config`). Field ``foo_bar`` is run-config key ``foo-bar``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, get_type_hints

from umedpt.errors import ConfigError

SOURCE = "run config"  # what a ConfigError about a setting names as its source
_INFO = "umedpt_fl.setting"  # the field-metadata key of a SettingInfo


class Audience(StrEnum):
    """Who is given a setting's value."""

    SITES = "sites"  # every site: the app config `flwr run` submits goes to every SuperNode
    SIMULATION = "simulation"  # simulated sites only (paths on the one machine)
    SERVER = "server"  # the coordinator alone; never sent to a site


@dataclass(frozen=True)
class SettingInfo:
    """What a setting means to a person: its help, flag and allowed values; who gets it.

    ``flag``: the command-line spelling ("" = the key, ``--foo-bar``; Typer's
    ``--on/--off`` form for a switch); ``command_line=False`` keeps a setting out of the
    commands (paths and keys the commands fill in themselves). ``audience``: who is given
    the value (default: the coordinator alone). ``private``: a path or an address (a URI may
    hold credentials), never written where others read it (checkpoint metadata, report.json,
    the model card).
    """

    help: str
    flag: str = ""
    choices: tuple[str, ...] = ()
    command_line: bool = True
    audience: Audience = Audience.SERVER
    private: bool = False


def setting(
    default: Any,
    help: str,  # noqa: A002  (the word people read in --help)
    *,
    flag: str = "",
    choices: Sequence[str] = (),
    command_line: bool = True,
    audience: Audience = Audience.SERVER,
    private: bool = False,
) -> Any:
    """A dataclass field with its :class:`SettingInfo`; use as ``x: int = setting(5, "...")``."""
    info = SettingInfo(help, flag, tuple(choices), command_line, audience, private)
    return dataclasses.field(default=default, metadata={_INFO: info})


@dataclass(frozen=True)
class SettingField:
    """One setting of a settings class: names, type, default and its info."""

    name: str  # the Python name, foo_bar
    type: type
    default: Any
    info: SettingInfo

    @property
    def key(self) -> str:
        """The run-config key (and, by default, the flag without its dashes)."""
        return run_config_key(self.name)


def run_config_key(field_name: str) -> str:
    return field_name.replace("_", "-")


def setting_fields(cls: type) -> list[SettingField]:
    """The settings of dataclass ``cls``, in declaration order (fields made by :func:`setting`)."""
    hints = get_type_hints(cls)
    return [
        SettingField(f.name, hints[f.name], f.default, f.metadata[_INFO])
        for f in dataclasses.fields(cls)
        if _INFO in f.metadata
    ]


def coerce(value: Any, kind: type, key: str, source: str = SOURCE) -> Any:
    """``value`` as ``kind`` (bool, int, float or str); ConfigError naming ``key`` if it is not."""
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(source, key, f"expected {kind.__name__}, got {value!r}") from None


def check_choices(settings: object, source: str = SOURCE) -> None:
    """ConfigError naming the first field whose value is not one of its declared choices."""
    for field in setting_fields(type(settings)):
        value = getattr(settings, field.name)
        if field.info.choices and value not in field.info.choices:
            raise ConfigError(
                source,
                field.key,
                f"must be one of {', '.join(field.info.choices)}, got {value!r}",
            )


def values_from_run_config(cls: type, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The values for ``cls(**...)`` found in ``run_config`` (kebab-case keys), coerced."""
    return {
        f.name: coerce(run_config[f.key], f.type, f.key)
        for f in setting_fields(cls)
        if f.key in run_config
    }


def to_run_config(settings: object) -> dict[str, Any]:
    """``settings``' values by run-config key."""
    return {f.key: getattr(settings, f.name) for f in setting_fields(type(settings))}


def defaults_of(cls: type) -> dict[str, Any]:
    """Every setting's default, by run-config key."""
    return {f.key: f.default for f in setting_fields(cls)}
