"""Settings of a federated run, parsed from Flower's run config (kebab-case keys).

Server and sites read the same settings, so both sides agree on the model preset, seed
and learning rate; but a site is given only what it needs. Each setting declares its
audience (:class:`federation.fields.Audience`): the app config that `umedpt-fl server`
submits, which Flower hands to every site, holds the sites' settings alone
(:meth:`RunSettings.for_sites`); the rest (the output folder, the tracking URI, the
aggregation rule ...) reaches the coordinator's ServerApp through a file named in its
environment (:data:`SERVER_SETTINGS_ENV`), and checkpoints, report.json and the model card
get no path or address (:meth:`RunSettings.published`). This module only parses plain
values: it does not import Flower.
Which aggregation rules exist, and which options each takes, is the strategy registry's
business (:mod:`strategies.registry`); ``strategy`` and ``rule_options`` are checked
against it when the server builds the rule (:mod:`server.rules`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from federation.codecs import codec_names
from federation.fields import (
    SOURCE,
    Audience,
    check_choices,
    run_config_key,
    setting,
    setting_fields,
    to_run_config,
    values_from_run_config,
)
from umedpt.errors import ConfigError
from umedpt.models.presets import PRESETS
from umedpt.tracking import TrackingConfig, TrackingKind

__all__ = [
    "SOURCE",
    "RunSettings",
    "Weighting",
    "server_settings_for_app",
    "settings_for_app",
    "write_server_settings",
]
# Set by `umedpt-fl simulate`: Flower's in-process simulation gives apps an empty run
# config, so the simulation passes its settings to the apps (and their Ray workers,
# which inherit the environment) as JSON in this variable.
RUN_CONFIG_ENV = "UMEDPT_FL_RUN_CONFIG"
# Set by `umedpt-fl server` for its SuperLink (whose ServerApp process inherits it): the
# path of a JSON file, in the coordinator's own output folder, with the run's settings,
# those the app config that goes to every site does not carry.
SERVER_SETTINGS_ENV = "UMEDPT_FL_SERVER_SETTINGS"
THREADS_ENV = "UMEDPT_FL_THREADS"  # torch threads per simulated site (its CPU share)
SCHEDULES = ("constant", "cosine")  # the trainer's learning-rate schedules
SITES, SIMULATION = Audience.SITES, Audience.SIMULATION  # who gets a setting besides the server


class Weighting(StrEnum):
    """How replies are weighted when the server averages them."""

    AUTO = "auto"  # examples, or equal under secure aggregation
    EXAMPLES = "examples"  # by the examples each site trained on
    EQUAL = "equal"  # every site counts the same


@dataclass(frozen=True)
class RunSettings:
    """One federated run. Field ``foo_bar`` is run-config key ``foo-bar`` and flag ``--foo-bar``.

    Each field's help, flag and choices are declared here, once (:func:`federation.fields.
    setting`); ``umedpt-fl server`` and ``simulate`` build their options from them, with a
    few per-command defaults (``umedpt_fl.options.COMMAND_DEFAULTS``). The defaults below are
    those of a bare ``flwr run .`` (the project's pyproject mirrors them). An aggregation
    rule's own options (FedProx's ``proximal-mu`` ...) are declared by the rule and travel in
    ``rule_options`` by run-config key.
    """

    num_server_rounds: int = setting(5, "Federated rounds.", flag="--rounds", audience=SITES)
    # few steps between averages: little client drift (experiments/results/recipe.md)
    local_steps: int = setting(5, "Multi-task steps each site trains per round.", audience=SITES)
    eval_every: int = setting(1, "Evaluate on the sites every N rounds (and after the last).")
    strategy: str = setting("fedavg", "Aggregation rule of the server.")
    weighting: str = setting(
        Weighting.AUTO.value,
        "How site replies are weighted: by the examples each trained on, or equally "
        "(auto: by examples, equally under secure aggregation, which refuses examples).",
        choices=[w.value for w in Weighting],
    )
    min_sites: int = setting(1, "Fewest usable site replies for a round to count.")
    wait_for_sites: int = setting(0, "Sites connected before each round starts (0: --min-sites).")
    round_timeout: float = setting(
        600.0, "Seconds per round, for training and evaluation together."
    )
    node_wait_timeout: float = setting(300.0, "Seconds to wait for --min-sites sites.")
    preset: str = setting("tiny", "Model preset.", choices=PRESETS.names(), audience=SITES)
    encoder: str = setting(
        "", "Any timm encoder (overrides the preset's; '': the preset's).", audience=SITES
    )
    seed: int = setting(0, "Seed for initial weights and data order.", audience=SITES)
    lr: float = setting(0.0, "Sites' learning rate (0: the preset's).", audience=SITES)
    # On the federation's clock: round r trains steps (r-1)*L .. r*L-1 of num_server_rounds*L.
    schedule: str = setting(
        "cosine",
        "Sites' learning-rate schedule over the whole federation's steps: constant after "
        "the preset's warm-up, or cosine decay to 0 at the last round.",
        choices=SCHEDULES,
        audience=SITES,
    )
    share_blocks: bool = setting(
        False,
        "Aggregate the task-type blocks among the sites that use them, or keep each site's "
        "blocks at home with its heads (only the encoder is aggregated).",
        flag="--share-blocks/--no-share-blocks",
        audience=SITES,
    )
    resume: bool = setting(False, "Continue the run in --out.", flag="--resume")
    # A path is private: what was loaded is published as init_source (kind, hash, timm name).
    init: str = setting(
        "",
        "Warm start: a folder umedpt-fl wrote (global/, checkpoint/, an export) or "
        "timm:<name> (timm's pretrained weights, from this machine's caches); the server "
        "sends its encoder (and the shared blocks) in round 1. Not applied on --resume.",
        private=True,
    )
    # -- what travels (federation.codecs) and who trains each round --------------------
    compression: str = setting(
        "none",
        "How weights travel: float32 (none), half precision (fp16, range checked; bf16) or "
        "int8 per-tensor quantisation of each site's change with error feedback at the site "
        "(its weights come down in bf16). Sites send their change under every codec but none.",
        choices=codec_names(),
    )
    pack_arrays: bool = setting(
        True,
        "Send the weights as one packed byte buffer and a manifest, not one Flower Array per "
        "tensor (~7 transfers per hop instead of ~280; federation.packing).",
        flag="--pack-arrays/--no-pack-arrays",
    )
    sites_per_round: int = setting(
        0, "Train a seeded random N of the connected sites each round (0: all of them)."
    )
    fraction: float = setting(
        0.0,
        "Train a seeded random share (0-1] of the connected sites each round (0: all; "
        "not with --sites-per-round). Every site is still evaluated when due.",
    )
    # -- hostile or broken updates (strategies.defences) --------------------------------
    max_site_share: float = setting(1.0, "Most weight one site may have in an aggregate (0-1].")
    update_norm_bound: float = setting(
        0.0, "Reject a site's group update whose change norm is above (0: off)."
    )
    update_norm_ratio: float = setting(
        0.0, "Reject a group update above this multiple of the round's median (0: off)."
    )
    # -- client-level (central) differential privacy, per group at the server -----------
    client_dp_noise: float = setting(
        0.0, "Client-level DP: noise multiplier at the server (0: off)."
    )
    client_dp_clip: float = setting(
        0.0, "Client-level DP: clipping norm of each site's change, per group."
    )
    client_dp_delta: float = setting(1e-5, "Client-level DP: the delta epsilon is reported at.")
    client_dp_expected_sites: int = setting(
        0,
        "Client-level DP: the fixed number of sites each group's noised sum is divided by, "
        "set before the run, never the number that replied (0: --min-sites).",
    )
    # -- secure aggregation per group ---------------------------------------------------
    secure_aggregation: bool = setting(
        False,
        "Masked updates: the server sees only sums, per group.",
        flag="--secure-aggregation",
    )
    secagg_reconstruction_threshold: float = setting(
        0.66, "Secure aggregation: share of a group's sites needed to unmask it."
    )
    secagg_clipping_range: float = setting(
        8.0, "Secure aggregation: values are clipped to +-this before quantisation."
    )
    secagg_quantization_range: int = setting(
        4194304, "Secure aggregation: quantisation levels over the clipping range."
    )
    secagg_allow_unshared_blocks: bool = setting(
        False,
        "Secure aggregation: leave blocks that one site trains out of the aggregate "
        "(default: refuse to start).",
        flag="--secagg-allow-unshared-blocks",
    )
    # -- run tracking (umedpt.tracking), done by the server -----------------------------
    tracking: str = setting(
        TrackingKind.TENSORBOARD.value,
        "Where scalars go: TensorBoard event files in OUT/tensorboard, an MLflow run "
        "(needs the 'tracking' extra and a tracking URI), or none.",
        choices=[k.value for k in TrackingKind],
    )
    tracking_uri: str = setting("", "MLflow tracking URI ('': $MLFLOW_TRACKING_URI).", private=True)
    tracking_experiment: str = setting("umedpt-fl", "MLflow experiment of the run.")
    # -- filled in by the commands, not options ----------------------------------------
    out_dir: str = setting(
        "runs/federated", "Server side: report, checkpoints.", command_line=False, private=True
    )
    site_configs: str = setting(
        "", "Simulation: comma-separated site TOML paths, one per node.", command_line=False,
        audience=SIMULATION, private=True,
    )  # fmt: skip
    state_root: str = setting(
        "", "'' = each site's own state_dir; else <state-root>/<site>.", command_line=False,
        audience=SIMULATION, private=True,
    )  # fmt: skip
    run_key: str = setting("", "Set by the server: names the sites' state of this run.",
                           command_line=False, audience=SITES)  # fmt: skip
    init_source: str = setting(
        "", "Set by the server: what --init loaded (kind, groups, weights hash; no path).",
        command_line=False,
    )  # fmt: skip
    # An aggregation rule's own options, by run-config key (declared in the rule's module;
    # parsed and checked by the server when it builds the rule).
    rule_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = ("num_server_rounds", "local_steps", "eval_every", "min_sites")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(SOURCE, _key(name), f"must be >= 1, got {getattr(self, name)}")
        if self.wait_for_sites < 0:
            raise ConfigError(SOURCE, "wait-for-sites", "must be >= 0 (0 = min-sites)")
        if not 0 < self.max_site_share <= 1:
            raise ConfigError(
                SOURCE, "max-site-share", f"must be in (0, 1], got {self.max_site_share}"
            )
        for name in ("update_norm_bound", "update_norm_ratio", "client_dp_noise", "client_dp_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(SOURCE, _key(name), "must be >= 0 (0 = off)")
        if self.client_dp_noise > 0 and self.client_dp_clip <= 0:
            raise ConfigError(
                SOURCE,
                "client-dp-clip",
                "client-level DP (client-dp-noise > 0) needs a clipping norm",
            )
        if self.client_dp_expected_sites < 0:
            raise ConfigError(SOURCE, "client-dp-expected-sites", "must be >= 0 (0 = min-sites)")
        if not 0 < self.client_dp_delta < 1:
            raise ConfigError(SOURCE, "client-dp-delta", "must be in (0, 1)")
        if not 0 < self.secagg_reconstruction_threshold <= 1:
            raise ConfigError(SOURCE, "secagg-reconstruction-threshold", "must be in (0, 1]")
        if self.secagg_clipping_range <= 0 or self.secagg_quantization_range < 2:
            raise ConfigError(
                SOURCE, "secagg-clipping-range/secagg-quantization-range", "must be positive"
            )
        for name in ("round_timeout", "node_wait_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(SOURCE, _key(name), "must be positive")
        if not self.strategy:
            raise ConfigError(SOURCE, "strategy", "must name an aggregation rule")
        check_choices(self)
        for key, value in self.rule_options.items():
            if not isinstance(value, str | int | float | bool):
                raise ConfigError(SOURCE, key, f"expected a plain value, got {value!r}")
        if self.lr < 0:
            raise ConfigError(SOURCE, "lr", "must be >= 0 (0 = the preset's)")
        if self.sites_per_round < 0:
            raise ConfigError(SOURCE, "sites-per-round", "must be >= 0 (0 = every site)")
        if not 0 <= self.fraction <= 1:
            raise ConfigError(SOURCE, "fraction", f"must be in [0, 1], got {self.fraction}")
        if self.sites_per_round and self.fraction:
            raise ConfigError(
                SOURCE,
                "sites-per-round/fraction",
                "give one of them: a number of sites per round or a share of the sites",
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Parse kebab-case keys; the keys that are not run settings are the rules' options."""
        own = {f.key for f in setting_fields(cls)}
        rule_options = {k: v for k, v in run_config.items() if k not in own}
        return cls(**values_from_run_config(cls, run_config), rule_options=rule_options)

    @classmethod
    def of(cls, **values: Any) -> RunSettings:
        """Settings by field name, where a name that is no field is a rule's option
        (``RunSettings.of(strategy="fedprox", proximal_mu=0.1)``): for code and tests."""
        own = {f.name for f in setting_fields(cls)}
        options = dict(values.pop("rule_options", {}))
        options.update({_key(k): v for k, v in values.items() if k not in own})
        return cls(**{k: v for k, v in values.items() if k in own}, rule_options=options)

    def to_run_config(self) -> dict[str, Any]:
        """Every setting and rule option by run-config key (what Flower's run config holds)."""
        return {**to_run_config(self), **self.rule_options}

    def to_json(self) -> str:
        return json.dumps(self.to_run_config())

    def for_sites(self) -> dict[str, Any]:
        """What every site is given, by run-config key: the settings of audience SITES (the
        model, the seed, the sites' schedule), no rule option, no path, no address."""
        return {
            f.key: getattr(self, f.name)
            for f in setting_fields(type(self))
            if f.info.audience is Audience.SITES
        }

    def as_a_site_sees_it(self) -> RunSettings:
        """These settings with each one a site is not given at its default: what a
        ClientApp works with, whatever reached it (simulated sites keep their paths)."""
        kept = {
            f.name: getattr(self, f.name)
            for f in setting_fields(type(self))
            if f.info.audience is not Audience.SERVER
        }
        return type(self)(**kept)

    def published(self) -> dict[str, Any]:
        """Every setting and rule option but the private ones (paths and addresses): what
        checkpoint metadata, report.json and so the model card may hold."""
        private = {f.key for f in setting_fields(type(self)) if f.info.private}
        return {k: v for k, v in self.to_run_config().items() if k not in private}

    @property
    def samples_sites(self) -> bool:
        """True when each round trains a random subset of the connected sites."""
        return self.sites_per_round > 0 or 0 < self.fraction < 1

    @property
    def sites_to_wait_for(self) -> int:
        """How many sites must be connected before a round starts."""
        return max(self.min_sites, self.wait_for_sites)

    def tracking_config(self, run_name: str = "") -> TrackingConfig:
        """The server's tracker for this run (see :mod:`umedpt.tracking`)."""
        return TrackingConfig(
            kind=self.tracking,
            uri=self.tracking_uri,
            experiment=self.tracking_experiment,
            run_name=run_name,
        )

    def site_config_list(self) -> list[str]:
        return [p for p in self.site_configs.split(",") if p]


def _key(field_name: str) -> str:
    return run_config_key(field_name)


def settings_for_app(run_config: Mapping[str, Any]) -> RunSettings:
    """What a ServerApp or ClientApp runs with: Flower's run config plus simulate's overrides."""
    values: dict[str, Any] = dict(run_config)
    if overrides := os.environ.get(RUN_CONFIG_ENV):
        values.update(json.loads(overrides))
    return RunSettings.from_run_config(values)


def server_settings_for_app(run_config: Mapping[str, Any]) -> RunSettings:
    """What the coordinator's ServerApp runs with: Flower's run config (the sites' settings,
    under `umedpt-fl server`), the coordinator's settings file named in
    :data:`SERVER_SETTINGS_ENV` over it, and simulate's overrides over both."""
    values: dict[str, Any] = dict(run_config)
    if path := os.environ.get(SERVER_SETTINGS_ENV):
        try:
            values.update(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                path, SERVER_SETTINGS_ENV, f"cannot read the settings: {exc}"
            ) from exc
    if overrides := os.environ.get(RUN_CONFIG_ENV):
        values.update(json.loads(overrides))
    return RunSettings.from_run_config(values)


def write_server_settings(path: Path, settings: RunSettings) -> Path:
    """Write ``settings`` whole for the ServerApp (:func:`server_settings_for_app`), readable
    by this user alone (the tracking URI may hold credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as fh:
        fh.write(settings.to_json())
    return path
