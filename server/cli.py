"""The coordinator's commands: `simulate` (one machine) and `server` (a real federation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from umedpt.cli import app, console, fail, setup_logging
from umedpt.errors import UmedptError
from umedpt.run_config import RunSettings

Rounds = Annotated[int, typer.Option("--rounds", help="Federated rounds.")]
LocalSteps = Annotated[int, typer.Option(help="Multi-task steps each site trains per round.")]
EvalEvery = Annotated[
    int, typer.Option(help="Evaluate on the sites every N rounds (and the last).")
]
Strategy = Annotated[str, typer.Option(help="Server optimizer: fedavg, fedprox or fedadam.")]
Weighting = Annotated[str, typer.Option(help="Weight sites by 'examples' or 'equal'.")]
ProximalMu = Annotated[float, typer.Option(help="FedProx proximal weight mu.")]
ServerLr = Annotated[float, typer.Option(help="FedAdam server learning rate (eta).")]
MinSites = Annotated[int, typer.Option(help="Fewest usable site replies for a round to count.")]
RoundTimeout = Annotated[float, typer.Option(help="Seconds a round waits for sites.")]
Preset = Annotated[str, typer.Option(help="Model preset: tiny, swin-t, resnet18.")]
Encoder = Annotated[str | None, typer.Option(help="Any timm encoder (overrides the preset's).")]
Seed = Annotated[int, typer.Option(help="Seed for initial weights and data order.")]
Lr = Annotated[float | None, typer.Option(help="Sites' learning rate (default: preset's).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]


def settings_from(**values: object) -> RunSettings:
    """RunSettings from the CLI flags (names as in RunSettings)."""
    values["encoder"] = values.get("encoder") or ""
    values["lr"] = values.get("lr") or 0.0
    return RunSettings(**values)  # type: ignore[arg-type]


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


@app.command("simulate")
def simulate_command(
    site: Annotated[
        list[Path] | None,
        typer.Option("--site", help="Site TOML (repeatable); default: demo sites."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/simulation"),
    rounds: Rounds = 6,
    local_steps: LocalSteps = 15,
    eval_every: EvalEvery = 1,
    strategy: Strategy = "fedavg",
    weighting: Weighting = "examples",
    proximal_mu: ProximalMu = 0.01,
    server_lr: ServerLr = 0.01,
    min_sites: MinSites = 1,
    round_timeout: RoundTimeout = 600.0,
    preset: Preset = "tiny",
    encoder: Encoder = None,
    seed: Seed = 0,
    lr: Lr = None,
    resume: Resume = False,
    cpus_per_site: Annotated[
        float, typer.Option(help="CPU cores reserved per simulated site.")
    ] = 1.0,
    gpus_per_site: Annotated[float, typer.Option(help="GPU share per simulated site.")] = 0.0,
    verbose: Verbose = False,
) -> None:
    """Federate sites on this machine with Flower's simulation engine and report per site."""
    from server.simulate import SimulationFailedError, simulate
    from umedpt.data.demo import write_demo_federation

    setup_logging(verbose)
    try:
        if not site:
            site = write_demo_federation(out / "demo-data", seed=seed)
            console.print(f"using the demo sites in {out / 'demo-data'}")
        settings = settings_from(
            num_server_rounds=rounds, local_steps=local_steps, eval_every=eval_every,
            strategy=strategy, weighting=weighting, proximal_mu=proximal_mu, server_lr=server_lr,
            min_sites=min_sites, round_timeout=round_timeout, preset=preset, encoder=encoder,
            seed=seed, lr=lr, out_dir=str(out.resolve()), resume=resume,
            state_root=str((out / "sites").resolve()),
        )  # fmt: skip
        report = simulate(
            list(site),
            settings,
            cpus_per_site=cpus_per_site,
            gpus_per_site=gpus_per_site,
            verbose=verbose,
        )
    except (UmedptError, SimulationFailedError, OSError, ValueError) as exc:
        raise fail(str(exc), code=1) from exc
    print_summary(report)
    console.print(
        f"report: {out / 'report.json'}, plot: {out / 'metrics.png'}, global weights: "
        f"{out / 'global'}, site heads: {out / 'sites'}/<site>/runs/*/latest-heads"
    )


@app.command("server")
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
    rounds: Rounds = 10,
    local_steps: LocalSteps = 50,
    eval_every: EvalEvery = 1,
    strategy: Strategy = "fedavg",
    weighting: Weighting = "examples",
    proximal_mu: ProximalMu = 0.01,
    server_lr: ServerLr = 0.01,
    round_timeout: RoundTimeout = 1800.0,
    node_wait_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for --min-sites sites.")
    ] = 3600.0,
    preset: Preset = "tiny",
    encoder: Encoder = None,
    seed: Seed = 0,
    lr: Lr = None,
    resume: Resume = False,
    verbose: Verbose = False,
) -> None:
    """Start the coordinator (a Flower SuperLink with persistent state) and run the federation."""
    import json

    from server.coordinator import SuperLinkOptions, coordinate
    from server.processes import FlowerProcessError

    setup_logging(verbose)
    try:
        options = SuperLinkOptions(
            host=host, port=port, database=(out / "superlink.db").resolve(), insecure=insecure,
            certfile=ssl_certfile, keyfile=ssl_keyfile, ca_certfile=ssl_ca_certfile,
        )  # fmt: skip
        settings = settings_from(
            num_server_rounds=rounds, local_steps=local_steps, eval_every=eval_every,
            strategy=strategy, weighting=weighting, proximal_mu=proximal_mu, server_lr=server_lr,
            min_sites=min_sites, round_timeout=round_timeout, node_wait_timeout=node_wait_timeout,
            preset=preset, encoder=encoder, seed=seed, lr=lr, out_dir=str(out.resolve()),
            resume=resume,
        )  # fmt: skip
        coordinate(settings, options)
    except (UmedptError, FlowerProcessError, OSError, ValueError) as exc:
        raise fail(str(exc), code=1) from exc
    print_summary(json.loads((out / "report.json").read_text()))
