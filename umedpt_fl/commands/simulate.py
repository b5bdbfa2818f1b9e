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
from umedpt_fl.commands.dashboard import DashboardAddress, start_dashboard
from umedpt_fl.console import (
    BAD_INPUT_ERRORS,
    ExitCode,
    console,
    fail,
    setup_logging,
)
from umedpt_fl.options import RunOptions, Verbose, with_run_settings
from umedpt_fl.run_summary import checked_settings, print_run_end


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


@with_run_settings("simulate")
def simulate_command(
    run: RunOptions,
    site: Annotated[
        list[Path] | None,
        typer.Option("--site", help="Site TOML (repeatable); default: demo sites."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/simulation"),
    cpus_per_site: Annotated[
        float, typer.Option(help="CPU cores reserved per simulated site.")
    ] = 1.0,
    gpus_per_site: Annotated[float, typer.Option(help="GPU share per simulated site.")] = 0.0,
    dashboard: DashboardAddress = None,
    verbose: Verbose = False,
) -> None:
    """Federate sites on this machine with Flower's simulation engine and report per site."""
    from umedpt.data.demo import write_demo_federation
    from umedpt_fl.simulation import SimulationFailedError, SimulationUnavailableError, simulate

    setup_logging(verbose)
    try:
        if not site:
            # The four labelled demo sites: the unlabelled clinic-e is written beside them and
            # joins with --site (one more site per round costs the demo a third more time
            # on two cores).
            *site, unlabelled = write_demo_federation(out / "demo-data", seed=run["seed"])
            console.print(
                f"using the demo sites in {out / 'demo-data'} (add the unlabelled one with "
                f"--site {unlabelled})"
            )
        sites = check_sites(list(site))
        min_sites = run["min_sites"]
        if min_sites is not None and not 1 <= min_sites <= len(sites):
            raise ConfigError("--min-sites", "min-sites", f"must be 1..{len(sites)}")
        settings = checked_settings(
            run,
            min_sites=min_sites or len(sites),
            out_dir=str(out.resolve()),
            state_root=str((out / "sites").resolve()),
        )
        start_dashboard(dashboard, out)  # a thread of this process, for as long as it runs
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
    console.print(
        f"report: {out / 'report.json'}, plot: {out / 'metrics.png'}, global weights: "
        f"{out / 'global'}, site heads (and blocks): {out / 'sites'}/<site>/runs/*/latest-heads"
    )
    print_run_end(report, settings, out)
