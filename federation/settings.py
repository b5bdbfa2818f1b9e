"""Settings of a federated run, parsed from Flower's run config (kebab-case keys).

Server and sites read the same run config, so both sides agree on the model preset,
seed and learning rate. This module only parses plain values: it does not import Flower.
Which aggregation rules exist is the strategy registry's business
(:mod:`strategies.registry`); ``strategy`` is checked against it when the server builds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from umedpt.errors import ConfigError
from umedpt.tracking import TrackingConfig, TrackingKind

SOURCE = "run config"
# Set by `umedpt-fl simulate`: Flower's in-process simulation gives apps an empty run
# config, so the simulation passes its settings to the apps (and their Ray workers,
# which inherit the environment) as JSON in this variable.
RUN_CONFIG_ENV = "UMEDPT_FL_RUN_CONFIG"
THREADS_ENV = "UMEDPT_FL_THREADS"  # torch threads per simulated site (its CPU share)
SCHEDULES = ("constant", "cosine")  # the trainer's learning-rate schedules


class Weighting(StrEnum):
    """How replies are weighted when the server averages them."""

    EXAMPLES = "examples"  # by the examples each site trained on
    EQUAL = "equal"  # every site counts the same


@dataclass(frozen=True)
class RunSettings:
    """One federated run. Field ``foo_bar`` is run-config key ``foo-bar``."""

    num_server_rounds: int = 5
    local_steps: int = 5  # few steps between averages: little client drift (results/recipe.md)
    eval_every: int = 1  # evaluate on the sites every N rounds (and after the last)
    strategy: str = "fedavg"  # a name in strategies.registry (fedavg, fedprox, fedadam, ...)
    weighting: str = Weighting.EXAMPLES.value
    proximal_mu: float = 0.01  # FedProx only
    server_lr: float = 0.01  # FedAdam only (eta)
    trim_beta: float = 0.2  # trimmed mean only: fraction cut at each end per coordinate
    min_sites: int = 1  # fewest usable replies for a round to count
    wait_for_sites: int = 0  # sites connected before a round starts; 0 = min-sites
    round_timeout: float = 600.0  # seconds a round waits for replies
    node_wait_timeout: float = 300.0  # seconds to wait for min-sites to connect
    preset: str = "tiny"
    encoder: str = ""  # "" = the preset's encoder
    seed: int = 0
    lr: float = 0.0  # 0 = the preset's learning rate
    # The sites' learning-rate schedule, on the federation's clock (round r trains steps
    # (r-1)*L .. r*L-1 of num_server_rounds*L): "constant" after the preset's warm-up, or
    # "cosine" decay to 0 at the last round.
    schedule: str = "cosine"
    # Aggregate the shared blocks among the sites that use them (True), or only the encoder,
    # each site keeping its blocks at home like its heads (False).
    share_blocks: bool = False
    out_dir: str = "runs/federated"  # server side: report, checkpoints
    resume: bool = False
    site_configs: str = ""  # simulation: comma-separated site TOML paths, one per node
    state_root: str = ""  # "" = each site's own state_dir; else <state-root>/<site>
    run_key: str = ""  # set by the server: names the sites' state of this run
    # -- hostile or broken updates (strategies.defences) --------------------------------
    max_site_share: float = 1.0  # most weight one site may have in an aggregate, (0, 1]
    update_norm_bound: float = 0.0  # reject a group update whose change norm is above; 0 = off
    update_norm_ratio: float = 0.0  # ... above this multiple of the round's median; 0 = off
    # -- client-level (central) differential privacy, per group at the server -----------
    client_dp_noise: float = 0.0  # Gaussian noise multiplier; 0 = off
    client_dp_clip: float = 0.0  # clipping norm of each site's change, per group
    client_dp_delta: float = 1e-5  # delta the central accountant reports epsilon at
    # -- secure aggregation per group ---------------------------------------------------
    secure_aggregation: bool = False
    secagg_reconstruction_threshold: float = 0.66  # share of a group's sites to unmask
    secagg_clipping_range: float = 8.0  # values are clipped to +-this before quantisation
    secagg_quantization_range: int = 4194304  # quantisation levels over the clipping range
    secagg_allow_unshared_blocks: bool = False  # leave blocks of one site out (else refuse)
    # -- run tracking (umedpt.tracking), done by the server -----------------------------
    tracking: str = TrackingKind.TENSORBOARD.value  # tensorboard | mlflow | none
    tracking_uri: str = ""  # MLflow tracking URI; "" = $MLFLOW_TRACKING_URI
    tracking_experiment: str = "umedpt-fl"  # MLflow experiment

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
        if self.weighting not in {w.value for w in Weighting}:
            valid = ", ".join(w.value for w in Weighting)
            raise ConfigError(
                SOURCE, "weighting", f"must be one of {valid}, got {self.weighting!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                SOURCE, "schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.tracking not in {k.value for k in TrackingKind}:
            valid = ", ".join(k.value for k in TrackingKind)
            raise ConfigError(SOURCE, "tracking", f"must be one of {valid}, got {self.tracking!r}")
        if not 0 <= self.trim_beta < 0.5:
            raise ConfigError(SOURCE, "trim-beta", f"must be in [0, 0.5), got {self.trim_beta}")
        if self.proximal_mu < 0 or self.server_lr <= 0 or self.lr < 0:
            raise ConfigError(
                SOURCE, "proximal-mu/server-lr/lr", "must be non-negative (server-lr positive)"
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Parse kebab-case keys; unknown keys are ignored (Flower adds its own)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = _key(f.name)
            if key not in run_config:
                continue
            values[f.name] = _coerce(run_config[key], f.type, key)
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        return {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_run_config())

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
    return field_name.replace("_", "-")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(SOURCE, key, f"expected {kind}, got {value!r}") from None


def settings_for_app(run_config: Mapping[str, Any]) -> RunSettings:
    """What a ServerApp or ClientApp runs with: Flower's run config plus simulate's overrides."""
    values: dict[str, Any] = dict(run_config)
    if overrides := os.environ.get(RUN_CONFIG_ENV):
        values.update(json.loads(overrides))
    return RunSettings.from_run_config(values)
