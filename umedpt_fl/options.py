"""Command-line options shared by the federation's commands (`simulate`, `server`).

Choices are Enums built from the registries that own them (aggregation rules, model
presets, weightings), so ``--help`` lists exactly what a run accepts.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from federation.settings import SCHEDULES, RunSettings, Weighting
from strategies import strategy_names
from umedpt_fl.console import PresetName

StrategyName = StrEnum("StrategyName", {name: name for name in strategy_names()})
ScheduleName = StrEnum("ScheduleName", {name: name for name in SCHEDULES})

Rounds = Annotated[int, typer.Option("--rounds", help="Federated rounds.")]
LocalSteps = Annotated[int, typer.Option(help="Multi-task steps each site trains per round.")]
EvalEvery = Annotated[
    int, typer.Option(help="Evaluate on the sites every N rounds (and the last).")
]
Strategy = Annotated[StrategyName, typer.Option(help="Aggregation rule of the server.")]
WeightingOption = Annotated[Weighting, typer.Option(help="How site replies are weighted.")]
ProximalMu = Annotated[float, typer.Option(help="FedProx proximal weight mu.")]
ServerLr = Annotated[float, typer.Option(help="FedAdam server learning rate (eta).")]
TrimBeta = Annotated[
    float, typer.Option(help="Trimmed mean: fraction cut at each end, per coordinate.")
]
RoundTimeout = Annotated[
    float, typer.Option(help="Seconds per round, for training and evaluation together.")
]
MaxSiteShare = Annotated[
    float, typer.Option(help="Most weight one site may have in an aggregate (0-1].")
]
UpdateNormBound = Annotated[
    float, typer.Option(help="Reject a site's group update whose change norm is above (0: off).")
]
UpdateNormRatio = Annotated[
    float,
    typer.Option(help="Reject a group update above this multiple of the round's median (0: off)."),
]
ClientDpNoise = Annotated[
    float, typer.Option(help="Client-level DP: noise multiplier at the server (0: off).")
]
ClientDpClip = Annotated[
    float, typer.Option(help="Client-level DP: clipping norm of each site's change, per group.")
]
SecureAggregation = Annotated[
    bool,
    typer.Option(
        "--secure-aggregation", help="Masked updates: the server sees only sums, per group."
    ),
]
SecaggAllowUnsharedBlocks = Annotated[
    bool,
    typer.Option(
        "--secagg-allow-unshared-blocks",
        help="Secure aggregation: leave blocks that one site trains out of the aggregate "
        "(default: refuse to start).",
    ),
]
ScheduleOption = Annotated[
    ScheduleName,
    typer.Option(
        help="Sites' learning-rate schedule over the whole federation's steps: constant after "
        "the preset's warm-up, or cosine decay to 0 at the last round."
    ),
]
ShareBlocks = Annotated[
    bool,
    typer.Option(
        "--share-blocks/--no-share-blocks",
        help="Aggregate the task-type blocks among the sites that use them, or keep each "
        "site's blocks at home with its heads (only the encoder is aggregated).",
    ),
]
Preset = Annotated[PresetName, typer.Option(help="Model preset.")]
Encoder = Annotated[str | None, typer.Option(help="Any timm encoder (overrides the preset's).")]
Seed = Annotated[int, typer.Option(help="Seed for initial weights and data order.")]
Lr = Annotated[float | None, typer.Option(help="Sites' learning rate (default: preset's).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]
SiteFiles = Annotated[
    list[Path] | None,
    typer.Option("--site", help="Site TOML (repeatable); default: demo sites."),
]


def settings_from(**values: Any) -> RunSettings:
    """RunSettings from the CLI flags (names as in RunSettings; Enums become their values)."""
    plain = {k: v.value if isinstance(v, StrEnum) else v for k, v in values.items()}
    plain["encoder"] = plain.get("encoder") or ""
    plain["lr"] = plain.get("lr") or 0.0
    return RunSettings(**plain)
