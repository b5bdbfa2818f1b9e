"""Per-group FedAdam: Flower's server Adam over the per-group weighted mean.

Uses FedOpt's moment fields ``m_t`` / ``v_t`` (dicts of numpy arrays keyed like the
weights) as of Flower 1.42.0: check them in ``flwr/serverapp/strategy/fedopt.py`` on
an upgrade.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdam

from federation.fields import setting
from strategies.base import GroupedStrategy
from strategies.registry import register_strategy
from umedpt import contract


@dataclass(frozen=True)
class FedAdamOptions:
    """FedAdam's option: the server's learning rate (Flower's ``eta``)."""

    server_lr: float = setting(0.01, "FedAdam server learning rate (eta).")

    def __post_init__(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server-lr must be positive, got {self.server_lr}")

    def rule_args(self) -> dict[str, Any]:
        return {"eta": self.server_lr}


class GroupedFedAdam(FedAdam, GroupedStrategy):
    """FedAdam over the per-group average; groups nobody trained keep weights and moments.

    MRO ``FedAdam -> FedOpt -> GroupedStrategy -> FedAvg``: FedAdam's call of
    ``super().aggregate_train`` lands in the per-group reduction, and its optimizer then
    runs unchanged over the full, constant key set.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        before_m = {k: v.copy() for k, v in (self.m_t or {}).items()}
        before_v = {k: v.copy() for k, v in (self.v_t or {}).items()}
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        updated = set(self.round_record(server_round).updated_groups)
        for key in list(arrays.keys()):
            reference = self.global_arrays[key]
            if contract.group_of(key) not in updated:
                arrays[key] = reference  # stale momentum must not move an untrained group
                if key in before_m:
                    self.m_t[key], self.v_t[key] = before_m[key], before_v[key]
                elif self.m_t is not None:
                    self.m_t[key] = np.zeros_like(reference.numpy())
                    self.v_t[key] = np.zeros_like(reference.numpy())
            else:
                # Flower's FedOpt returns float64; the model is float32.
                arrays[key] = Array(arrays[key].numpy().astype(reference.numpy().dtype))
        return arrays, metrics

    def state_arrays(self) -> dict[str, np.ndarray]:
        state = {}
        for name in ("m_t", "v_t"):
            for key, value in (getattr(self, name) or {}).items():
                state[f"{name}/{key}"] = value
        return state

    def load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        self.m_t = {k[4:]: v for k, v in state.items() if k.startswith("m_t/")} or None
        self.v_t = {k[4:]: v for k, v in state.items() if k.startswith("v_t/")} or None


register_strategy("fedadam", GroupedFedAdam, FedAdamOptions)
