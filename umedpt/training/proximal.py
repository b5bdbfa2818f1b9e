"""FedProx's proximal term: a pull of the trained weights back towards where they started.

``(mu / 2) * ||w - w_0||^2`` over chosen parameters ``w``, with ``w_0`` their values when
the term is made. A trainer adds its gradient to theirs once per step (``train_steps``'s
``shared_regularizer``). The term knows nothing of federation: the caller chooses which
parameters have a value to stay near (for a federated site, the weights the server sent).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class ProximalTerm:
    """``(mu / 2) * sum ||p - p_0||^2`` over ``names``' parameters, ``p_0`` their values now."""

    def __init__(self, model: nn.Module, names: Iterable[str], mu: float) -> None:
        if mu <= 0:
            raise ValueError(f"the proximal term needs mu > 0, got {mu}")
        chosen = set(names)
        self.mu = mu
        self.params = [p for n, p in model.named_parameters() if n in chosen]
        self.anchor = [p.detach().clone() for p in self.params]

    def __call__(self) -> torch.Tensor:
        return 0.5 * self.mu * sum(((p - a) ** 2).sum() for p, a in zip(self.params, self.anchor))


def proximal_term(model: nn.Module, names: Iterable[str], mu: float) -> ProximalTerm | None:
    """The term over ``names``' parameters, or None for ``mu == 0`` (plain training)."""
    return ProximalTerm(model, names, mu) if mu > 0 else None
