"""One site's part of a federated round, without Flower: load, train, save, report.

With a ``[privacy]`` table in the site file, training is DP-SGD (:mod:`umedpt.privacy`):
every round's spend is appended to ``<state_dir>/privacy-ledger.json`` (the site file's
own state folder, over all runs; never a folder the server chooses),
each training reply carries the epsilon spent so far, and a round that would take the
site past its target epsilon is refused before any training (:class:`PrivacyBudgetSpent`).

The site keeps its heads, optimizer and data-order state on its own disk, one folder
per completed round under ``<state_dir>/runs/<run-key>/``: a SuperNode restart (which
loses Flower's in-memory ``context.state``) resumes where the site was, and a round
that is repeated after a server restart starts from exactly the same local state.

Flower starts a new process for every message, so the decoded data is kept on the site's
disk too (``<state_dir>/cache/``, :mod:`umedpt.data.cache`): only the first round decodes
the images. And every reply is logged in plain words and appended to
``<state_dir>/sent.jsonl``: the site's own record of what it sent, and when.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.common.logger import log as flower_log

from federation import wire
from federation.secagg import WEIGHT_PREFIX as SECAGG_WEIGHT_PREFIX
from federation.settings import RunSettings
from umedpt import contract
from umedpt.checkpoint import load_trainer_state, load_weights, read_header, save_checkpoint
from umedpt.config import SiteConfig, TaskConfig, load_site_config
from umedpt.data.cache import site_cache_dir
from umedpt.data.loading import load_task
from umedpt.device import resolve_device
from umedpt.errors import ConfigError
from umedpt.export.provenance import TRAIN_IMAGES
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config
from umedpt.privacy import LEDGER_FILE, BudgetExhaustedError, PrivacyBudget, PrivacyLedger
from umedpt.tasks import get_task_type
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig, sample_rate

ROUND_DIR = re.compile(r"^round-(\d+)$")
KEEP_ROUNDS = 2
SENT_LOG = "sent.jsonl"  # in the site's state folder: one JSON object per reply sent
PROGRESS_EVERY_SECONDS = 10.0  # a long data load logs how far it is at most this often


class SiteError(RuntimeError):
    """A site cannot take part as asked; the message names the site."""


class PrivacyBudgetSpent(SiteError):
    """Training this round would take the site past its target epsilon: it does not train."""


@dataclass
class RoundOutcome:
    """What a site sends back after training: shared weights (keys as received) and scalars.

    ``train_seconds`` and ``steps`` are for the site's own log: under DP the time stays home.
    """

    shared: dict[str, torch.Tensor]
    metrics: dict[str, float]
    num_examples: int
    train_seconds: float = 0.0
    steps: int = 0


@functools.lru_cache(maxsize=64)
def _cached_runs(site_file: str, modified: float) -> tuple[TaskRun, ...]:
    # Cached per process: a simulation worker serves many rounds of many sites (Ray gives
    # each message to whichever worker is free). Across processes (a deployed site gets a
    # new one per message), the site's disk cache saves the decoding.
    site = load_site_config(site_file)
    return tuple(_load_run(site, task) for task in site.tasks)


def _load_run(site: SiteConfig, task: TaskConfig) -> TaskRun:
    """Load one task through the site's disk cache, saying so in the site's log."""
    flower_log(
        INFO, "site %s: loading task %s (%s, %s)", site.name, task.name, task.format, task.path
    )
    loaded = load_task(task, cache_dir=site_cache_dir(site), on_progress=_ProgressLog(site, task))
    counts = ", ".join(f"{len(v)} {k}" for k, v in loaded.data.splits.items())
    if loaded.from_cache:
        how = f"from the cache {loaded.cache_file}"
    elif loaded.cache_file is not None:
        how = f"decoded; cached in {loaded.cache_file} for the next rounds"
    else:
        how = "decoded (no cache: see the warning above)"
    skipped = f", {len(loaded.data.skipped)} skipped" if loaded.data.skipped else ""
    flower_log(
        INFO,
        "site %s: task %s: %s samples%s in %.1f s, %s",
        site.name,
        task.name,
        counts,
        skipped,
        loaded.seconds,
        how,
    )
    if not loaded.data.splits.get("train"):
        raise ConfigError(
            task.source, f"{task.field_prefix}.split", f"task '{task.name}' has no training samples"
        )
    return TaskRun(task, loaded.data)


class _ProgressLog:
    """Logs a long data load's progress at most every ``PROGRESS_EVERY_SECONDS``."""

    def __init__(self, site: SiteConfig, task: TaskConfig) -> None:
        self.site, self.task = site, task
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SECONDS and done < total:
            self.last = now
            flower_log(
                INFO,
                "site %s: task %s: decoded %d of %d samples",
                self.site.name,
                self.task.name,
                done,
                total,
            )


RUN_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def site_state_dir(site: SiteConfig, settings: RunSettings) -> Path:
    run_key = settings.run_key or "default"
    if not RUN_KEY.match(run_key):  # it names a folder: no '..', no '/'
        raise SiteError(
            f"site {site.name}: the server sent run key {run_key!r}; expected 1-64 letters, "
            "digits, '-' or '_'"
        )
    root = Path(settings.state_root) / site.name if settings.state_root else site.state_dir
    return root / "runs" / run_key


def describe_site(site: SiteConfig, *, share_blocks: bool = True) -> dict[str, str]:
    """What the server is told about a site: its name, shared blocks, tasks and the most
    examples one local step trains on (the server caps the site's claimed counts with it).

    Read from the site file alone: answering the server's query loads no data and builds
    no model. Without ``share_blocks`` the site names no block, so the server sends and
    aggregates its encoder only.
    """
    types = {t.name: get_task_type(t.type) for t in site.tasks}
    blocks = sorted({t.block for t in types.values()}) if share_blocks else []
    return {
        wire.SITE_NAME: site.name,
        wire.EXAMPLES_PER_STEP: str(sum(t.batch_size for t in site.tasks)),
        wire.BLOCKS_USED: ",".join(blocks),
        wire.TASKS: wire.encode_tasks(
            wire.TaskDescriptor(name, t.name, t.primary_metric) for name, t in types.items()
        ),
    }


@dataclass(frozen=True)
class SentReply:
    """One reply as it leaves the site, for the site's log and ``sent.jsonl``."""

    kind: str  # "train" | "evaluate"
    server_round: int
    groups: dict[str, int]  # parameter group -> bytes of its arrays in the reply
    metrics: dict[str, float]  # every scalar in the reply
    train_seconds: float | None = None  # measured here; under DP it is not in ``metrics``
    steps: int = 0
    reason: str | None = None  # why nothing was trained (kind "refused")


def bytes_per_group(sizes: Mapping[str, int]) -> dict[str, int]:
    """Bytes per parameter group (``encoder``, ``blocks.<b>``) from bytes per array key
    (a masked reply's per-group weight counts towards its group)."""
    groups: dict[str, int] = {}
    for key, size in sizes.items():
        if key.startswith(SECAGG_WEIGHT_PREFIX):
            group = key.removeprefix(SECAGG_WEIGHT_PREFIX)
        else:
            group = contract.group_of(key)
        groups[group] = groups.get(group, 0) + size
    return groups


def format_bytes(size: int) -> str:
    if size >= 100_000:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e3:.1f} kB"


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _join(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


class SiteRunner:
    """Trains and evaluates one site's tasks for a federated run."""

    def __init__(self, site: SiteConfig, settings: RunSettings) -> None:
        self.site = site
        self.settings = settings
        self.state_dir = site_state_dir(site, settings)
        self.runs = list(_cached_runs(str(site.file), site.file.stat().st_mtime))
        self.model_config = model_config(settings.preset, settings.encoder or None)
        self.model = UMedPTModel(self.model_config, site.tasks, seed=settings.seed)
        self.budget: PrivacyBudget | None = None
        if site.privacy is not None:
            # In the site's own state folder, whatever the server sends (run key, state
            # root): one ledger over every run, which no server can swap for an empty one.
            self.budget = PrivacyBudget(
                site.privacy,
                PrivacyLedger.load(site.state_dir / LEDGER_FILE),
                {r.name: sample_rate(r) for r in self.runs},
                planned_steps=settings.num_server_rounds * settings.local_steps,
                run_key=settings.run_key,
            )
        self.trainer = MultiTaskTrainer(
            self.model,
            self.runs,
            TrainConfig(
                lr=settings.lr or None,
                seed=settings.seed,
                device=resolve_device(),
                schedule=settings.schedule,
                total_steps=settings.num_server_rounds * settings.local_steps,
            ),
            privacy=self.budget.dpsgd() if self.budget is not None else None,
        )
        # What never leaves the site: its heads, and its blocks unless the run shares them.
        self.local_groups = [f"{contract.HEADS}.{r.name}" for r in self.runs]
        if not settings.share_blocks:
            self.local_groups += [f"{contract.BLOCKS}.{b}" for b in self.model.blocks]

    @property
    def blocks(self) -> list[str]:
        return sorted(self.model.blocks)

    # -- state on disk ----------------------------------------------------------------
    def _round_dirs(self) -> dict[int, Path]:
        if not self.state_dir.is_dir():
            return {}
        found = {}
        for path in self.state_dir.iterdir():
            if (match := ROUND_DIR.match(path.name)) and path.is_dir():
                found[int(match.group(1))] = path
        return found

    def restore(self, before_round: int) -> int:
        """Load the newest saved local state from a round < ``before_round``; 0 if none."""
        saved = [r for r in self._round_dirs() if r < before_round]
        if not saved:
            return 0
        latest = max(saved)
        folder = self._round_dirs()[latest]
        # The local groups this round saved (a round saved while blocks were shared, before
        # an upgrade, holds heads only: the blocks then come from the server's weights).
        saved_groups = set(read_header(folder)["groups"])
        groups = [g for g in self.local_groups if g in saved_groups]
        load_weights(self.model, folder, groups=groups)
        parts = ["heads"] + (
            ["blocks"] if any(g.startswith(contract.BLOCKS) for g in groups) else []
        )
        if (state := load_trainer_state(folder)) is not None:
            self.trainer.load_state_dict(state)
            parts.append("optimizer state")
        restored = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        # Flower's logger: it prints in a ClientApp process, so the site's log shows it.
        flower_log(
            INFO,
            "site %s: %s restored from round %d of run %s",
            self.site.name,
            restored,
            latest,
            self.settings.run_key or "default",
        )
        return latest

    def _save(self, server_round: int) -> None:
        heads = self.local_groups
        save_checkpoint(
            self.state_dir / f"round-{server_round:05d}",
            self.model,
            meta={"site": self.site.name, "round": server_round, "run_key": self.settings.run_key},
            trainer_state=self.trainer.state_dict(),
            groups=heads,
        )
        # The latest heads, where a site operator (and `simulate`) finds them.
        save_checkpoint(
            self.state_dir / "latest-heads",
            self.model,
            meta={"site": self.site.name, "round": server_round, "run_key": self.settings.run_key},
            groups=heads,
        )
        for old in sorted(self._round_dirs())[:-KEEP_ROUNDS]:
            shutil.rmtree(self._round_dirs()[old], ignore_errors=True)

    # -- shared weights ---------------------------------------------------------------
    def shared_state(self) -> dict[str, torch.Tensor]:
        """The weights this site exchanges with the server (its local groups left out)."""
        local = set(self.local_groups)
        return {
            k: v for k, v in self.model.shared_state_dict().items()
            if contract.group_of(k) not in local
        }  # fmt: skip

    def load_shared(self, shared: Mapping[str, torch.Tensor]) -> list[str]:
        """Load the server's weights; they must be exactly this site's shared keys."""
        if problem := contract.state_mismatch(shared, self.shared_state()):
            raise SiteError(
                f"site '{self.site.name}': the server sent weights that do not fit this site's "
                f"model ({problem}); check that server and site use the same preset and encoder"
            )
        self.model.load_state_dict(dict(shared), strict=False)
        return list(shared)

    # -- a round ----------------------------------------------------------------------
    def train_round(
        self, shared: Mapping[str, torch.Tensor], server_round: int, *, proximal_mu: float = 0.0
    ) -> RoundOutcome:
        if self.budget is not None:
            try:  # before anything else: a site over its budget does not train
                self.budget.check(self.settings.local_steps)
            except BudgetExhaustedError as exc:
                flower_log(
                    WARNING,
                    "site %s: round %d: not trained; only the reason is sent: %s",
                    self.site.name,
                    server_round,
                    exc,
                )
                raise PrivacyBudgetSpent(f"site '{self.site.name}': {exc}") from exc
        restored = self.restore(server_round)
        keys = self.load_shared(shared)
        self.trainer.set_schedule_step((server_round - 1) * self.settings.local_steps)
        regularizer = None
        if proximal_mu > 0:
            # Only the weights the server sent have a global value to stay near.
            sent = set(keys)
            params = [p for n, p in self.model.named_parameters() if n in sent]
            anchor = [p.detach().clone() for p in params]

            def regularizer() -> torch.Tensor:  # FedProx: (mu/2) ||w - w_global||^2
                return 0.5 * proximal_mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))

        tic = time.perf_counter()
        report = self.trainer.train_steps(self.settings.local_steps, shared_regularizer=regularizer)
        seconds = time.perf_counter() - tic
        metrics: dict[str, float] = {
            wire.TRAIN_SECONDS: seconds,
            wire.RESTORED_ROUND: float(restored),
            wire.UNIT_WEIGHT: 1.0,
        }
        num_examples = report.total_examples
        if self.budget is not None:
            # Spent once the update exists; recorded before anything can leave the site.
            entry = self.budget.record(server_round, report.steps)
            metrics[wire.DP_EPSILON] = entry.epsilon
            metrics[wire.DP_DELTA] = entry.delta
            # Training losses, Poisson batch sizes and the time (which follows the batch
            # sizes) are not privatised: they stay home.
            del metrics[wire.TRAIN_SECONDS]
            # The expected examples (batch size * steps per task) do not depend on the data.
            num_examples = sum(
                round(sample_rate(r) * len(r.data["train"])) * report.steps for r in self.runs
            )
        else:
            for task, loss in report.losses.items():
                metrics[wire.task_metric(task, wire.TRAIN_LOSS)] = loss
            for run in self.runs:  # for the model card; under DP the dataset size stays home
                images = float(len(run.data["train"]))
                metrics[wire.task_metric(run.config.name, TRAIN_IMAGES)] = images
        self._save(server_round)
        state = self.model.state_dict()
        shared_out = {k: state[k].detach().cpu() for k in keys}
        return RoundOutcome(shared_out, metrics, num_examples, seconds, report.steps)

    def evaluate_round(
        self, shared: Mapping[str, torch.Tensor], server_round: int
    ) -> tuple[dict[str, float], int]:
        """Validation metrics of the global weights with this site's heads (and blocks kept at
        home) of this round."""
        if self.restore(server_round + 1) == 0:
            # A late joiner, or a site whose every round was refused: its scores say what the
            # global weights do under untrained local layers, which the coordinator should know.
            kept = "heads and blocks" if not self.settings.share_blocks else "heads"
            flower_log(
                WARNING,
                "site %s: no round of its own trained yet; evaluating the global weights with "
                "freshly initialised %s",
                self.site.name,
                kept,
            )
        self.load_shared(shared)
        results = self.trainer.evaluate("val")
        metrics: dict[str, float] = {wire.UNIT_WEIGHT: 1.0}
        for task, values in results.items():
            for name, value in values.items():
                metrics[wire.task_metric(task, name)] = float(value)
        count = sum(len(r.data.splits.get("val", [])) for r in self.runs)
        return metrics, max(count, 1)

    # -- the site's own log of what it sent ---------------------------------------------
    def log_sent(self, reply: SentReply, *, coordinator: str | None = None) -> str:
        """Say in plain words what ``reply`` carries, and append it to ``sent.jsonl``.

        Logged before the reply leaves (Flower sends it when the handler returns). Returns
        the line. A ``sent.jsonl`` that cannot be written is only warned about.
        """
        epsilon, delta = self._privacy_spent(reply)
        to = f"the coordinator at {coordinator}" if coordinator else "the coordinator"
        scalars = (
            f"{len(reply.metrics)} scalars ("
            + ", ".join(f"{k} {_number(v)}" for k, v in reply.metrics.items())
            + ")"
        )
        tasks = _join([r.name for r in self.runs])
        if reply.kind == "train":
            sent = _join([f"{g} ({format_bytes(n)})" for g, n in reply.groups.items()])
            line = (
                f"round {reply.server_round}: trained tasks {tasks} for {reply.steps} steps in "
                f"{reply.train_seconds or 0.0:.1f} s; sent {sent} and {scalars} to {to}"
            )
        else:
            count = int(reply.metrics.get(wire.NUM_EXAMPLES, 0))
            line = (
                f"round {reply.server_round}: evaluated tasks {tasks} on {count} validation "
                f"samples; sent no weights, only {scalars}, to {to}"
            )
        if epsilon is not None and self.site.privacy is not None:
            line += (
                f"; privacy spent so far: epsilon {epsilon:.2f} of "
                f"{self.site.privacy.target_epsilon:g} (delta {delta:g})"
            )
        flower_log(INFO, "site %s: %s", self.site.name, line)
        self._append_sent(reply, epsilon, delta, coordinator)
        return line

    def log_refused(self, server_round: int, reason: str) -> None:
        """Record in ``sent.jsonl`` a round the site refused (only the reason was sent; the
        log already said why)."""
        refused = SentReply("refused", server_round, {}, {}, reason=reason)
        epsilon, delta = self._privacy_spent(refused)
        self._append_sent(refused, epsilon, delta, None)

    def _privacy_spent(self, reply: SentReply) -> tuple[float | None, float | None]:
        if self.budget is None:
            return None, None
        if wire.DP_EPSILON in reply.metrics:  # what the reply itself says
            return reply.metrics[wire.DP_EPSILON], reply.metrics.get(wire.DP_DELTA)
        return self.budget.ledger.epsilon, self.budget.config.target_delta

    def _append_sent(
        self, reply: SentReply, epsilon: float | None, delta: float | None, to: str | None
    ) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "site": self.site.name,
            "run_key": self.settings.run_key or "default",
            "round": reply.server_round,
            "kind": reply.kind,
            "to": to,
            "groups": reply.groups,
            "metrics": reply.metrics,
            "train_seconds": reply.train_seconds,
            "reason": reply.reason,
            "epsilon": epsilon,
            "delta": delta,
        }
        path = self.site.state_dir / SENT_LOG
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        except OSError as exc:
            flower_log(WARNING, "site %s: could not append to %s: %s", self.site.name, path, exc)
