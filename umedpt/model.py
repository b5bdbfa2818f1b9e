"""The UMedPT model of one site (or of a whole centralized run).

``encoder`` -> ``blocks[<task type>]`` -> ``heads[<task name>]``; parameter names follow
the group contract in :mod:`umedpt.contract`.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from umedpt import contract
from umedpt.config import TaskConfig
from umedpt.models.encoder import Encoder
from umedpt.models.presets import ModelConfig
from umedpt.tasks import block_builder, get_task_type


class UMedPTModel(nn.Module):
    """A shared encoder, one shared block per task type in use, and one head per task.

    With ``seed`` set, every part (encoder, each block, each head) is initialised from
    its own seed derived from ``seed`` and the part's name. A part's initial weights then
    do not depend on which other parts a model has: a site's model and the server's
    global model agree on the encoder and blocks they share.
    """

    def __init__(
        self,
        config: ModelConfig,
        tasks: Sequence[TaskConfig],
        *,
        extra_blocks: Iterable[str] = (),
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tasks = tuple(tasks)  # what checkpoints record to rebuild the heads
        with _seeded(seed, contract.ENCODER):
            self.encoder = Encoder(config)
        block_names = sorted({get_task_type(t.type).block for t in tasks} | set(extra_blocks))
        blocks = {}
        for name in block_names:
            with _seeded(seed, f"{contract.BLOCKS}.{name}"):
                blocks[name] = block_builder(name).build_block(self.encoder.out_channels, config)
        self.blocks = nn.ModuleDict(blocks)
        heads = {}
        for task in tasks:
            with _seeded(seed, f"{contract.HEADS}.{task.name}"):
                heads[task.name] = get_task_type(task.type).build_head(task, config)
        self.heads = nn.ModuleDict(heads)
        self.task_blocks = {t.name: get_task_type(t.type).block for t in tasks}

    def forward(self, images: torch.Tensor, task: str) -> Any:
        """Head outputs of ``task`` for a batch of normalised images."""
        features = self.encoder(images)
        return self.heads[task](self.blocks[self.task_blocks[task]](features))

    def shared_parameters(self) -> list[nn.Parameter]:
        """Encoder and shared-block parameters: what the shared optimizer steps."""
        return [p for n, p in self.named_parameters() if contract.is_shared(n)]

    def shared_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder and block weights only: what travels to a federation's server."""
        return contract.shared_only(self.state_dict())

    def shared_groups(self) -> list[str]:
        return [contract.ENCODER] + [f"{contract.BLOCKS}.{b}" for b in self.blocks]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def _seeded(seed: int | None, part: str) -> Iterator[None]:
    """Run a part's construction under a seed of its own (no-op without a seed)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{seed}:{part}".encode()))
        yield
