"""UMedPT's constant-memory multi-task training loop.

One step = one batch of every task, in a fixed round-robin order. Each task's loss (the
sum of its task type's named components) is backpropagated right after its forward pass,
so only one task's activations exist at a time (memory of one batch, however many tasks);
shared gradients accumulate across tasks. Each head's optimizer steps after its own
backward; the shared optimizer (encoder + blocks) steps once per step, after every task.

How a task's batch becomes its gradient is a step object (:mod:`umedpt.training.steps`):
:class:`PlainStep`, or :class:`PrivateStep` with a :class:`umedpt.privacy.DPSGDConfig`
(DP-SGD: each task's batch is Poisson-sampled and its gradient, encoder + block + head, is
clipped per sample, noised and averaged); the optimizers step the same way after either.

The loop knows nothing about federation: a federated client builds a trainer over its
own tasks, loads the round's shared weights, calls ``train_steps`` and reports.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from umedpt.config import TaskConfig
from umedpt.data.augment import Augmenter, make_augmenter
from umedpt.data.samples import Sample, TaskData
from umedpt.model import UMedPTModel
from umedpt.privacy import DPSGDConfig
from umedpt.tasks import TaskType, get_task_type, total_loss
from umedpt.training.steps import PlainStep, PrivateStep, TaskGradientStep, TaskStep, autocast
from umedpt.training.streams import PoissonStream, TaskStream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``None`` means "use the model preset's value"."""

    lr: float | None = None
    head_lr: float | None = None
    weight_decay: float | None = None
    schedule: str = "constant"  # "constant" | "cosine"
    total_steps: int | None = None  # horizon of the cosine schedule
    warmup_steps: int | None = None
    grad_clip: float | None = 5.0
    seed: int = 0
    device: str = "cpu"
    mixed_precision: bool = True  # bf16 autocast, only on CUDA
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.schedule == "cosine" and not self.total_steps:
            raise ValueError("the cosine schedule needs total_steps")


@dataclass(frozen=True)
class TaskRun:
    """A task with its loaded data: what the trainer trains and evaluates."""

    config: TaskConfig
    data: TaskData

    @classmethod
    def of(cls, config: TaskConfig, data: TaskData) -> TaskRun:
        """The run of freshly loaded data: the config gets what its task type derives from
        the training split (:meth:`TaskType.fit`: class weights)."""
        return cls(get_task_type(config.type).fit(config, data.splits.get("train", [])), data)

    @property
    def task_type(self) -> TaskType:
        return get_task_type(self.config.type)

    @property
    def name(self) -> str:
        return self.config.name

    def augmenter(self) -> Augmenter | None:
        """What the training streams apply to this task's batches (None: nothing)."""
        return make_augmenter(self.config.augment, self.task_type.augment)


@dataclass
class StepReport:
    """What ``train_steps`` did per task: mean loss, mean loss components, examples seen."""

    steps: int
    losses: dict[str, float]  # task -> mean total loss
    examples: dict[str, int]
    seconds: float = 0.0
    components: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> name -> mean

    @property
    def total_examples(self) -> int:
        return sum(self.examples.values())


class MultiTaskTrainer:
    """Trains one :class:`UMedPTModel` on several tasks with UMedPT's loop."""

    def __init__(
        self,
        model: UMedPTModel,
        tasks: Sequence[TaskRun],
        config: TrainConfig,
        *,
        privacy: DPSGDConfig | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("the trainer needs at least one task")
        missing = [t.name for t in tasks if t.name not in model.heads]
        if missing:
            raise ValueError(f"the model has no head for task(s) {missing}")
        self.model = model
        self.tasks = list(tasks)
        self.config = config
        self.device = torch.device(config.device)
        self.model.to(self.device)
        lr = config.lr if config.lr is not None else model.config.lr
        head_lr = config.head_lr if config.head_lr is not None else lr
        wd = config.weight_decay if config.weight_decay is not None else model.config.weight_decay
        self.warmup_steps = (
            config.warmup_steps if config.warmup_steps is not None else model.config.warmup_steps
        )
        self.shared_optimizer = torch.optim.AdamW(model.shared_parameters(), lr=lr, weight_decay=wd)
        self.head_optimizers = {
            t.name: torch.optim.AdamW(model.heads[t.name].parameters(), lr=head_lr, weight_decay=wd)
            for t in self.tasks
        }
        self.step_count = 0  # steps this trainer took (its warm-up counts these)
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
            for opt in [self.shared_optimizer, *self.head_optimizers.values()]
        ]
        self.privacy = privacy
        # One batch of a task -> its gradient in .grad. Its streams are the trainer's
        # (saved with its state; a benchmark may swap one for a replay).
        self.task_step: TaskGradientStep
        self.streams: dict[str, TaskStream | PoissonStream]
        if privacy is None:
            self.streams = {
                t.name: TaskStream(
                    t.data["train"],
                    t.config.batch_size,
                    t.task_type.collate,
                    seed=config.seed * 1000 + i,
                    augment=t.augmenter(),
                )
                for i, t in enumerate(self.tasks)
            }
            self.task_step = PlainStep(
                model, self.streams, self.device, mixed_precision=config.mixed_precision
            )
        else:
            private = PrivateStep(
                model, self.tasks, privacy, self.device, mixed_precision=config.mixed_precision
            )
            self.streams, self.task_step = private.streams, private
        # Dropout and stochastic depth draw from torch's global RNG: start it from the seed
        # so that the same seed gives the same run wherever the trainer is built.
        torch.manual_seed(config.seed)

    def sample_rates(self) -> dict[str, float]:
        """Each task's Poisson sample rate (batch size / training samples, at most 1)."""
        return {t.name: sample_rate(t) for t in self.tasks}

    # -- schedule ---------------------------------------------------------------------
    # Not timm's CosineLRScheduler (nor its other schedulers): it has one clock, ``t``, and
    # this factor is the product of two. (1) The warm-up counts the steps this trainer took
    # itself, the decay the federation's step: a site that joins at round r warms up its
    # fresh optimizer *and* is at step (r - 1) * L of the cosine; timm at t = (r - 1) * L
    # would skip the warm-up. (2) Even on one clock the shapes differ: ours is (c + 1) / W
    # at step c, 1.0 at steps W - 1 and W, then the cosine from W; timm's warm-up is
    # lr_init + t * (base - lr_init) / warmup_t, reaching the base lr at t = warmup_t where
    # its cosine starts, so no (warmup_t, warmup_lr_init) gives both the warm-up and the
    # cosine (feeding it t = c + 1 shifts the cosine by a step). Results would change; the
    # LambdaLR below writes exactly today's factor (the "constant" schedule is its warm-up).
    def _lr_factor(self, step: int) -> float:
        """Warm-up over this trainer's own first steps, times the decay at schedule ``step``.

        The two are the same count in one run. A federated site places ``step`` on the
        federation's clock (:meth:`set_schedule_step`) while its warm-up counts the steps it
        trained itself, so a site that joins late still warms up its fresh optimizer.
        """
        warmup = 1.0
        if self.step_count < self.warmup_steps:
            warmup = (self.step_count + 1) / self.warmup_steps
        if self.config.schedule == "cosine" and step >= self.warmup_steps:
            horizon = max(1, (self.config.total_steps or 1) - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / horizon)
            return warmup * 0.5 * (1 + math.cos(math.pi * progress))
        return warmup

    def set_schedule_step(self, step: int) -> None:
        """Put every learning rate at schedule step ``step``.

        A federated site trains round ``r`` as steps ``(r - 1) * L`` .. ``r * L - 1`` of one
        schedule over the whole federation, whatever rounds it missed, so a cosine ends at
        the federation's last step, not the site's (the warm-up still counts the site's own
        steps: see :meth:`_lr_factor`).
        """
        factor = self._lr_factor(step)
        for optimizer, scheduler in zip(
            [self.shared_optimizer, *self.head_optimizers.values()], self.schedulers
        ):
            scheduler.last_epoch = step
            for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base_lr * factor

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.config.mixed_precision)

    # -- training ---------------------------------------------------------------------
    def train_step(
        self, shared_regularizer: Callable[[], torch.Tensor] | None = None
    ) -> dict[str, TaskStep]:
        """One batch of every task; returns each task's loss, batch size and components."""
        self.model.train()
        results: dict[str, TaskStep] = {}
        for task in self.tasks:
            step = self.task_step(task)  # the task's gradient is in .grad now
            if step.size and not math.isfinite(step.loss):  # size 0: an empty Poisson batch
                raise FloatingPointError(
                    f"task '{task.name}': loss became {step.loss} at step {self.step_count} "
                    f"({_format(step.components)}); lower the learning rate or check the data"
                )
            head_optimizer = self.head_optimizers[task.name]
            head_optimizer.step()
            head_optimizer.zero_grad(set_to_none=True)
            results[task.name] = step
            logger.debug(
                "step %d, task '%s': loss %.4f (%s)",
                self.step_count,
                task.name,
                step.loss,
                _format(step.components),
            )
        if shared_regularizer is not None:
            shared_regularizer().backward()
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.model.shared_parameters(), self.config.grad_clip)
        self.shared_optimizer.step()
        self.shared_optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        for scheduler in self.schedulers:
            scheduler.step()
        return results

    def train_steps(
        self,
        num_steps: int,
        *,
        shared_regularizer: Callable[[], torch.Tensor] | None = None,
        on_step: Callable[[int, dict[str, TaskStep]], None] | None = None,
    ) -> StepReport:
        """Run ``num_steps`` multi-task steps; report mean losses and examples per task."""
        start = time.perf_counter()
        loss_sums = {t.name: 0.0 for t in self.tasks}
        component_sums: dict[str, dict[str, float]] = {t.name: {} for t in self.tasks}
        examples = {t.name: 0 for t in self.tasks}
        counted = {t.name: 0 for t in self.tasks}  # steps with a loss (not empty Poisson batches)
        for i in range(num_steps):
            results = self.train_step(shared_regularizer)
            for name, step in results.items():
                if not step.size:
                    continue
                counted[name] += 1
                loss_sums[name] += step.loss
                examples[name] += step.size
                sums = component_sums[name]
                for part, value in step.components.items():
                    sums[part] = sums.get(part, 0.0) + value
            if on_step is not None:
                on_step(i, results)
        return StepReport(
            num_steps,
            losses={k: v / max(counted[k], 1) for k, v in loss_sums.items()},
            examples=examples,
            seconds=time.perf_counter() - start,
            components={
                task: {part: v / max(counted[task], 1) for part, v in sums.items()}
                for task, sums in component_sums.items()
            },
        )

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict[str, dict[str, float]]:
        """Loss and metrics of every task on one split ({} for a task without that split)."""
        self.model.eval()
        results: dict[str, dict[str, float]] = {}
        for task in self.tasks:
            samples: list[Sample] = task.data.splits.get(split, [])
            if not samples:
                continue
            metrics = task.task_type.metrics(task.config)
            loss_sum, count = 0.0, 0
            size = self.config.eval_batch_size
            for start in range(0, len(samples), size):
                batch = task.task_type.collate_eval(samples[start : start + size])
                batch = batch.to(self.device)
                with self._autocast():
                    outputs = self.model(batch.images, task.name)
                    loss = total_loss(task.task_type.loss(outputs, batch, task.config))
                loss_sum += float(loss) * batch.size
                count += batch.size
                metrics.update(outputs, batch)
            results[task.name] = {"loss": loss_sum / count, **metrics.compute()}
        return results

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Optimizer, schedule and data-order state (weights are saved separately)."""
        return {
            "step": self.step_count,
            "shared_optimizer": self.shared_optimizer.state_dict(),
            "head_optimizers": {k: o.state_dict() for k, o in self.head_optimizers.items()},
            "schedulers": [s.state_dict() for s in self.schedulers],
            "streams": {k: s.state_dict() for k, s in self.streams.items()},
            # dropout and stochastic depth draw from torch's global RNG
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any], *, include_shared: bool = True) -> None:
        """Restore state; ``include_shared=False`` keeps the shared optimizer fresh."""
        self.step_count = int(state["step"])
        if include_shared:
            self.shared_optimizer.load_state_dict(state["shared_optimizer"])
        for name, opt_state in state["head_optimizers"].items():
            if name in self.head_optimizers:
                self.head_optimizers[name].load_state_dict(opt_state)
        for scheduler, sched_state in zip(self.schedulers, state["schedulers"]):
            scheduler.load_state_dict(sched_state)
        for name, stream_state in state["streams"].items():
            if name in self.streams:
                self.streams[name].load_state_dict(stream_state)
        if "torch_rng" in state and self.privacy is None:
            # Under DP nothing random is replayed (see PoissonStream).
            torch.set_rng_state(state["torch_rng"])


def sample_rate(task: TaskRun) -> float:
    """A task's Poisson sample rate under DP-SGD: batch size / training samples, at most 1."""
    return min(1.0, task.config.batch_size / max(1, len(task.data["train"])))


def _format(components: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in components.items())
