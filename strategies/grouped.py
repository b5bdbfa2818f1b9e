"""Per-group aggregation on top of Flower's FedAvg, FedProx and FedAdam.

The server holds ``encoder.*`` and every ``blocks.<b>.*``. Each site is sent only the
encoder and the blocks its tasks use (it says which when first asked, by a query
message), and must send back exactly those keys. ``encoder.*`` is averaged over all
accepted replies, each ``blocks.<b>.*`` over the replies that carry it, weighted by
``num-examples`` (or equally). Heads never travel.

Flower's strategies are reused, not rewritten: ``GroupedFedAdam(FedAdam, GroupedStrategy)``
resolves ``FedAdam -> FedOpt -> GroupedStrategy -> FedAvg``, so FedAdam's call of
``super().aggregate_train`` lands in the per-group average below and its server
optimizer then runs unchanged over the full, constant key set.

Only ``start`` is re-implemented (the same loop as Flower's ``Strategy.start``) to add
what Flower's lacks: resuming from a round, a per-round hook for checkpoints, and a
deadline on waiting for sites.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Result
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from strategies.validation import reply_problem
from umedpt import contract


@dataclass(frozen=True)
class SiteInfo:
    """What a site said about itself when first asked."""

    node_id: int
    name: str
    blocks: tuple[str, ...]
    details: dict[str, str] = field(default_factory=dict)  # e.g. tasks and their metrics

    @property
    def groups(self) -> tuple[str, ...]:
        return (contract.ENCODER, *(f"{contract.BLOCKS}.{b}" for b in self.blocks))


@dataclass
class RoundRecord:
    """What happened in one round, per site (by name): for reports and tests."""

    round: int
    started: float = 0.0
    seconds: float = 0.0
    bytes_sent: dict[str, int] = field(default_factory=dict)  # training payloads
    bytes_received: dict[str, int] = field(default_factory=dict)
    bytes_sent_for_evaluation: dict[str, int] = field(default_factory=dict)
    train_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    eval_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (site, reason)
    updated_groups: list[str] = field(default_factory=list)


class RoundFailedError(RuntimeError):
    """A round got fewer usable replies than the configured minimum of sites."""


def arrays_nbytes(arrays: ArrayRecord) -> int:
    """Bytes of the serialised arrays as they travel (npy payloads)."""
    return sum(len(a.data) for a in arrays.values())


def merged_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of each metric over the replies that report it.

    Sites report different task metrics, so Flower's default (which needs identical
    keys everywhere) would fail.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for content in contents:
        record = next(iter(content.metric_records.values()))
        weight = float(record[weight_key])
        for key, value in record.items():
            if key == weight_key or not isinstance(value, int | float):
                continue
            sums[key] = sums.get(key, 0.0) + weight * float(value)
            weights[key] = weights.get(key, 0.0) + weight
    merged: dict[str, float] = {k: sums[k] / weights[k] for k in sums}
    merged[weight_key] = sum(
        float(next(iter(c.metric_records.values()))[weight_key]) for c in contents
    )
    return MetricRecord(merged)


class GroupedStrategy(FedAvg):
    """FedAvg whose aggregation follows the parameter groups; see the module docstring."""

    # Set by ``setup`` (Flower's subclasses do not forward extra constructor arguments).
    node_wait_timeout: float = 300.0
    query_timeout: float = 120.0
    min_replies: int = 1
    eval_every: int = 1

    def setup(
        self,
        *,
        node_wait_timeout: float,
        query_timeout: float,
        min_replies: int,
        eval_every: int = 1,
    ) -> None:
        self.node_wait_timeout = node_wait_timeout
        self.query_timeout = query_timeout
        self.min_replies = min_replies
        self.eval_every = eval_every
        self.num_rounds = 0
        self.sites: dict[int, SiteInfo] = {}
        self.rounds: dict[int, RoundRecord] = {}
        self._global: ArrayRecord | None = None
        self._sent_to: dict[int, list[str]] = {}

    # -- who is who -------------------------------------------------------------------
    def site_name(self, node_id: int) -> str:
        site = self.sites.get(node_id)
        return site.name if site else f"node-{node_id}"

    def _record(self, server_round: int) -> RoundRecord:
        return self.rounds.setdefault(server_round, RoundRecord(server_round))

    def _wait_for_nodes(self, grid: Grid, wanted: int) -> list[int]:
        deadline = time.monotonic() + self.node_wait_timeout
        while len(nodes := list(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise RoundFailedError(
                    f"only {len(nodes)} of the {wanted} required sites connected within "
                    f"{self.node_wait_timeout:.0f} s"
                )
            log(INFO, "waiting for sites: %d connected, %d required", len(nodes), wanted)
            time.sleep(1)
        return nodes

    def _ask_sites(self, grid: Grid, node_ids: list[int]) -> None:
        unknown = [n for n in node_ids if n not in self.sites]
        if not unknown:
            return
        queries = [
            Message(
                RecordDict({self.configrecord_key: ConfigRecord({})}),
                message_type=MessageType.QUERY,
                dst_node_id=n,
            )
            for n in unknown
        ]
        for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(
                    WARNING, "site on node %s did not describe itself: %s", node, reply.error.reason
                )
                continue
            try:
                info = reply.content[contract.SITE_INFO_KEY]
                blocks = tuple(b for b in str(info[contract.BLOCKS_USED_KEY]).split(",") if b)
                details = {str(k): str(v) for k, v in info.items()}
                self.sites[node] = SiteInfo(
                    node, str(info[contract.SITE_NAME_KEY]), blocks, details
                )
            except (KeyError, TypeError) as exc:
                log(WARNING, "node %s sent a malformed description: %r", node, exc)

    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, kind: str
    ) -> list[Message]:
        fraction = self.fraction_train if kind == MessageType.TRAIN else self.fraction_evaluate
        if fraction == 0.0:
            return []
        minimum = self.min_train_nodes if kind == MessageType.TRAIN else self.min_evaluate_nodes
        nodes = self._wait_for_nodes(grid, max(minimum, self.min_available_nodes))
        sample = max(int(len(nodes) * fraction), minimum)
        nodes = sorted(nodes)[:sample] if sample < len(nodes) else sorted(nodes)
        self._ask_sites(grid, nodes)
        config[contract.SERVER_ROUND_KEY] = server_round
        record = self._record(server_round)
        messages = []
        for node in nodes:
            site = self.sites.get(node)
            if site is None:
                continue
            keys = [k for k in arrays.keys() if contract.group_of(k) in site.groups]
            payload = ArrayRecord({k: arrays[k] for k in keys})
            content = RecordDict({self.arrayrecord_key: payload, self.configrecord_key: config})
            messages.append(Message(content, message_type=kind, dst_node_id=node))
            if kind == MessageType.TRAIN:
                self._sent_to[node] = keys
                record.bytes_sent[site.name] = arrays_nbytes(payload)
            else:
                record.bytes_sent_for_evaluation[site.name] = arrays_nbytes(payload)
        return messages

    # -- Flower's hooks ---------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        self._sent_to = {}
        return self._messages(server_round, arrays, config, grid, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        due = server_round % self.eval_every == 0 or server_round == self.num_rounds
        if not due:
            return []
        return self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)

    def _accept(self, server_round: int, replies: list[Message], *, train: bool) -> list[Message]:
        record = self._record(server_round)
        accepted = []
        for reply in replies:
            node = reply.metadata.src_node_id
            site = self.site_name(node)
            problem = reply_problem(
                reply,
                expected_keys=self._sent_to.get(node, []),
                reference=self._global if self._global is not None else {},
                weight_key=self.weighted_by_key,
                needs_arrays=train,
            )
            if problem is None and train and node not in self._sent_to:
                problem = "this site was not asked to train in this round"
            if problem:
                phase = "training" if train else "evaluation"
                record.rejected.append((site, f"{phase}: {problem}"))
                log(
                    WARNING,
                    "round %s: rejected %s reply of site %s: %s",
                    server_round,
                    phase,
                    site,
                    problem,
                )
                continue
            accepted.append(reply)
            metrics = {
                k: float(v)
                for k, v in next(iter(reply.content.metric_records.values())).items()
                if isinstance(v, int | float)
            }
            if train:
                record.bytes_received[site] = arrays_nbytes(
                    next(iter(reply.content.array_records.values()))
                )
                record.train_metrics[site] = metrics
            else:
                record.eval_metrics[site] = metrics
        if train:
            answered = {r.metadata.src_node_id for r in replies}
            for node in sorted(set(self._sent_to) - answered):
                record.rejected.append(
                    (self.site_name(node), "training: no reply before the round timeout")
                )
                log(
                    WARNING,
                    "round %s: site %s did not answer in time",
                    server_round,
                    self.site_name(node),
                )
        return accepted

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._accept(server_round, list(replies), train=True)
        record = self._record(server_round)
        if len(accepted) < self.min_replies:
            log(
                WARNING,
                "round %s: %d usable replies, fewer than the minimum of %d sites: weights kept",
                server_round,
                len(accepted),
                self.min_replies,
            )
            return None, None
        assert self._global is not None
        averaged: dict[str, Array] = {}
        groups = sorted({contract.group_of(k) for k in self._global.keys()})
        for group in groups:
            parts = []
            for reply in accepted:
                arrays = next(iter(reply.content.array_records.values()))
                subset = {k: v for k, v in arrays.items() if contract.group_of(k) == group}
                if subset:
                    metrics = next(iter(reply.content.metric_records.values()))
                    parts.append(RecordDict({"arrays": ArrayRecord(subset), "metrics": metrics}))
            if parts:
                averaged.update(aggregate_arrayrecords(parts, self.weighted_by_key).items())
                record.updated_groups.append(group)
        # A full record in the global key order; groups nobody trained keep their values.
        result = ArrayRecord(
            {
                k: Array(averaged[k].numpy().astype(v.numpy().dtype, copy=False))
                if k in averaged
                else v
                for k, v in self._global.items()
            }
        )
        return result, merged_metrics([r.content for r in accepted], self.weighted_by_key)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        accepted = self._accept(server_round, list(replies), train=False)
        if not accepted:
            return None
        return merged_metrics([r.content for r in accepted], self.weighted_by_key)

    # -- server-optimizer state, for checkpoints ------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no optimizer state, got {len(state)} arrays"
            )

    # -- the round loop -----------------------------------------------------------------
    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        start_round: int = 1,
        on_round_end: Callable[[int, ArrayRecord, RoundRecord], None] | None = None,
    ) -> Result:
        """Flower's round loop, plus ``start_round`` (resume) and ``on_round_end``.

        Raises RoundFailedError when a round cannot aggregate: continuing would only
        repeat the same weights while looking like progress.
        """
        result = Result(arrays=initial_arrays)
        arrays = initial_arrays
        self.num_rounds = num_rounds
        for server_round in range(start_round, num_rounds + 1):
            record = self._record(server_round)
            record.started = time.time()
            tic = time.perf_counter()
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            messages = self.configure_train(
                server_round, arrays, ConfigRecord(dict(train_config or {})), grid
            )
            replies = grid.send_and_receive(messages, timeout=timeout)
            aggregated, train_metrics = self.aggregate_train(server_round, replies)
            if aggregated is None:
                raise RoundFailedError(
                    f"round {server_round}: fewer than {self.min_replies} sites sent usable "
                    f"updates; rejected: {record.rejected}"
                )
            result.arrays = arrays = aggregated
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            messages = self.configure_evaluate(
                server_round, arrays, ConfigRecord(dict(evaluate_config or {})), grid
            )
            replies = grid.send_and_receive(messages, timeout=timeout)
            if (evaluated := self.aggregate_evaluate(server_round, replies)) is not None:
                result.evaluate_metrics_clientapp[server_round] = evaluated
            if evaluate_fn and (server_metrics := evaluate_fn(server_round, arrays)) is not None:
                result.evaluate_metrics_serverapp[server_round] = server_metrics
            record.seconds = time.perf_counter() - tic
            if on_round_end:
                on_round_end(server_round, arrays, record)
        return result


class GroupedFedAvg(GroupedStrategy):
    """Per-group FedAvg."""


class GroupedFedProx(FedProx, GroupedStrategy):
    """FedProx: sites add (mu / 2) * ||w - w_global||^2 over the shared weights."""


class GroupedFedAdam(FedAdam, GroupedStrategy):
    """FedAdam over the per-group average; groups nobody trained keep weights and moments."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        before_m = {k: v.copy() for k, v in (self.m_t or {}).items()}
        before_v = {k: v.copy() for k, v in (self.v_t or {}).items()}
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        assert self._global is not None
        updated = set(self._record(server_round).updated_groups)
        for key in list(arrays.keys()):
            reference = self._global[key]
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


STRATEGIES: dict[str, type[GroupedStrategy]] = {
    "fedavg": GroupedFedAvg,
    "fedprox": GroupedFedProx,
    "fedadam": GroupedFedAdam,
}


def build_strategy(
    name: str,
    *,
    min_sites: int,
    weighting: str = "examples",
    proximal_mu: float = 0.0,
    server_lr: float = 0.01,
    node_wait_timeout: float = 300.0,
    query_timeout: float = 120.0,
    eval_every: int = 1,
) -> GroupedStrategy:
    """Create a grouped strategy by name; unknown names list the valid ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}'; valid: {', '.join(STRATEGIES)}")
    if weighting not in ("examples", "equal"):
        raise ValueError(f"weighting must be 'examples' or 'equal', got {weighting!r}")
    common: dict[str, Any] = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=min_sites,
        min_evaluate_nodes=min_sites,
        min_available_nodes=min_sites,
        weighted_by_key=contract.NUM_EXAMPLES_KEY
        if weighting == "examples"
        else contract.UNIT_WEIGHT_KEY,
        arrayrecord_key=contract.SHARED_ARRAYS_KEY,
        configrecord_key=contract.CONFIG_KEY,
    )
    if name == "fedprox":
        common["proximal_mu"] = proximal_mu
    if name == "fedadam":
        common["eta"] = server_lr
    strategy = STRATEGIES[name](**common)
    strategy.setup(
        node_wait_timeout=node_wait_timeout,
        query_timeout=query_timeout,
        min_replies=min_sites,
        eval_every=eval_every,
    )
    return strategy
