"""Per-group FedProx: Flower's FedProx sends mu; sites add (mu / 2) * ||w - w_global||^2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import FedProx

from federation.fields import setting
from strategies.base import GroupedStrategy
from strategies.registry import register_strategy


@dataclass(frozen=True)
class FedProxOptions:
    """FedProx's option: the weight of the proximal term the sites add."""

    proximal_mu: float = setting(0.01, "FedProx proximal weight mu.")

    def __post_init__(self) -> None:
        if self.proximal_mu < 0:
            raise ValueError(f"proximal-mu must be >= 0, got {self.proximal_mu}")

    def rule_args(self) -> dict[str, Any]:
        return {"proximal_mu": self.proximal_mu}


class GroupedFedProx(FedProx, GroupedStrategy):
    """FedProx first in the MRO: its ``configure_train`` adds mu, then calls ours."""


register_strategy("fedprox", GroupedFedProx, FedProxOptions)
