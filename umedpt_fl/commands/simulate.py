"""`umedpt-fl simulate`: a whole federation on this machine, with Flower's simulation engine.

Every site file and its data are read before the simulation starts, so a wrong path is
named at once; and by default every listed site must answer every round, so a run that
lost a site fails instead of quietly training the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from umedpt.config import SiteConfig, load_site_config
from umedpt.errors import ConfigError
from umedpt.tracking import TrackingKind, check_tracking
from umedpt_fl.console import (
    BAD_INPUT_ERRORS,
    ExitCode,
    TrackingExperiment,
    TrackingOption,
    TrackingUri,
    console,
    fail,
    print_tracking_hint,
    setup_logging,
)
from umedpt_fl.options import (
    ClientDpClip,
    ClientDpNoise,
    Encoder,
    EvalEvery,
    LocalSteps,
    Lr,
    MaxSiteShare,
    Preset,
    ProximalMu,
    Resume,
    Rounds,
    RoundTimeout,
    ScheduleOption,
    SecaggAllowUnsharedBlocks,
    SecureAggregation,
    Seed,
    ServerLr,
    ShareBlocks,
    SiteFiles,
    Strategy,
    TrimBeta,
    UpdateNormBound,
    UpdateNormRatio,
    Verbose,
    WeightingOption,
    settings_from,
)


def check_sites(files: list[Path]) -> list[SiteConfig]:
    """Read every site file and all its data; raise naming the first file that is wrong."""
    from umedpt.data.loading import load_task_data

    sites: list[SiteConfig] = []
    for file in files:
        site = load_site_config(file)
        if clash := next((s for s in sites if s.name == site.name), None):
            raise ConfigError(
                site.file, "name", f"site name '{site.name}' is also used by {clash.file}"
            )
        for task in site.tasks:
            data = load_task_data(task)
            if not data.splits.get("train"):
                raise ConfigError(site.file, f"{task.field_prefix}.path", "no training samples")
        console.print(f"site {site.name}: {', '.join(t.name for t in site.tasks)} ({site.file})")
        sites.append(site)
    return sites


def simulate_command(
    site: SiteFiles = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/simulation"),
    rounds: Rounds = 18,
    local_steps: LocalSteps = 5,
    eval_every: EvalEvery = 3,
    strategy: Strategy = "fedavg",  # type: ignore[assignment]
    weighting: WeightingOption = "examples",  # type: ignore[assignment]
    proximal_mu: ProximalMu = 0.01,
    server_lr: ServerLr = 0.01,
    trim_beta: TrimBeta = 0.2,
    max_site_share: MaxSiteShare = 1.0,
    update_norm_bound: UpdateNormBound = 0.0,
    update_norm_ratio: UpdateNormRatio = 0.0,
    client_dp_noise: ClientDpNoise = 0.0,
    client_dp_clip: ClientDpClip = 0.0,
    secure_aggregation: SecureAggregation = False,
    secagg_allow_unshared_blocks: SecaggAllowUnsharedBlocks = False,
    min_sites: Annotated[
        int | None,
        typer.Option(help="Fewest usable site replies for a round to count (default: all)."),
    ] = None,
    round_timeout: RoundTimeout = 600.0,
    preset: Preset = "tiny",  # type: ignore[assignment]
    encoder: Encoder = None,
    seed: Seed = 0,
    lr: Lr = None,
    schedule: ScheduleOption = "cosine",  # type: ignore[assignment]
    share_blocks: ShareBlocks = False,
    resume: Resume = False,
    tracking: TrackingOption = TrackingKind.TENSORBOARD,
    tracking_uri: TrackingUri = None,
    tracking_experiment: TrackingExperiment = "umedpt-fl",
    cpus_per_site: Annotated[
        float, typer.Option(help="CPU cores reserved per simulated site.")
    ] = 1.0,
    gpus_per_site: Annotated[float, typer.Option(help="GPU share per simulated site.")] = 0.0,
    verbose: Verbose = False,
) -> None:
    """Federate sites on this machine with Flower's simulation engine and report per site."""
    from umedpt.data.demo import write_demo_federation
    from umedpt_fl.commands.server import print_summary
    from umedpt_fl.simulation import SimulationFailedError, SimulationUnavailableError, simulate

    setup_logging(verbose)
    try:
        if not site:
            site = write_demo_federation(out / "demo-data", seed=seed)
            console.print(f"using the demo sites in {out / 'demo-data'}")
        sites = check_sites(list(site))
        if min_sites is not None and not 1 <= min_sites <= len(sites):
            raise ConfigError("--min-sites", "min-sites", f"must be 1..{len(sites)}")
        settings = settings_from(
            num_server_rounds=rounds, local_steps=local_steps, eval_every=eval_every,
            strategy=strategy, weighting=weighting, proximal_mu=proximal_mu, server_lr=server_lr,
            trim_beta=trim_beta, max_site_share=max_site_share,
            update_norm_bound=update_norm_bound, update_norm_ratio=update_norm_ratio,
            client_dp_noise=client_dp_noise, client_dp_clip=client_dp_clip,
            secure_aggregation=secure_aggregation,
            secagg_allow_unshared_blocks=secagg_allow_unshared_blocks,
            min_sites=min_sites or len(sites),
            round_timeout=round_timeout,
            preset=preset, encoder=encoder, seed=seed, lr=lr,
            schedule=schedule, share_blocks=share_blocks, out_dir=str(out.resolve()),
            resume=resume, state_root=str((out / "sites").resolve()), tracking=tracking,
            tracking_uri=tracking_uri or "", tracking_experiment=tracking_experiment,
        )  # fmt: skip
        check_tracking(settings.tracking_config())
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    try:
        report = simulate(
            [s.file for s in sites],
            settings,
            cpus_per_site=cpus_per_site,
            gpus_per_site=gpus_per_site,
            verbose=verbose,
        )
    except SimulationUnavailableError as exc:
        raise fail(str(exc)) from exc
    except SimulationFailedError as exc:
        raise fail(str(exc), ExitCode.RUN_FAILED) from exc
    except KeyboardInterrupt:
        raise fail(
            f"interrupted; restart with --resume to continue from the last round in {out}",
            ExitCode.INTERRUPTED,
        ) from None
    print_summary(report)
    console.print(
        f"report: {out / 'report.json'}, plot: {out / 'metrics.png'}, global weights: "
        f"{out / 'global'}, site heads (and blocks): {out / 'sites'}/<site>/runs/*/latest-heads"
    )
    print_tracking_hint(tracking, out)
