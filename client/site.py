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
"""

from __future__ import annotations

import functools
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO
from pathlib import Path

import torch
from flwr.common.logger import log as flower_log

from umedpt import contract
from umedpt.checkpoint import load_trainer_state, load_weights, save_checkpoint
from umedpt.config import SiteConfig, load_site_config
from umedpt.device import resolve_device
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config
from umedpt.pretrain import load_runs
from umedpt.privacy import LEDGER_FILE, BudgetExhaustedError, PrivacyBudget, PrivacyLedger
from umedpt.tasks import get_task_type
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig, sample_rate
from umedpt_fl import wire
from umedpt_fl.settings import RunSettings

ROUND_DIR = re.compile(r"^round-(\d+)$")
KEEP_ROUNDS = 2


class SiteError(RuntimeError):
    """A site cannot take part as asked; the message names the site."""


class PrivacyBudgetSpent(SiteError):
    """Training this round would take the site past its target epsilon: it does not train."""


@dataclass
class RoundOutcome:
    """What a site sends back after training: shared weights (keys as received) and scalars."""

    shared: dict[str, torch.Tensor]
    metrics: dict[str, float]
    num_examples: int


@functools.lru_cache(maxsize=64)
def _cached_runs(site_file: str, modified: float) -> tuple[TaskRun, ...]:
    # Cached per process: a simulation worker serves many rounds of many sites (Ray gives
    # each message to whichever worker is free), and reading every image again each round
    # would dominate the round's time.
    return tuple(load_runs(load_site_config(site_file).tasks))


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


def describe_site(site: SiteConfig) -> dict[str, str]:
    """What the server is told about a site: its name, shared blocks, tasks and the most
    examples one local step trains on (the server caps the site's claimed counts with it).

    Read from the site file alone: answering the server's query loads no data and builds
    no model.
    """
    types = {t.name: get_task_type(t.type) for t in site.tasks}
    return {
        wire.SITE_NAME: site.name,
        wire.EXAMPLES_PER_STEP: str(sum(t.batch_size for t in site.tasks)),
        wire.BLOCKS_USED: ",".join(sorted({t.block for t in types.values()})),
        wire.TASKS: wire.encode_tasks(
            wire.TaskDescriptor(name, t.name, t.primary_metric) for name, t in types.items()
        ),
    }


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
            TrainConfig(lr=settings.lr or None, seed=settings.seed, device=resolve_device()),
            privacy=self.budget.dpsgd() if self.budget is not None else None,
        )

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
        heads = [f"{contract.HEADS}.{r.name}" for r in self.runs]
        load_weights(self.model, folder, groups=heads)
        restored = "heads"
        if (state := load_trainer_state(folder)) is not None:
            self.trainer.load_state_dict(state)
            restored = "heads and optimizer state"
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
        heads = [f"{contract.HEADS}.{r.name}" for r in self.runs]
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
    def load_shared(self, shared: Mapping[str, torch.Tensor]) -> list[str]:
        """Load the server's weights; they must be exactly this site's shared keys."""
        if problem := contract.state_mismatch(shared, self.model.shared_state_dict()):
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
                raise PrivacyBudgetSpent(f"site '{self.site.name}': {exc}") from exc
        restored = self.restore(server_round)
        keys = self.load_shared(shared)
        regularizer = None
        if proximal_mu > 0:
            anchor = [p.detach().clone() for p in self.model.shared_parameters()]

            def regularizer() -> torch.Tensor:  # FedProx: (mu/2) ||w - w_global||^2
                params = self.model.shared_parameters()
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
        self._save(server_round)
        state = self.model.state_dict()
        return RoundOutcome({k: state[k].detach().cpu() for k in keys}, metrics, num_examples)

    def evaluate_round(
        self, shared: Mapping[str, torch.Tensor], server_round: int
    ) -> tuple[dict[str, float], int]:
        """Validation metrics of the global weights with this site's heads of this round."""
        self.restore(server_round + 1)
        self.load_shared(shared)
        results = self.trainer.evaluate("val")
        metrics: dict[str, float] = {wire.UNIT_WEIGHT: 1.0}
        for task, values in results.items():
            for name, value in values.items():
                metrics[wire.task_metric(task, name)] = float(value)
        count = sum(len(r.data.splits.get("val", [])) for r in self.runs)
        return metrics, max(count, 1)
