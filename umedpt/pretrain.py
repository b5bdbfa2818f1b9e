"""Centralized UMedPT pretraining: all listed sites' tasks in one process (the baseline)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from umedpt.checkpoint import save_checkpoint
from umedpt.config import SiteConfig, TaskConfig
from umedpt.data.loading import load_task_data
from umedpt.device import resolve_device
from umedpt.errors import ConfigError
from umedpt.init_weights import apply_init, read_init
from umedpt.model import UMedPTModel, count_parameters
from umedpt.models.presets import model_config
from umedpt.tracking import TENSORBOARD_DIR, GuardedTracker, Tracker, TrackingConfig, create_tracker
from umedpt.training.seeding import seed_everything
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TaskStep, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """A centralized run: which model, how long, where."""

    preset: str = "tiny"
    encoder: str | None = None  # any timm name; overrides the preset's encoder
    epochs: int = 3
    steps: int | None = None  # total multi-task steps; overrides epochs
    eval_every: int | None = None  # steps between validations; default one epoch
    seed: int = 0
    device: str = "auto"
    lr: float | None = None
    schedule: str = "constant"
    # Warm start (umedpt.init_weights): a checkpoint or timm folder, or timm:<name>.
    init: str | None = None


def collect_tasks(sites: Sequence[SiteConfig]) -> list[TaskConfig]:
    """All sites' tasks; task names must be unique across the sites of one run."""
    owner: dict[str, SiteConfig] = {}
    tasks = []
    for site in sites:
        for task in site.tasks:
            if task.name in owner:
                raise ConfigError(
                    site.file,
                    f"{task.field_prefix}.name",
                    f"task '{task.name}' is also defined in {owner[task.name].file}; "
                    "task names must be unique across the sites of one run",
                )
            owner[task.name] = site
            tasks.append(task)
    return tasks


def load_runs(tasks: Sequence[TaskConfig]) -> list[TaskRun]:
    runs = []
    for task in tasks:
        data = load_task_data(task)
        if not data.splits.get("train"):
            raise ConfigError(
                task.source,
                f"{task.field_prefix}.split",
                f"task '{task.name}' has no training samples",
            )
        runs.append(TaskRun.of(task, data))
    return runs


def _progress_callback(
    on_progress: Callable[[int, int, dict[str, float]], None] | None, done: int, total: int
) -> Callable[[int, dict[str, TaskStep]], None] | None:
    if on_progress is None:
        return None

    def on_step(i: int, results: dict[str, TaskStep]) -> None:
        on_progress(done + i + 1, total, {k: v.loss for k, v in results.items()})

    return on_step


def steps_per_epoch(runs: Sequence[TaskRun]) -> int:
    """Steps until the longest task has been seen once (UMedPT's epoch)."""
    return max(len(r.data["train"]) // min(r.config.batch_size, len(r.data["train"])) for r in runs)


def eval_scalars(entry: dict[str, Any], owners: dict[str, str]) -> dict[str, float]:
    """The tracker's values of one validation, tagged like a federation's rounds.

    ``site/<site>/<task>/<metric>`` for validation metrics and ``.../train-loss`` for the
    mean training loss since the last validation, so TensorBoard can overlay a
    centralized baseline and a federated run; plus ``train/epoch`` and ``train/seconds``.
    ``owners`` maps each task to its site.
    """
    scalars = {"train/epoch": float(entry["epoch"]), "train/seconds": float(entry["seconds"])}
    for task, loss in entry["train_loss"].items():
        scalars[f"site/{owners[task]}/{task}/train-loss"] = float(loss)
    for task, metrics in entry["val"].items():
        for name, value in metrics.items():
            scalars[f"site/{owners[task]}/{task}/{name}"] = float(value)
    return scalars


@dataclass
class PretrainResult:
    out_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validation
    seconds: float = 0.0

    @property
    def final_metrics(self) -> dict[str, dict[str, float]]:
        return self.history[-1]["val"] if self.history else {}


def pretrain(
    sites: Sequence[SiteConfig],
    config: PretrainConfig,
    out_dir: str | Path,
    *,
    on_progress: Callable[[int, int, dict[str, float]], None] | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    tracking: TrackingConfig = TrackingConfig(),
) -> PretrainResult:
    """Train every task of ``sites`` together; validate and checkpoint under ``out_dir``.

    Every validation's scalars also go to the tracker ``tracking`` asks for (default:
    TensorBoard event files in ``out_dir/tensorboard``); at the end it keeps the checkpoint
    and metrics.jsonl.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    architecture = model_config(config.preset, config.encoder)
    source = read_init(config.init, architecture) if config.init else None  # fail early
    tasks = collect_tasks(sites)
    runs = load_runs(tasks)
    seed_everything(config.seed)
    model = UMedPTModel(architecture, tasks, seed=config.seed)
    warm_start = apply_init(model, source) if source is not None else None
    if warm_start is not None:
        log.info("initial weights from --init: %s", warm_start.describe())
    log.info("model: %s, %.2fM parameters", architecture.encoder, count_parameters(model) / 1e6)

    epoch_steps = steps_per_epoch(runs)
    total = config.steps if config.steps is not None else config.epochs * epoch_steps
    eval_every = config.eval_every or min(epoch_steps, total) or 1
    trainer = MultiTaskTrainer(
        model,
        runs,
        TrainConfig(
            lr=config.lr,
            seed=config.seed,
            device=device,
            schedule=config.schedule,
            total_steps=total,
        ),
    )
    meta = {
        "kind": "centralized",
        "site_files": {t.name: str(t.source) for t in tasks},
        # --init as what was loaded (kind, groups, hash), not as its path
        "config": {**asdict(config), "init": warm_start.describe() if warm_start else None},
        "images": {r.config.name: len(r.data["train"]) for r in runs},  # for the model card
    }
    result = PretrainResult(out, total)
    owners = {task.name: site.name for site in sites for task in site.tasks}
    start = time.perf_counter()
    metrics_file = out / "metrics.jsonl"
    metrics_file.write_text("")
    tracker: Tracker = GuardedTracker(create_tracker(tracking, log_dir=out / TENSORBOARD_DIR))
    done = 0
    try:
        while done < total:
            chunk = min(eval_every, total - done)
            on_step = _progress_callback(on_progress, done, total)
            report = trainer.train_steps(chunk, on_step=on_step)
            done += chunk
            entry = {
                "step": done,
                "epoch": done / epoch_steps,
                "train_loss": report.losses,
                "val": trainer.evaluate("val"),
                "seconds": time.perf_counter() - start,
            }
            result.history.append(entry)
            with metrics_file.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
            save_checkpoint(
                out / "checkpoint",
                model,
                meta={**meta, "step": done, "val": entry["val"]},
                trainer_state=trainer.state_dict(),
            )
            tracker.log_scalars(done, eval_scalars(entry, owners))
            if on_eval:
                on_eval(entry)
    finally:
        for artifact in (out / "checkpoint", metrics_file):
            if artifact.exists():
                tracker.log_artifact(artifact)
        tracker.close()
    result.seconds = time.perf_counter() - start
    return result
