"""What `server` and `simulate` print around a run: the settings checked, and its summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.table import Table

from federation.settings import RunSettings
from umedpt.tracking import TrackingKind, check_tracking
from umedpt_fl.console import console, print_tracking_hint
from umedpt_fl.options import RunOptions


def checked_settings(run: RunOptions, **overrides: Any) -> RunSettings:
    """The run's settings, with everything the server will refuse refused now (the rule and
    its options, tracking), so that a bad flag fails before anything starts."""
    from server.rules import check_rule_settings

    settings = run.settings(**overrides)
    check_rule_settings(settings)
    check_tracking(settings.tracking_config())
    return checked_init(settings)


def checked_init(settings: RunSettings) -> RunSettings:
    """``settings`` with ``--init`` as an absolute path, its weights read and fitted to the
    run's model now (InitError: exit 2 before anything starts); on ``--resume`` of a run
    that has saved state, the init is not applied again, and is not read."""
    from server.federation import initial_model
    from server.state import SERVER_STATE, has_server_state
    from umedpt.init_weights import TIMM_PREFIX

    if not settings.init:
        return settings
    if settings.resume and has_server_state(Path(settings.out_dir) / SERVER_STATE):
        console.print("--init is not applied on --resume: the run continues from its saved state")
        return settings
    if not settings.init.startswith(TIMM_PREFIX):
        settings = dataclasses.replace(
            settings, init=str(Path(settings.init).expanduser().resolve())
        )
    _, warm_start = initial_model(settings)
    if warm_start is not None:
        console.print(f"initial weights from --init: {warm_start.describe()}", highlight=False)
    return settings


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
        if traffic := report.get("traffic"):
            console.print(
                f"per round: {traffic['mean_down_per_round'] / 1e6:.1f} MB down "
                f"({traffic['downlink_codec']}), {traffic['mean_up_per_round'] / 1e6:.1f} MB up "
                f"({traffic.get('uplink_codec', traffic['codec'])})",
                highlight=False,
            )


def privacy_table(report: dict) -> Table | None:
    """Per site: what its DP cost so far, of what budget, at which noise; None without DP.

    Sample-level DP (a site's ``[privacy]`` table: DP-SGD at the site) and client-level DP
    (the server's noise over whole sites) are separate guarantees: one row each.
    """
    from server.report import privacy_summary

    sample_level = report.get("privacy") or privacy_summary(report)
    client_level = report.get("client_dp_sites", {})
    if not sample_level and not client_level:
        return None
    table = Table(title="privacy spent per site (epsilon at delta)")
    for column in ("site", "guarantee", "epsilon spent / target", "delta", "noise multiplier"):
        table.add_column(column, justify="left" if column in ("site", "guarantee") else "right")

    def number(value: float | None, digits: str = ".3g") -> str:
        return "-" if value is None or value != value else format(value, digits)

    for site, spent in sorted(sample_level.items()):
        table.add_row(
            site,
            "sample-level (DP-SGD at the site)",
            f"{number(spent['epsilon'])} / {number(spent.get('target_epsilon'))}",
            number(spent.get("delta")),
            number(spent.get("noise_multiplier")),
        )
    groups = report.get("client_dp", {})
    noise = next(iter(groups.values()), {}).get("noise_multiplier")
    for site, spent in sorted(client_level.items()):
        table.add_row(
            site,
            "client-level (noise at the server)",
            f"{number(spent['epsilon'])} / -",
            number(spent.get("delta")),
            number(noise),
        )
    return table


def print_run_end(report: dict, settings: RunSettings, out: Path) -> None:
    """The per-site summary and privacy spent, then where the run's charts are."""
    print_summary(report)
    if (table := privacy_table(report)) is not None:
        console.print(table)
    print_tracking_hint(TrackingKind(settings.tracking), out)
