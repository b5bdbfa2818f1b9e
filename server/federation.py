"""The federation's round loop on the server: initial weights, strategy, checkpoints, report.

After every round (``on_round_end``) the round's record goes to the checkpoint, report.json,
the run's tracker (TensorBoard, MLflow or none; :mod:`umedpt.tracking`) and the log: one
progress line, and one plain-words line per site that joined, dropped out or was rejected.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.superlink.grid.http_grid import HttpGrid

from federation import wire
from federation.packing import PackingGrid
from federation.settings import RunSettings
from server.lock import SERVERAPP_LOCK, folder_lock
from server.report import (
    asked_sites,
    describe_site,
    is_census,
    primary_metrics,
    round_scalars,
    site_event_lines,
    strategy_sections,
    traffic_summary,
    write_plot,
    write_report,
)
from server.rules import Rule, build_rule
from server.run_state import LiveRun
from server.state import (
    GLOBAL_CHECKPOINT,
    SERVER_STATE,
    RunExistsError,
    ServerProgress,
    has_server_state,
    load_server_state,
    save_server_state,
)
from strategies import RoundFailedError, RoundRecord
from umedpt.checkpoint import save_weights
from umedpt.init_weights import WarmStart, apply_init, read_init
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config
from umedpt.tasks import shared_blocks
from umedpt.tracking import (
    TENSORBOARD_DIR,
    GuardedTracker,
    NullTracker,
    Tracker,
    TrackingKind,
    create_tracker,
)

# Between two polls for the sites' replies; Flower's deployment grid waits a fixed 3 s.
REPLY_POLL_SECONDS = 0.25


def packed(grid: Grid) -> PackingGrid:
    """``grid`` sending weights packed (federation.packing) and, when it is the deployment's
    grid, polling for replies every :data:`REPLY_POLL_SECONDS`."""
    return PackingGrid(grid, REPLY_POLL_SECONDS if isinstance(grid, HttpGrid) else None)


def initial_weights(settings: RunSettings) -> ArrayRecord:
    """The shared weights every site starts from: the encoder, plus every task type's block
    when the run shares blocks; with ``init``, loaded from there (:func:`initial_model`)."""
    model, _ = initial_model(settings)
    return ArrayRecord(model.shared_state_dict())


def initial_model(settings: RunSettings) -> tuple[UMedPTModel, WarmStart | None]:
    """The seeded global model, warm-started from ``settings.init`` when one is given.

    The encoder always comes from the source, and each block the source holds too when the
    run shares blocks (otherwise the global model has none). InitError when the source is
    missing, unreadable or does not fit the run's preset and encoder.
    """
    architecture = model_config(settings.preset, settings.encoder or None)
    model = UMedPTModel(
        architecture,
        [],
        extra_blocks=shared_blocks() if settings.share_blocks else (),
        seed=settings.seed,
    )
    if not settings.init:
        return model, None
    return model, apply_init(model, read_init(settings.init, architecture))


EXPORT_DIR = "export"  # <out>/export/: the finished run's model card (MLflow tracking only)


def _round_dict(record: RoundRecord) -> dict[str, Any]:
    return asdict(record)


def open_tracker(settings: RunSettings, out: Path) -> Tracker:
    """The run's tracker, guarded: a backend that fails mid-run must not stop the rounds.

    One that cannot start (no MLflow in this process, a store that refuses) raises: the
    run fails before its first round, saying why.
    """
    config = settings.tracking_config(run_name=f"{out.name}-{settings.run_key}")
    return GuardedTracker(create_tracker(config, log_dir=out / TENSORBOARD_DIR))


def final_artifacts(out: Path) -> list[Path]:
    """What a tracker keeps of a finished run: report.json, the plot and the global
    checkpoint, those that exist."""
    names = ("report.json", "metrics.png", GLOBAL_CHECKPOINT)
    return [out / name for name in names if (out / name).exists()]


def fresh_model_card(out: Path) -> list[Path]:
    """Export this run's ``global/`` with its report into ``<out>/export`` and return the
    card's files. Written now, from this run, so that no card of an earlier run is logged;
    a failed export costs the card only (logged), never the run."""
    from umedpt.export.exporter import export_checkpoint
    from umedpt.export.model_card import CARD_JSON

    try:
        export_checkpoint(out / GLOBAL_CHECKPOINT, out / EXPORT_DIR, report=out / "report.json")
    except Exception as exc:  # the run is done; a card that cannot be made is not fatal
        log(WARNING, "no model card for the tracker: the export failed: %s", exc)
        return []
    return [out / EXPORT_DIR / "README.md", out / EXPORT_DIR / CARD_JSON]


class SiteLog:
    """The coordinator's per-round lines about sites (who joined, dropped, was rejected)."""

    def __init__(self) -> None:
        self.announced: set[int] = set()  # node ids already said to have joined
        self.previous: dict[str, Any] | None = None
        self.connected: set[str] = set()  # last known connected (sampled rounds add only)

    def lines(self, strategy: Rule, record: dict[str, Any]) -> list[str]:
        new = {n: s for n, s in strategy.sites.items() if n not in self.announced}
        self.announced |= set(new)
        joined = {s.name: describe_site(n, s.details) for n, s in new.items()}
        lines = site_event_lines(
            record, joined=joined, previous=self.previous, connected_before=self.connected
        )
        asked = asked_sites(record)
        self.connected = asked if is_census(record) else self.connected | asked
        self.previous = record
        return lines


def run_federation(grid: Grid, settings: RunSettings) -> dict[str, Any]:
    """Run (or resume) the federation; returns the final report.

    Exactly one ServerApp writes an output folder: it holds the folder's ServerApp lock
    while it runs, waiting a little for one that is still on its way out (that of a
    coordinator killed a moment ago) and refusing, with its PID, one that stays.
    """
    with folder_lock(Path(settings.out_dir), SERVERAPP_LOCK, role="ServerApp", wait=30.0):
        return _run_federation(grid, settings)


# Settings a run cannot change when it resumes: what travels, and the sites' schedule.
FIXED_ON_RESUME = ("share-blocks", "schedule", "local-steps", "preset", "encoder")


def check_resumable(saved: Mapping[str, Any], settings: RunSettings, out: Path) -> None:
    """Refuse to resume a run with settings that change what its saved state means.

    A run saved with its blocks shared holds them in its global weights and not in the sites'
    saved rounds (and the other way round); a changed schedule or step count would move every
    site's learning rate mid-run. ``--rounds`` may grow (the cosine then stretches to the new
    last round).
    """
    now = settings.to_run_config()
    changed = [k for k in FIXED_ON_RESUME if k in saved and saved[k] != now[k]]
    if changed:
        diffs = ", ".join(f"{k} {saved[k]!r} (now {now[k]!r})" for k in changed)
        raise RunExistsError(
            f"{out}: the run there was started with {diffs}; resume it with the same settings, "
            "or start a new run in another --out"
        )


def _run_federation(grid: Grid, settings: RunSettings) -> dict[str, Any]:
    out = Path(settings.out_dir)
    state_dir = out / SERVER_STATE
    started = time.time()
    strategy: Rule = build_rule(settings, query_timeout=min(settings.round_timeout, 300.0))
    history: list[dict[str, Any]] = []
    if settings.resume and has_server_state(state_dir):
        weights, strategy_state, progress = load_server_state(state_dir)
        check_resumable(progress.settings, settings, out)
        arrays = ArrayRecord(weights)
        strategy.load_state_arrays(strategy_state)
        run_key = progress.run_key
        history = progress.rounds
        strategy.restore_history(history)  # e.g. client-level DP releases so far
        start_round = progress.completed_round + 1
        log(INFO, "resuming run %s after round %d", run_key, progress.completed_round)
        if settings.init:
            log(WARNING, "--init is not applied on --resume: the saved state in %s wins", out)
        init_source = str(progress.settings.get("init-source", ""))
    else:
        if has_server_state(state_dir):
            raise RunExistsError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        if settings.resume:
            log(WARNING, "--resume: %s holds no completed round yet; starting at round 1", out)
        global_model, warm_start = initial_model(settings)
        arrays = ArrayRecord(global_model.shared_state_dict())
        init_source = warm_start.describe() if warm_start else ""
        if warm_start:
            log(INFO, "initial weights from --init: %s", init_source)
        run_key = settings.run_key or uuid.uuid4().hex[:12]
        start_round = 1
    settings = dataclasses.replace(settings, run_key=run_key, init_source=init_source)
    out.mkdir(parents=True, exist_ok=True)
    architecture = model_config(settings.preset, settings.encoder or None)
    model_bytes = sum(a.numpy().nbytes for a in arrays.values())

    def report(status: str) -> dict[str, Any]:
        sites = {
            s.name: {**s.details, "node_id": s.node_id, "blocks": list(s.blocks)}
            for s in strategy.sites.values()
        }
        return {
            "status": status,
            "config": settings.published(),  # no path, no tracking URI
            "sites": sites,
            "global_shared_bytes": model_bytes,
            "rounds": history,
            "traffic": traffic_summary(  # bytes per direction
                history, settings.compression, secure_aggregation=settings.secure_aggregation
            ),
            **strategy_sections(strategy),
            "tracking": tracker.where,
            "seconds": time.time() - started,
        }

    tracker: Tracker = NullTracker()
    site_log = SiteLog()
    live = LiveRun.begin(  # the dashboard's run-state file (server.run_state)
        out, settings.num_server_rounds, run_key=run_key,
        resumed_after=start_round - 1 if start_round > 1 else None,
    )  # fmt: skip
    live.write(report("running"), running_round=start_round)

    def on_round_end(server_round: int, new_arrays: ArrayRecord, record: RoundRecord) -> None:
        history.append(_round_dict(record))
        for line in site_log.lines(strategy, history[-1]):
            log(INFO, line)
        current = report("running")
        save_server_state(
            state_dir,
            new_arrays.to_torch_state_dict(),
            architecture,
            strategy.state_arrays(),
            ServerProgress(server_round, run_key, settings.published(), history, current["sites"]),
        )
        write_report(out, current)
        live.write(current, running_round=server_round + 1)
        tracker.log_scalars(server_round, round_scalars(history[-1]))
        log(INFO, progress_line(server_round, settings.num_server_rounds, record, current["sites"]))

    status = "failed"
    try:
        tracker = open_tracker(settings, out)
        log(INFO, "tracking: %s", tracker.where)
        if start_round > settings.num_server_rounds:
            log(WARNING, "all %d rounds are already done", settings.num_server_rounds)
            result_arrays = arrays
        else:
            result = strategy.start(
                packed(grid) if settings.pack_arrays else grid,
                arrays,
                num_rounds=settings.num_server_rounds,
                timeout=settings.round_timeout,
                train_config=ConfigRecord({wire.RUN_KEY: run_key}),
                evaluate_config=ConfigRecord({wire.RUN_KEY: run_key}),
                start_round=start_round,
                on_round_end=on_round_end,
            )
            result_arrays = result.arrays
        save_weights(
            out / GLOBAL_CHECKPOINT,
            result_arrays.to_torch_state_dict(),
            architecture,
            meta={
                "kind": "federated",
                "run_key": run_key,
                "rounds": settings.num_server_rounds,
                "settings": settings.published(),  # read by the model card: no path, no URI
            },
        )
        status = "completed"
    except RoundFailedError as exc:
        if strategy.rounds:  # the failed round never reached on_round_end
            failed = _round_dict(strategy.rounds[max(strategy.rounds)])
            for line in site_log.lines(strategy, failed):
                log(INFO, line)
        log(WARNING, "federation failed: %s", exc)
        raise
    finally:
        final = report(status)
        write_report(out, final)
        live.write(final, running_round=None)
        write_plot(out, final)
        artifacts = final_artifacts(out)
        if status == "completed" and settings.tracking == TrackingKind.MLFLOW.value:
            artifacts += fresh_model_card(out)
        for path in artifacts:
            tracker.log_artifact(path)
        tracker.close()
    return final


def progress_line(server_round: int, total: int, record: RoundRecord, sites: dict[str, Any]) -> str:
    """'round 3/5 (12.1 s, 2/2 sites replied): site-a cls/balanced_accuracy=0.81 | ...'."""
    primaries = primary_metrics(sites)
    parts = []
    for site, metrics in sorted(record.eval_metrics.items()):
        keys = [wire.task_metric(task, metric) for task, metric in primaries.get(site, [])]
        shown = [f"{key}={metrics[key]:.3f}" for key in keys if key in metrics]
        parts.append(f"{site} " + " ".join(shown))
    rejected = f"; rejected {len(record.rejected)}" if record.rejected else ""
    replied = f"{len(record.train_metrics)}/{len(record.bytes_sent)} sites replied"
    if record.sites_available:  # a seeded sample of the sites trained (strategies.sampling)
        replied = f"{len(record.bytes_sent)} of {record.sites_available} sites trained, {replied}"
    evaluated = ": " + " | ".join(parts) if parts else " (not evaluated this round)"
    return f"round {server_round}/{total} ({record.seconds:.1f} s, {replied}){evaluated}{rejected}"
