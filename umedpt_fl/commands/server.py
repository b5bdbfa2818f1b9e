"""The coordinator's command: `server` starts a SuperLink and runs the federation on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    Strategy,
    TrimBeta,
    UpdateNormBound,
    UpdateNormRatio,
    Verbose,
    WeightingOption,
    settings_from,
)

MinSites = Annotated[int, typer.Option(help="Fewest usable site replies for a round to count.")]


def print_summary(report: dict) -> None:
    from server.report import site_summary

    for site, rows in site_summary(report).items():
        table = Table(title=f"site {site}: validation, first -> last round")
        for column in ("metric", "first", "last", "change"):
            table.add_column(column, justify="right" if column != "metric" else "left")
        for key, (first, last) in rows.items():
            if first is None or last is None:
                continue
            table.add_row(key, f"{first:.4f}", f"{last:.4f}", f"{last - first:+.4f}")
        console.print(table)
    rounds = report.get("rounds", [])
    if rounds:
        sent = sum(
            sum(r["bytes_sent"].values()) + sum(r.get("bytes_sent_for_evaluation", {}).values())
            for r in rounds
        )
        received = sum(sum(r["bytes_received"].values()) for r in rounds)
        console.print(
            f"{len(rounds)} rounds, {sent / 1e6:.1f} MB sent to sites, "
            f"{received / 1e6:.1f} MB received; total {report.get('seconds', 0):.1f} s"
        )


def server_command(
    out: Annotated[
        Path, typer.Option(help="Output folder (report, checkpoints, SuperLink state).")
    ],
    min_sites: MinSites = 2,
    host: Annotated[str, typer.Option(help="Address the SuperLink listens on.")] = "0.0.0.0",
    port: Annotated[
        int, typer.Option(help="SuperLink port (Fleet, Control and Runtime APIs).")
    ] = 9093,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plain HTTP (trusted test networks only).")
    ] = False,
    ssl_certfile: Annotated[Path | None, typer.Option(help="Server TLS certificate.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="Server TLS private key.")] = None,
    ssl_ca_certfile: Annotated[Path | None, typer.Option(help="CA certificate.")] = None,
    no_node_auth: Annotated[
        bool,
        typer.Option(
            "--no-node-auth",
            help="Accept any SuperNode that trusts our CA (default with TLS: registered "
            "sites only, see `umedpt-fl sites register`).",
        ),
    ] = False,
    rounds: Rounds = 100,
    local_steps: LocalSteps = 5,
    eval_every: EvalEvery = 5,
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
    wait_for_sites: Annotated[
        int, typer.Option(help="Sites connected before each round starts (default: --min-sites).")
    ] = 0,
    round_timeout: RoundTimeout = 1800.0,
    node_wait_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for --min-sites sites.")
    ] = 3600.0,
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
    verbose: Verbose = False,
) -> None:
    """Start the coordinator (a Flower SuperLink with persistent state) and run the federation.

    Sites reach the Fleet API on --host/--port (through a gateway that serves nothing
    else); the SuperLink and its Control API listen on 127.0.0.1 only.
    """
    from federation.processes import FlowerProcessError
    from server.coordinator import (
        PortTakenError,
        RunInterruptedError,
        SuperLinkOptions,
        coordinate,
    )
    from server.lock import FolderLockedError
    from server.state import RunExistsError

    setup_logging(verbose)
    try:
        options = SuperLinkOptions(
            host=host, port=port, database=(out / "superlink.db").resolve(), insecure=insecure,
            certfile=ssl_certfile, keyfile=ssl_keyfile, ca_certfile=ssl_ca_certfile,
            node_auth=not (insecure or no_node_auth),
        )  # fmt: skip
        settings = settings_from(
            num_server_rounds=rounds, local_steps=local_steps, eval_every=eval_every,
            strategy=strategy, weighting=weighting, proximal_mu=proximal_mu, server_lr=server_lr,
            trim_beta=trim_beta, max_site_share=max_site_share,
            update_norm_bound=update_norm_bound, update_norm_ratio=update_norm_ratio,
            client_dp_noise=client_dp_noise, client_dp_clip=client_dp_clip,
            secure_aggregation=secure_aggregation,
            secagg_allow_unshared_blocks=secagg_allow_unshared_blocks, min_sites=min_sites,
            wait_for_sites=wait_for_sites, round_timeout=round_timeout,
            node_wait_timeout=node_wait_timeout, preset=preset, encoder=encoder, seed=seed, lr=lr,
            schedule=schedule, share_blocks=share_blocks,
            out_dir=str(out.resolve()), resume=resume, tracking=tracking,
            tracking_uri=tracking_uri or "", tracking_experiment=tracking_experiment,
        )  # fmt: skip
        check_tracking(settings.tracking_config())
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    try:
        coordinate(settings, options)
    except (FolderLockedError, PortTakenError, RunExistsError) as exc:
        raise fail(str(exc)) from exc
    except RunInterruptedError as exc:
        raise fail(str(exc), 128 + exc.signum) from exc
    except FlowerProcessError as exc:
        raise fail(str(exc), ExitCode.RUN_FAILED) from exc
    print_summary(json.loads((out / "report.json").read_text()))
    print_tracking_hint(tracking, out)
