"""One site's part of a federated round, without Flower: describe, train, evaluate.

With a ``[privacy]`` table in the site file, training is DP-SGD (:mod:`umedpt.privacy`):
every round's spend is appended to ``<state_dir>/privacy-ledger.json`` (the site file's
own state folder, over all runs; never a folder the server chooses), charged to the data
each task reads, each training reply carries the epsilon spent so far, the site's target
and the noise multiplier, and a round that would take the site past its target epsilon,
or need more noise than its ``max_noise_multiplier``, is refused before any training
(:class:`PrivacyBudgetSpent`). The ledger's lock is held from that check through training
to the record of the spend: two processes of one site take turns.

What else a round needs, one job per module:

- :mod:`client.task_data`: the site's tasks and data, decoded once into the site's disk cache
- :mod:`client.round_state`: heads, optimizer and data-order state, one folder per round
- :mod:`client.train_report`: what a training reply says (under DP, what may leave)
- :mod:`client.audit_log`: every reply in plain words and in ``<state_dir>/sent.jsonl``
- :mod:`umedpt.training.proximal`: FedProx's proximal term

It logs with the standard :mod:`logging` module (loggers under ``client``); the ClientApp
(:mod:`client.app`) shows those lines in the site's Flower log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from client.audit_log import SENT_LOG, SentLog, SentReply, bytes_per_group
from client.errors import PrivacyBudgetSpent, SiteError
from client.round_state import RoundFolders, site_state_dir
from client.task_data import cached_runs
from client.train_report import expected_examples, train_metrics
from federation import wire
from federation.settings import RunSettings
from umedpt import contract
from umedpt.config import SiteConfig
from umedpt.device import resolve_device
from umedpt.errors import ConfigError
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config
from umedpt.privacy import (
    LARGE_NOISE_MULTIPLIER,
    LEDGER_FILE,
    BudgetExhaustedError,
    PrivacyBudget,
    PrivacyLedger,
    data_key,
    target_delta_problem,
)
from umedpt.privacy.data_key import FINGERPRINTS_FILE
from umedpt.tasks import get_task_type
from umedpt.training.proximal import proximal_term
from umedpt.training.trainer import MultiTaskTrainer, TrainConfig, sample_rate

__all__ = [  # what client.app, the tests and the benchmarks import from here
    "SENT_LOG",
    "PrivacyBudgetSpent",
    "RoundOutcome",
    "SentReply",
    "SiteError",
    "SiteRunner",
    "bytes_per_group",
    "describe_site",
]

log = logging.getLogger(__name__)


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
    restore_seconds: float = 0.0  # loading the site's state of its previous round


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


class SiteRunner:
    """Trains and evaluates one site's tasks for a federated run."""

    def __init__(self, site: SiteConfig, settings: RunSettings) -> None:
        self.site = site
        self.settings = settings
        self.state_dir = site_state_dir(site, settings)
        self.rounds = RoundFolders(self.state_dir)
        self.runs = list(cached_runs(str(site.file), site.file.stat().st_mtime))
        self.budget = self._privacy_budget() if site.privacy is not None else None
        self.model_config = model_config(settings.preset, settings.encoder or None)
        self.model = UMedPTModel(self.model_config, site.tasks, seed=settings.seed)
        self.trainer = self._make_trainer()
        # What never leaves the site: its heads, and its blocks unless the run shares them.
        self.local_groups = [f"{contract.HEADS}.{r.name}" for r in self.runs]
        if not settings.share_blocks:
            self.local_groups += [f"{contract.BLOCKS}.{b}" for b in self.model.blocks]
        self.sent_log = SentLog(
            site, settings.run_key or "default", [r.name for r in self.runs], self.budget
        )

    def _privacy_budget(self) -> PrivacyBudget:
        site, settings = self.site, self.settings
        assert site.privacy is not None
        sizes = {r.name: len(r.data["train"]) for r in self.runs}
        if problem := target_delta_problem(site.privacy.target_delta, sizes):
            raise ConfigError(site.file, "privacy.target_delta", problem)
        digests = site.state_dir / FINGERPRINTS_FILE
        # In the site's own state folder, whatever the server sends (run key, state
        # root): one ledger over every run, which no server can swap for an empty one.
        budget = PrivacyBudget(
            site.privacy,
            PrivacyLedger.load(site.state_dir / LEDGER_FILE),
            {r.name: sample_rate(r) for r in self.runs},
            planned_steps=settings.num_server_rounds * settings.local_steps,
            run_key=settings.run_key,
            data={r.name: data_key(r.config, digests_file=digests) for r in self.runs},
        )
        if budget.ledger.unadopted() & set(budget.data):
            # Spend recorded by task name (ledger format 1): charge it to these tasks' data
            # now, once, so that a later rename keeps it.
            with budget.ledger.locked():
                budget.refresh()
        return budget

    def _make_trainer(self) -> MultiTaskTrainer:
        settings = self.settings
        return MultiTaskTrainer(
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

    @property
    def blocks(self) -> list[str]:
        return sorted(self.model.blocks)

    # -- state on disk (client.round_state) ---------------------------------------------
    def restore(self, before_round: int) -> int:
        """Load the newest saved local state from a round < ``before_round``; 0 if none."""
        restored = self.rounds.restore(before_round, self.model, self.trainer, self.local_groups)
        if restored is None:
            return 0
        log.info(
            "site %s: %s restored from round %d of run %s",
            self.site.name,
            restored.describe(),
            restored.server_round,
            self.settings.run_key or "default",
        )
        return restored.server_round

    def _save(self, server_round: int) -> None:
        self.rounds.save(
            server_round,
            self.model,
            groups=self.local_groups,
            trainer_state=self.trainer.state_dict(),
            meta={"site": self.site.name, "round": server_round, "run_key": self.settings.run_key},
        )

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
        if self.budget is None:
            return self._train(shared, server_round, proximal_mu)
        # One process of the site at a time from the budget check to the record of the
        # spend (Flower may run two of the site's ClientApps at once): the ledger is read
        # again under the lock, so the check counts every round recorded before.
        with self.budget.ledger.locked(on_wait=lambda lock: self._waiting(server_round, lock)):
            self._check_budget(server_round)
            return self._train(shared, server_round, proximal_mu)

    def _waiting(self, server_round: int, lock: object) -> None:
        log.info(
            "site %s: round %d: waiting for another process of this site to record its "
            "privacy spend (lock %s)",
            self.site.name,
            server_round,
            lock,
        )

    def _check_budget(self, server_round: int) -> None:
        """Under the ledger's lock, before anything else: a site over its budget, or one
        that would send mostly noise, does not train."""
        budget = self.budget
        assert budget is not None
        if budget.refresh():  # another run recorded spend on this data since the plan
            self.trainer = self._make_trainer()
        if unknown := budget.ledger.unadopted() - set(budget.sample_rates):
            log.info(
                "site %s: the privacy ledger holds spend of task(s) %s recorded by name only "
                "(before data keys); it counts for a task of that name",
                self.site.name,
                ", ".join(sorted(unknown)),
            )
        try:
            budget.check_noise()
            budget.check(self.settings.local_steps)
        except BudgetExhaustedError as exc:
            log.warning(
                "site %s: round %d: not trained; only the reason is sent: %s",
                self.site.name,
                server_round,
                exc,
            )
            raise PrivacyBudgetSpent(f"site '{self.site.name}': {exc}") from exc
        for task, sigma in budget.noise_multipliers.items():
            if sigma > LARGE_NOISE_MULTIPLIER:
                log.warning(
                    "site %s: round %d: task %s trains with noise multiplier %.3g (above %g): "
                    "this site's update is mostly noise (epsilon spent so far %.3g of target "
                    "%g); set privacy.max_noise_multiplier in the site file to sit such rounds "
                    "out instead",
                    self.site.name,
                    server_round,
                    task,
                    sigma,
                    LARGE_NOISE_MULTIPLIER,
                    budget.spent,
                    budget.config.target_epsilon,
                )

    def _train(
        self, shared: Mapping[str, torch.Tensor], server_round: int, proximal_mu: float
    ) -> RoundOutcome:
        tic = time.perf_counter()
        restored = self.restore(server_round)
        restore_seconds = time.perf_counter() - tic
        keys = self.load_shared(shared)
        # The federation's clock: round r trains steps (r - 1) * L .. r * L - 1.
        self.trainer.set_schedule_step((server_round - 1) * self.settings.local_steps)
        # Only the weights the server sent have a global value to stay near.
        regularizer = proximal_term(self.model, keys, proximal_mu)
        tic = time.perf_counter()
        report = self.trainer.train_steps(self.settings.local_steps, shared_regularizer=regularizer)
        seconds = time.perf_counter() - tic
        # Under DP the spend is recorded once the update exists, before anything can leave.
        spent = self.budget.record(server_round, report.steps) if self.budget is not None else None
        metrics, num_examples = train_metrics(
            report,
            self.runs,
            seconds=seconds,
            restored_round=restored,
            spent=spent,
            target_epsilon=self.site.privacy.target_epsilon if self.site.privacy else None,
        )
        self._save(server_round)
        state = self.model.state_dict()
        shared_out = {k: state[k].detach().cpu() for k in keys}
        return RoundOutcome(
            shared_out, metrics, num_examples, seconds, report.steps, restore_seconds
        )

    def evaluate_round(
        self, shared: Mapping[str, torch.Tensor], server_round: int
    ) -> tuple[dict[str, float], int]:
        """Validation metrics of the global weights with this site's heads (and blocks kept at
        home) of this round."""
        if self.restore(server_round + 1) == 0:
            # A late joiner, or a site whose every round was refused: its scores say what the
            # global weights do under untrained local layers, which the coordinator should know.
            kept = "heads and blocks" if not self.settings.share_blocks else "heads"
            log.warning(
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
        if self.budget is not None:
            # Under DP the validation set's size stays home too: the count sent is the one
            # a training reply sends (expected examples of a round), which says nothing new.
            return metrics, max(expected_examples(self.runs, self.settings.local_steps), 1)
        count = sum(len(r.data.splits.get("val", [])) for r in self.runs)
        return metrics, max(count, 1)

    # -- the site's own log of what it sent (client.audit_log) ---------------------------
    def log_sent(self, reply: SentReply, *, coordinator: str | None = None) -> str:
        """Say in plain words what ``reply`` carries, and append it to ``sent.jsonl``.

        Logged before the reply leaves (Flower sends it when the handler returns). Returns
        the line.
        """
        return self.sent_log.sent(reply, coordinator=coordinator)

    def log_refused(self, server_round: int, reason: str) -> None:
        """Record in ``sent.jsonl`` a round the site refused."""
        self.sent_log.refused(server_round, reason)
