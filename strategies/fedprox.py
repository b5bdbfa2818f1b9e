"""Per-group FedProx: Flower's FedProx sends mu; sites add (mu / 2) * ||w - w_global||^2."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from strategies.base import GroupedStrategy
from strategies.registry import register_strategy


class GroupedFedProx(FedProx, GroupedStrategy):
    """FedProx first in the MRO: its ``configure_train`` adds mu, then calls ours."""


register_strategy("fedprox", GroupedFedProx, lambda s: {"proximal_mu": s.proximal_mu})
